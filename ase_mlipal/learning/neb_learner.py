"""NEB refined by active learning, until a reference check verifies the barrier.

:class:`NEBLearner` repeats: run the climbing-image NEB with the trigger
watching it, check the climbing image, the band's other possible maximum
and its least certain image against the reference, and stop only when
the checks passed on a converged band the model was certain of;
otherwise label the flagged images (and a failed check), fine-tune, swap
the model in if it is no worse on the checks so far, and run the band
again.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.io import read, write
from ase.mep import NEB
from ase.optimize import FIRE
from ase.optimize.optimize import Optimizer

from ..calculator import MLIPALCalculator
from ..frames import read_labels
from ..guards import EnergyRunaway, PhysicalGuard, UnphysicalFrame
from ..models.graphs import check_atoms
from ..paths import (  # noqa: F401
    DEMO_REACTION_PATH,
    PathProfile,
    band,
    check_band,
    highest_between_images,
    path_profile,
    point_between,
    reaction_coordinate,
)
from ..progress import progress_bar
from ..storage import atomic_write
from ..uncertainty.features import per_structure
from .labelling import LabelReport, Reference, label
from .learning_run import LearningRun, RoundRecord
from .store import FrameStore
from .trigger import UncertaintyTrigger
from .trust_region import LeftTrustRegion, TrustRegion
from .verification import SADDLE_FMAX, Check, allowed_outside, force_components_beyond

#: Reference checks a band takes at most: its climbing image, its band maximum, its audit.
CHECKS_PER_BAND = 3
#: Fine-tunes in a row the model choice may reject on the same labels before a run ends (``max_rejections``).
#: A budget, not a fit: over every NEB record when it was set (``benchmarks/results/learning_loop*``), an
#: accepted fine-tune came after 0 rejected ones 62 times, after 1 five times, 2 twice, 3 and 4 once each,
#: never after more; held-out pyrrole -> 2H-pyrrole then spent 35 of its 47 minutes on 11 rejected ones.
MAX_REJECTIONS = 5
#: The default ``barrier_tolerance`` (eV): the barrier error a run accepts before it is confident.
BARRIER_TOLERANCE = 0.1


@dataclass
class SweptImage:
    """A place on a band that no check of its round saw, labelled by :meth:`NEBLearner._sweep`.

    Attributes:
        image: where on the band: an interior image's index, or ``k + t`` for the point a fraction ``t`` of
            the straight line from image ``k`` to image ``k + 1`` (the reference's highest between images).
        reference, model: its energy relative to the band's first endpoint on the reference and on the
            model that ran the band (eV; ``reference`` is nan when the reference gave no label).
    """

    image: float
    reference: float
    model: float

    @property
    def where(self) -> str:
        """The place in words: "image 3", or "the point 0.40 of the way from image 3 to 4"."""
        k = int(np.floor(self.image))
        if k == self.image:
            return f"image {k}"
        return f"the point {self.image - k:.2f} of the way from image {k} to {k + 1}"


@dataclass
class NEBRound:
    """One NEB run of :class:`NEBLearner`, its check and the learning that followed it.

    Attributes:
        round: the round of the model that ran the band (0: pretrained).
        profile: the band's energy profile on that model, its sigma on the
            posterior the calculator reports from, which the trigger's flags
            do not enter (they are seen, not learned); the checks are judged
            on that posterior too.
        converged, steps: the NEB optimiser's outcome (for a band a guard cut
            short and the loop learned from, ``steps`` is the step of the
            band kept: the one the trigger last judged).
        n_flagged: images the trigger flagged during the whole relaxation.
        check: the reference check of the climbing image (barrier error, predicted sigma).
        band_check: the reference check of the other image most likely to top
            the band on the reference (highest energy + 2 sigma), when that
            bound reaches the climbing image's energy less ``barrier_tolerance``
            (``None`` when no other image could).
        audit: the reference check of the least certain interior image left
            (largest ``energy_std``): within 2 sigma, and its reference
            energy difference not above the band's barrier +
            ``barrier_tolerance`` (``None`` when every interior image was
            checked already).
        quiet: every interior image of the band the relaxation ended on is
            below the threshold on the posterior the calculator reports from
            (the trigger's own settles flagged frames below the threshold at
            once, so its last call cannot say it; frames flagged on the way
            are labelled all the same).
        learning: the learning that followed (``None`` after the last band; after a
            rejected fine-tune, the last of the retries).
        model_round: the round whose model ran the band (0: pretrained; it
            lags ``round`` when fine-tunes were rejected).
        runaway: when the relaxation was cut short and the loop learned
            from it, what happened ("" otherwise): the model's energy ran
            away (:class:`~ase_mlipal.guards.EnergyRunaway`) and the
            reference did not confirm it (the band is the one the relaxation
            had reached, its top image checked), or a geometric guard stopped
            a band the model had moved and the model is off where the band
            was last judged (the band is that one, the guarded image
            checked as its climbing image, beside the band's other checks;
            any of them off is enough). A failed check is trained on.
        sweep: the band's other interior images, labelled when the band
            would end the run (confident, or the run's last): the barrier is
            the band's maximum, and an image the model prices far too low
            is no candidate for any check, so only a label shows it; then the
            reference's highest point between two images, if it tops them
            (:class:`SweptImage`; empty when none was, or the budget left none).
        onto_pass: when the relaxed band stepped over a pass of the model's
            own between two images and an image was moved onto it and the
            band relaxed again (:meth:`NEBLearner._onto_the_pass`), what was
            done ("" otherwise).
        paused: when the learner's trust region (``trust_radius``) stopped
            the relaxation, where an image left it ("" otherwise): the band
            is judged and learned from where it stopped, and the next round
            starts from it.
        lower_route: when the earlier band the model put lowest, relaxed on
            the same model, crossed a lower pass and was kept in place of the
            band from the round's start (:meth:`NEBLearner._lower_route`), what
            was found ("" otherwise).
    """

    round: int
    profile: PathProfile
    converged: bool
    steps: int
    n_flagged: int
    check: Optional[Check] = None
    learning: Optional[RoundRecord] = None
    model_round: int = 0
    band_check: Optional[Check] = None
    audit: Optional[Check] = None
    quiet: bool = False
    runaway: str = ""
    sweep: list[SweptImage] = field(default_factory=list)
    onto_pass: str = ""
    paused: str = ""
    lower_route: str = ""

    @property
    def cut_short(self) -> bool:
        """A guard (:attr:`runaway`) or the trust region (:attr:`paused`) stopped the relaxation: no barrier."""
        return bool(self.runaway or self.paused)

    @property
    def checks(self) -> list[Check]:
        """The round's reference checks: the climbing image's, the band maximum's, the audit."""
        return [c for c in (self.check, self.band_check, self.audit) if c is not None]

    @property
    def verified_error(self) -> float:
        """How far the checks show the round's barrier to be off (eV): the largest |barrier error| of the
        climbing image's and band maximum's checks, and how far the reference puts the audited image and the
        swept ones (:attr:`sweep`, those with a label) above the barrier (an image below the top may err more
        without changing the barrier)."""
        errors = [abs(c.energy_error) for c in (self.check, self.band_check) if c is not None]
        if self.audit is not None:  # nan (no reference label) stays nan: unverified
            reference = self.profile.energy[self.audit.image] - self.audit.energy_error
            errors.append(float(np.maximum(0.0, reference - self.profile.barrier)))
        errors += [max(0.0, s.reference - self.profile.barrier) for s in self.sweep if np.isfinite(s.reference)]
        return max(errors) if errors and all(np.isfinite(errors)) else float("nan")

    @property
    def top_unconfirmed(self) -> bool:
        """The reference does not confirm the climbing image as a saddle: the band crosses a pass the reference
        does not have, so ``verified_error`` may understate how far the barrier is off."""
        return self.check is not None and self.check.reference_saddle is False

    @property
    def lowest_barrier(self) -> float:
        """The lowest barrier the band's endpoints allow (eV): 0, or the model's reaction energy less its 2 sigma
        if higher (a barrier is never below either endpoint)."""
        return float(max(0.0, self.profile.energy[-1] - 2.0 * self.profile.energy_std[-1]))

    @property
    def possible_error(self) -> float:
        """How far off the checks allow the barrier to be (eV): ``verified_error``, and for a band whose top the
        reference does not confirm as a saddle (``top_unconfirmed``) at least ``barrier - lowest_barrier``.

        The barrier is the lowest maximum over all paths from reactant to product. A band that crosses a
        pass the reference does not have overestimates it where its checks agree (the reference's maximum
        along the band is at least the barrier), and the reference's own pass may lie anywhere below."""
        off = self.verified_error
        if self.top_unconfirmed and np.isfinite(off):
            off = max(off, self.profile.barrier - self.lowest_barrier)
        return float(off)

    @property
    def reported_std(self) -> float:
        """The band's barrier sigma as reported (eV): the predicted one and :attr:`verified_error` in quadrature
        (the predicted one alone where the checks have no reference label)."""
        off = self.verified_error
        return float(np.hypot(self.profile.barrier_std, off if np.isfinite(off) else 0.0))

    def as_dict(self) -> dict:
        learning = None if self.learning is None else {
            "round": self.learning.round, "labelled": vars(self.learning.labelled),
            "n_train_frames": self.learning.n_train_frames, "accepted": self.learning.accepted,
            "reason": self.learning.reason, "model_hash": self.learning.model_hash}
        return {"round": self.round, "profile": self.profile.as_dict(), "converged": self.converged,
                "steps": self.steps, "n_flagged": self.n_flagged,
                "check": None if self.check is None else self.check.as_dict(), "learning": learning,
                "model_round": self.model_round,
                "band_check": None if self.band_check is None else self.band_check.as_dict(),
                "audit": None if self.audit is None else self.audit.as_dict(), "quiet": self.quiet,
                "runaway": self.runaway, "sweep": [vars(s) for s in self.sweep], "onto_pass": self.onto_pass,
                "paused": self.paused, "lower_route": self.lower_route}

    @classmethod
    def from_dict(cls, data: dict) -> "NEBRound":
        learning = data["learning"]
        if learning is not None:
            learning = RoundRecord(**{**learning, "labelled": LabelReport(**learning["labelled"])})
        band_check, audit = data.get("band_check"), data.get("audit")
        return cls(data["round"], PathProfile.from_dict(data["profile"]), data["converged"], data["steps"],
                   data["n_flagged"], None if data["check"] is None else Check(**data["check"]), learning,
                   data.get("model_round", 0), None if band_check is None else Check(**band_check),
                   None if audit is None else Check(**audit), data.get("quiet", False), data.get("runaway", ""),
                   [SweptImage(**s) for s in data.get("sweep", [])], data.get("onto_pass", ""), data.get("paused", ""),
                   data.get("lower_route", ""))


class NoBandError(RuntimeError):
    """The run ended before its first band (e.g. the reference failed on the first endpoint): there is no barrier
    to report; the message says why."""


@dataclass
class NEBReport:
    """Outcome of :meth:`NEBLearner.run`.

    Attributes:
        rounds: one :class:`NEBRound` per band run.
        images: the final band.
        confident: the last band converged, was certain on the posterior its relaxation started with and
            its checks passed: the climbing image (within 2 sigma and
            ``barrier_tolerance``, a saddle of the reference), the band
            maximum (no other image above the barrier on the reference) and
            the audit of the least certain image (within 2 sigma, the
            reference not above the barrier + ``barrier_tolerance``).
        stopped: why the run was stopped ("" if it was not): a physical guard,
            an energy runaway the reference confirms or cannot label, or a
            reference that failed on the first endpoint.
        ended: why a run that is neither confident nor stopped ended
            (``max_rounds`` reached, and whether its last fine-tunes were
            rejected); "" otherwise.
        model_choice: one line per fine-tuned model, accepted or not and why.
        final_round: index in ``rounds`` of the band the run ends on: the one
            the checks allow the least error (:meth:`NEBLearner._best_verified`; ``images`` is that band, the
            calculator holds its model); ``None`` if no band was checked.
        barrier_tolerance: the run's ``barrier_tolerance`` (eV): a place between or at unchecked images above
            the final band's barrier by more is named in :meth:`table`.
    """

    rounds: list[NEBRound] = field(default_factory=list)
    images: list[Atoms] = field(default_factory=list)
    confident: bool = False
    stopped: str = ""
    model_choice: list = field(default_factory=list)
    final_round: Optional[int] = None
    ended: str = ""
    barrier_tolerance: float = BARRIER_TOLERANCE

    @property
    def checks(self) -> list[Check]:
        """Every reference check of the run, round by round (as :attr:`LearnReport.checks` of the MD learner)."""
        return [check for neb_round in self.rounds for check in neb_round.checks]

    @property
    def final(self) -> NEBRound:
        """The band the run ends on (see ``final_round``).

        Raises:
            NoBandError: no band was run (``stopped`` or ``ended`` says why).
        """
        if not self.rounds:
            raise NoBandError(f"no band was run: {self.stopped or self.ended or 'the report holds no round'}")
        return self.rounds[-1 if self.final_round is None else self.final_round]

    @property
    def barrier(self) -> tuple[float, float]:
        """Barrier of the final band and its 1-sigma uncertainty (eV).

        The sigma is the predicted one (``final.profile.barrier_std``)
        combined in quadrature with how far the band's reference checks show
        it off (:attr:`NEBRound.verified_error`): a barrier the checks
        contradict is not reported as certain. A band with no reference
        label (``verified_error`` nan) keeps the predicted sigma. Where the
        reference does not confirm the band's top as a saddle the interval is
        one-sided: see :attr:`barrier_interval`.

        Raises:
            NoBandError: no band was run (as :attr:`final`).
        """
        return self.final.profile.barrier, self.final.reported_std

    @property
    def barrier_interval(self) -> tuple[float, float]:
        """The 2-sigma interval of the reported barrier (eV), never below 0: ``barrier`` ± 2 sigma, or, when the
        reference does not confirm the final band's top as a saddle (``final.top_unconfirmed``), down to
        ``final.lowest_barrier``: such a band estimates the barrier from above, and the reference's own pass
        may lie anywhere below (:attr:`NEBRound.possible_error`); and down to the interval of another band
        that crossed wholly below it (:attr:`lower_crossing`). Its upper end is as good as the band's
        checks: the reference's maximum may lie between the images they saw.

        Raises:
            NoBandError: no band was run (as :attr:`final`).
        """
        value, std = self.barrier
        low, high = max(0.0, value - 2.0 * std), value + 2.0 * std
        if self.final.top_unconfirmed:
            low = min(low, self.final.lowest_barrier)
        lower = self.lower_crossing
        if lower is not None:
            low = min(low, max(0.0, lower.profile.barrier - 2.0 * lower.reported_std))
        return low, high

    @property
    def lower_crossing(self) -> Optional[NEBRound]:
        """Another checked band whose whole 2-sigma interval lies below the final band's (``None`` if none).

        The barrier is the lowest maximum over all paths. A final band whose
        top the reference confirms as a saddle may still cross a higher pass
        than the reference's lowest: on held-out acetonitrile -> methyl
        isocyanide a round's band crossed at a saddle of xTB 1.9 eV above the
        barrier of the xTB NEB, where another band, its checks within 0.11 eV
        of the model, had crossed 0.04 eV from that barrier. Such a band's
        own interval (:attr:`NEBRound.reported_std`) is where
        the barrier may lie too, so :attr:`barrier_interval` reaches down to
        the lowest such band's. Bands a guard cut short are left out (no
        barrier), and so are bands whose checks have no reference label.
        """
        if not self.rounds:
            return None
        _, std = self.barrier
        low = self.final.profile.barrier - 2.0 * std
        below = [r for r in self.rounds if r is not self.final and not r.cut_short and np.isfinite(r.verified_error)
                 and r.profile.barrier + 2.0 * r.reported_std < low]
        return min(below, key=lambda r: r.profile.barrier - 2.0 * r.reported_std, default=None)

    def _unconfident_despite_checks(self) -> list[str]:
        """A line saying why a final band that passed every check is not called confident (none otherwise)."""
        final = self.final
        why = [reason for reason, holds in (("the trigger flagged images on it", not final.quiet),
                                            ("its NEB did not converge", not final.converged)) if holds]
        why += [f"the reference puts {s.where}, which no check saw, {s.reference - final.profile.barrier:.2f} "
                "eV above its barrier" for s in final.sweep
                if s.reference - final.profile.barrier > self.barrier_tolerance]
        if not final.checks or not all(c.passed for c in final.checks) or not why:
            return []
        return [f"the final band (round {final.round}) passed every check, but {' and '.join(why)}: not "
                "confident; its barrier is verified at the checked images only"]

    def _unresolved_passes(self) -> list[str]:
        """A line per place between images of the final band that the model itself puts more than
        ``barrier_tolerance`` above the barrier: the band's images do not resolve the pass it crosses (none
        otherwise)."""
        final = self.final
        return [f"the model itself puts {s.where} {s.model - final.profile.barrier:.2f} eV above the final band's "
                f"barrier (the reference {s.reference - final.profile.barrier:.2f} eV): the band's images do not "
                "resolve the pass it crosses; a band with more images would"
                for s in final.sweep
                if s.image != int(s.image) and s.model > final.profile.barrier + self.barrier_tolerance]

    @property
    def verified_barrier_error(self) -> Optional[float]:
        """Model - reference barrier at the final band's climbing image (eV); ``None`` if it was not checked or
        no band was run (this one does not raise).

        The climbing image's check alone, verified or not: a band whose other
        checks failed can be far off elsewhere (its maximum may lie at
        another image). How far all of the band's checks show it off is
        ``final.verified_error``; what to report is :attr:`barrier` and
        :attr:`barrier_interval`, and :attr:`confident` says whether the band
        passed them all.
        """
        check = self.final.check if self.rounds else None
        return None if check is None else check.energy_error

    def table(self) -> str:
        """One line per band: barrier and sigma, the checked error, flags, model choice."""
        lines = ["round  barrier (eV)   checked error  band max error  audit error  passed  flagged  NEB converged"
                 "  next model"]
        for r in self.rounds:
            p = r.profile
            passed = str(all(x.passed for x in r.checks)) if r.checks else "-"
            checked = "  ".join(f"{c.energy_error:+{width}.3f}" if c else f"{'-':>{width}}"
                                for c, width in ((r.check, 13), (r.band_check, 14), (r.audit, 11))) + f"  {passed:>6}"
            nxt = "-" if r.learning is None else ("swapped in" if r.learning.accepted else "rejected")
            lines.append(f"{r.round:5d}  {p.barrier:6.3f} ± {p.barrier_std:5.3f}  {checked}  {r.n_flagged:7d}"
                         f"  {str(r.converged):>13}  {nxt}")
        lines += [r.runaway for r in self.rounds if r.runaway]
        lines += [f"round {r.round} paused: {r.paused}" for r in self.rounds if r.paused]
        lines += [f"round {r.round}: {r.lower_route}" for r in self.rounds if r.lower_route]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.ended:
            lines.append(f"ended: {self.ended}")
        if self.final_round is not None and self.final_round != len(self.rounds) - 1:
            lines.append(f"final: the band of round {self.final.round} (its checks allow it the least error)")
        if self.rounds and not self.confident:
            lines += self._unconfident_despite_checks()
            lines += self._unresolved_passes()
        if self.rounds and self.final.top_unconfirmed:
            low, high = self.barrier_interval
            lines.append("the final band's climbing image is not a saddle of the reference: its barrier is unverified,"
                         f" an estimate from above (2-sigma interval [{low:.2f}, {high:.2f}] eV)")
        lower = self.lower_crossing
        if lower is not None:
            low, high = self.barrier_interval
            lines.append(f"the band of round {lower.round} crossed lower ({lower.profile.barrier:.2f} ± "
                         f"{lower.reported_std:.2f} eV, as its checks allow): the final band may cross a higher pass "
                         f"than the reference's lowest, so the 2-sigma interval reaches down to it: [{low:.2f}, "
                         f"{high:.2f}] eV")
        return "\n".join(lines)


class NEBLearner(LearningRun):
    """NEB, check, label the uncertain images, fine-tune, repeat until the barrier is verified.

    Every image of ``images`` (endpoints included) gets a
    :meth:`~MLIPALCalculator.share` of ``calc``. Round ``k`` relaxes the
    band (climbing image) on the model of round ``k`` (0: pretrained) from
    where the last round left it, with an :class:`UncertaintyTrigger`
    watching every ``interval`` steps and a
    :class:`~ase_mlipal.guards.PhysicalGuard` every step; a band that
    steps over a pass of the model's own between two images gets an image
    moved onto it and relaxes again (:meth:`_onto_the_pass`). Then the
    highest interior image is labelled and checked: its barrier (the
    difference to the first endpoint, labelled in round 0 with the other
    endpoint) must agree with the reference within 2 sigma and within
    ``barrier_tolerance``, its forces within 2 sigma, and it must be a
    saddle of the reference too (its climbing force small:
    :func:`~ase_mlipal.learning.verification.check_frame`). A barrier is the
    band's *maximum*, so the other image with the highest upper bound
    (energy + 2 sigma) is checked the same way when that bound comes within
    ``barrier_tolerance`` of the climbing image: a band the model thinks
    flat (or whose climbing image sits beside an endpoint) is not verified
    by a check at the reactant. The least certain interior image left
    (largest ``energy_std``) is audited too: within 2 sigma, and the
    reference not above the band's barrier + ``barrier_tolerance``; a model
    that invents a deep well between the endpoints (a barrierless band)
    fails there. The run is ``confident`` when a band converged, every
    interior image of it is below the threshold on the posterior its
    relaxation started with (``NEBRound.quiet``; frames flagged on the way
    are labelled all the same) and all its checks passed. Else
    the flagged images and a failed check are labelled, the pretrained
    model is fine-tuned on all labelled frames and swapped in if it is no
    worse on the checks so far, or within ``barrier_tolerance`` of them
    (:meth:`LearningRun.learn`), and the next
    band runs. A band that leaves chemistry stops the run (``report.stopped``);
    its frame is stored as ``unphysical`` and not labelled. When the model's
    own steps took it there (NEB step > 0, an interior image), the model is
    asked first: the band goes back to where the trigger last judged it,
    the guarded image there is labelled as the round's climbing-image check,
    and a model that fails that check (but for the saddle test) is trained
    on and the next round runs (``NEBRound.runaway`` says so); a model right
    there stops the run. A band whose
    energy *on the model* runs away (:class:`~ase_mlipal.guards.EnergyRunaway`)
    may be an ordinary geometry the model prices wrong: its top image is
    labelled as the round's climbing-image check, and the run stops only if
    the reference too puts it more than the guard's ``max_energy`` above the
    first endpoint and the model is right there, its energy and forces
    within its 2 sigma (the frame is then stored as ``unphysical``); otherwise the failed check is
    trained on and the next round runs (``NEBRound.runaway`` says so).

    With ``max_labels``, a band's flags leave :data:`CHECKS_PER_BAND` labels
    for the next band's checks and, while later bands' flags can still
    train a model, half of the rest (:meth:`label_reserve`; greedy MaxDet
    picks the flags that fit, the rest are stored ``skipped``), and no band
    is run once too few labels are left for its climbing-image and audit
    checks: an unchecked band is never
    verified nor chosen. The flags of the last band ``max_rounds`` allows
    are labelled (no check follows it) though no fine-tune uses them.

    After the run the calculator holds the final band's model and posterior,
    that band's flags settled in it (bookkeeping); ``report.final.profile``
    is judged without them, so a ``path_profile(..., relaxed_on_model=False)``
    of ``report.images`` on the calculator reads a smaller sigma than the
    report's. The bands are read with the posterior's calibration
    (``relaxed_on_model=False``): the band calibration describes a model
    that has not learned the reaction, and the checks verify the band.

    State lives in ``workdir`` (see :mod:`ase_mlipal.learning.learning_run`, plus
    ``band.traj``): run the same learner again to resume after a crash.

    Args:
        calc: calculator with the pretrained model and its posterior.
        reference: ASE calculator or zero-argument factory (e.g. ``xtb_calculator``).
        workdir: where the run lives.
        images: the initial band, endpoints included (e.g. :func:`band`).
        threshold: trigger threshold (eV/A, largest per-atom force uncertainty).
        max_rounds: learning rounds at most (bands run: up to ``max_rounds + 1``).
        max_rejections: the run ends after this many fine-tunes in a row on
            the same labels are rejected by the model choice (each round
            trains with its own seed; default :data:`MAX_REJECTIONS`).
        barrier_tolerance: largest barrier error (eV) a passing check may have.
        saddle_fmax: largest per-atom climbing force (eV/A) of the reference at
            a climbing image it confirms as a saddle (see
            :data:`~ase_mlipal.learning.verification.SADDLE_FMAX`); a top above
            it bounds the barrier from above only.
        fmax, steps: NEB convergence criterion (eV/A) and step limit per round.
        interval: trigger interval in optimiser steps.
        guard: the physical guard (default: one built from the endpoints).
        optimizer: ASE optimiser class for the band.
        climb, method: passed to ``ase.mep.NEB``.
        band_start: where each round's band starts: ``"initial"`` (``images``,
            the start a direct reference NEB takes, so the final band finds
            the pass that NEB would find) or ``"previous"`` (where the last
            round left it: fewer model steps, but a band a poor early model
            bent can carry into another, higher pass; on the benchmark's
            formic acid -> CO2 + H2 it ended on a saddle 1.8 eV above the one a
            reference NEB from the same start finds).
        trust_radius: with a value (A), each round's images stay within it of
            the band the round started from or of a frame this run labelled
            (:class:`~ase_mlipal.learning.trust_region.TrustRegion`, distances
            as the band's length measures them); a relaxation an image leaves
            it by is stopped there (``NEBRound.paused``), the band judged,
            checked and learned from where it stopped, and the next round
            starts from it. ``"spacing"``: the initial band's mean spacing
            between neighbouring images. ``None`` (default): no bound but the
            guard's.
        store, conditioning, executor, finetune_options, run_id, progress, max_labels: see
            :class:`~ase_mlipal.learning.learning_run.LearningRun`.
    """

    kind = "neb"

    @property
    def choice_tolerance(self) -> float:
        """A fine-tune whose check errors are within ``barrier_tolerance`` is taken (its barriers are right)."""
        return self.barrier_tolerance

    def __init__(
        self,
        calc: MLIPALCalculator,
        reference: Reference,
        workdir: Union[str, os.PathLike],
        images: Sequence[Atoms],
        threshold: float,
        max_rounds: int = 4,
        barrier_tolerance: float = BARRIER_TOLERANCE,
        max_rejections: int = MAX_REJECTIONS,
        fmax: float = 0.05,
        steps: int = 300,
        interval: int = 5,
        store: Union[FrameStore, str, None] = None,
        conditioning: Optional[Sequence[Atoms]] = None,
        executor: Optional[Executor] = None,
        finetune_options: Optional[dict] = None,
        guard: Optional[PhysicalGuard] = None,
        optimizer: Callable[..., Optimizer] = FIRE,
        climb: bool = True,
        method: str = "improvedtangent",
        band_start: str = "initial",
        run_id: str = "neb",
        progress: Optional[bool] = None,
        max_labels: Optional[int] = None,
        saddle_fmax: float = SADDLE_FMAX,
        trust_radius: Union[float, str, None] = None,
        **deprecated,
    ):
        check_band(images, at_least=3)
        for k, image in enumerate(images):  # before the run writes anything
            try:
                check_atoms(image, calc.batch_maker.elements)
            except ValueError as error:
                raise ValueError(f"image {k}: {error}") from None
        if max_rounds < 0 or not barrier_tolerance > 0 or not saddle_fmax > 0 or max_rejections < 1:
            raise ValueError("max_rounds must be >= 0, max_rejections >= 1, barrier_tolerance and saddle_fmax "
                             "positive")
        if not (trust_radius is None or trust_radius == "spacing"
                or (isinstance(trust_radius, (int, float)) and trust_radius > 0)):
            raise ValueError(f"trust_radius must be positive (A), 'spacing' or None, not {trust_radius!r}")
        if band_start not in ("initial", "previous"):
            raise ValueError(f"band_start must be 'initial' or 'previous', not {band_start!r}")
        super().__init__(calc, reference, workdir, store=store, conditioning=conditioning, executor=executor,
                         finetune_options=finetune_options, run_id=run_id, progress=progress,
                         max_labels=max_labels, **deprecated)
        self.images = [image.copy() for image in images]
        self.initial_band = [image.positions.copy() for image in images]
        self.band_start = band_start
        self.threshold, self.max_rounds, self.barrier_tolerance = threshold, max_rounds, barrier_tolerance
        self.max_rejections = max_rejections
        self.fmax, self.steps, self.interval, self.saddle_fmax = fmax, steps, interval, saddle_fmax
        self.guard = guard if guard is not None else PhysicalGuard([self.images[0], self.images[-1]])
        if self.guard.initial_length is None:
            self.guard.initial_length = float(reaction_coordinate(self.images)[-1])
        self.optimizer, self.climb, self.method = optimizer, climb, method
        spacing = float(reaction_coordinate(self.images)[-1]) / (len(self.images) - 1)
        self.trust_radius: Optional[float] = spacing if trust_radius == "spacing" else trust_radius
        self._trust: Optional[TrustRegion] = None

    def run(self) -> NEBReport:
        """Run (or resume) bands until one is verified, a guard stops it or ``max_rounds``."""
        if self.read_state():
            self._restore_band("band.traj")
            if self._path("band_initial.traj").exists():
                self.initial_band = [a.positions.copy() for a in read(self._path("band_initial.traj"), ":")]
        else:
            self.state.update(rounds=[], confident=False, stopped="", anchor_id=None)
            self._save_band("band_initial.traj")
            self._save_band()
            self.write_state()
        rounds = [NEBRound.from_dict(r) for r in self.state["rounds"]]
        number = self.state["round"]
        while (not (self.state["confident"] or self.state["stopped"] or self.state.get("rejections_spent"))
               and number <= self.max_rounds):
            neb_round = self._band_round(number)
            if neb_round is None:
                self.write_state()
                break
            rounds.append(neb_round)
            self._save_band(f"band_round{number}.traj")
            self.calc.save_posterior(self._path(f"posterior_band{number}.npz"))
            while not self.state["confident"] and number < self.max_rounds:
                if self._budget_spent(f"the checks of round {number + 1}", needed=min(2, len(self.images) - 2)):
                    break  # a band the budget cannot check (climbing image, audit) is neither verified nor chosen
                # a rejected fine-tune leaves model and band as they were: train again (the seed is the
                # round's) rather than rerun the same band and check
                number += 1
                neb_round.learning = self.learn(number, self._trigger(number),
                                                anchor=self.store.frame(self.state["anchor_id"]))
                if neb_round.learning.accepted:
                    break
                if number - neb_round.round >= self.max_rejections:  # rejected max_rejections times in a row
                    self.state["rejections_spent"] = True
                    break
            else:
                number += 1
            rejected = neb_round.learning is not None and not neb_round.learning.accepted
            if neb_round.learning is None or rejected:  # the model in use ran this band: resume on its posterior
                self.state["posterior"] = f"posterior_band{neb_round.round}.npz"
            self.state.update(round=number, rounds=[r.as_dict() for r in rounds])
            self._save_band()
            self.write_state()
            if rejected:
                break  # the last fine-tunes were all rejected: nothing new to run
        best = self._final_band(rounds)
        return NEBReport(rounds, [image.copy() for image in self.images], self.state["confident"],
                         self.state["stopped"], list(self.choice.history), final_round=best,
                         ended=self._why_ended(rounds), barrier_tolerance=self.barrier_tolerance)

    def _why_ended(self, rounds: list[NEBRound]) -> str:
        """Why a run neither confident nor stopped ended ("" for those): the rounds ran out."""
        if self.state["confident"] or self.state["stopped"]:
            return ""
        last = rounds[-1].learning if rounds else None
        if self.state.get("rejections_spent"):
            return (f"the model choice rejected max_rejections={self.max_rejections} fine-tunes in a row on the "
                    f"labels of round {rounds[-1].round}, see model_choice: no new model was left to run a band on")
        why = f"max_rounds={self.max_rounds} reached before a band was verified"
        if last is not None and not last.accepted:
            why += (f" (the fine-tunes on the labels of round {rounds[-1].round} were rejected by the model "
                    "choice, see model_choice: no new model was left to run a band on)")
        return why

    def _final_band(self, rounds: list[NEBRound]) -> Optional[int]:
        """Index of the band the run ends on (:meth:`_best_verified`), swept first (:meth:`_sweep`): a sweep that
        shows the chosen band off may hand the choice to another band, which is swept in turn. A confident run
        ends on its last band, swept before it was called confident."""
        held = None if self.state["stopped"] else len(rounds) - 1  # the band the calculator and images hold
        best, swept = self._best_verified(rounds, held), set()
        while (best is not None and best not in swept and not self.state["confident"] and not rounds[best].sweep
               and not rounds[best].cut_short):
            swept.add(best)
            self._sweep(rounds[best], read(self._path(f"band_round{rounds[best].round}.traj"), ":"))
            self.state["rounds"] = [r.as_dict() for r in rounds]
            self.write_state()
            best = self._best_verified(rounds, held=best)
        return best

    def _best_verified(self, rounds: list[NEBRound], held: Optional[int] = None) -> Optional[int]:
        """Index of the band whose checks allow it the least error; its model and band are restored unless it is
        the one the calculator and images hold (index ``held``; ``None``: none of them).

        The last band is not always the best: a fine-tune that passed the
        model choice can still give a band whose fresh check is worse (or a
        band a guard stopped). Checks within ``barrier_tolerance`` of the
        least off are as good at the resolution the user asked for (the
        tolerance the model choice takes a fine-tune within): of those bands
        the latest is chosen, its model having learned from every label
        before it. A band whose relaxation a guard cut short
        (``NEBRound.runaway``) or the trust region paused
        (``NEBRound.paused``) is no barrier: it is chosen only when no other
        band was checked.
        A band whose top the reference does not confirm as a saddle estimates
        the barrier from above only, however well its checks agree
        (:attr:`NEBRound.possible_error`): the bands that reached a saddle of
        the reference are chosen from unless the least off of them is further
        off than such a band could be; then the choice is among the others.
        The calculator and ``self.images`` end on the chosen band, so a run
        never ends worse than its checks allow.
        """
        checked = [k for k, r in enumerate(rounds) if np.isfinite(r.verified_error)]
        checked = [k for k in checked if not rounds[k].cut_short] or checked  # a band cut short has no barrier
        if not checked:
            return None
        if self.state["confident"]:
            return len(rounds) - 1
        saddles = [k for k in checked if not rounds[k].top_unconfirmed]
        others = [k for k in checked if rounds[k].top_unconfirmed]
        if saddles and others and (min(rounds[k].verified_error for k in saddles)
                                   > min(rounds[k].possible_error for k in others)):
            saddles = []
        pool = saddles or others
        least = min(rounds[k].verified_error for k in pool)
        best = max(k for k in pool if rounds[k].verified_error <= least + self.barrier_tolerance)
        if best != held:
            model_round = rounds[best].model_round
            model = self.pretrained if model_round == 0 else self._path(f"model_round{model_round}.pt")
            self.calc.set_model(model, conditioning=[])
            self.calc.load_posterior(self._path(f"posterior_band{rounds[best].round}.npz"))
            self._restore_band(f"band_round{rounds[best].round}.traj")
        return best

    def label_reserve(self, room: int) -> int:
        """How many of ``room`` labels a band's flags leave for the bands after it (may exceed ``room``):
        the next band's checks (climbing image, band maximum, audit), then half of the rest.

        A band the budget cannot check is never verified and never chosen:
        the flags that trained its model would be labels spent for nothing.
        Half of the rest (rounded down) paces the budget: the first band's
        flags, chosen on a model that has seen nothing of the reaction, cannot
        take every label the later, better informed bands would flag. The
        band before the last one ``max_rounds`` allows keeps back only the
        last band's checks (the last band's flags train no model), and the
        last band keeps nothing back.
        """
        number = self.state["round"]
        if number >= self.max_rounds:
            return 0
        later_flags_train = number < self.max_rounds - 1
        return CHECKS_PER_BAND + (max(0, room - CHECKS_PER_BAND) // 2 if later_flags_train else 0)

    def _trigger(self, number: int) -> UncertaintyTrigger:
        return UncertaintyTrigger(self.calc, self.store, self.threshold, source="neb",
                                  run_id=f"{self.run_id}-round{number}")

    def _band_round(self, number: int) -> Optional[NEBRound]:
        """Relax the band on the current model; label flags, endpoints and the checked images; check them."""
        trigger = self._trigger(number)
        # each model judges its own start: a new model that prices the (physical) initial band high is wrong, not it
        self.guard.new_relaxation()
        previous = self.state["rounds"][-1] if self.state["rounds"] else {}
        paused = previous.get("paused")  # the band goes on from where the trust region stopped it
        if (self.band_start == "initial" and not paused) or previous.get("runaway"):  # a band cut short is no start
            for image, positions in zip(self.images, self.initial_band):
                image.positions = positions
        self._trust = self._trust_region()
        cut = None  # the guard stop the relaxation was cut short by, if the reference is asked about it
        onto_pass = lower_route = ""
        try:
            converged, steps = self._relax(trigger, f"round {number}")
            onto_pass = "" if self._paused() else self._onto_the_pass()
            if onto_pass:  # the band stepped over the model's own pass: relax again with an image on it
                self.guard.new_relaxation()
                converged, more = self._relax(trigger, f"round {number}, after moving an image onto the pass")
                steps += more
            lower = None if self._trust is not None else self._lower_route(trigger, number)
            if lower is not None:  # an earlier band crossed lower on this model: the round goes on with it
                (lower_route, converged, more), onto_pass = lower, ""  # the band moved onto a pass is dropped
                steps += more
        except EnergyRunaway as error:  # the geometry passed the guard: ask the reference (below) before stopping
            if not 0 < error.image < len(self.images) - 1:  # an endpoint far above the other: nothing to relax
                return self._stop_unphysical(error, trigger.run_id)
            cut, converged, steps = error, False, error.step or 0
        except UnphysicalFrame as error:
            if not self._model_moved_into(error):
                return self._stop_unphysical(error, trigger.run_id)
            # the model drove the band there: store the frame, go back to the last band the trigger judged and
            # ask the reference about the image there (below) before stopping
            self.store.add_unphysical(error.atoms, source="neb", reason=str(error), run_id=trigger.run_id)
            cut, converged, (steps, positions) = error, False, error.last_band
            for image, judged in zip(self.images, positions):
                image.positions = judged
        # judged on what the model learned: the flags are seen, not learned (UncertaintyModel.seen)
        neb_round = self._judge_band(number, trigger, converged, steps, cut, self._band_is_quiet(trigger))
        if neb_round is not None:
            neb_round.onto_pass, neb_round.paused, neb_round.lower_route = onto_pass, self._paused(), lower_route
        return neb_round

    def _trust_region(self) -> Optional[TrustRegion]:
        """The round's trust region: the band as it starts and the frames this run labelled (``None`` without
        ``trust_radius``)."""
        if self.trust_radius is None:
            return None
        known = [image.positions.copy() for image in self.images]
        known += [row.positions for status in ("labelled", "verified") for row in self.store.rows(status)
                  if self._owns(row) and len(row.positions) == len(self.images[0])]
        return TrustRegion(self.trust_radius, known)

    def _paused(self) -> str:
        """Where the last relaxation left the trust region ("" if it did not)."""
        return "" if self._trust is None or self._trust.left is None else str(self._trust.left)

    def _relax(self, trigger: UncertaintyTrigger, where: str) -> tuple[bool, int]:
        """:func:`relax_band` on the learner's band, model and settings: ``(converged, steps)``."""
        return relax_band(self.images, self.calc, trigger, fmax=self.fmax, steps=self.steps, interval=self.interval,
                          optimizer=self.optimizer, climb=self.climb, method=self.method, guard=self.guard,
                          where=where, progress=self.progress, trust=self._trust)

    def _onto_the_pass(self) -> str:
        """Move an image onto the model's own pass between two images of the relaxed band, if the band steps
        over one; what was done, or "" if nothing.

        The model's energies and forces at two neighbouring images imply its
        highest point on the line between them
        (:func:`~ase_mlipal.paths.highest_between_images`). Where that tops
        every image by more than ``barrier_tolerance``, the climbing-image
        NEB has stepped over a pass its images do not resolve, and its
        climbing image sits on a lower one: on held-out cyclobutene ->
        butadiene the model put a point between two images of a final band
        1.6 eV above that band's climbing image (the reference 1.4 eV). The
        interior image whose neighbours are nearest each other, where the
        band has images to spare, is moved there (the band keeps its number of
        images) and the band is relaxed again, its climbing image now on the
        pass. A point a physical guard rejects is left alone.
        """
        energies = [image.get_potential_energy() for image in self.images]
        labels = {k: (energy, image.get_forces()) for k, (energy, image) in enumerate(zip(energies, self.images))}
        positions = [image.positions.copy() for image in self.images]
        peak = highest_between_images(positions, labels)
        if peak is None or not peak[0] > max(energies) + self.barrier_tolerance:
            return ""
        energy, k, fraction = peak
        probe = self.images[k].copy()
        probe.positions = point_between(positions, k, fraction)
        spare = [i for i in range(1, len(positions) - 1) if i not in (k, k + 1)]
        if not spare or self.guard.problem(probe):
            return ""
        drop = min(spare, key=lambda i: float(np.linalg.norm(positions[i + 1] - positions[i - 1])))
        positions.insert(k + 1, probe.positions)
        del positions[drop if drop < k else drop + 1]
        for image, moved in zip(self.images, positions):
            image.positions = moved
        return (f"the model put the point {fraction:.2f} of the way from image {k} to {k + 1} "
                f"{energy - max(energies):.2f} eV above the band's highest image: image {drop} was moved there and "
                "the band relaxed again")

    def _lower_route(self, trigger: UncertaintyTrigger, number: int) -> Optional[tuple[str, bool, int]]:
        """Relax, on the current model, the earlier band the model puts lowest, and keep it if it converges to a
        pass lower than the relaxed band's barrier by more than ``barrier_tolerance``: ``(what was found,
        converged, steps)``, or ``None`` (no earlier band, or no lower converged pass; the band stays as it was).

        The barrier is the lowest pass over all paths, and a climbing-image
        NEB finds the pass of the route it starts on. A fine-tuned model can
        send the band from ``band_start`` over a higher pass than the route
        an earlier round's band followed. On a rerun of ``mlipal demo``
        round 2's model took the band from the initial start to a pass at
        4.93 eV (xTB's barrier: 3.12 eV), while the same model, relaxing
        round 0's band, found a pass at 4.24 eV. No reference call of its
        own: the trigger watches this relaxation as any other (its flags
        are labelled with the round's), and the round's checks verify the
        band kept. A relaxation a guard stops is dropped, so a band a guard
        cut short is a candidate too (a later model may cross it). Not run
        under a trust region (the band must stay near what was labelled).
        """
        rounds = self.state["rounds"]
        started = ("band_initial.traj" if self.band_start == "initial" or not rounds or rounds[-1].get("runaway")
                   else f"band_round{rounds[-1]['round']}.traj")  # where _band_round started this round
        candidates = ["band_initial.traj"] + [f"band_round{r['round']}.traj" for r in rounds]  # cut short too
        candidates = [name for name in candidates if name != started and self._path(name).exists()]
        if not candidates:
            return None
        barrier, first = self._model_barrier(self.images)
        tops = {name: self._model_barrier(read(self._path(name), ":"), first)[0] for name in candidates}
        name = min(tops, key=tops.get)
        kept = [image.positions.copy() for image in self.images]
        for image, start in zip(self.images, read(self._path(name), ":")):
            image.positions = start.positions
        self.guard.new_relaxation()
        try:
            converged, steps = self._relax(trigger, f"round {number}, from {name}")
            lower = self._model_barrier(self.images, first)[0]
        except UnphysicalFrame:  # an EnergyRunaway too: the other route is no band to go on with
            converged, steps, lower = False, 0, np.inf
        if not (converged and lower < barrier - self.barrier_tolerance):  # unconverged: its pass is not found yet
            for image, positions in zip(self.images, kept):
                image.positions = positions
            return None
        return (f"relaxed from {name} (its highest image {tops[name]:.2f} eV on this model), the band crosses a "
                f"lower pass: {lower:.2f} eV against {barrier:.2f} eV from the round's start", converged, steps)

    def _model_barrier(self, images: Sequence[Atoms], first: Optional[float] = None) -> tuple[float, float]:
        """The model's highest interior energy of ``images`` above the first endpoint and that endpoint's energy
        (eV; ``first``: the endpoint's energy, known already)."""
        for image in images:
            if not isinstance(image.calc, MLIPALCalculator):  # a band read back from its file
                image.calc = self.calc.share()
        if first is None:
            first = images[0].get_potential_energy()
        return max(image.get_potential_energy() for image in images[1:-1]) - first, first

    def _judge_band(self, number: int, trigger: UncertaintyTrigger, converged: bool, steps: int,
                    cut: Optional[UnphysicalFrame], quiet: bool) -> Optional[NEBRound]:
        """Profile, label and check the band a relaxation left (``cut``: the guard stop it was cut short by)."""
        # the path-fitted sigma, not the band calibration: the checks verify the band, and once labels lie near it
        # a map of an untrained model's errors is far too wide (benchmarks/calibration_model_bands.py)
        profile = path_profile(self.calc, self.images, label=f"round {number}", relaxed_on_model=False)
        if self.state["anchor_id"] is None:
            endpoint_ids = [self.store.add_flagged(self.images[k], source="endpoint", image=k,
                                                   run_id=trigger.run_id)[0] for k in (0, len(self.images) - 1)]
            self.state.update(anchor_id=endpoint_ids[0], endpoint_ids=endpoint_ids)
        top = 1 + int(np.argmax(profile.energy[1:-1])) if cut is None else cut.image
        rival = self._band_rival(profile, top)
        audit = self._band_audit(profile, {top, rival})
        check_ids = {k: self._add_check_frame(k, steps, trigger.run_id) for k in (top, rival, audit) if k is not None}
        keep = set(check_ids.values()) | set(self.state.get("endpoint_ids", [self.state["anchor_id"]]))
        if not self.label_within_budget(keep, what=f"the checks of round {number}"):  # on the posterior judged
            if cut is not None:  # say why the band stopped too
                self.state["stopped"] = f"{cut} ({self.state['stopped']})"
            return None
        anchor = self.store.frame(self.state["anchor_id"])
        if anchor.info["status"] == "failed":
            self.state["stopped"] = (f"the reference failed on the first endpoint (store row "
                                     f"{anchor.info['store_id']}: {anchor.info.get('error', '')}); "
                                     "no barrier can be verified")
            return None
        tangent = self.images[top + 1].positions - self.images[top - 1].positions
        check = self.check(self.store.frame(check_ids[top]), number, "climbing_image", anchor=anchor,
                           tolerance=self.barrier_tolerance, tangent=tangent,
                           saddle_fmax=self.saddle_fmax)
        band_check = None if rival is None else self.check(self.store.frame(check_ids[rival]), number, "band_max",
                                                           anchor=anchor, tolerance=self.barrier_tolerance)
        audit_check = None if audit is None else self.check(
            self.store.frame(check_ids[audit]), number, "audit", anchor=anchor,
            ceiling=profile.barrier + self.barrier_tolerance)
        neb_round = NEBRound(number, profile, converged, steps, len(trigger.flagged), check,
                             model_round=self.choice.round, band_check=band_check, audit=audit_check, quiet=quiet)
        if isinstance(cut, EnergyRunaway):
            neb_round.runaway = self._judge_runaway(cut, check, profile.energy[top])
        elif cut is not None:
            neb_round.runaway = self._judge_guard_stop(cut, [c for c in (check, band_check, audit_check) if c])
        if self.state["stopped"]:
            return None
        self.state["confident"] = all(c.passed for c in neb_round.checks) and quiet and converged
        if self.state["confident"]:  # the band would end the run: look where no check did
            self._sweep(neb_round, self.images)
        return neb_round

    def _sweep(self, neb_round: NEBRound, images: Sequence[Atoms]) -> None:
        """Label the interior images of ``neb_round``'s band (``images``) that none of its checks saw, the
        highest energy + 2 sigma first, as many as the label budget leaves, then the reference's highest point
        between images if it tops them (:meth:`_between_images`): :attr:`NEBRound.sweep`.

        The barrier is the band's maximum, and an image the model prices far
        too low is no candidate for a check (the climbing image and the band
        maximum are the model's highest, the audit its least certain), as
        the well the audit found on formic acid -> CO2 + H2 would be at an
        image the audit did not pick. A place the reference puts more than
        ``barrier_tolerance`` above the barrier leaves the run unconfident
        (the loop goes on where rounds and labels are left, its label
        training the next model), and it widens the reported interval
        (:attr:`NEBRound.verified_error`) either way.
        """
        profile = neb_round.profile
        seen = {c.image: c.store_id for c in neb_round.checks}
        left = sorted((k for k in range(1, len(images) - 1) if k not in seen),
                      key=lambda k: profile.energy[k] + 2.0 * profile.energy_std[k], reverse=True)
        rows = {k: self.store.add_flagged(images[k], source="sweep", image=k, run_id=self.run_id)[0]
                for k in left[:self._labels_left()]}
        if rows:
            label(self.store, self.reference, executor=self.executor, progress=self.progress,
                  row_ids=set(rows.values()))
        first = read_labels(self.store.frame(self.state["anchor_id"]))[0]
        for k, row_id in sorted(rows.items()):
            neb_round.sweep.append(SweptImage(k, self._reference_above(first, row_id), float(profile.energy[k])))
        ends = dict(zip((0, len(images) - 1), self.state.get("endpoint_ids", [self.state["anchor_id"]])))
        self._between_images(neb_round, images, {**ends, **seen, **rows}, first)
        if any(s.reference - profile.barrier > self.barrier_tolerance for s in neb_round.sweep):
            self.state["confident"] = False

    def _between_images(self, neb_round: NEBRound, images: Sequence[Atoms], rows: dict[int, int],
                        first: float) -> None:
        """Label the point between two neighbouring labelled images (store ``rows`` by image) where the
        reference's energy along the band peaks, if that peak tops both the band's barrier and every labelled
        image by more than ``barrier_tolerance`` (one label, within the budget; ``first``: the reference energy
        of the first endpoint, eV).

        A pass can lie between images, where no image label looks: the
        reference's energies and forces at two neighbouring images imply the
        highest point on the straight line between them
        (:func:`~ase_mlipal.paths.highest_between_images`). A peak within the
        tolerance of what the labels show already would not change the
        verdict. A point a physical guard rejects is not labelled.
        """
        labels = {k: read_labels(frame) for k, frame in ((k, self.store.frame(i)) for k, i in rows.items())
                  if frame.info["status"] in ("labelled", "verified")}
        if not labels or self._labels_left() == 0:
            return
        highest = max(max(energy for energy, _ in labels.values()), first + neb_round.profile.barrier)
        positions = [image.positions for image in images]
        peak = highest_between_images(positions, labels)
        if peak is None or not peak[0] > highest + self.barrier_tolerance:
            return
        _, k, fraction = peak
        point = images[k].copy()
        point.calc = None
        point.positions = point_between(positions, k, fraction)
        if self.guard.problem(point):
            return
        row_id = self.store.add_flagged(point, source="between", image=k, run_id=self.run_id)[0]
        label(self.store, self.reference, executor=self.executor, progress=self.progress, row_ids={row_id})
        model = self.calc.predict([images[0], point], force_variance=False, rows=False)[0]
        neb_round.sweep.append(SweptImage(k + fraction, self._reference_above(first, row_id),
                                          float(model[1] - model[0])))

    def _reference_above(self, first: float, row_id: int) -> float:
        """The reference energy of store row ``row_id`` less ``first`` (eV); nan where the reference gave no label."""
        frame = self.store.frame(row_id)
        labelled = frame.info["status"] in ("labelled", "verified")
        return float(read_labels(frame)[0] - first) if labelled else float("nan")

    def _labels_left(self) -> Optional[int]:
        """Labels the budget leaves (``None`` without ``max_labels``)."""
        return None if self.max_labels is None else max(0, self.max_labels - self.labels_used())

    def _stop_unphysical(self, error: UnphysicalFrame, run_id: str) -> None:
        """Store the frame a guard stopped as ``unphysical`` (never labelled) and stop the run."""
        self.store.add_unphysical(error.atoms, source="neb", reason=str(error), run_id=run_id)
        self.state["stopped"] = str(error)
        return None

    def _model_moved_into(self, error: UnphysicalFrame) -> bool:
        """Did the model's forces move an interior image into ``error`` (not the band it was given)?"""
        return (bool(error.step) and error.last_band is not None and error.image is not None
                and 0 < error.image < len(self.images) - 1)

    def _judge_guard_stop(self, error: UnphysicalFrame, checks: list[Check]) -> str:
        """Stop the run if the model is right about the band where it was last judged; else say why the loop
        goes on.

        ``checks``: the band's checks on the last band the trigger judged
        (``error.last_band``; the guard passed it), first the climbing-image
        check of the guarded image, then the band's other checked images.
        The model moved the band from there into the unphysical frame: a
        model that fails any of them (energy outside 2 sigma or beyond
        ``barrier_tolerance``, forces outside 2 sigma: every criterion but
        the saddle test), or whose forces fail the sigma-free bound of
        :meth:`_force_bound` (a passed check then fails after all), is at
        fault, a hole in it pulled the band in, and learning the reference
        there is what keeps the next band out. The guarded image alone does
        not settle it: held-out glyoxal -> hydroxyketene's round-0 band grew
        to 3x its length while the model was right about the image beside
        the longest step and 4 eV too low in the middle of the band. A model
        right about every checked image is followed into the unphysical frame
        by the chemistry itself: the run stops as any guard stops it (its
        checks and the round's flags are labelled by then, and ``images``
        hold the band the trigger last judged). A reference that fails at the
        guarded image, or a guarded image the model in use trained on already
        (the band stopped again where it learned: nothing new), stops the run
        too.
        """
        check = checks[0]
        step, problem = error.last_band[0], re.split(r"; (the run is )?stopped", str(error))[0]
        if not np.isfinite(check.energy_error):
            self.state["stopped"] = f"{error} (the reference gave no label at NEB step {step}: it cannot be judged)"
            return self.state["stopped"]
        if check.store_id in self.state["trained_ids"]:  # the model in use learned this frame: nothing new to learn
            self.state["stopped"] = (f"{error} (the band stopped again after NEB step {step}, where the model in use "
                                     f"was trained already; it is off by {check.energy_error:+.2f} eV there)")
            return self.state["stopped"]
        failures = []
        for judged in (c for c in checks if np.isfinite(c.energy_error)):
            off = [why for why in judged.reason.split("; ") if why and not why.startswith("not a saddle")]
            exceeded, count = self._force_bound(judged)
            if exceeded:
                off.append(f"force components {count}")
                self._train_on(judged, count)
            if off:
                failures.append(f"image {judged.image} fails its check ({'; '.join(off)})")
        if not failures:  # every criterion of every check but the saddle test passed: the model is right
            others = ", ".join(str(c.image) for c in checks[1:])
            self.state["stopped"] = (f"{error} (at NEB step {step} the model is right about image {error.image}: "
                                     f"off by {check.energy_error:+.2f} eV, 1 sigma {check.energy_std:.2f}, its "
                                     f"forces within 2 sigma and within {2 * self.threshold:.2f} eV/A"
                                     + (f"; and about the band's other checked images ({others})" if others else "")
                                     + ")")
            return self.state["stopped"]
        return (f"{problem}: the model drove the band there; at NEB step {step} {'; '.join(failures)}, so "
                f"{'that check is' if len(failures) == 1 else 'those checks are'} trained on next and the frame "
                "is stored as 'unphysical'")

    def _judge_runaway(self, error: EnergyRunaway, check: Check, energy: float) -> str:
        """Stop the run if the reference confirms the runaway; else say why the loop goes on.

        ``check``: the runaway image's climbing-image check; ``energy``: the
        model's energy of it above the first endpoint (eV). The reference's
        energy of the image is compared with the guard's own limit, above
        the lower endpoint (:meth:`PhysicalGuard.check_band`). Confirmed: the
        reference too puts the image above that limit and the model is right
        there: its energy within 2 sigma, and its forces, which moved the band
        there, within 2 sigma as the check counts them
        (:func:`~ase_mlipal.learning.verification.allowed_outside`) *and*
        within ``2 * threshold`` of the reference's, counted the same way
        (the errors of a frame the trigger leaves unflagged, were its sigma
        calibrated). The last bound does not read the model's sigma: a wide
        sigma far from the data covered forces 15 eV/A off at the round-0
        runaway of held-out acetonitrile -> methyl isocyanide, where the
        reference NEB climbs no higher than 3.8 eV. (:meth:`_judge_guard_stop`
        asks ``barrier_tolerance`` too, which an image many eV up is not held
        to.) Then the band itself climbs, a model that learned the image
        would only learn what it knows, and the frame is stored as
        ``unphysical``. A model off by more, in its energy or in the forces
        that moved the band, is at fault: it drove the band into a region it
        prices wrong, and learning the reference there is what moves the next
        band away (the failed check is trained on next; a check that passed
        with forces beyond the bound fails after all). A reference that
        fails on the image stops the run too (its row stays ``failed``): the
        runaway cannot be judged. A row already ``unphysical`` (a run killed
        after the verdict) keeps its verdict, also one an earlier version of
        this rule gave (a new ``workdir`` judges the band anew).
        """
        row = self.store.db.get(id=check.store_id)
        if row.status == "unphysical":  # judged before a kill: the verdict stands
            self.state["stopped"] = row.get("error", str(error))
            return self.state["stopped"]
        reference = energy - check.energy_error + self._first_endpoint_above_lower()
        if not np.isfinite(reference):
            self.state["stopped"] = f"{error} (the reference gave no label for the image: the runaway cannot be judged)"
            return self.state["stopped"]
        limit = max(self.guard.max_energy, self.guard.initial_top if self.guard.initial_top is not None else -np.inf)
        exceeded, count = self._force_bound(check)
        wrong = self._wrong_about_climb(check, exceeded, count)
        if reference <= limit or wrong:
            why = "not a runaway of the chemistry" if reference <= limit else ", and ".join(wrong)
            if exceeded:
                self._train_on(check, count)
            return (f"{error.where}: the model put the image {error.energy:.1f} eV above the lower endpoint, the "
                    f"reference {reference:.2f} eV (model error {check.energy_error:+.2f} eV, "
                    f"1 sigma {check.energy_std:.2f}): {why}"
                    + ("; its check passed" if check.passed else "; its check failed and is trained on next"))
        self.state["stopped"] = (f"{error} (the reference: {reference:.1f} eV above the lower endpoint too, the "
                                 f"model's energy within its 2 sigma and its forces within its 2 sigma and within "
                                 f"{2 * self.threshold:.2f} eV/A: the band itself climbs; start from a band "
                                 "nearer the reaction path, e.g. through an intermediate image)")
        check.passed, check.reason = False, "an energy runaway the reference confirms"
        self.store.mark_unphysical(check.store_id, self.state["stopped"])
        return self.state["stopped"]

    @staticmethod
    def _wrong_about_climb(check: Check, exceeded: bool, count: str) -> list[str]:
        """What the model gets wrong at a runaway image (``check``: its labelled check; ``exceeded``, ``count``:
        :meth:`_force_bound`'s verdict on it); empty if nothing."""
        wrong = [] if abs(check.energy_error) <= 2.0 * check.energy_std else ["the model is wrong about this climb"]
        if not check.forces_agree or exceeded:
            wrong.append(f"the model's forces there are wrong ({1 - check.force_coverage:.0%} of components outside "
                         f"2 sigma, {count}, mean error {check.force_mae:.2f} eV/A): they drove the band into "
                         "the climb")
        return wrong

    def _force_bound(self, check: Check) -> tuple[bool, str]:
        """Are more of the model's force components at ``check``'s frame off by more than ``2 * threshold`` than
        :func:`~ase_mlipal.learning.verification.allowed_outside` lets a check have? And how many, in words.

        The errors a frame the trigger leaves unflagged would show, were its
        sigma calibrated; the bound does not read sigma, which far from the
        data can cover forces many eV/A off.
        """
        bound = 2.0 * self.threshold
        beyond, components = force_components_beyond(self.calc, self.store.frame(check.store_id), bound)
        return beyond > allowed_outside(components), f"{beyond} of {components} off by more than {bound:.2f} eV/A"

    def _train_on(self, check: Check, count: str) -> None:
        """A passed check whose forces fail the judges' sigma-free bound fails after all (``count``: how many
        components are off): stored ``labelled`` again, so it is trained on next."""
        if check.passed:
            check.passed, check.reason = False, f"force components {count}"
            self.store.mark_labelled_again(check.store_id)

    def _first_endpoint_above_lower(self) -> float:
        """How far the reference puts the first endpoint above the lower one (eV; 0 if unknown)."""
        energies = []
        for row_id in self.state.get("endpoint_ids", []):
            frame = self.store.frame(row_id)
            if frame.info.get("status") in ("labelled", "verified") and frame.calc is not None:
                energies.append(frame.get_potential_energy())
        return max(0.0, energies[0] - energies[1]) if len(energies) == 2 else 0.0

    def _band_is_quiet(self, trigger: UncertaintyTrigger) -> bool:
        """Is every interior image of the band below the trigger's threshold on the calculator's posterior?

        The posterior the calculator reports from, not the trigger's: a
        flag is seen at once with the weight that settles it below the
        threshold (bookkeeping against flagging one event again and again,
        not a label).
        """
        interior = self.images[1:-1]
        _, batches = self.calc.predict(interior, rows=False)
        values = [trigger.value_of(self.calc.uncertainty_from(features), len(image))
                  for features, image in zip(per_structure(batches), interior)]
        return max(values, default=0.0) <= trigger.threshold

    def _add_check_frame(self, image: int, step: int, run_id: str) -> int:
        """Store image ``image`` of the band for a reference check; its store id."""
        return self.store.add_flagged(self.images[image], source="verify", image=image, step=step, run_id=run_id,
                                      model_hash=self.calc.model_hash)[0]

    @staticmethod
    def _band_audit(profile: PathProfile, checked: set) -> Optional[int]:
        """The interior image not in ``checked`` whose energy the model is least sure of; ``None`` if none is left."""
        left = [k for k in range(1, len(profile.energy) - 1) if k not in checked]
        return max(left, key=lambda k: profile.energy_std[k]) if left else None

    def _band_rival(self, profile: PathProfile, top: int) -> Optional[int]:
        """The interior image besides ``top`` whose energy + 2 sigma is highest, if it reaches
        ``E[top] - barrier_tolerance`` (it could be the band's maximum on the reference); else ``None``."""
        interior = [k for k in range(1, len(profile.energy) - 1) if k != top]
        if not interior:
            return None
        bound = profile.energy + 2.0 * profile.energy_std
        rival = max(interior, key=lambda k: bound[k])
        return rival if bound[rival] >= profile.energy[top] - self.barrier_tolerance else None

    def _restore_band(self, name: str) -> None:
        for image, saved in zip(self.images, read(self._path(name), ":")):
            image.positions = saved.positions

    def _save_band(self, name: str = "band.traj") -> None:
        images = [image.copy() for image in self.images]
        for image in images:
            image.calc = None
        atomic_write(self._path(name), lambda tmp: write(tmp, images, format="traj"))


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
    guard: Optional[PhysicalGuard] = None,
    where: str = "",
    progress: Optional[bool] = None,
    trust: Optional[TrustRegion] = None,
) -> tuple[bool, int]:
    """Relax ``images`` in place by NEB on ``calc`` with ``trigger`` watching; ``(converged, steps)``.

    Each image gets a :meth:`~MLIPALCalculator.share` of ``calc``; the
    trigger checks the band every ``interval`` steps and once more at the
    end. A ``guard`` checks the band at every step and raises
    :class:`~ase_mlipal.guards.UnphysicalFrame` (naming ``where``, the
    step and the image) when it leaves chemistry; its ``step`` is set, and
    its ``last_band`` to the last band the trigger judged (every
    ``interval`` steps, after the guard passed it; at first the band given).
    A ``trust`` region is checked every ``interval`` steps after the
    trigger: the first image outside it ends the relaxation there
    (unconverged; ``trust.left`` says where and when).
    """
    for image in images:
        image.calc = calc.share()
    neb = NEB(list(images), climb=climb, method=method)
    trigger.atoms = neb
    dyn = optimizer(neb, logfile=logfile)
    judged = (0, [image.positions.copy() for image in images])

    def remember_judged() -> None:  # the band the trigger judges (after the guard passed it)
        nonlocal judged
        judged = (int(dyn.nsteps), [image.positions.copy() for image in images])

    if guard is not None:
        dyn.attach(lambda: guard.check_band(neb.images, f"{where}, NEB step {dyn.nsteps}".lstrip(", "),
                                            energies=getattr(neb, "energies", None)))
    dyn.attach(remember_judged, interval=interval)
    dyn.attach(trigger, interval=interval)
    if trust is not None:
        dyn.attach(lambda: trust.check(neb.images), interval=interval)
    with progress_bar(progress=progress, total=steps, desc=f"NEB {trigger.run_id or ''}".strip()) as bar:
        dyn.attach(lambda: bar.update(1) if dyn.nsteps else None)
        try:
            converged = bool(dyn.run(fmax=fmax, steps=steps))
        except UnphysicalFrame as error:
            error.step, error.last_band = int(dyn.nsteps), judged
            raise
        except LeftTrustRegion as error:  # the trigger judged this band already
            error.step = int(dyn.nsteps)
            return False, int(dyn.nsteps)
    if dyn.nsteps % interval:  # the final band is always checked
        trigger(neb, step=dyn.nsteps)
    return converged, int(dyn.nsteps)
