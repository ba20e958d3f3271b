"""Candidate rows of a pool through the model, and the one-pass diversity-aware screen."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Executor
from typing import Iterator, Optional, Sequence

import numpy as np
from ase import Atoms

from ..calculator import MLIPALCalculator
from ..progress import progress_bar
from ..uncertainty.features import per_structure
from ..uncertainty.posterior import FeaturePosterior
from ..uncertainty.uncertainty_model import UncertaintyModel
from .greedy import greedy_maxdet
from .pools import Pool, stream


def candidate_rows(calc: MLIPALCalculator, images: Sequence[Atoms]) -> np.ndarray:
    """The ``(n, k, p)`` rows of each structure that selection works on (see the module docstring)."""
    feature_map = calc.feature_map
    return np.stack([feature_map.selection_rows(f) for f in per_structure(calc.features(images))])


def selection_posterior(calc: MLIPALCalculator, state: Optional[UncertaintyModel] = None) -> FeaturePosterior:
    """The posterior that candidate rows are scored against: the calculator's, or that of ``state``
    (e.g. a :meth:`~ase_mlipal.uncertainty.uncertainty_model.UncertaintyModel.snapshot` of it)."""
    state = calc.uncertainty_model if state is None else state
    return state.atom_posterior if state.feature_map.selects_on == "forces" else state.energy_posterior


def pool_rows(calc: MLIPALCalculator, pool: Pool, chunk_size: int = 256, executor: Optional[Executor] = None,
              progress: Optional[bool] = None) -> Iterator[np.ndarray]:
    """Candidate rows of the pool, chunk by chunk, in pool order.

    With an ``executor`` (a process pool, a Dask client's executor, ...)
    chunks are computed by its workers, a few at a time, so memory stays
    bounded; the calculator is sent to the workers with each chunk.
    """
    with progress_bar(progress=progress, desc="pool features", unit="structures") as bar:
        if executor is None:
            for chunk in stream(pool, chunk_size):
                yield candidate_rows(calc, chunk)
                bar.update(len(chunk))
            return
        pending: deque = deque()
        for chunk in stream(pool, chunk_size):
            pending.append((len(chunk), executor.submit(candidate_rows, calc, chunk)))
            if len(pending) >= 4:
                size, future = pending.popleft()
                yield future.result()
                bar.update(size)
        while pending:
            size, future = pending.popleft()
            yield future.result()
            bar.update(size)


def pool_features(calc: MLIPALCalculator, pool: Pool, chunk_size: int = 256, progress: Optional[bool] = None) -> np.ndarray:
    """All candidate rows of a (small) pool, ``(n, k, p)``; :func:`select` never holds them all."""
    rows = list(pool_rows(calc, pool, chunk_size, progress=progress))
    if not rows:
        raise ValueError("the candidate pool is empty")
    return np.concatenate(rows)


def screen(calc: MLIPALCalculator, pool: Pool, precision: np.ndarray, shortlist: Optional[int],
           chunk_size: int = 256, executor: Optional[Executor] = None,
           progress: Optional[bool] = None, n: int = 1,
           per_chunk: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Stream the pool once; keep at most ``shortlist`` diverse candidates (see :class:`DiverseScreen`).

    Returns their pool indices (ascending) and rows ``(m, k, p)``. ``n`` is
    how many the final greedy step will pick (the kept set never falls
    below it). With ``shortlist=None`` every candidate is kept.
    """
    kept = DiverseScreen(precision, shortlist, n, per_chunk)
    for rows in pool_rows(calc, pool, chunk_size, executor, progress):
        kept.add(rows)
    return kept.result()


class DiverseScreen:
    """One pass over a stream of candidate rows keeping a bounded, diverse candidate set.

    The chunked shortlisting of "Force-Aware Neural Tangent Kernels for
    Scalable and Robust Active Learning of MLIPs" (arXiv:2605.13788) keeps
    the candidates of largest posterior variance; on a pool of near
    duplicates that set is many copies of the same few structures (on 20k
    noisy replicas of the reactive pool, MaxDet on it closed 65% of the
    log-det gap between random picks and exact greedy). Here the posterior
    the chunks are scored against is conditioned on what is kept:

    1. Until the kept set first exceeds ``capacity`` every candidate is
       kept (so with ``capacity`` at least the pool size the result is the
       whole pool and the final step is exact greedy).
    2. Afterwards each chunk contributes its ``per_chunk`` greedy MaxDet
       winners, picked against the running posterior ``A + sum_kept phi
       phi^T`` (rank-1 Sherman-Morrison updates as they are picked), so a
       copy of something kept has a small variance and is not taken.
    3. When the kept set exceeds ``capacity`` it is reduced to its first
       ``max(n, capacity // 4)`` greedy MaxDet picks against ``A`` alone
       (the final objective; the first ``n`` of them are what the final
       step would pick now), and the running posterior is rebuilt from them.

    Greedy MaxDet over chunk winners is a composable core-set for
    determinant maximisation (Mahabadi, Indyk, Oveis Gharan, Rezaei,
    "Composable Core-sets for Determinant Maximization: A Simple
    Near-Optimal Algorithm", arXiv:1907.03197); conditioning on the kept
    set is what removes the replicas across chunks. Chosen by measurement
    on the 20k replicas (activation features, 100 picks, chunks of 256,
    capacity 5000; fraction of the random-to-exact log-det gap closed):
    greedy per chunk against ``A`` alone, reduced to half, 0.999 with 100
    winners per chunk, 0.997 with 30, 0.975 with 10 (but every replica of
    a good structure is a winner again in its chunk, so the kept set
    fills and is reduced over and over); conditioned on the kept set, 30
    winners 0.997, 10 winners 0.993; this class (conditioned, everything
    kept until full, ``per_chunk = min(n, c // 8)``, 32 here, reduced to a
    quarter) 1.001, with 16 winners 1.003, with capacity 1000 1.004: the
    screen's picks reach the exact greedy log det (sometimes slightly
    beyond it, greedy not being optimal). Reducing to a quarter rather
    than a half makes the amortised cost of the reductions three times
    smaller at no measured loss. The screening costs about 0.8 s of the
    28 s (mostly the model) at 20k.

    Cost per chunk of ``c`` candidates: ``O(c k p^2 + per_chunk (c k p +
    p^2))``; a reduction ``O(capacity^2 k p / 4)`` per ``3 capacity / 4``
    winners, so time is linear in the pool size and memory
    ``O(capacity k p + p^2)``, flat.
    """

    def __init__(self, precision: np.ndarray, capacity: Optional[int], n: int = 1,
                 per_chunk: Optional[int] = None):
        self.precision = np.asarray(precision, dtype=float)
        self.capacity = None if capacity is None else max(int(capacity), int(n))
        self.n = int(n)
        self.per_chunk = per_chunk
        self.index = np.zeros(0, dtype=np.int64)
        self.rows: Optional[np.ndarray] = None
        self.seen = 0
        self.full = False  # set at the first reduction: from then on chunks are screened
        self.reductions = 0
        self._a = self.precision.copy()  # A + sum over kept rows, kept exactly

    def add(self, rows: np.ndarray) -> None:
        """Screen one chunk of candidate rows ``(c, k, p)`` (in pool order)."""
        rows = rows[:, None, :] if rows.ndim == 2 else rows
        index = np.arange(self.seen, self.seen + len(rows))
        self.seen += len(rows)
        if self.capacity is not None and self.full:
            winners = min(len(rows), self.per_chunk or max(1, min(self.n, len(rows) // 8)))
            take = greedy_maxdet(rows, self._a, winners)
            index, rows = index[take], rows[take]
        flat = rows.reshape(-1, rows.shape[-1])
        self._a += flat.T @ flat
        self.index = np.concatenate([self.index, index])
        self.rows = rows if self.rows is None else np.concatenate([self.rows, rows])
        if self.capacity is not None and len(self.index) > self.capacity:
            self._reduce(max(self.n, self.capacity // 4))

    def _reduce(self, size: int) -> None:
        keep = greedy_maxdet(self.rows, self.precision, size)
        self.index, self.rows = self.index[keep], self.rows[keep]
        flat = self.rows.reshape(-1, self.rows.shape[-1])
        self._a = self.precision + flat.T @ flat
        self.full = True
        self.reductions += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Pool indices of the kept candidates (ascending) and their rows ``(m, k, p)``."""
        if self.rows is None:
            raise ValueError("the candidate pool is empty")
        order = np.argsort(self.index, kind="stable")
        return self.index[order], self.rows[order]


def score_pool(calc: MLIPALCalculator, pool: Pool, chunk_size: int = 256,
               progress: Optional[bool] = None) -> Iterator[dict]:
    """Per-structure predictions and uncertainties of the pool, in pool order.

    Yields ``{"index", "formula", "n_atoms", "energy", "energy_uncertainty",
    "uncertainty"}`` per structure (no forces are computed; ``uncertainty``
    is the largest per-atom force standard deviation, as in the calculator).
    """
    seen = 0
    with progress_bar(progress=progress, desc="score", unit="structures") as bar:
        for chunk in stream(pool, chunk_size):
            energies, batches = calc.predict(chunk)
            for atoms, energy, features in zip(chunk, energies, per_structure(batches)):
                result = calc.uncertainty_from(features)
                yield {"index": seen, "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms),
                       "energy": float(energy), "energy_uncertainty": result["energy_uncertainty"],
                       "uncertainty": result["uncertainty"]}
                seen += 1
            bar.update(len(chunk))
