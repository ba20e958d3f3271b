"""The reactive benchmark set, shared by the benchmark scripts.

``benchmarks/data/reactive.xyz.gz`` (GFN2-xTB labels): candidate pool
(``split=pool``), test set (full reaction paths, ``split=test``) and
near-minimum frames (``split=initial``), less the unphysical interpolated
frames (:func:`physical`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "reactive.xyz.gz"
CACHE = Path(tempfile.gettempdir()) / "mlipal_reactive_all.traj"


def reactive_splits(limit: dict | None = None) -> dict[str, list]:
    """``pool``, ``test`` and ``initial`` frames of the reactive set.

    The whole set is cached as .traj (the extxyz parses slowly); with
    ``limit`` (``{"pool": 24, ...}``, for smoke runs) every tenth frame is
    read and each split thinned evenly to its limit.
    """
    from ase.io import read, write

    from ase_mlipal.frames import read_frames

    if limit:
        frames = read_frames(DATA, "::10")  # in memory: each seek of ASE's reader in the gzip would cost seconds
    else:
        if not CACHE.exists():
            write(CACHE, read_frames(DATA))
        frames = read(CACHE, ":")
    frames = [a for a in frames if physical(a)]
    splits = {name: [a for a in frames if a.info.get("split") == name] for name in ("pool", "test", "initial")}
    if limit:
        splits = {name: subset(part, limit[name]) for name, part in splits.items()}
    return splits


def physical(atoms, min_distance: float = 0.6, max_force: float = 50.0) -> bool:
    """False for interpolated frames that pass atoms through each other (xTB forces there reach 4000 eV/A).

    About 4% of the reactive set (51 frames with two atoms closer than
    0.6 A, ~100 more with a force component above 50 eV/A); left in, a
    handful of them decide every MAE.
    """
    distances = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
    return bool(distances.min() >= min_distance and np.abs(atoms.get_forces()).max() <= max_force)


def subset(frames: list, size: int) -> list:
    """``size`` frames spread evenly over ``frames``."""
    return [frames[i] for i in np.linspace(0, len(frames) - 1, min(size, len(frames))).astype(int)]
