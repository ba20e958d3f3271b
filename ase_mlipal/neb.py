"""Reaction paths with uncertainty, and NEB refined by active learning.

:func:`path_profile` gives the energy profile of a band with the
uncertainty of every energy *difference* to the first image, taken from
the structure-level posterior: for the linear model ``E = w . phi``,
``var(E_i - E_0) = s^2 (phi_i - phi_0)^T A^{-1} (phi_i - phi_0)``. Errors
the two ends share cancel, as they do in the barrier itself.

:class:`NEBLearner` repeats: run the NEB with the trigger watching it,
label the flagged images, fine-tune, swap the model in, until a whole NEB
run flags nothing or the round limit is reached.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.mep import NEB, idpp_interpolate
from ase.optimize import FIRE
from ase.optimize.optimize import Optimizer

from .calculator import MLIPALCalculator
from .features import per_structure
from .guards import PhysicalGuard
from .labelling import Reference
from .model import DEFAULT_DIR, load_model
from .progress import progress_bar
from .retrain import RoundRecord, default_references, learning_round
from .store import FrameStore
from .trigger import UncertaintyTrigger


DEMO_REACTION_PATH = DEFAULT_DIR / "demo_reaction.xyz"


@dataclass
class PathProfile:
    """Energy profile of a band of images.

    Attributes:
        label: a name for plots and tables.
        s: reaction coordinate, cumulative distance between images (A).
        energy: predicted energy relative to the first image (eV).
        energy_std: 1-sigma uncertainty of each ``energy`` (eV; 0 at the first image).
        uncertainty: the trigger's quantity per image (largest force uncertainty, eV/A).
        barrier, barrier_std: ``max(energy)`` and its 1-sigma uncertainty (eV; the
            spread of the maximum over posterior draws of the profile).
        reference_energy: reference energies relative to the first image (eV), if known.
    """

    label: str
    s: np.ndarray
    energy: np.ndarray
    energy_std: np.ndarray
    uncertainty: np.ndarray
    barrier: float
    barrier_std: float
    reference_energy: Optional[np.ndarray] = None


def reaction_coordinate(images: Sequence[Atoms]) -> np.ndarray:
    """Cumulative distance along the band (A), 0 at the first image."""
    steps = [np.linalg.norm(b.positions - a.positions) for a, b in zip(images[:-1], images[1:])]
    return np.concatenate([[0.0], np.cumsum(steps)])


def band(initial: Atoms, final: Atoms, n_images: int, seed: int = 0) -> list[Atoms]:
    """``n_images`` images from ``initial`` to ``final`` (included), IDPP-interpolated.

    IDPP starts from the straight line between the endpoints and cannot
    leave a line of symmetry: for a linear molecule (HCN -> HNC) the moving
    atom would pass through its neighbours. When an interior image has
    overlapping atoms (:class:`~ase_mlipal.guards.PhysicalGuard`), the
    straight-line images are displaced by a small seeded random amount
    (0.1 A) perpendicular to the path before IDPP, up to three tries; a
    band still overlapping raises ``ValueError``.
    """
    if n_images < 3:
        raise ValueError("a band needs at least 3 images (two endpoints and one to move)")
    if len(initial) != len(final) or np.any(initial.numbers != final.numbers):
        raise ValueError("the endpoints of a band must have the same atoms in the same order")
    guard = PhysicalGuard([initial, final])
    rng = np.random.default_rng(seed)
    for attempt in range(4):
        images = [initial.copy() for _ in range(n_images - 1)] + [final.copy()]
        for image in images:
            image.calc = None
        neb = NEB(images, method="improvedtangent")
        neb.interpolate()
        if attempt:
            _displace_across_path(images, rng, 0.1)
        idpp_interpolate(images, traj=None, log=None)
        problems = [(k, guard.problem(image)) for k, image in enumerate(images[1:-1], start=1)]
        problems = [(k, p) for k, p in problems if p]
        if not problems:
            return images
    k, problem = problems[0]
    raise ValueError(f"IDPP interpolation gives an unphysical image {k} ({problem}) even with the symmetry broken; "
                     "pass a band of your own (e.g. with an intermediate image)")


def _displace_across_path(images: Sequence[Atoms], rng: np.random.Generator, amplitude: float) -> None:
    """Move interior images by random displacements (A) with the component along the path removed."""
    tangent = (images[-1].positions - images[0].positions).ravel()
    tangent /= max(np.linalg.norm(tangent), 1e-12)
    for image in images[1:-1]:
        step = rng.normal(scale=amplitude, size=image.positions.size)
        step -= (step @ tangent) * tangent
        image.positions = image.positions + step.reshape(-1, 3)


def path_profile(calc: MLIPALCalculator, images: Sequence[Atoms], label: str = "",
                 draws: int = 4096, seed: int = 0) -> PathProfile:
    """Predicted energies of ``images`` with the uncertainty of each difference to the first.

    ``energy_std`` is the calibrated posterior std of each ``E_i - E_0``.
    The barrier is the highest of those energies, so its uncertainty is
    that of a maximum: ``barrier_std`` is the spread of ``max_i`` over
    ``draws`` joint posterior draws of the whole profile (correlated through
    the features, each image's marginal std its ``energy_std``). An image
    just below the top but far less certain widens it, where the std of the
    top image alone would not.
    """
    images = list(images)
    energies, batches = calc.predict(images)
    features = per_structure(batches)
    delta = np.concatenate([f.structure for f in features]) - features[0].structure
    posterior = calc.energy_posterior
    raw = posterior.quadratic_form(delta)
    energy_std = np.sqrt(posterior.calibration.variance(raw, len(images[0])))
    energy_std[0] = 0.0
    uncertainty = np.array([calc.uncertainty_from(f)["uncertainty"] for f in features])
    relative = energies - energies[0]
    top = int(np.argmax(relative))
    return PathProfile(label, reaction_coordinate(images), relative, energy_std, uncertainty,
                       barrier=float(relative[top]),
                       barrier_std=_std_of_maximum(posterior, delta, relative, raw, energy_std, draws, seed))


def _std_of_maximum(posterior, delta: np.ndarray, mean: np.ndarray, raw: np.ndarray, std: np.ndarray,
                    draws: int, seed: int) -> float:
    """Std of ``max_i E_i`` over joint draws ``E_i = mean_i + c_i delta_i . z``, ``z ~ N(0, A^-1)``.

    ``c_i = std_i / sqrt(raw_i)`` rescales each image's raw draw to its
    calibrated std; with the plain scale every ``c_i = s``.
    """
    noise = np.random.default_rng(seed).standard_normal((draws, posterior.dim))
    draws_raw = delta @ posterior.samples(noise).T  # (images, draws), variance raw_i
    factor = np.divide(std, np.sqrt(raw), out=np.zeros_like(std), where=raw > 0)
    return float(np.std(np.max(mean[:, None] + factor[:, None] * draws_raw, axis=0)))


@dataclass
class NEBRound:
    """One NEB run of :class:`NEBLearner` and the learning that followed it."""

    round: int
    profile: PathProfile
    converged: bool
    steps: int
    n_flagged: int
    learning: Optional[RoundRecord] = None


@dataclass
class NEBReport:
    """Outcome of :meth:`NEBLearner.run`: the rounds and the final band."""

    rounds: list[NEBRound] = field(default_factory=list)
    images: list[Atoms] = field(default_factory=list)
    confident: bool = False

    @property
    def barrier(self) -> tuple[float, float]:
        """Barrier of the last round and its 1-sigma uncertainty (eV)."""
        last = self.rounds[-1].profile
        return last.barrier, last.barrier_std

    def table(self) -> str:
        """One line per round: barrier, its uncertainty, largest image uncertainty, flags."""
        lines = ["round  barrier (eV)   max image unc.  flagged  NEB converged"]
        for r in self.rounds:
            p = r.profile
            lines.append(f"{r.round:5d}  {p.barrier:6.3f} ± {p.barrier_std:5.3f}  {p.uncertainty.max():14.3f}"
                         f"  {r.n_flagged:7d}  {str(r.converged):>13}")
        return "\n".join(lines)


class NEBLearner:
    """NEB, label the uncertain images, fine-tune, repeat until the band is confident.

    Every image of ``images`` (endpoints included) gets a
    :meth:`~MLIPALCalculator.share` of ``calc``. Each round
    relaxes the band (climbing image) from where the last round left it,
    with an :class:`UncertaintyTrigger` watching every ``interval`` steps.
    If the round flagged nothing, the learner stops; otherwise the flagged
    images are labelled with ``reference``, the pretrained model is
    fine-tuned on all labelled frames and swapped in
    (:func:`~ase_mlipal.retrain.learning_round`), and the next round starts.
    The two endpoints go to the store with the first flags
    (``label_endpoints``): the barrier and the reaction energy are
    differences to them, and the trigger never sees them move.

    Args:
        calc: calculator with the pretrained model and its posterior.
        reference: ASE calculator or zero-argument factory (e.g. ``xtb_calculator``).
        store: frame store for flagged and labelled images.
        images: the initial band, endpoints included (e.g. IDPP-interpolated).
        threshold: trigger threshold (eV/A, largest per-atom force uncertainty).
        max_rounds: NEB runs at most.
        fmax, steps: NEB convergence criterion (eV/A) and step limit per round.
        interval: trigger interval in optimiser steps.
        references: frames that define "known" after each swap
            (default: the replay sample shipped with the default model).
        finetune_options: keyword arguments for :func:`~ase_mlipal.finetune`.
        optimizer: ASE optimiser class for the band.
        climb, method: passed to ``ase.mep.NEB``.
        run_id: provenance of the flagged frames in the store.
        checkpoint: fine-tuning checkpoint path.
        label_endpoints: label the endpoints in the first learning round.
    """

    def __init__(
        self,
        calc: MLIPALCalculator,
        reference: Reference,
        store: FrameStore,
        images: Sequence[Atoms],
        threshold: float,
        max_rounds: int = 4,
        fmax: float = 0.05,
        steps: int = 300,
        interval: int = 5,
        references: Optional[Sequence[Atoms]] = None,
        executor: Optional[Executor] = None,
        finetune_options: Optional[dict] = None,
        optimizer: Callable[..., Optimizer] = FIRE,
        climb: bool = True,
        method: str = "improvedtangent",
        run_id: str = "neb",
        checkpoint: Union[str, os.PathLike, None] = None,
        label_endpoints: bool = True,
        progress: Optional[bool] = None,
    ):
        if len(images) < 3:
            raise ValueError("a band needs at least 3 images (two endpoints and one to move)")
        self.calc, self.reference, self.store = calc, reference, store
        self.images = [image.copy() for image in images]
        self.threshold, self.max_rounds, self.fmax, self.steps = threshold, max_rounds, fmax, steps
        self.interval, self.executor, self.finetune_options = interval, executor, finetune_options
        self.references = list(references) if references is not None else default_references()
        self.optimizer, self.climb, self.method, self.run_id = optimizer, climb, method, run_id
        self.checkpoint, self.label_endpoints, self.progress = checkpoint, label_endpoints, progress
        self.pretrained = load_model(calc.model)

    def run(self) -> NEBReport:
        """Run rounds until one flags nothing or ``max_rounds``; returns the report."""
        report = NEBReport()
        for number in range(self.max_rounds):
            trigger = UncertaintyTrigger(self.calc, self.store, self.threshold, source="neb",
                                         run_id=f"{self.run_id}-round{number}")
            converged, steps = self.relax(trigger)
            neb_round = NEBRound(number, path_profile(self.calc, self.images, label=f"round {number}"),
                                 converged, steps, n_flagged=len(trigger.flagged))
            report.rounds.append(neb_round)
            if not trigger.flagged:
                report.confident = True
                break
            if number + 1 < self.max_rounds:
                if self.label_endpoints:
                    for k in (0, len(self.images) - 1):
                        self.store.add_flagged(self.images[k], source="neb", image=k, run_id=trigger.run_id)
                neb_round.learning = learning_round(
                    number, self.calc, self.pretrained, self.store, self.reference, trigger, self.references,
                    executor=self.executor, finetune_options=self.finetune_options,
                    checkpoint=self.checkpoint, progress=self.progress)
        report.images = [image.copy() for image in self.images]
        return report

    def relax(self, trigger: UncertaintyTrigger) -> tuple[bool, int]:
        """One NEB relaxation of the current band with ``trigger`` attached; (converged, steps)."""
        return relax_band(self.images, self.calc, trigger, fmax=self.fmax, steps=self.steps,
                          interval=self.interval, optimizer=self.optimizer, climb=self.climb, method=self.method,
                          progress=self.progress)


def relax_band(
    images: Sequence[Atoms],
    calc: MLIPALCalculator,
    trigger: UncertaintyTrigger,
    fmax: float = 0.05,
    steps: int = 300,
    interval: int = 5,
    optimizer: Callable[..., Optimizer] = FIRE,
    climb: bool = True,
    method: str = "improvedtangent",
    logfile: Optional[str] = None,
    progress: Optional[bool] = None,
) -> tuple[bool, int]:
    """Relax ``images`` in place by NEB on ``calc`` with ``trigger`` watching; ``(converged, steps)``.

    Each image gets a :meth:`~MLIPALCalculator.share` of ``calc``; the
    trigger checks the band every ``interval`` steps and once more at the end.
    """
    for image in images:
        image.calc = calc.share()
    neb = NEB(list(images), climb=climb, method=method)
    trigger.atoms = neb
    dyn = optimizer(neb, logfile=logfile)
    dyn.attach(trigger, interval=interval)
    with progress_bar(progress=progress, total=steps, desc=f"NEB {trigger.run_id or ''}".strip()) as bar:
        dyn.attach(lambda: bar.update(1) if dyn.nsteps else None)
        converged = bool(dyn.run(fmax=fmax, steps=steps))
    if dyn.nsteps % interval:  # the final band is always checked
        trigger(neb, step=dyn.nsteps)
    return converged, int(dyn.nsteps)
