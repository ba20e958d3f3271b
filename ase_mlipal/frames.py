"""Frames: labelled structures (reading them, reading and attaching their labels) and thermal copies."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import iread, read


def read_labels(
    atoms: Atoms,
    energy_key: str = "energy",
    forces_key: str = "forces",
) -> tuple[float, np.ndarray]:
    """Reference energy (eV) and forces (eV/A) of a labelled frame.

    Looks first at a stored single-point result (``atoms.calc``, as written by
    ``ase.io.read`` of an extxyz or ase.db file), then at
    ``atoms.info[energy_key]`` and ``atoms.arrays[forces_key]``. A live
    calculator is never run.

    Raises:
        ValueError: the frame carries no reference energy or forces.
    """
    energy, forces = _from_singlepoint(atoms)
    if energy is None:
        energy = atoms.info.get(energy_key)
    if forces is None:
        forces = atoms.arrays.get(forces_key)
    if energy is None or forces is None:
        missing = [name for name, value in (("energy", energy), ("forces", forces)) if value is None]
        live = ("" if atoms.calc is None or isinstance(atoms.calc, SinglePointCalculator) else
                f" atoms.calc is a live {type(atoms.calc).__name__}, whose results are not read (a live "
                "calculator may have moved on to another structure).")
        raise ValueError(
            f"Frame {atoms.get_chemical_formula()} has no reference {' or '.join(missing)}.{live} "
            f"Store labels with ase_mlipal.with_labels(atoms, energy, forces) (a SinglePointCalculator on "
            f"atoms.calc), or in atoms.info[{energy_key!r}] and atoms.arrays[{forces_key!r}]."
        )
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"reference forces have shape {forces.shape}, expected {(len(atoms), 3)}")
    return float(energy), forces


def with_labels(atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
    """A copy of ``atoms`` carrying ``energy`` (eV) and ``forces`` (eV/A, ``(N, 3)``), as :func:`read_labels` reads them."""
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=float(energy), forces=np.asarray(forces, dtype=float))
    return labelled


def _from_singlepoint(atoms: Atoms) -> tuple[Optional[float], Optional[np.ndarray]]:
    calc = atoms.calc
    if not isinstance(calc, SinglePointCalculator):
        return None, None
    return calc.results.get("energy"), calc.results.get("forces")


def read_frames(path: Union[str, os.PathLike], index: str = ":") -> list[Atoms]:
    """All frames of an extxyz (optionally ``.gz``) or any ASE-readable file.

    A gzipped extxyz is decompressed in memory first: ASE's reader seeks
    backwards, which on a gzip stream re-reads the file from the start each
    time (minutes instead of seconds for 10,000 frames).
    """
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as handle:
            return read(io.StringIO(handle.read()), index=index, format="extxyz")
    return read(path, index=index)


def iread_frames(path: Union[str, os.PathLike]) -> Iterator[Atoms]:
    """The frames of an extxyz (optionally ``.gz``) or any ASE-readable file, one at a time.

    A gzipped extxyz (``.xyz.gz``, ``.extxyz.gz``) is streamed frame by frame, never seeking: ASE's
    ``iread`` seeks, and each seek re-reads a gzip stream from the start
    (400 frames of a 4,000-frame file: 25 s; a 100k-frame pool: hours).

    Raises:
        ValueError: a frame of the gzipped file is cut short or malformed (its number is named).
    """
    path = Path(path)
    if path.suffixes[-2:] not in ([".xyz", ".gz"], [".extxyz", ".gz"]):  # other formats, gzipped or not: ASE's
        yield from iread(path, ":")
        return
    with gzip.open(path, "rt") as handle:
        for number, text in enumerate(_extxyz_blocks(handle)):
            try:
                atoms = read(io.StringIO(text), format="extxyz")
            except Exception as error:  # ASE raises many kinds for a malformed frame
                raise ValueError(f"{path}: frame {number} cannot be read ({error}); the file is cut short or not "
                                 "extxyz") from None
            yield atoms


def _extxyz_blocks(handle: io.TextIOBase) -> Iterator[str]:
    """The text of each frame of an extxyz stream: an atom count, a comment line, that many atom lines."""
    for first in handle:
        if not first.strip():
            continue
        try:
            count = int(first)
        except ValueError:
            count = 0  # not a count: read() names the frame as malformed
        yield first + "".join(handle.readline() for _ in range(count + 1))


def rattled(atoms: Atoms, n: int, stdev: float = 0.05, seed: int = 0) -> list[Atoms]:
    """``n`` copies of ``atoms`` with Gaussian noise of ``stdev`` (A) on every coordinate, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=stdev, size=copy.positions.shape)
        out.append(copy)
    return out
