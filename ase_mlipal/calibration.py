"""Calibration of raw posterior variances against a model's residuals.

The posterior gives variances ``v`` without units. Modelling a residual as
``r ~ N(0, s^2 v)``, the maximum-likelihood scale is ``s^2 = mean(r^2 / v)``
(:func:`fit_scale`). :func:`calibration_report` then measures how well the
scaled standard deviations describe the residuals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def fit_scale(residuals: np.ndarray, raw_variances: np.ndarray) -> float:
    """Maximum-likelihood ``s^2`` for ``residuals ~ N(0, s^2 raw_variances)``."""
    r = np.asarray(residuals, dtype=float).ravel()
    v = np.asarray(raw_variances, dtype=float).ravel()
    if r.shape != v.shape or r.size == 0:
        raise ValueError(f"need matching non-empty residuals and variances, got {r.shape} and {v.shape}")
    if np.any(v <= 0) or not np.all(np.isfinite(v)) or not np.all(np.isfinite(r)):
        raise ValueError("variances must be positive and finite and residuals finite")
    return float(np.mean(r**2 / v))


@dataclass
class CalibrationReport:
    """How well predicted standard deviations describe residuals.

    Attributes:
        n: number of residuals.
        scale: the variance scale ``s^2`` in use.
        spearman: Spearman rank correlation between std and ``|residual|``.
        nll: mean Gaussian negative log-likelihood of the residuals.
        miscalibration_area: mean absolute gap between expected and observed
            coverage over all central intervals (0 is perfect, 0.5 the worst).
        coverage_1sigma: fraction with ``|r| < std`` (0.683 if calibrated).
        coverage_2sigma: fraction with ``|r| < 2 std`` (0.954 if calibrated).
        rmse: root-mean-square residual.
        mean_std: mean predicted standard deviation.
    """

    n: int
    scale: float
    spearman: float
    nll: float
    miscalibration_area: float
    coverage_1sigma: float
    coverage_2sigma: float
    rmse: float
    mean_std: float

    def as_dict(self) -> dict:
        """The report as a plain dictionary."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"n={self.n} spearman={self.spearman:.3f} nll={self.nll:.3f} "
                f"miscal_area={self.miscalibration_area:.3f} cover1={self.coverage_1sigma:.3f} "
                f"cover2={self.coverage_2sigma:.3f} rmse={self.rmse:.4g} mean_std={self.mean_std:.4g}")


def calibration_report(residuals: np.ndarray, std: np.ndarray, scale: float = 1.0) -> CalibrationReport:
    """Metrics of predicted ``std`` against ``residuals`` (same shape)."""
    r = np.asarray(residuals, dtype=float).ravel()
    s = np.asarray(std, dtype=float).ravel()
    if r.shape != s.shape or r.size == 0:
        raise ValueError(f"need matching non-empty residuals and std, got {r.shape} and {s.shape}")
    if np.any(s <= 0):
        raise ValueError("standard deviations must be positive")
    z = np.abs(r) / s
    informative = r.size > 2 and np.ptp(s) > 0 and np.ptp(np.abs(r)) > 0
    rho = stats.spearmanr(s, np.abs(r)).statistic if informative else float("nan")
    nll = float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * z**2))
    return CalibrationReport(
        n=int(r.size),
        scale=float(scale),
        spearman=float(rho),
        nll=nll,
        miscalibration_area=miscalibration_area(z),
        coverage_1sigma=float(np.mean(z < 1.0)),
        coverage_2sigma=float(np.mean(z < 2.0)),
        rmse=float(np.sqrt(np.mean(r**2))),
        mean_std=float(np.mean(s)),
    )


def miscalibration_area(z: np.ndarray, n_levels: int = 100) -> float:
    """Area between observed and expected coverage of central Gaussian intervals.

    ``z`` are the standardised absolute residuals ``|r| / std``.
    """
    expected = np.linspace(0.0, 1.0, n_levels + 1)
    half_widths = stats.norm.ppf(0.5 + expected / 2)
    observed = np.mean(np.asarray(z)[:, None] <= half_widths[None, :], axis=0)
    return float(np.trapezoid(np.abs(observed - expected), expected))
