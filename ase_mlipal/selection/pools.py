"""Candidate pools: a sequence of ``Atoms``, any file ``ase.io.iread`` reads (a gzipped extxyz too), or an ase.db,
streamed in chunks."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

from ase import Atoms

from ..frames import iread_frames

Pool = Union[Sequence[Atoms], str, os.PathLike]


DB_SUFFIXES = (".db", ".json")


def stream(pool: Pool, chunk_size: int) -> Iterator[list[Atoms]]:
    """The pool in lists of at most ``chunk_size`` structures, read lazily from files or an ase.db."""
    if isinstance(pool, (str, os.PathLike)):
        path = os.fspath(pool)
        if not Path(path).exists() and "://" not in path:
            raise FileNotFoundError(f"candidate pool {path} does not exist")
        frames: Iterable[Atoms] = _db_rows(path) if is_database(path) else iread_frames(path)
    else:
        frames = pool
    frames = iter(frames)
    while chunk := list(islice(frames, chunk_size)):
        yield chunk


def is_database(path: str) -> bool:
    return path.endswith(DB_SUFFIXES) or "://" in path


def _db_rows(path: str) -> Iterator[Atoms]:
    import ase.db

    with ase.db.connect(path) as db:
        for row in db.select():
            yield row.toatoms()


def pick(pool: Pool, indices: Sequence[int], chunk_size: int = 1024) -> list[Atoms]:
    """The structures at ``indices`` of the pool, in the order of ``indices`` (one pass)."""
    wanted = {int(i): k for k, i in enumerate(indices)}
    found: dict[int, Atoms] = {}
    seen = 0
    for chunk in stream(pool, chunk_size):
        for atoms in chunk:
            if seen in wanted:
                found[seen] = atoms
            seen += 1
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise IndexError(f"pool has {seen} structures; indices {missing[:5]} are out of range")
    return [found[int(i)] for i in indices]
