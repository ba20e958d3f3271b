"""Feature-space Gaussian posterior with a Cholesky factor updated in place.

With reference features ``phi(x)`` for x in R and regulariser ``lambda``::

    A = lambda I + sum_{x in R} phi(x) phi(x)^T         (p x p)
    sigma^2(x) = s^2 phi(x)^T A^{-1} phi(x)

This is the posterior variance of a Bayesian linear model on the features,
equivalently of a Gaussian process with kernel ``k(x, x') = phi(x).phi(x')``
(see :meth:`FeaturePosterior.variance`). Memory is ``O(p^2)`` whatever the
number of conditioning frames; nothing of size N x N is ever built.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg.lapack import dtpqrt

from .calibration import Recalibration


class FeaturePosterior:
    """Posterior variance over ``p``-dimensional features, updated incrementally.

    Args:
        dim: feature dimension ``p``.
        regularization: ``lambda``, the prior precision (in squared feature
            units). Smaller values trust the conditioning frames more.
        scale: ``s^2``, the variance scale; 1 gives raw (unit-free)
            variances. Calibration replaces it by a fitted
            :class:`~ase_mlipal.uncertainty.calibration.Recalibration` (``calibration``),
            which puts them in physical units.
        chunk_size: rows processed at once by :meth:`add` and
            :meth:`variance` (memory ``O(chunk_size * p + p^2)``).

    Attributes:
        version: counts the changes made through :meth:`add` and the
            ``calibration``/``scale`` setters (a cache of its variances built
            at another version is stale).
    """

    def __init__(self, dim: int, regularization: float = 1e-2, scale: float = 1.0, chunk_size: int = 4096):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not regularization > 0:
            raise ValueError(f"regularization must be positive, got {regularization}")
        self.dim = int(dim)
        self.regularization = float(regularization)
        self.version = 0
        self.calibration = Recalibration(scale=float(scale))
        self.chunk_size = int(chunk_size)
        self.n_added = 0
        # Upper-triangular R with A = R^T R.
        self.factor = np.sqrt(self.regularization) * np.eye(self.dim)

    def add(self, features: np.ndarray, weight: float = 1.0) -> "FeaturePosterior":
        """Condition on ``features`` (``(k, p)``): a rank-k update of the factor.

        Uses LAPACK's triangular-pentagonal QR (``tpqrt``) on ``[R; V]``,
        ``O(k p^2)`` work: the new ``R`` satisfies
        ``R'^T R' = R^T R + V^T V``. ``weight`` counts each row as that many
        observations (``V = sqrt(weight) * features``).
        """
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        features = self._check(features) * np.sqrt(weight)
        for start in range(0, len(features), self.chunk_size):
            block = np.array(features[start:start + self.chunk_size], dtype=np.float64, order="F")
            r, _, _, info = dtpqrt(0, min(self.dim, len(block)), self.factor, block)
            if info != 0:
                raise np.linalg.LinAlgError(f"LAPACK tpqrt failed with info={info}")
            r = np.triu(r)
            signs = np.sign(np.diag(r))
            signs[signs == 0] = 1.0
            self.factor = r * signs[:, None]
        self.n_added += len(features)
        self.version += 1
        return self

    def quadratic_form(self, features: np.ndarray) -> np.ndarray:
        """``phi^T A^{-1} phi`` for each row: the raw (unscaled) variance.

        Solved with torch rather than scipy: inside an MD step the model runs
        in torch's thread pool, and a scipy (OpenBLAS) call in between makes
        the two pools fight over the cores (measured: 3x slower steps).
        """
        features = torch.from_numpy(self._check(features))
        lower = torch.from_numpy(self.factor).T  # R^T, lower triangular (a view)
        out = np.empty(len(features))
        for start in range(0, len(features), self.chunk_size):
            block = features[start:start + self.chunk_size]
            z = torch.linalg.solve_triangular(lower, block.T, upper=False)
            out[start:start + len(block)] = (z * z).sum(dim=0).numpy()
        return out

    @property
    def calibration(self) -> Recalibration:
        """The map from raw to calibrated variance (:class:`~ase_mlipal.uncertainty.calibration.Recalibration`)."""
        return self._calibration

    @calibration.setter
    def calibration(self, value: Recalibration) -> None:
        self._calibration = value
        self.version += 1

    @property
    def scale(self) -> float:
        """``s^2``, the factor on the raw variance (``calibration.scale``)."""
        return self.calibration.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.calibration = Recalibration(scale=float(value))

    def variance(self, features: np.ndarray, size=1.0) -> np.ndarray:
        """Calibrated variance of each row of ``features``: ``calibration.variance(q, size)``.

        With the plain scale (the default) this is ``s^2 phi^T A^{-1} phi``,
        equal to ``(s^2 / lambda) [k(x,x) - k_xR (K_RR + lambda I)^{-1} k_Rx]``,
        the Gaussian-process posterior with the linear kernel on the same
        conditioning frames. ``size`` is the floor's size (atoms of each structure).
        """
        return self.calibration.variance(self.quadratic_form(features), size)

    def std(self, features: np.ndarray, size=1.0) -> np.ndarray:
        """Square root of :meth:`variance`."""
        return np.sqrt(self.variance(features, size))

    def samples(self, noise: np.ndarray) -> np.ndarray:
        """Draws from ``N(0, A^{-1})``, one per row of standard normal ``noise`` (``(k, p)``).

        ``z = R^{-1} e`` with ``A = R^T R``, so ``E[z z^T] = A^{-1}`` and, for
        any feature ``g``, ``E[(g . z)^2] = g^T A^{-1} g`` (the raw variance).
        Fixed noise makes the draws a deterministic function of the posterior.
        """
        noise = self._check(noise)
        upper = torch.from_numpy(self.factor)
        z = torch.linalg.solve_triangular(upper, torch.from_numpy(noise).T, upper=True)
        return z.T.numpy()

    def precision(self) -> np.ndarray:
        """The ``p x p`` matrix ``A`` (for inspection and tests)."""
        return self.factor.T @ self.factor

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that :meth:`from_state` turns back into this posterior."""
        return {
            "factor": self.factor,
            "regularization": np.array(self.regularization),
            "scale": np.array(self.calibration.scale),
            "exponent": np.array(self.calibration.exponent),
            "floor": np.array(self.calibration.floor),
            "n_added": np.array(self.n_added),
            "chunk_size": np.array(self.chunk_size),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "FeaturePosterior":
        """Rebuild a posterior from :meth:`state`."""
        factor = np.asarray(state["factor"], dtype=np.float64)
        post = cls(factor.shape[0], float(state["regularization"]), float(state["scale"]), int(state["chunk_size"]))
        post.calibration = Recalibration(float(state["scale"]), float(state.get("exponent", 1.0)),
                                         float(state.get("floor", 0.0)))
        post.factor = factor
        post.n_added = int(state["n_added"])
        return post

    def _check(self, features: np.ndarray) -> np.ndarray:
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (n, {self.dim}), got {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError("features contain NaN or infinite values")
        return features

    def __repr__(self) -> str:
        return (f"FeaturePosterior(dim={self.dim}, regularization={self.regularization:g}, "
                f"calibration={self.calibration}, n_added={self.n_added})")
