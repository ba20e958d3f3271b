"""FrameStore: the frames active learning flags, labels and trains on, in an ASE database.

Every frame is one row of an ``ase.db`` database (an SQLite file by
default, a PostgreSQL URL at scale). Its key-value pair
``status`` is one of

``flagged``
    waiting for a reference label;
``labelled``
    carries reference energy and forces; the training set of the next fine-tune;
``verified``
    labelled as a check of the model (a climbing image, an MD audit frame)
    that the model passed: kept out of training, so it stays a fair test;
``failed``
    the reference failed (the error is kept);
``unphysical``
    stopped by a :class:`~ase_mlipal.guards.PhysicalGuard` (overlapping
    atoms, a fragment the run did not start with): never labelled; or a
    band image whose energy ran away on the model and the reference
    confirmed it (labelled once, to ask, and never trained on);
``skipped``
    flagged, but left unlabelled by a learner over its label budget
    (``max_labels``; the reason is kept),

so the command line ``ase db frames.db status=flagged`` lists the frames
waiting for a label.
Rows also record the uncertainty that flagged them, where they came from
(``source``: md / neb / pool, ``step``, ``image``, ``run_id``) and the
hash of the model that flagged them.

Each write is one database transaction, so a crash leaves a row either
fully written or absent, and a frame already stored (same atoms and
positions, to 1e-6 A) is not stored again, also when several processes
write at once. No lock file is used (ase.db's ``frames.db.lock`` outlives
a killed writer and blocks every later one): SQLite's own locking, which
the operating system releases when a process dies, serialises writers
(``BEGIN IMMEDIATE``), and PostgreSQL a transaction-scoped advisory lock,
which the server drops with a dead client's connection. Every wait is
bounded (``timeout`` seconds) and ends in :class:`StoreBusy`, which names
the store. SQLite's locks need a local file system (not NFS); for many
learners on several machines, use a PostgreSQL URL.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

import ase.db
import numpy as np
from ase import Atoms

from ..frames import with_labels

STATUSES = ("flagged", "labelled", "verified", "failed", "unphysical", "skipped")
_ADVISORY_LOCK = 0x6D6C6970616C  # "mlipal": the key of the store's PostgreSQL write lock


class StoreBusy(TimeoutError):
    """Another process held the store's write lock for longer than the store's ``timeout``."""


def fingerprint(atoms: Atoms) -> str:
    """Identity of a frame: numbers, positions (rounded to 1e-6 A), cell and pbc."""
    digest = hashlib.sha1()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.round(atoms.positions, 6).tobytes())
    digest.update(np.round(atoms.cell.array, 6).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return digest.hexdigest()


class FrameStore:
    """Frames flagged for labelling, their labels and their failures.

    Args:
        path_or_url: an SQLite ``.db`` file path (created if missing, in a
            folder that exists) or a PostgreSQL URL, e.g.
            ``postgresql://user:password@host:5432/frames`` (needs
            ``pip install ase-db-backends psycopg2-binary``). ase.db's other
            backends (``.json``, ``.aselmdb``, MySQL) have no transactions
            the store can lock, so they are refused (``ValueError``).
        timeout: seconds to wait for another process's write (and for a
            PostgreSQL server to answer) before :class:`StoreBusy`.
    """

    def __init__(self, path_or_url: Union[str, os.PathLike], timeout: float = 60.0):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.path_or_url = str(path_or_url)
        self.timeout = float(timeout)
        _check_location(self.path_or_url)
        self.db = _connect(self.path_or_url, self.timeout)
        try:
            with self._transaction():
                self.db.count()  # creates the tables of a new store, one process at a time
        except sqlite3.DatabaseError as error:  # e.g. "file is not a database"; the file is left as it is
            raise ValueError(f"cannot open the frame store {self.path_or_url}: {error}. Is it an SQLite "
                             "database (an ase.db .db file) you may write? Give another .db path") from error

    def add_flagged(
        self,
        atoms: Atoms,
        source: str,
        uncertainty: Optional[float] = None,
        step: Optional[int] = None,
        image: Optional[int] = None,
        run_id: Optional[str] = None,
        model_hash: Optional[str] = None,
        per_atom: Optional[dict[str, np.ndarray]] = None,
    ) -> tuple[int, bool]:
        """Store ``atoms`` as flagged; returns ``(row id, newly added)``.

        A frame already in the store (any status) is not added again: its
        existing id is returned with ``False``. ``per_atom`` arrays (e.g.
        force uncertainties) go into the row's data.
        """
        return self._add(atoms, "flagged", source, uncertainty=uncertainty, step=step, image=image, run_id=run_id,
                         model_hash=model_hash, per_atom=per_atom)

    def add_unphysical(self, atoms: Atoms, source: str, reason: str, step: Optional[int] = None,
                       image: Optional[int] = None, run_id: Optional[str] = None) -> tuple[int, bool]:
        """Store a frame a physical guard stopped, with its reason (never labelled); ``(row id, newly added)``."""
        return self._add(atoms, "unphysical", source, step=step, image=image, run_id=run_id, error=reason[:500],
                         allow_nonfinite=True)

    def _add(self, atoms: Atoms, status: str, source: str, per_atom: Optional[dict] = None,
             allow_nonfinite: bool = False, **optional) -> tuple[int, bool]:
        if not allow_nonfinite and not np.all(np.isfinite(atoms.positions)):
            bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1)).tolist()
            raise ValueError(f"frame from {source} (step {optional.get('step')}, image {optional.get('image')}) "
                             f"has non-finite positions for atoms {bad}; not stored. The dynamics blew up: "
                             "check the timestep and the model on this structure")
        plain = Atoms(numbers=atoms.numbers, positions=np.nan_to_num(atoms.positions, nan=0.0), cell=atoms.cell,
                      pbc=atoms.pbc)
        key = fingerprint(plain)
        with self._transaction():
            existing = self._id_of(key)
            if existing is not None:
                return existing, False
            pairs = {"status": status, "source": source, "fingerprint": key}
            pairs.update({k: _plain(v) for k, v in optional.items() if v is not None})
            data = {k: np.asarray(v) for k, v in (per_atom or {}).items()}
            return self.db.write(plain, key_value_pairs=pairs, data=data or None), True

    def mark_labelled(self, row_id: int, energy: float, forces: np.ndarray, reference: str = "") -> None:
        """Attach the reference energy (eV) and forces (eV/A) to a row and mark it labelled."""
        atoms = self.db.get_atoms(id=row_id)
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)) or not np.isfinite(energy):
            raise ValueError(f"row {row_id}: labels must be finite, forces of shape {(len(atoms), 3)}")
        atoms = with_labels(atoms, energy, forces)
        with self._transaction():
            self.db.update(row_id, atoms=atoms, status="labelled", reference=reference)

    def mark_verified(self, row_id: int) -> None:
        """A labelled check the model passed: keep it out of training (status ``verified``)."""
        with self._transaction():
            self.db.update(row_id, status="verified")

    def mark_labelled_again(self, row_id: int) -> None:
        """A verified check a later judgement failed (status back to ``labelled``): trained on next."""
        with self._transaction():
            self.db.update(row_id, status="labelled")

    def mark_unphysical(self, row_id: int, reason: str) -> None:
        """A labelled frame the reference confirmed as unphysical (e.g. a runaway energy): never trained on."""
        with self._transaction():
            self.db.update(row_id, status="unphysical", error=reason[:500])

    def mark_skipped(self, row_ids: Sequence[int], reason: str) -> None:
        """Flagged frames a learner chose not to label (e.g. over its label budget): never labelled."""
        with self._transaction():
            for row_id in row_ids:
                self.db.update(row_id, status="skipped", error=reason[:500])

    def mark_flagged_again(self, row_ids: Sequence[int]) -> None:
        """Skipped frames a learner needs after all (a check landed on one): flagged, to be labelled."""
        with self._transaction():
            for row_id in row_ids:
                if self.db.get(id=row_id).status == "skipped":
                    self.db.update(row_id, status="flagged", error="")

    def mark_failed(self, row_id: int, error: str) -> None:
        """Mark a row failed, keeping the (first line of the) error message."""
        message = (error.strip().splitlines() or ["unknown error"])[0][:500]
        with self._transaction():
            self.db.update(row_id, status="failed", error=message)

    def rows(self, status: Optional[str] = None) -> Iterator:
        """ase.db rows, all or of one status, in insertion order."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        return self.db.select(status=status) if status else self.db.select()

    def frames(self, status: str) -> list[Atoms]:
        """The frames of one status as ``Atoms`` (labelled ones carry their labels)."""
        return [_frame_of(row) for row in self.rows(status)]

    def frame(self, row_id: int) -> Atoms:
        """The frame of one row, as :meth:`frames` gives it."""
        return _frame_of(self.db.get(id=row_id))

    def counts(self) -> dict[str, int]:
        """Number of rows of each status."""
        return {status: self.db.count(status=status) for status in STATUSES}

    def __len__(self) -> int:
        return self.db.count()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction holding the store's write lock: committed whole, or rolled back whole.

        ase.db's ``with db:`` does the same, but ase-db-backends' PostgreSQL
        connection cannot roll back, so the connection is handled here.
        """
        db = self.db
        db.change_count = 0
        db.connection = db._connect()
        raw = getattr(db.connection, "con", db.connection)  # psycopg2's connection under ase's wrapper
        try:
            cursor = raw.cursor()
            if _is_postgresql(db):
                cursor.execute(f"SET LOCAL lock_timeout = {int(self.timeout * 1000)}")
                cursor.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
            else:
                cursor.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                cursor.execute("BEGIN IMMEDIATE")  # the write lock, before reading what to write
            yield
            raw.commit()
        except Exception as error:
            raw.rollback()
            if _is_lock_timeout(error):
                raise StoreBusy(
                    f"the frame store {self.path_or_url} was locked by another writer for more than "
                    f"{self.timeout:g} s. Is another learner or labeller writing a long transaction? "
                    "Retry, or open the store with a larger timeout=") from error
            raise
        finally:
            raw.close()
            db.connection = None

    def _id_of(self, key: str) -> Optional[int]:
        for row in self.db.select(fingerprint=key, limit=1):
            return row.id
        return None


def _check_location(path_or_url: str) -> None:
    """Refuse, before anything is created, a location the store cannot use (naming it and what to use)."""
    if "://" in path_or_url:
        if not path_or_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"frame store {path_or_url}: only PostgreSQL URLs (postgresql://...) and SQLite "
                             ".db files are supported, as the store locks through their transactions")
        return
    path = Path(path_or_url)
    if path.is_dir():
        raise ValueError(f"frame store {path} is a folder: give a .db file, e.g. {path / 'frames.db'}")
    if path.suffix != ".db":
        raise ValueError(f"frame store {path}: give an SQLite file ending .db (e.g. {path.with_suffix('.db')}) "
                         "or a postgresql:// URL; ase.db's .json and .aselmdb files have no transactions the "
                         "store can lock")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"frame store {path}: its folder {path.parent} does not exist; create it first")


def _connect(path_or_url: str, timeout: float):
    """``ase.db.connect`` without ase.db's lock file, its waits bounded by ``timeout`` seconds."""
    if path_or_url.startswith(("postgresql://", "postgres://")):
        if "connect_timeout" not in parse_qs(urlsplit(path_or_url).query):
            path_or_url += ("&" if "?" in path_or_url else "?") + f"connect_timeout={max(1, round(timeout))}"
        try:
            return ase.db.connect(path_or_url, use_lock_file=False)
        except ImportError as error:
            raise ImportError("a PostgreSQL frame store needs `pip install ase-db-backends psycopg2-binary`") from error
    return ase.db.connect(path_or_url, use_lock_file=False)


def _is_postgresql(db) -> bool:
    return getattr(db, "type", None) == "postgresql"


def _is_lock_timeout(error: Exception) -> bool:
    """SQLite's "database is locked" after its busy timeout, or PostgreSQL's lock_timeout."""
    if isinstance(error, sqlite3.OperationalError):
        return "locked" in str(error) or "busy" in str(error)
    return getattr(error, "pgcode", None) == "55P03"  # lock_not_available


def _frame_of(row) -> Atoms:
    """A row as ``Atoms`` with its key-value pairs and ``store_id`` in ``info`` (and its labels, if any)."""
    atoms = row.toatoms(add_additional_information=False)
    atoms.info.update(row.key_value_pairs)
    atoms.info["store_id"] = row.id
    return atoms


def _plain(value):
    """numpy scalars to Python scalars (ase.db key-value pairs need them)."""
    return value.item() if isinstance(value, np.generic) else value
