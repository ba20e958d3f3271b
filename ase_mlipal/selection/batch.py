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

import warnings
from concurrent.futures import Executor
from typing import Optional, Union

import numpy as np
import torch

from ..calculator import MLIPALCalculator
from ..models.model import ModelSpec
from .greedy import greedy_distance, greedy_maxdet
from .pools import Pool, stream
from .screening import pool_features, screen, selection_posterior

METHODS = ("maxdet", "lcmd", "maxdist", "random")


def select(
    calc: Union[MLIPALCalculator, ModelSpec],
    pool: Pool,
    n: int,
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

    The model comes first and the data after it, as in :func:`~ase_mlipal.finetune`
    (``select(pool, n, calc)``, the order before 0.2, still works and warns).

    Args:
        calc: an :class:`MLIPALCalculator` (its kernel, posterior and device
            are used; then ``kernel`` and ``kernel_options`` must not be given)
            or a model (anything :func:`load_model` accepts; a module keeps its
            device), for which a calculator with ``kernel`` (default
            ``"activation"``) and ``kernel_options`` and an empty posterior is made.
        pool: candidates: a sequence of ``Atoms``, a file ``ase.io.iread``
            reads (extxyz, ...) or an ase.db (``.db`` file or URL).
        n: how many to pick.
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
    if isinstance(pool, (int, np.integer)) and not isinstance(pool, bool):  # select(pool, n, calc), before 0.2
        warnings.warn("select(pool, n, calc) is deprecated and will be removed in the next release; "
                      "use select(calc, pool, n): the model first, as in finetune", DeprecationWarning, stacklevel=2)
        calc, pool, n = n, calc, pool
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
                                device=device, distance_aware=False)  # selection reads the posterior alone
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


def _check_size(n: int, size: int) -> None:
    if size == 0:
        raise ValueError("the candidate pool is empty")
    if n > size:
        raise ValueError(f"cannot pick {n} of a pool of {size}")
