"""Batch selection from a candidate pool: MaxDet, LCMD, farthest point, random.

The pool streams in chunks (a list of ``Atoms``, or any file ``ase.io.iread``
reads, or an ase.db); each chunk goes through the model once and only its
structure features ``phi`` (``n x p``) are kept. Selection then works on
that ``n x p`` matrix and ``p x p`` matrices; nothing of size ``n x n`` is
ever built.

* ``maxdet``: greedy maximisation of ``log det(A + sum_S phi phi^T)``, where
  ``A`` is the calculator's structure-level precision (``lambda I`` plus
  its references) plus the labelled set: repeatedly the candidate of
  largest posterior variance given everything known and the picks so far
  (rank-1 Sherman-Morrison updates, O(n p) per pick).
* ``lcmd``: largest-cluster maximum distance (Holzmueller et al., bmdal):
  each candidate belongs to its nearest centre (labelled or picked); take
  the cluster with the largest sum of squared distances and pick its
  farthest member. Distances are Euclidean in feature space.
* ``maxdist``: farthest-point sampling from the labelled set and the picks.
* ``random``: uniform, for baselines.

``shortlist`` keeps only the candidates of largest posterior variance
before the exact greedy step (the chunked screening of seed 001).
"""

from __future__ import annotations

import os
from itertools import islice
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.io import iread

from .calculator import MLIPALCalculator
from .features import per_structure
from .progress import progress_bar

METHODS = ("maxdet", "lcmd", "maxdist", "random")
Pool = Union[Sequence[Atoms], str, os.PathLike]


def stream(pool: Pool, chunk_size: int) -> Iterator[list[Atoms]]:
    """The pool in lists of at most ``chunk_size`` structures, read lazily from files."""
    frames: Iterable[Atoms] = iread(os.fspath(pool), ":") if isinstance(pool, (str, os.PathLike)) else pool
    frames = iter(frames)
    while chunk := list(islice(frames, chunk_size)):
        yield chunk


def pool_features(calc: MLIPALCalculator, pool: Pool, chunk_size: int = 1024,
                  progress: Optional[bool] = None) -> np.ndarray:
    """Structure features ``phi`` of every pool structure, ``(n, p)``, one chunk at a time."""
    rows = []
    with progress_bar(progress=progress, desc="pool features", unit="structures") as bar:
        for chunk in stream(pool, chunk_size):
            rows.extend(f.structure[0] for f in per_structure(calc.features(chunk)))
            bar.update(len(chunk))
    if not rows:
        raise ValueError("the candidate pool is empty")
    return np.asarray(rows)


def select(
    pool: Pool,
    n: int,
    calc: MLIPALCalculator,
    method: str = "maxdet",
    labelled: Optional[Sequence[Atoms]] = None,
    shortlist: Optional[int] = None,
    chunk_size: int = 1024,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> np.ndarray:
    """Indices (into the pool, in pick order) of ``n`` informative structures.

    Args:
        pool: candidates: a sequence of ``Atoms`` or a file path ``ase.io.iread`` reads.
        n: how many to pick.
        calc: the calculator whose kernel (feature map) and regularisation are used.
        method: one of ``maxdet``, ``lcmd``, ``maxdist``, ``random``.
        labelled: structures already labelled (the selection avoids what they cover).
        shortlist: keep only this many candidates of largest variance first.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    phi = pool_features(calc, pool, chunk_size, progress)
    if not 0 < n <= len(phi):
        raise ValueError(f"cannot pick {n} of a pool of {len(phi)}")
    if method == "random":
        return np.random.default_rng(seed).choice(len(phi), n, replace=False)
    known = pool_features(calc, labelled, chunk_size, progress) if labelled else np.zeros((0, phi.shape[1]))
    precision = calc.energy_posterior.precision() + known.T @ known
    candidates = np.arange(len(phi))
    if shortlist is not None and shortlist < len(phi):
        variance = np.einsum("ij,ji->i", phi, np.linalg.solve(precision, phi.T))
        candidates = np.sort(np.argsort(-variance)[:max(shortlist, n)])
    if method == "maxdet":
        picks = greedy_maxdet(phi[candidates], precision, n)
    else:
        picks = greedy_distance(phi[candidates], known, n, by_cluster=method == "lcmd")
    return candidates[picks]


def greedy_maxdet(phi: np.ndarray, precision: np.ndarray, n: int) -> np.ndarray:
    """Greedy maximisation of ``log det(precision + sum_picks phi phi^T)``; row indices in pick order."""
    a_inv = np.linalg.inv(precision)
    variance = np.einsum("ij,jk,ik->i", phi, a_inv, phi)
    picks = []
    for _ in range(n):
        variance[picks] = -np.inf
        k = int(np.argmax(variance))
        picks.append(k)
        u = a_inv @ phi[k]
        c = phi @ u
        denominator = 1.0 + c[k]
        variance -= c**2 / denominator
        a_inv -= np.outer(u, u) / denominator
    return np.array(picks)


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
