"""Batch selection from a candidate pool: MaxDet, LCMD, farthest point, random.

The pool streams in chunks (a list of ``Atoms``, any file ``ase.io.iread``
reads, or an ase.db); each chunk goes through the model once and is
screened (:class:`DiverseScreen`): a bounded set of at most ``shortlist``
candidates is kept, chosen by greedy MaxDet inside each chunk against a
running posterior conditioned on everything kept so far, so that copies of
what is already kept are not kept again. Memory is
``O((shortlist + chunk) k p + p^2)`` whatever the pool size; nothing of size
``N x N`` is ever built. The exact greedy step then runs on the kept set:

* ``maxdet``: greedy maximisation of ``log det(A + sum_S phi phi^T)``, where
  ``A`` is the calculator's precision (``lambda I`` plus its conditioning frames)
  plus the labelled set: repeatedly the candidate of largest posterior
  variance given everything known and the picks so far (rank-1
  Sherman-Morrison updates, O(n p) per pick).
* ``lcmd``: largest-cluster maximum distance (Holzmueller et al., bmdal):
  each candidate belongs to its nearest centre (labelled or picked); take
  the cluster with the largest sum of squared distances and pick its
  farthest member. Distances are Euclidean in feature space.
* ``maxdist``: farthest-point sampling from the labelled set and the picks.
* ``random``: uniform, for baselines (no model call).

A candidate is described by ``k`` rows: its structure feature (``k = 1``)
for the energy kernels; for ``force_ntk`` its force-probe rows and for
``ef_ntk`` its joint energy-force rows, scored against the force posterior.
A multi-row candidate's variance is the sum over its rows (for the force
probes, the Hutchinson estimate of its total force variance) and a pick
adds all its rows; distances use the rows concatenated.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.io import iread

from .calculator import MLIPALCalculator
from .uncertainty.features import per_structure
from .models.model import ModelSpec
from .uncertainty.posterior import FeaturePosterior
from .progress import progress_bar

METHODS = ("maxdet", "lcmd", "maxdist", "random")
Pool = Union[Sequence[Atoms], str, os.PathLike]
DB_SUFFIXES = (".db", ".json")


def stream(pool: Pool, chunk_size: int) -> Iterator[list[Atoms]]:
    """The pool in lists of at most ``chunk_size`` structures, read lazily from files or an ase.db."""
    if isinstance(pool, (str, os.PathLike)):
        path = os.fspath(pool)
        if not Path(path).exists() and "://" not in path:
            raise FileNotFoundError(f"candidate pool {path} does not exist")
        frames: Iterable[Atoms] = _db_rows(path) if is_database(path) else iread(path, ":")
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


def candidate_rows(calc: MLIPALCalculator, images: Sequence[Atoms]) -> np.ndarray:
    """The ``(n, k, p)`` rows of each structure that selection works on (see the module docstring)."""
    feature_map = calc.feature_map
    return np.stack([feature_map.selection_rows(f) for f in per_structure(calc.features(images))])


def selection_posterior(calc: MLIPALCalculator) -> FeaturePosterior:
    """The calculator's posterior that candidate rows are scored against."""
    return calc.atom_posterior if calc.feature_map.selects_on == "forces" else calc.energy_posterior


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
            a_inv = np.linalg.inv(self._a)
            take = _greedy(rows, a_inv, winners)
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


def select(
    pool: Pool,
    n: int,
    calc: Union[MLIPALCalculator, ModelSpec],
    method: str = "maxdet",
    kernel: Optional[str] = None,
    kernel_options: Optional[dict] = None,
    labelled: Optional[Pool] = None,
    shortlist: Optional[int] = 5000,
    chunk_size: int = 256,
    executor: Optional[Executor] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> np.ndarray:
    """Indices (into the pool, in pick order) of ``n`` informative structures.

    Args:
        pool: candidates: a sequence of ``Atoms``, a file ``ase.io.iread``
            reads (extxyz, ...) or an ase.db (``.db`` file or URL).
        n: how many to pick.
        calc: an :class:`MLIPALCalculator` (its kernel, posterior and device
            are used; then ``kernel`` and ``kernel_options`` must not be given)
            or a model (anything :func:`load_model` accepts; a module keeps its
            device), for which a calculator with ``kernel`` (default
            ``"activation"``) and ``kernel_options`` and an empty posterior is made.
        method: ``maxdet``, ``lcmd``, ``maxdist`` or ``random``.
        labelled: structures already labelled (the selection avoids what they cover).
        shortlist: at most this many candidates are kept for the final
            greedy step (at least ``n``); while the pool fits they are all
            of it, beyond it they are chosen diversity-aware as the pool
            streams (:class:`DiverseScreen`; before, this was the
            ``shortlist`` of largest variance). ``None``: all are kept
            (memory then grows with the pool).
        chunk_size: structures per chunk read and featurised at once.
        executor: spreads the feature computation over its workers.
        seed: for ``random``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if method == "random":
        size = sum(len(chunk) for chunk in stream(pool, chunk_size))
        _check_size(n, size)
        return np.random.default_rng(seed).choice(size, n, replace=False)
    if isinstance(calc, MLIPALCalculator):
        if kernel is not None or kernel_options is not None:
            raise ValueError(f"kernel= and kernel_options= choose the kernel of a calculator select makes from a "
                             f"model; this calculator already uses kernel {calc.kernel!r}: make one with the kernel "
                             "you want, or pass the model")
    else:
        device = str(next(calc.parameters()).device) if isinstance(calc, torch.nn.Module) else "cpu"
        calc = MLIPALCalculator(calc, kernel=kernel or "activation", kernel_options=kernel_options, posterior=None,
                                device=device)
    if isinstance(labelled, (list, tuple)) and not labelled:
        labelled = None
    known = None if labelled is None else pool_features(calc, labelled, chunk_size)
    precision = selection_posterior(calc).precision()
    if known is not None:
        flat_known = known.reshape(-1, known.shape[-1])
        precision = precision + flat_known.T @ flat_known
    if shortlist is not None:
        shortlist = max(int(shortlist), n)
    index, rows = screen(calc, pool, precision, shortlist, chunk_size, executor, progress, n=n)
    _check_size(n, len(index))
    if method == "maxdet":
        picks = greedy_maxdet(rows, precision, n)
    else:
        known_flat = np.zeros((0, rows[0].size)) if known is None else known.reshape(len(known), -1)
        picks = greedy_distance(rows.reshape(len(rows), -1), known_flat, n, by_cluster=method == "lcmd")
    return index[picks]


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


def greedy_maxdet(rows: np.ndarray, precision: np.ndarray, n: int) -> np.ndarray:
    """Greedy maximisation of ``log det(precision + sum_picks rows rows^T)``; candidate indices in pick order.

    ``rows`` is ``(m, p)`` (one row per candidate) or ``(m, k, p)``; with
    several rows a candidate's score is the sum of their variances.
    """
    rows = rows[:, None, :] if rows.ndim == 2 else rows
    return _greedy(rows, np.linalg.inv(precision), n)


def _greedy(rows: np.ndarray, a_inv: np.ndarray, n: int) -> np.ndarray:
    """Greedy MaxDet of ``n`` of ``rows`` ``(m, k, p)`` against ``A^-1 = a_inv``, which is updated in place."""
    m, k, p = rows.shape
    flat = rows.reshape(m * k, p)
    variance = np.einsum("ij,ij->i", flat @ a_inv, flat)
    picks: list[int] = []
    for _ in range(n):
        score = variance.reshape(m, k).sum(axis=1)
        score[picks] = -np.inf
        best = int(np.argmax(score))
        picks.append(best)
        for row in rows[best]:
            u = a_inv @ row
            denominator = 1.0 + row @ u
            variance -= (flat @ u) ** 2 / denominator
            a_inv -= np.outer(u, u) / denominator
    return np.array(picks, dtype=np.int64)


def _min_sq_distance(phi: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of each row to its nearest centre and that centre's index (chunked)."""
    best, owner = np.full(len(phi), np.inf), np.full(len(phi), -1)
    norms = np.einsum("ij,ij->i", phi, phi)
    for start in range(0, len(centres), 256):
        block = centres[start:start + 256]
        d = norms[:, None] + np.einsum("ij,ij->i", block, block)[None, :] - 2 * phi @ block.T
        k = np.argmin(d, axis=1)
        closer = d[np.arange(len(phi)), k] < best
        best[closer], owner[closer] = d[closer, k[closer]], start + k[closer]
    return np.maximum(best, 0.0), owner


def greedy_distance(phi: np.ndarray, known: np.ndarray, n: int, by_cluster: bool) -> np.ndarray:
    """Farthest point (``by_cluster=False``) or LCMD picks; row indices in pick order.

    Centres are the ``known`` rows and the picks; without known rows the
    first pick is the row farthest from the origin.
    """
    if len(known):
        distance, owner = _min_sq_distance(phi, known)
    else:  # no centre yet: distances to the origin, one cluster
        distance, owner = np.einsum("ij,ij->i", phi, phi), np.full(len(phi), -1)
    picks: list[int] = []
    for _ in range(n):
        distance[picks] = -np.inf
        if by_cluster:
            _, inverse = np.unique(owner, return_inverse=True)
            sizes = np.bincount(inverse, weights=np.where(np.isfinite(distance), distance, 0.0))
            in_largest = inverse == int(np.argmax(sizes))
            k = int(np.argmax(np.where(in_largest, distance, -np.inf)))
        else:
            k = int(np.argmax(distance))
        picks.append(k)
        d_new = np.einsum("ij,ij->i", phi - phi[k], phi - phi[k])
        closer = d_new < distance
        distance[closer], owner[closer] = d_new[closer], len(known) + len(picks) - 1
    return np.array(picks)


def _check_size(n: int, size: int) -> None:
    if size == 0:
        raise ValueError("the candidate pool is empty")
    if n > size:
        raise ValueError(f"cannot pick {n} of a pool of {size}")
