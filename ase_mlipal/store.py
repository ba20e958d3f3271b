"""FrameStore: the frames active learning flags, labels and trains on, in an ASE database.

Every frame is one row of an ``ase.db`` database (an SQLite file by
default, any ase.db URL such as PostgreSQL at scale). Its key-value pair
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
    atoms, a fragment the run did not start with); never labelled,

so the command line ``ase db frames.db status=flagged`` lists the frames
waiting for a label.
Rows also record the uncertainty that flagged them, where they came from
(``source``: md / neb / pool, ``step``, ``image``, ``run_id``) and the
hash of the model that flagged them.

Each write is one database transaction (SQLite's atomic commit), so a
crash leaves a row either fully written or absent; a frame already stored
(same atoms and positions, to 1e-6 A) is not stored again. A new SQLite
file gets its tables under ase.db's own write lock (``frames.db.lock``),
so processes that open the same new store at once (a learner and
``mlipal status``) do not both create them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Optional, Union

import ase.db
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db.sqlite import SQLite3Database

STATUSES = ("flagged", "labelled", "verified", "failed", "unphysical")


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
        path_or_url: an ``.db`` file path (created if missing) or any URL
            ``ase.db.connect`` accepts.
    """

    def __init__(self, path_or_url: Union[str, os.PathLike]):
        self.path_or_url = str(path_or_url)
        self.db = _connect(self.path_or_url)

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
        with self.db:
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
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=forces)
        self.db.update(row_id, atoms=atoms, status="labelled", reference=reference)

    def mark_verified(self, row_id: int) -> None:
        """A labelled check the model passed: keep it out of training (status ``verified``)."""
        self.db.update(row_id, status="verified")

    def mark_failed(self, row_id: int, error: str) -> None:
        """Mark a row failed, keeping the (first line of the) error message."""
        message = (error.strip().splitlines() or ["unknown error"])[0][:500]
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

    def _id_of(self, key: str) -> Optional[int]:
        for row in self.db.select(fingerprint=key, limit=1):
            return row.id
        return None


def _connect(path_or_url: str):
    """``ase.db.connect``, creating a new SQLite file's tables under ase.db's write lock.

    ase.db creates the tables of a new file in several statements, not one
    transaction: two processes opening it at once both try, and one fails
    (``table systems already exists``) or reads a half-made schema.
    """
    db = ase.db.connect(path_or_url)
    if isinstance(db, SQLite3Database) and db.lock is not None:
        with db.lock:
            db.count()  # creates the tables if the file has none
    return db


def _frame_of(row) -> Atoms:
    """A row as ``Atoms`` with its key-value pairs and ``store_id`` in ``info`` (and its labels, if any)."""
    atoms = row.toatoms(add_additional_information=False)
    atoms.info.update(row.key_value_pairs)
    atoms.info["store_id"] = row.id
    return atoms


def _plain(value):
    """numpy scalars to Python scalars (ase.db key-value pairs need them)."""
    return value.item() if isinstance(value, np.generic) else value
