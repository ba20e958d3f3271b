"""Greedy batch selection on feature rows: MaxDet (rank-1 updates) and farthest-point / LCMD."""

from __future__ import annotations

import numpy as np


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
