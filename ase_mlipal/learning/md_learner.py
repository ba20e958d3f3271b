"""OnTheFlyLearner: molecular dynamics that stops to learn what it does not know, and audits what it does not flag.

The learner runs MD with an :class:`~ase_mlipal.UncertaintyTrigger`; once
``labels_per_round`` frames wait for a label it pauses, labels them, fine-tunes,
swaps the model in if it is no worse on the checks so far and resumes the
same trajectory (rounds, state and resume: :mod:`ase_mlipal.learning.learning_run`).

A quiet trigger is no proof: about one unflagged frame per
``audit_interval`` steps, drawn at random, is labelled as an **audit** when
it is drawn and checked against the model that drove the dynamics there
(:func:`~ase_mlipal.learning.verification.check_frame`); a final model no
draw audited is audited on the frame the MD ended at. A failed audit starts
a round at once (the model is wrong where the trigger was sure, so the
dynamics must not go on waiting for flags) and is trained on like a flag;
a passed one is kept out of training. Each checked audit also rescales
sigma for the ones after it (``recalibrate``). An audit off by more
than ``rewind_tolerance`` in energy fails whatever its sigma, and marks a hole
in the model's surface that the dynamics ran into: after the round it starts, the MD goes back to the last
frame an audit passed (or the start) and runs on from there with the new
model; the audits past that frame are marked ``rewound``. A physical guard
stop is judged the same way: the last frame checked before it is labelled
(a ``"guard"`` check); a model off there by more than ``rewind_tolerance``
drove the dynamics out of physics through a hole, so the round learns from
it and the MD goes back; a model right there lets the stop stand (the
chemistry itself leads there). The run ends
``confident`` only if the final model had audits and passed them all, one by
one and, for the forces, pooled (:func:`~ase_mlipal.learning.verification.forces_agree_together`).

Files in ``workdir`` beyond :class:`~ase_mlipal.learning.learning_run.LearningRun`'s:
``md.traj`` (positions and momenta at the last checkpoint) and
``md_verified.traj`` (those of the last frame an audit passed). Only the
thermostat's random numbers differ after a resume.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
from ase import Atoms, units
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.optimize.optimize import Dynamics

from ..calculator import MLIPALCalculator
from ..guards import PhysicalGuard, UnphysicalFrame
from ..legacy import renamed_argument
from ..models.graphs import OverlappingAtoms, check_atoms, check_overlap, overlap_message
from ..progress import progress_bar
from ..storage import atomic_write
from .labelling import Reference, label
from .learning_run import LearningRun, RoundRecord
from .store import FrameStore
from .trigger import UncertaintyTrigger
from .verification import Check, forces_agree_together, pooled_force_counts


FRICTION = 0.01 / units.fs  # a 100 fs relaxation time (ASE's documented choice for Langevin)

#: The weight, in frames, of the calibration an audit rescale starts from (``prior_frames`` of
#: :meth:`MLIPALCalculator.rescale`): chosen with whole reactions and molecules held out by
#: ``benchmarks/audit_rescale.py`` (sequences of 15 audits; 1 won on all 34 held-out groups once the energy's
#: factor moved linearly; 2 had won on 33 while both moved in log space).
AUDIT_PRIOR_FRAMES = 1.0

#: eV; an audit whose energy is off by more than this fails and marks a hole the MD ran into (``rewind_tolerance``).
#: Over every MD audit on record when it was chosen (``python benchmarks/audit_holes.py``: 1611 in 93 records,
#: all seeds and settings; 1990 in 115 with the reruns that rewind, the same gap) the failed audits fall in two
#: groups: off by 0.45 eV at most, and the holes (a bridged H of acetaldehyde -> vinyl alcohol, H2 leaving
#: methanol) by 2.7-5.9 eV at an energy sigma of 0.06-0.15 eV. Any value in that gap makes the same decisions
#: on all of them; 1 eV is about 10 kT at the benchmark's 1200 K.
REWIND_TOLERANCE = 1.0
MAX_REWINDS = 3  # the most times a run goes back (``max_rewinds``)
VERIFIED_FILE = "md_verified.traj"
MD_CHECKS = ("audit", "guard")  # the kinds of check an MD run makes: drawn at random, and before a guard stop


def langevin(atoms: Atoms, temperature_K: float = 300.0, timestep_fs: float = 0.5, friction: float = FRICTION,
             seed: Optional[int] = None) -> Dynamics:
    """The default dynamics: Langevin at ``temperature_K``; ``seed`` makes its random forces reproducible.

    ``friction`` is in ASE's inverse time unit, as :class:`ase.md.langevin.Langevin`
    takes it (default ``0.01 / units.fs``). Atoms at rest (all momenta zero)
    first get Maxwell-Boltzmann velocities at ``temperature_K`` (no net
    translation or rotation), so the run is at its temperature from the
    start rather than after the thermostat's slow heating. A resumed run
    keeps its momenta and draws its random forces anew from ``seed``.
    """
    if not np.any(atoms.get_momenta()):
        velocity_rng = np.random.default_rng(None if seed is None else [seed, 1])
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=velocity_rng)
        if len(atoms) > 1:
            with np.errstate(divide="ignore", invalid="ignore"):  # ASE rescales 0/0 for a linear molecule
                Stationary(atoms)
                if not atoms.pbc.any():
                    ZeroRotation(atoms)
    rng = None if seed is None else np.random.default_rng(seed)
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction,
                    fixcm=False, rng=rng)


@dataclass
class LearnReport:
    """Outcome of :meth:`OnTheFlyLearner.run`.

    Attributes:
        steps: MD steps done.
        rounds: the learning rounds of this call.
        trace: ``(step, trigger value)`` at every check.
        flagged_steps: ``(step, value)`` of the flags.
        counts: store rows per status.
        resumed_from: the step a resumed run started at (0: a fresh run).
        checks: every audit so far (force error and 2-sigma coverage of the
            forces that drove the dynamics, step by step).
        confident: the final model was audited and passed every audit, and its
            audits' force components together lie within 2 sigma as often as a calibrated model's.
        stopped: why the run was stopped ("" if it was not): a physical guard,
            or the label budget spent while labels were needed.
        model_choice: one line per fine-tuned model, accepted or not and why.
        ended: why a run that is neither confident nor stopped ended unverified
            (no audit of the final model, or audits it failed); "" otherwise.
        rewinds: each time a hole sent the MD back: ``hole_step`` (the audit's
            step), ``store_id``, ``energy_error`` (eV), ``from_step``, ``to_step``
            (the last frame an audit passed, 0: the start), ``round`` (the model it goes on with)
            and ``guard_stop`` (the physical guard's stop that led to the hole, "" for a failed audit).
    """

    steps: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    trace: list[tuple[int, float]] = field(default_factory=list)
    flagged_steps: list[tuple[int, float]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    resumed_from: int = 0
    checks: list[Check] = field(default_factory=list)
    confident: bool = False
    stopped: str = ""
    model_choice: list = field(default_factory=list)
    ended: str = ""
    rewinds: list = field(default_factory=list)


class OnTheFlyLearner(LearningRun):
    """Run MD, pause on a batch of uncertain (or failed audit) frames, label, fine-tune, resume.

    Args:
        atoms: the starting structure (ignored when ``workdir`` holds a run to resume).
        calc: calculator with the *pretrained* model; every round fine-tunes
            this model on all frames labelled so far.
        reference: ASE calculator or zero-argument factory for the labels.
        workdir: where the run lives (created); run again with the same
            arguments to resume.
        threshold: trigger threshold (see :class:`UncertaintyTrigger`).
        steps: total MD steps.
        interval: trigger check every ``interval`` steps; also the MD
            checkpoint interval.
        labels_per_round: frames drawn for a label since the last round (flags, audits) that
            make a round (``batch_size=`` before 0.2); a failed audit makes one at once.
        max_rounds: stop learning (MD, flagging and audits go on) after this many rounds; a hole
            (see ``rewind_tolerance``) found later still makes a round and sends the MD back, as long as
            rewinds are left (so at most ``max_rewinds`` rounds more).
        audit_interval: on average one unflagged frame per this many steps is
            audited (``None``: no audits, and the run is never ``confident``).
        dynamics: ``dynamics(atoms) -> ASE Dynamics``; Langevin at 300 K by default.
        quantity, mode: passed to :class:`UncertaintyTrigger`; ``typical_frames`` is its
            argument of that name (``trigger_reference=`` before 0.2).
        guard: physical guard (default: one built from ``atoms``).
        seed: seeds the audit draws (by step, so a resumed run draws the same).
        store, conditioning, executor, finetune_options, run_id, progress, max_labels: see
            :class:`~ase_mlipal.learning.learning_run.LearningRun`.
        force_tolerance: eV/A; an audit whose force error (mean absolute, per
            component) is larger fails, as one outside 2 sigma does, and is
            trained on (``None``: the 2-sigma test alone). A sigma honest
            about a large error passes the 2-sigma test; this asks for accuracy.
        recalibrate: after each audit, rescale sigma on every audit of the
            model in use so far (:meth:`MLIPALCalculator.rescale`, from the
            calibration the model was swapped in with); each audit is checked
            on the sigma the audits before it justify. ``False``: sigma moves
            only when a round swaps a model in.
        prior_frames: how many audits the calibration a rescale starts from
            weighs as (:meth:`MLIPALCalculator.rescale`): ``n`` audits move sigma
            ``n / (n + prior_frames)`` of the way to their maximum-likelihood
            factor (default :data:`AUDIT_PRIOR_FRAMES`; the audits used the calculator's 20 before).
        rewind_tolerance: eV; an audit whose energy error is larger fails,
            however wide its sigma (a sigma that wide cannot tell a hole from
            none), and marks a hole in the model's surface the dynamics ran
            into: after the round
            it starts (the new model trained on it), the MD goes back to the last
            frame an audit passed, or to the start, and runs on from there. The
            steps past that frame are run again; their stored frames and checks
            stay (checks marked ``rewound``). ``None``: never (default
            :data:`REWIND_TOLERANCE`; for a large system whose total energy may
            err by an eV without a hole, raise it). A physical guard stop goes
            back too when the model is off by more at the last frame checked
            before it (labelled for that).
        max_rewinds: the most times the MD goes back (default :data:`MAX_REWINDS`; a hole the rounds
            do not close is then run through, and its audits keep the run unverified).
    """

    kind = "md"

    def __init__(
        self,
        atoms: Atoms,
        calc: MLIPALCalculator,
        reference: Reference,
        workdir: Union[str, os.PathLike],
        threshold: float,
        steps: int = 1000,
        interval: int = 5,
        labels_per_round: int = 8,
        max_rounds: Optional[int] = None,
        audit_interval: Optional[int] = 200,
        dynamics: Callable[[Atoms], Dynamics] = langevin,
        quantity: str = "forces",
        mode: str = "absolute",
        typical_frames: Optional[Sequence[Atoms]] = None,
        guard: Optional[PhysicalGuard] = None,
        store: Union[FrameStore, str, None] = None,
        conditioning: Optional[Sequence[Atoms]] = None,
        executor: Optional[Executor] = None,
        finetune_options: Optional[dict] = None,
        run_id: str = "md",
        seed: int = 0,
        progress: Optional[bool] = None,
        max_labels: Optional[int] = None,
        force_tolerance: Optional[float] = None,
        recalibrate: bool = True,
        prior_frames: float = AUDIT_PRIOR_FRAMES,
        rewind_tolerance: Optional[float] = REWIND_TOLERANCE,
        max_rewinds: int = MAX_REWINDS,
        **deprecated,
    ):
        labels_per_round = renamed_argument(None, deprecated, "batch_size", "labels_per_round",
                                            "OnTheFlyLearner") or labels_per_round
        typical_frames = renamed_argument(typical_frames, deprecated, "trigger_reference", "typical_frames",
                                          "OnTheFlyLearner")
        if steps < 0 or interval < 1 or labels_per_round < 1:
            raise ValueError("steps must be >= 0, interval and labels_per_round >= 1")
        if force_tolerance is not None and not force_tolerance > 0:
            raise ValueError(f"force_tolerance must be positive (eV/A) or None, not {force_tolerance!r}")
        if rewind_tolerance is not None and not rewind_tolerance > 0:
            raise ValueError(f"rewind_tolerance must be positive (eV) or None, not {rewind_tolerance!r}")
        if max_rewinds < 0:
            raise ValueError(f"max_rewinds must be >= 0, not {max_rewinds!r}")
        if not prior_frames >= 0:
            raise ValueError(f"prior_frames must be >= 0 (a weight in frames), not {prior_frames!r}")
        if audit_interval is not None and audit_interval < interval:
            raise ValueError(f"audit_interval ({audit_interval}) must be at least interval ({interval})")
        check_overlap(atoms, "the start structure", "fix the start structure before the MD")
        check_atoms(atoms, calc.batch_maker.elements)  # before the run writes anything
        super().__init__(calc, reference, workdir, store=store, conditioning=conditioning, executor=executor,
                         finetune_options=finetune_options, run_id=run_id, progress=progress,
                         max_labels=max_labels, **deprecated)
        self.atoms = atoms.copy()
        self.steps, self.interval, self.labels_per_round, self.max_rounds = steps, interval, labels_per_round, max_rounds
        self.audit_interval, self.dynamics, self.seed = audit_interval, dynamics, seed
        self.force_tolerance, self.recalibrate, self.prior_frames = force_tolerance, recalibrate, prior_frames
        self.rewind_tolerance, self.max_rewinds = rewind_tolerance, max_rewinds
        self.verified_step: Optional[int] = None  # the step of md_verified.traj (None: no such frame)
        #: the calibrations (energy, forces) the model in use was swapped in with; audits rescale from them
        self.swap_calibration = calc.calibrations
        self.guard = guard if guard is not None else PhysicalGuard([atoms])
        self.trigger = UncertaintyTrigger(calc, self.store, threshold, quantity=quantity, mode=mode,
                                          typical_frames=typical_frames, source="md", run_id=run_id)
        self.state.update(step=0, absorbed_row=0, n_trained=0, stopped="", rewinds=[])

    # -- persistence -------------------------------------------------------

    def _checkpoint_md(self, step: int) -> None:
        atomic_write(self._path("md.traj"), lambda tmp: write(tmp, self.atoms, format="traj"))
        self.state["step"] = step
        self.write_state()

    def _resume(self) -> bool:
        """Load the state of an earlier run from ``workdir``; False if there is none."""
        if not self.read_state():
            return False
        saved = read(self._path("md.traj"))
        self.atoms.set_positions(saved.positions)
        self.atoms.set_momenta(saved.get_momenta())
        # frames flagged after the last round's posterior was saved; audits wait for the next swap, as in a
        # run that was not stopped
        new = [a for s in ("flagged", "skipped", "labelled", "verified", "failed") for a in self.store.frames(s)
               if a.info["store_id"] > self.state["absorbed_row"] and a.info.get("source") != "audit"]
        self.trigger.absorb(new)
        self.state.setdefault("rewinds", [])  # a run from before rewinds has none, nor a verified frame
        if self._path(VERIFIED_FILE).exists():
            self.verified_step = read(self._path(VERIFIED_FILE)).info["step"]
        self.swap_calibration = self.calc.calibrations
        self._rescale_on_audits()
        return True

    # -- the loop ----------------------------------------------------------

    def run(self) -> LearnReport:
        """Run (or resume) the MD to ``steps``, then check the last audits; returns the report."""
        report = LearnReport()
        if self._resume():
            report.resumed_from = self.state["step"]
        else:
            self.atoms.calc = None
            self._keep_verified(0)  # the start is where a hole found before any audit passed sends the MD
            self._checkpoint_md(0)
        self.atoms.calc = self.calc
        dyn = self.dynamics(self.atoms)
        step = self.state["step"]
        with progress_bar(progress=self.progress, total=self.steps, initial=step, desc="MD") as bar:
            while step < self.steps and not self.state["stopped"]:
                advance = min(self.interval, self.steps - step)
                stop = self._advance(dyn, advance, step)
                if not stop:
                    step += advance
                    bar.update(advance)
                    stop = self._check(step, report)
                if stop:
                    back_to = self._judge_guard_stop(stop, step, report)
                    if back_to is None:
                        break
                else:
                    if self._round_due():
                        self._learn(report)
                    back_to = self._leave_hole(step)
                if back_to != step:
                    step = bar.n = back_to
                self._checkpoint_md(step)
        self._closing_audit(step)
        self._label_last_audits()
        self._check_audits()
        self.write_state()
        final = [c for c in self.checks if c.round == self.choice.round and c.kind == "audit"]
        report.confident = (bool(final) and all(c.passed for c in final) and forces_agree_together(final)
                            and not self.state["stopped"])
        report.steps, report.counts, report.checks = step, self.store.counts(), list(self.checks)
        report.stopped, report.model_choice = self.state["stopped"], list(self.choice.history)
        report.rewinds = list(self.state["rewinds"])
        report.ended = "" if report.confident or report.stopped else self._why_unverified(final, step)
        return report

    def _why_unverified(self, final: list[Check], step: int) -> str:
        """Why the MD ended at ``step`` without the final model's audits (``final``) all passing."""
        model = f"the final model (round {self.choice.round})"
        if final and all(c.passed for c in final):  # one by one they pass; pooled, the forces do not
            outside, total = pooled_force_counts(final)
            return (f"the {len(final)} audits of {model} pass one by one, but together {outside} of their {total} "
                    "force components lie outside 2 sigma, more than a calibrated model's (its force sigma is "
                    "too small there); a longer run flags and audits more")
        if final:
            failed = sum(not c.passed for c in final)
            return (f"{failed} of {len(final)} audits of {model} failed when the MD ended at step {step}; "
                    "they are labelled: " + ("a longer run trains on them" if self._rounds_left() else
                                             f"a longer run with more rounds (max_rounds={self.max_rounds}) "
                                             "trains on them"))
        if self.audit_interval is None:
            return f"no audit checked {model}: audit_interval=None audits nothing"
        return f"no audit checked {model} before the MD ended at step {step}"

    def _advance(self, dyn: Dynamics, advance: int, step: int) -> str:
        """Run ``advance`` MD steps from ``step``; why the frame is unphysical if the dynamics put atoms on top of
        each other ("" otherwise).

        The model cannot evaluate overlapping atoms (closer than
        :data:`~ase_mlipal.models.graphs.OVERLAP_DISTANCE`); that frame is a
        guard stop between two checks, stored ``unphysical``
        (:meth:`_judge_guard_stop` judges it); ``md.traj`` keeps the last checked frame.
        """
        first = dyn.nsteps
        try:
            dyn.run(advance)
        except OverlappingAtoms as error:
            at = step + dyn.nsteps - first + 1
            advice = (f"the run stops; {self._path('md.traj')} holds the last checked frame (step {step}). A "
                      "smaller timestep, a stronger thermostat or a tighter guard "
                      "(PhysicalGuard(min_distance_ratio=...)) stops such a run earlier")
            reason = overlap_message(self.atoms, error.pairs, f"MD step {at}: the structure", advice)
            self.store.add_unphysical(self.atoms, source="md", reason=reason, step=at, run_id=self.run_id)
            return reason
        return ""

    def _check(self, step: int, report: LearnReport) -> str:
        """Guard, trigger and audit draw at ``step``; why the guard stopped the frame ("" if it did not)."""
        try:
            self.guard.check(self.atoms, f"MD step {step}")
        except UnphysicalFrame as error:
            self.store.add_unphysical(self.atoms, source="md", reason=str(error), step=step, run_id=self.run_id)
            return str(error)
        flagged = self.trigger(self.atoms, step=step)
        report.trace.append((step, self.trigger.last_value))
        if flagged:
            report.flagged_steps.append((step, self.trigger.last_value))
        elif self._audit_due(step):
            self._audit(step)
        return ""

    def _judge_guard_stop(self, stop: str, step: int, report: LearnReport) -> Optional[int]:
        """After a physical guard stopped the frame past ``step`` (``stop``: why): the step the MD goes back to,
        or ``None`` when the run stops.

        The last frame checked before the stop (``md.traj``) is labelled and
        checked against the model in use (kind ``"guard"``). Off there by
        more than ``rewind_tolerance`` in energy, the model drove the
        dynamics out of physics through a hole: a round learns from the check
        and the MD goes back to the last frame an audit passed, as for a
        failed audit (:meth:`_leave_hole`). A model right there, no rewind,
        round or label left, or a reference that fails: the stop stands (as
        far as the run can tell, the chemistry itself leads there).
        """
        why = self._why_the_stop_stands()
        if why is None:  # a hole: learn from it and go back
            self._learn(report)
            back_to = self._leave_hole(step)
            if back_to != step:
                self.state["rewinds"][-1]["guard_stop"] = stop
                return back_to
            why = "the hole found there was not learned from: no round ran"
        self.state["stopped"] = f"{stop} ({why})" if why else stop
        self.write_state()  # stopped before the last audits are labelled: a resume does not run on
        return None

    def _why_the_stop_stands(self) -> Optional[str]:
        """Label and check the last frame checked before a guard stop; ``None`` if the model is off there by more
        than ``rewind_tolerance`` (a hole to leave), else why the stop stands ("": nothing was asked)."""
        last_step = self.state["step"]  # md.traj: the frame checked before the stop
        if not self._rewinds_left() or last_step <= self.verified_step or self.labels_spent():
            return ""  # rounds spent or not: a hole makes one while rewinds are left
        row_id, _ = self.store.add_flagged(read(self._path("md.traj")), source="guard", step=last_step,
                                           run_id=self.run_id, model_hash=self.calc.model_hash)
        label(self.store, self.reference, executor=self.executor, progress=False, row_ids={row_id})
        check = self.check(self.store.frame(row_id), self.choice.round, "guard", tolerance=self.rewind_tolerance)
        if not np.isfinite(check.energy_error):
            return f"the reference gave no label at MD step {last_step}: the stop cannot be judged"
        if not self._is_hole(check):  # beyond rewind_tolerance the check fails, however wide sigma
            return (f"at MD step {last_step}, the last frame checked before it, the model is off by "
                    f"{check.energy_error:+.2f} eV, within rewind_tolerance={self.rewind_tolerance} eV: "
                    "no hole of the model drove the dynamics there")
        return None

    def _audit(self, step: int) -> None:
        """Store this frame as an audit, label it and check it now (a failed check makes a round due).

        Checked when drawn, not when the next batch of flags is labelled: a
        model wrong where its uncertainty is small raises no flag, and would
        drive the dynamics on until enough flags gathered. With the budget
        spent the audit waits, like the flags, for the end of the run.
        """
        row_id, _ = self.store.add_flagged(self.atoms, source="audit", step=step, run_id=self.run_id,
                                           uncertainty=self.trigger.last_value, model_hash=self.calc.model_hash)
        if self.labels_spent():
            return
        label(self.store, self.reference, executor=self.executor, progress=False, row_ids={row_id})
        self._check_audits()
        if any(c.store_id == row_id and c.passed for c in self.checks):
            self._keep_verified(step)
        self.write_state()

    def _keep_verified(self, step: int) -> None:
        """Keep this frame (positions, momenta, ``info["step"]``) as the last one an audit passed: where a
        hole sends the MD."""
        frame = self.atoms.copy()
        frame.info = {"step": step}
        atomic_write(self._path(VERIFIED_FILE), lambda tmp: write(tmp, frame, format="traj"))
        self.verified_step = step

    def _rounds_left(self) -> bool:
        """May another round still run (``max_rounds`` not reached)."""
        return self.max_rounds is None or self.state["round"] < self.max_rounds

    def _rewinds_left(self) -> bool:
        """May the MD still go back: rewinds on, not all ``max_rewinds`` spent, and a frame to go back to."""
        return (self.rewind_tolerance is not None and len(self.state["rewinds"]) < self.max_rewinds
                and self.verified_step is not None)

    def _hole_to_leave(self) -> Optional[Check]:
        """The latest failed audit or guard check off by more than ``rewind_tolerance`` that a round has learned
        from since, on the kept trajectory; None if there is none or the rewinds are spent."""
        if not self._rewinds_left():
            return None
        learned = self.state["absorbed_row"]  # the last store row when a round ended
        holes = [c for c in self.checks if c.kind in MD_CHECKS and self._is_hole(c) and not c.rewound
                 and c.store_id <= learned
                 and c.step > self.verified_step]  # a hole before the last audit passed: the MD left it
        return holes[-1] if holes else None

    def _is_hole(self, check: Check) -> bool:
        """A failed check off in energy by more than ``rewind_tolerance`` (set)."""
        return (self.rewind_tolerance is not None and not check.passed
                and abs(check.energy_error) > self.rewind_tolerance)  # False for a NaN error (no label)

    def _leave_hole(self, step: int) -> int:
        """After a round learned from a hole, send the MD from ``step`` back to the last frame an audit passed;
        returns the step the MD goes on from (``step`` itself when there is no hole to leave).

        The audits past that frame are marked ``rewound`` (they stay checks of their
        models, and count for the run's coverage, but lie off the trajectory the run keeps).
        """
        hole = self._hole_to_leave()
        if hole is None:
            return step
        saved = read(self._path(VERIFIED_FILE))
        self.atoms.set_positions(saved.positions)
        self.atoms.set_momenta(saved.get_momenta())
        back_to = self.verified_step
        for check in self.checks:
            if check.kind in MD_CHECKS and check.step is not None and check.step > back_to:
                check.rewound = True
        self.state["rewinds"].append(
            {"hole_step": hole.step, "store_id": hole.store_id, "energy_error": hole.energy_error,
             "from_step": step, "to_step": back_to, "round": self.state["round"], "guard_stop": ""})
        return back_to

    def _audit_due(self, step: int) -> bool:
        """Draw (by step, reproducibly) whether this unflagged check becomes an audit."""
        if self.audit_interval is None:
            return False
        return bool(np.random.default_rng([self.seed, step]).random() < self.interval / self.audit_interval)

    def _closing_audit(self, step: int) -> None:
        """Audit the frame the MD ended at if no audit was drawn under the final model.

        Audits are random, one per ``audit_interval`` steps on average, so a
        round late in the run can leave the model it ends with unchecked and
        the run unverified however good that model is. One more label checks
        it where the run ended: not when the run was stopped, audits nothing
        (``audit_interval=None``) or has no label left, nor when that frame was
        flagged (it is training data). A resumed run adds none twice (the
        audit is in the store).
        """
        if self.audit_interval is None or self.state["stopped"] or step == 0 or self.labels_spent():
            return
        for row in self.store.rows():
            if not self._owns(row):
                continue
            if row.get("source") == "audit" and row.get("model_hash") == self.calc.model_hash:
                return  # the final model has an audit (checked, or waiting for its label)
            if row.get("source") == "md" and row.get("step") == step:
                return  # the last frame was flagged
        self.store.add_flagged(self.atoms, source="audit", step=step, run_id=self.run_id,
                               uncertainty=self.trigger.last_value, model_hash=self.calc.model_hash)

    def _check_audits(self) -> None:
        """Check every labelled audit drawn under the model in use and not checked yet, then rescale sigma."""
        done = {c.store_id for c in self.checks}
        checked = False
        for frame in self.store.frames("labelled") + self.store.frames("failed"):
            info = frame.info
            if info.get("source") == "audit" and info["store_id"] not in done \
                    and info.get("model_hash") == self.calc.model_hash:
                self.check(frame, self.choice.round, "audit", tolerance=self.rewind_tolerance,
                           force_tolerance=self.force_tolerance)
                checked = True
        if checked:
            self._rescale_on_audits()

    def _rescale_on_audits(self) -> None:
        """Rescale sigma, from the calibration the model in use was swapped in with, on all its audits so far.

        Its audits are frames neither it nor its posterior holds (the next
        swap takes them in), passed and failed alike: the errors an
        unflagged frame shows. The swap's own rescale could read only the
        checks earlier models passed, as the failed ones are trained on.
        Without ``recalibrate``, an uncalibrated calculator or an audit,
        nothing changes.
        """
        if not self.recalibrate or not self.calc.calibrated:
            return
        ids = sorted(c.store_id for c in self.checks
                     if c.kind == "audit" and c.round == self.choice.round and np.isfinite(c.energy_error))
        audits = [self.store.frame(row_id) for row_id in ids]  # these rows alone, not the whole store per audit
        if audits:
            self.calc.calibrations = self.swap_calibration
            self.calc.rescale(audits, prior_frames=self.prior_frames, progress=False)

    def _label_last_audits(self) -> None:
        """Label the audits drawn since the last round, and the flags left within the budget.

        A budget spent when no audit waits skips the flags left (``skipped``,
        for a run with more labels) and stops nothing: the MD is over (it
        finished, or a guard or the budget stopped it already).
        """
        spent = self.labels_spent()
        if spent and not self._waiting_audits():
            self._skip(self._own_flagged())
            return
        self.label_within_budget(self._waiting_audits(), what="the last audits")

    def _waiting_audits(self) -> set[int]:
        """Store ids of this run's audit frames waiting for a label (the label budget pays for them first)."""
        return {row.id for row in self.store.rows("flagged") if row.get("source") == "audit" and self._owns(row)}

    def _round_due(self) -> bool:
        """An audit failed since the last round, or a batch was drawn: flagged frames, labelled ones no model
        was trained on yet and the audits passed since the last round (labels the round paces, as when
        audits were labelled at the round). With ``max_rounds`` spent, only a hole the MD can still be sent
        back from makes one (the rewinds bound these rounds)."""
        audits = [c for c in self.checks if c.kind in MD_CHECKS and c.store_id > self.state["absorbed_row"]]
        if not self._rounds_left():
            return self._rewinds_left() and any(self._is_hole(c) for c in audits)
        if any(not c.passed and np.isfinite(c.energy_error) for c in audits):  # failed, and not for want of a label
            return True
        counts = self.store.counts()
        passed = sum(c.passed for c in audits)
        return counts["flagged"] + counts["labelled"] + passed - self.state["n_trained"] >= self.labels_per_round

    def _learn(self, report: LearnReport) -> None:
        number = self.state["round"] + 1
        if not self.label_within_budget(self._waiting_audits(), what=f"the audits of round {number}"):
            self.write_state()
            return
        self._check_audits()  # before training: a passed audit stays out of it
        # a round rebuilds (or, rejected, saves) the posterior on the calibration the model was swapped in with
        self.calc.calibrations = self.swap_calibration
        record = self.learn(number, self.trigger)
        report.rounds.append(record)
        last_row = max((row.id for row in self.store.rows()), default=0)
        if not record.accepted:  # the current posterior is kept: save it with this round's flags
            self.calc.save_posterior(self._path(f"posterior_round{number}.npz"))
            self.state["posterior"] = f"posterior_round{number}.npz"
        self.state.update(round=number, absorbed_row=last_row, n_trained=record.n_train_frames)
        self.write_state()
        self.swap_calibration = self.calc.calibrations
        self._rescale_on_audits()  # a rejected model leaves the model in use, and its audits
        self.atoms.calc = self.calc  # results of the old model are gone
