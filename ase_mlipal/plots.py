"""Figures for active-learning runs: uncertainty traces, NEB energy profiles and the learners' reference checks.

Each function builds its own ``matplotlib.figure.Figure`` and writes a PNG,
so no pyplot state or interactive backend is involved (safe on headless
machines and in worker processes).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure

PathLike = Union[str, os.PathLike]
Flagged = Union[Sequence[float], Sequence[tuple[float, float]]]

_DPI = 120


def plot_uncertainty_trace(
    steps: Sequence[float],
    values: Sequence[float],
    threshold: float,
    path: PathLike,
    flagged_steps: Flagged = (),
    ylabel: str = "max force uncertainty (eV/Å)",
    title: Optional[str] = None,
) -> pathlib.Path:
    """Plot an uncertainty trace against step, with its threshold and flagged frames.

    Args:
        steps, values: the MD / optimiser steps and the uncertainty at each.
        threshold: drawn as a horizontal dashed line.
        path: where the PNG is written (parent folders are created).
        flagged_steps: steps whose frames were flagged, marked in red. Each
            item is a step (its value is looked up in ``steps``/``values``;
            a step the trace passed twice, before and after going back, at
            its last pass, the one the trace kept) or a ``(step, value)``
            pair, drawn at that value.
        ylabel, title: axis label and optional title.

    A trace whose step goes back (an MD learner sent back by a hole,
    :class:`~ase_mlipal.OnTheFlyLearner`) draws the stretches it left in grey
    (:func:`rewound_points`).

    Returns the path written. Raises ``ValueError`` on empty input,
    mismatched lengths, or a bare flagged step that is not in ``steps``.
    """
    steps_arr = np.asarray(steps, dtype=float).ravel()
    values_arr = np.asarray(values, dtype=float).ravel()
    if steps_arr.size == 0 or values_arr.size == 0:
        raise ValueError("steps and values must not be empty")
    if steps_arr.size != values_arr.size:
        raise ValueError(f"steps ({steps_arr.size}) and values ({values_arr.size}) differ in length")
    flagged = _flagged_points(flagged_steps, steps_arr, values_arr)

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    rewound = rewound_points(steps_arr)
    ax.plot(steps_arr[~rewound], values_arr[~rewound], color="tab:blue", linewidth=1.2, label="uncertainty")
    breaks = np.flatnonzero(np.diff(steps_arr) < 0) + 1  # where the trace goes back
    label = "left after a hole (rewound)"
    for step, value, left in zip(*(np.split(a, breaks) for a in (steps_arr, values_arr, rewound))):
        if left.any():
            ax.plot(step[left], value[left], color="tab:gray", linewidth=1.0, label=label)
            label = None  # one legend entry
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1.0, label=f"threshold ({threshold:g})")
    if flagged.size:
        ax.plot(flagged[:, 0], flagged[:, 1], linestyle="none", marker="o", color="red",
                markersize=6, label=f"flagged ({len(flagged)})", zorder=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return _save(fig, path)


def rewound_points(steps: np.ndarray) -> np.ndarray:
    """Boolean mask of the points of a trace that a later step going back left behind: each point at or past
    the step the trace goes on from after it went back (shape of ``steps``)."""
    rewound = np.zeros(steps.shape, dtype=bool)
    for end in np.flatnonzero(np.diff(steps) < 0):
        rewound[: end + 1] |= steps[: end + 1] >= steps[end + 1]
    return rewound


def plot_neb_profiles(profiles: Sequence[Any], path: PathLike, title: Optional[str] = None) -> pathlib.Path:
    """Plot NEB energy profiles, with ±2σ bands and reference energies where given.

    Args:
        profiles: objects with ``label`` (str), ``s`` (reaction coordinate,
            Å, cumulative image distance), ``energy`` (eV relative to the
            first image), ``energy_std`` (eV, 1σ, or ``None``) and optionally
            ``reference_energy`` (eV, e.g. xTB on the same images, or
            ``None``), drawn as hollow markers of the profile's colour.
        path: where the PNG is written (parent folders are created).
        title: optional title.

    Returns the path written. Raises ``ValueError`` on no profiles or
    arrays whose lengths differ from ``s``.
    """
    if len(profiles) == 0:
        raise ValueError("no profiles to plot")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for profile in profiles:
        label = str(profile.label)
        s = np.asarray(profile.s, dtype=float).ravel()
        energy = _same_length(profile.energy, s, label, "energy")
        std = getattr(profile, "energy_std", None)
        reference = getattr(profile, "reference_energy", None)
        if s.size == 0:
            raise ValueError(f"profile {label!r} is empty")
        (line,) = ax.plot(s, energy, marker="o", markersize=5, linewidth=1.5, label=label)
        color = line.get_color()
        if std is not None:
            std = _same_length(std, s, label, "energy_std")
            ax.fill_between(s, energy - 2 * std, energy + 2 * std, color=color, alpha=0.2, linewidth=0,
                            label=f"{label} ± 2σ")
        if reference is not None:
            reference = _same_length(reference, s, label, "reference_energy")
            ax.plot(s, reference, linestyle="none", marker="o", markersize=8, color=color,
                    markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.5, label=f"{label} (reference)")
    ax.set_xlabel("reaction coordinate (Å)")
    ax.set_ylabel("energy (eV)")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return _save(fig, path)


#: Where each kind of a band's check is drawn beside its round (the MD's checks are drawn at their step).
_KIND_OFFSET = {"climbing_image": -0.2, "band_max": 0.0, "audit": 0.2}


class CheckPoints(NamedTuple):
    """What :func:`plot_checks` draws, one entry per check with a reference label."""

    x: np.ndarray  # an MD run's: the step; a band's: the round (its kinds side by side)
    x_label: str  # "MD step" or "round"
    energy_error: np.ndarray  # eV, model - reference
    two_sigma: np.ndarray  # eV, the predicted 2 sigma of that error
    force_coverage: np.ndarray  # share of force components within 2 sigma
    passed: np.ndarray  # bool
    rewound: np.ndarray  # bool: an MD audit the run went back past


def check_points(checks: Sequence[Any]) -> CheckPoints:
    """The points :func:`plot_checks` draws from ``checks``
    (:class:`~ase_mlipal.learning.verification.Check` objects, e.g. a learner report's ``checks``)."""
    kept = [c for c in checks if np.isfinite(c.energy_error)]
    by_step = all(c.image is None and c.step is not None for c in kept)  # an MD run's (a band's have an image)
    return CheckPoints(
        x=np.array([c.step if by_step else c.round + _KIND_OFFSET.get(c.kind, 0.0) for c in kept], dtype=float),
        x_label="MD step" if by_step else "round",
        energy_error=np.array([c.energy_error for c in kept], dtype=float),
        two_sigma=np.array([2.0 * c.energy_std for c in kept], dtype=float),
        force_coverage=np.array([c.force_coverage for c in kept], dtype=float),
        passed=np.array([c.passed for c in kept], dtype=bool),
        rewound=np.array([bool(getattr(c, "rewound", False)) for c in kept], dtype=bool),
    )


def plot_checks(checks: Sequence[Any], path: PathLike, title: Optional[str] = None) -> Optional[pathlib.Path]:
    """Plot a learner's reference checks: each energy error against its predicted 2σ, and the forces' coverage.

    Top: the energy error (model - reference, eV; a band's checks: of the
    difference to the first endpoint) with a bar of the predicted ±2σ, a
    filled circle for a passed check, a red cross for a failed one (an
    error outside its bar is a σ too small). Bottom: the share of force
    components within 2σ, against the 0.95 of a calibrated model. The x
    axis is the MD step (MD learner) or the round (NEB learner). Checks
    without a reference label are left out; an MD audit the run went back
    past is drawn grey.

    Returns the path written, or ``None`` (nothing written) when no check has a label.
    """
    points = check_points(checks)
    if points.x.size == 0:
        return None
    fig = Figure(figsize=(6.4, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    kept_path = ~points.rewound
    for mask, style in ((points.passed & kept_path, dict(marker="o", color="tab:green", label="passed")),
                        (~points.passed & kept_path, dict(marker="x", color="tab:red", label="failed")),
                        (points.rewound, dict(marker="o", color="tab:gray", label="rewound"))):
        if mask.any():
            top.errorbar(points.x[mask], points.energy_error[mask], yerr=points.two_sigma[mask], linestyle="none",
                         capsize=3, **style)
            bottom.plot(points.x[mask], points.force_coverage[mask], linestyle="none", marker=style["marker"],
                        color=style["color"])
    top.axhline(0.0, color="black", linewidth=0.8)
    top.set_yscale("symlog", linthresh=0.1)
    top.set_ylabel("energy error ± 2σ (eV)")
    top.legend(loc="best")
    bottom.axhline(0.95, color="black", linestyle="--", linewidth=1.0, label="calibrated (0.95)")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("forces within 2σ")
    bottom.set_xlabel(points.x_label)
    bottom.legend(loc="lower right")
    if title:
        top.set_title(title)
    return _save(fig, path)


def _flagged_points(flagged: Flagged, steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n, 2) array of (step, value) for each flagged item (a step, at its last pass, or a pair)."""
    points = []
    for item in flagged:
        if np.ndim(item) == 0:
            matches = np.flatnonzero(steps == float(item))
            if matches.size == 0:
                raise ValueError(f"flagged step {item} is not in steps; give it as a (step, value) pair")
            points.append((float(item), values[matches[-1]]))
        elif np.shape(item) == (2,):
            points.append((float(item[0]), float(item[1])))
        else:
            raise ValueError(f"flagged item {item!r} is neither a step nor a (step, value) pair")
    return np.asarray(points, dtype=float).reshape(-1, 2)


def _same_length(array: Any, s: np.ndarray, label: str, name: str) -> np.ndarray:
    out = np.asarray(array, dtype=float).ravel()
    if out.size != s.size:
        raise ValueError(f"profile {label!r}: {name} has {out.size} values but s has {s.size}")
    return out


def _save(fig: Figure, path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, format="png")
    return path
