"""What the MD and NEB learners share: rounds, checks, the choice of model, state on disk.

Round 0 is the pretrained model. A learning round labels the flagged
frames, fine-tunes the *pretrained* model on every labelled frame (plus
the replay sample; the result depends only on the labelled set and the
round, errors do not compound and a resumed run rebuilds the same model),
and swaps it in only if it is no worse on the checks so far
(:class:`~ase_mlipal.learning.verification.ModelChoice`).

A :class:`LearningRun` lives in ``workdir``:

``frames.db``
    the :class:`~ase_mlipal.FrameStore` (unless another store is given);
``state.json``
    the round, the model and posterior files in use, the checks, the model
    choice and what the learner itself needs to go on;
``model_round{k}.pt`` / ``posterior_round{k}.npz``
    the model and posterior of each round swapped in.

Every file is replaced atomically and ``state.json`` is written last, so a
run killed at any moment (``kill -9`` included) restarts from its last
checkpoint: labelled frames stay labelled and are never computed again.
"""

from __future__ import annotations

import json
import numbers
import re
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional, Sequence, Union

import numpy as np
from ase import Atoms

from ..calculator import MLIPALCalculator
from ..frames import read_frames
from ..legacy import refuse_unknown, renamed_argument
from ..models.model import DEFAULT_CONDITIONING_PATH, load_model, save_model
from ..selection.greedy import greedy_maxdet
from ..selection.screening import candidate_rows, selection_posterior
from ..storage import atomic_write
from ..training.finetune import finetune
from ..training.trainer import TrainResult, frame_errors
from ..uncertainty.calibration import CalibrationReport, forgetting_floor
from ..uncertainty.uncertainty_model import UncertaintyModel
from .labelling import LabelReport, Reference, label
from .store import FrameStore
from .trigger import UncertaintyTrigger
from .verification import Check, ModelChoice, check_frame

STATE_FILE = "state.json"
CHECK_SOURCES = ("verify", "audit")

#: Fine-tuning a learner does on a handful of new labels (``finetune_options``
#: go on top): more replay against forgetting, fewer epochs than
#: :func:`~ase_mlipal.finetune`'s default, every new frame trained on. The
#: energy weight (100, was 10) was picked leave one reaction out on the six
#: reactive xTB bands by ``python benchmarks/finetune_fewshot.py`` (seeds 0
#: and 1): every fold picked it, for held-out path energies (median error
#: 0.086 eV against 0.196) and barriers (0.049 against 0.293). The replay
#: ratio (10, was 3) by ``python benchmarks/forgetting.py``: on 8 reactive
#: labels a ratio of 3 raised the force error on the pretraining validation
#: frames from 0.056 to 0.11-0.27 eV/A (0.09-0.16 at 10); 10 forgot less and fitted the
#: reaction as well, for twice the fine-tuning time (numbers in that
#: benchmark's results, reactions held out of the choice marked).
LEARNER_FINETUNE = {"replay_ratio": 10, "energy_weight": 100.0, "lr": 5e-3, "epochs": 100, "patience": 100}


@dataclass
class RoundRecord:
    """What one learning round did.

    Attributes:
        round: the round number (the model it trained is round ``round``'s).
        labelled: the labelling of the flagged frames.
        n_train_frames: labelled frames the fine-tune trained on.
        accepted: whether the fine-tuned model was swapped in.
        reason: the model choice's reason.
        train: the fine-tuning record.
        calibration: reports of the calibration after the swap (on the passed checks).
        model_hash: the model in use after the round.
    """

    round: int
    labelled: LabelReport
    n_train_frames: int
    accepted: bool = False
    reason: str = ""
    train: Optional[TrainResult] = None
    calibration: Optional[dict[str, CalibrationReport]] = None
    model_hash: str = ""


def default_conditioning() -> list[Atoms]:
    """Frames that define "known" after a model swap: the structures the shipped posterior holds.

    The shipped default's training split (7861 structures, no labels), so
    the posterior rebuilt under a fine-tuned model holds the same data as
    the shipped one and the shipped calibration still applies to it. (Before, this was the
    300-frame replay sample: 26x fewer frames made every raw variance after
    a swap 20-29x larger, ``benchmarks/swap_conditioning.py``.)
    """
    return read_frames(DEFAULT_CONDITIONING_PATH)


class LearningRun:
    """Base of the learners: store, state file, checks, learning rounds, model choice.

    Args:
        calc: calculator with the *pretrained* model and its posterior.
        reference: ASE calculator or zero-argument factory for the labels.
        workdir: where the run lives (created); run again with the same
            arguments to resume.
        store: a :class:`FrameStore`, a ``.db`` path or a ``postgresql://`` URL (default ``workdir/frames.db``).
        conditioning: frames that define "known" after a model swap: the posterior
            is conditioned on them under each new model (default:
            :func:`default_conditioning`, the structures the shipped posterior
            holds; pass the frames your own posterior was conditioned on;
            ``references=`` before 0.2).
        executor: where reference calculations run (see :func:`~ase_mlipal.label`).
        finetune_options: keyword arguments for :func:`~ase_mlipal.finetune`, on top
            of :data:`LEARNER_FINETUNE` (its ``head`` is the calculator's,
            ``calc.batch_maker.head``).
        run_id: provenance of the frames this run stores.
        progress: progress bars (``None``: when on a terminal).
        max_labels: the most reference labels the run may use, checks,
            audits and endpoints included (``None``: no bound). Where the
            flags of a round would exceed it (or their share of it, see
            :meth:`NEBLearner.label_reserve`), the flags greedy MaxDet picks
            on the posterior they were flagged against are labelled (the
            most informative set, not the most uncertain near-copies) and
            the rest are stored ``skipped``; when the checks alone no longer
            fit, the run stops (``stopped`` says so).
    """

    kind = "run"
    #: Errors on the checks (in :func:`~ase_mlipal.learning.verification.verification_error`'s
    #: unit) a fine-tune may have and still be swapped in (``ModelChoice.consider``).
    choice_tolerance = 0.0

    def __init__(self, calc: MLIPALCalculator, reference: Reference, workdir: Union[str, os.PathLike],
                 store: Union[FrameStore, str, None] = None, conditioning: Optional[Sequence[Atoms]] = None,
                 executor: Optional[Executor] = None, finetune_options: Optional[dict] = None,
                 run_id: str = "run", progress: Optional[bool] = None, max_labels: Optional[int] = None,
                 **deprecated):
        conditioning = renamed_argument(conditioning, deprecated, "references", "conditioning", type(self).__name__)
        refuse_unknown(deprecated, type(self).__name__)
        self.calc, self.reference = calc, reference
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if store is None:
            store = self.workdir / "frames.db"
        self.store = store if isinstance(store, FrameStore) else FrameStore(store)
        self.conditioning = list(conditioning) if conditioning is not None else default_conditioning()
        self.executor, self.finetune_options = executor, {**LEARNER_FINETUNE, **(finetune_options or {})}
        head = self.finetune_options.pop("head", calc.batch_maker.head)
        if head != calc.batch_maker.head:
            raise ValueError(f"finetune_options head {head!r} is not the head the calculator predicts "
                             f"({calc.batch_maker.head!r}); make the calculator with head={head!r}")
        if max_labels is not None and (isinstance(max_labels, bool) or not isinstance(max_labels, numbers.Integral)
                                       or max_labels < 1):
            raise ValueError(f"max_labels must be a positive number of reference labels or None, not {max_labels}")
        self.run_id, self.progress, self.max_labels = run_id, progress, max_labels
        self.pretrained = load_model(calc.model, device=str(next(calc.model.parameters()).device))
        #: the calibrations (energy, forces) of the pretrained model's posterior, which every swap starts from
        self.start_calibration = calc.calibrations
        self.choice = ModelChoice()
        self.checks: list[Check] = []
        self.state: dict = {"kind": self.kind, "round": 0, "model": None, "posterior": None,
                            "pretrained_hash": calc.model_hash, "trained_ids": []}

    # -- persistence -------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.workdir / name

    def write_state(self) -> None:
        """Write ``state.json`` atomically (checks and model choice included)."""
        self.state["checks"] = [c.as_dict() for c in self.checks]
        self.state["choice"] = {"round": self.choice.round, "error": self.choice.error,
                                "history": self.choice.history}
        text = json.dumps(self.state, indent=1, default=float)
        atomic_write(self._path(STATE_FILE), lambda tmp: tmp.write_text(text))

    def read_state(self) -> bool:
        """Load an earlier run's state and model from ``workdir``; False if there is none."""
        path = self._path(STATE_FILE)
        if not path.exists():
            return False
        state = json.loads(path.read_text())
        if state.get("kind") != self.kind or state["pretrained_hash"] != self.calc.model_hash:
            raise ValueError(f"{self.workdir} holds a {state.get('kind')} run started from model "
                             f"{state['pretrained_hash'][:12]}; this is a {self.kind} run on "
                             f"{self.calc.model_hash[:12]}. Use another workdir.")
        self.state = state
        self.checks = [Check(**c) for c in state.get("checks", [])]
        choice = state.get("choice", {})
        self.choice = ModelChoice(choice.get("round", 0), choice.get("error", float("nan")), choice.get("history"))
        if state["model"]:
            self.calc.set_model(self._path(state["model"]), conditioning=[])
        if state["posterior"]:
            self.calc.load_posterior(self._path(state["posterior"]))
        return True

    # -- checks ------------------------------------------------------------

    def check(self, frame: Atoms, number: int, kind: str, anchor: Optional[Atoms] = None,
              tolerance: Optional[float] = None, **check_options) -> Check:
        """Check the labelled ``frame`` (a store row) against the model in use; record it.

        A frame the model in use trained on is no check: it fails with that
        reason. ``check_options`` (``tangent``, ``saddle_fmax``, ``ceiling``, ``force_tolerance``) go to
        :func:`check_frame`. A passed check is marked ``verified`` (kept out
        of training).
        """
        if frame.info.get("status") not in ("labelled", "verified"):
            result = Check(number, kind, frame.info["store_id"], float("nan"), float("nan"), float("nan"), 0.0,
                           passed=False, reason=f"no reference label ({frame.info.get('error', 'not labelled')})",
                           step=frame.info.get("step"), image=frame.info.get("image"))
            self.checks.append(result)
            return result
        result = check_frame(self.calc, frame, number, kind, anchor=anchor, tolerance=tolerance, **check_options)
        if result.store_id in self.state["trained_ids"]:
            result.passed, result.reason = False, "the model in use trained on this frame"
        if result.passed:
            self.store.mark_verified(result.store_id)
        self.checks.append(result)
        return result

    def check_frames(self) -> list[Atoms]:
        """Labelled frames of every check so far (passed: ``verified``; failed: ``labelled``)."""
        ids = {c.store_id for c in self.checks}
        return [a for s in ("verified", "labelled") for a in self.store.frames(s) if a.info["store_id"] in ids]

    # -- label budget ------------------------------------------------------

    def _owns(self, row) -> bool:
        run_id = str(row.get("run_id", ""))
        return run_id == self.run_id or re.fullmatch(rf"{re.escape(self.run_id)}-round\d+", run_id) is not None

    def _own_flagged(self) -> list[int]:
        """Store ids of this run's flagged rows."""
        return [row.id for row in self.store.rows("flagged") if self._owns(row)]

    def _skip(self, row_ids: Sequence[int], reason: Optional[str] = None) -> None:
        """Store ``row_ids`` as ``skipped`` (default reason: over this run's label budget)."""
        self.store.mark_skipped(row_ids, reason or f"over the label budget (max_labels={self.max_labels}) of run "
                                                   f"{self.run_id}")

    def labels_used(self) -> int:
        """Reference calculations this run has asked for (its rows labelled, verified, failed, or
        confirmed unphysical after a label)."""
        asked = ("labelled", "verified", "failed")
        return sum(1 for row in self.store.rows() if self._owns(row)
                   and (row.status in asked or (row.status == "unphysical" and row.get("energy") is not None)))

    def labels_spent(self) -> bool:
        """Whether the label budget (``max_labels``) is used up; never without one."""
        return self.max_labels is not None and self.labels_used() >= self.max_labels

    def label_reserve(self, room: int) -> int:
        """How many of ``room`` labels this round's flags leave for what is still to come (none here;
        see :class:`NEBLearner`)."""
        return 0

    def fit_budget(self, keep: Collection[int] = (), state: Optional[UncertaintyModel] = None) -> bool:
        """Before labelling: keep this run's flagged rows within ``max_labels``.

        The rows ``keep`` (checks, audits, endpoints; one stored ``skipped``
        earlier is flagged again) are labelled; of the other flags, as many as
        fit beside :meth:`label_reserve` are chosen by greedy MaxDet on the
        posterior ``state`` (default: the calculator's), the rest stored
        ``skipped``. Returns False, changing nothing, when ``keep`` alone does
        not fit.
        """
        if self.max_labels is None:
            return True
        revived = [row.id for row in self.store.rows("skipped") if row.id in keep]  # a check on a skipped frame
        flagged = self._own_flagged()
        extra = [row_id for row_id in flagged if row_id not in keep]
        room = self.max_labels - self.labels_used() - (len(flagged) - len(extra)) - len(revived)
        if room < 0:
            return False
        free = room
        room = max(0, free - self.label_reserve(free))  # what is left for flags
        self.store.mark_flagged_again(revived)
        if len(extra) > room:
            frames = [self.store.frame(row_id) for row_id in extra]
            rows = candidate_rows(self.calc, frames)
            picked = set(greedy_maxdet(rows, selection_posterior(self.calc, state).precision(), room).tolist()) \
                if room else set()
            reason = None if free == room else (
                f"over this round's share of the label budget (max_labels={self.max_labels}) of run {self.run_id}: "
                f"{free - room} label(s) held back for what follows")
            self._skip([row_id for k, row_id in enumerate(extra) if k not in picked], reason)
        return True

    def label_within_budget(self, keep: Collection[int] = (), state: Optional[UncertaintyModel] = None,
                            what: str = "the checks") -> bool:
        """:meth:`fit_budget`, then label. When ``keep`` (``what``) does not fit, or flags wait and the
        budget is used up, nothing is labelled: the run is stopped and its flagged rows are stored
        ``skipped``; returns False."""
        waiting = bool(self._own_flagged())
        used_up = self.labels_spent()
        if (waiting and used_up) or not self.fit_budget(keep, state):
            self._stop_for_budget(what)
            return False
        label(self.store, self.reference, executor=self.executor, progress=self.progress,
              row_ids=self._labellable(keep))
        return True

    def _budget_spent(self, what: str, needed: int = 1) -> bool:
        """Fewer than ``needed`` labels left: stop the run (not enough for ``what``) and return True; else False."""
        if self.max_labels is None or self.max_labels - self.labels_used() >= needed:
            return False
        self._stop_for_budget(what)
        return True

    def _stop_for_budget(self, what: str) -> None:
        self.state["stopped"] = (f"the label budget is spent (max_labels={self.max_labels}, "
                                 f"{self.labels_used()} used): not enough left for {what}; a new run with a "
                                 "larger max_labels goes further")
        self._skip(self._own_flagged(), self.state["stopped"])

    def _labellable(self, keep: Collection[int] = ()) -> Optional[set]:
        """Store ids this run may label: its own flagged rows and ``keep`` (all when no budget)."""
        if self.max_labels is None:
            return None
        return {row.id for row in self.store.rows("flagged") if self._owns(row) or row.id in keep}

    # -- learning ----------------------------------------------------------

    def learn(self, number: int, trigger: UncertaintyTrigger, anchor: Optional[Atoms] = None) -> RoundRecord:
        """Round ``number``: label, fine-tune the pretrained model, swap it in if no worse on the checks.

        A swap (:meth:`_swap_in`) rebuilds the posterior and the calibration
        from the run's start, never from the last round's. A rejected model
        leaves the calculator as it was.
        """
        self.fit_budget()
        labelled = label(self.store, self.reference, executor=self.executor, progress=self.progress,
                         row_ids=self._labellable())
        frames = self.store.frames("labelled")
        record = RoundRecord(number, labelled, len(frames), model_hash=self.calc.model_hash)
        if not frames:
            record.reason = "nothing labelled to train on"
            return record
        options = {"seed": number, **self.finetune_options}
        head = self.calc.batch_maker.head
        passed = self.store.frames("verified")  # checks the model in use passed: early stopping, then the refit
        tuned = finetune(self.pretrained, frames, valid=passed, progress=self.progress, head=head, **options)
        model, record.train = tuned.model, tuned.training
        record.accepted = self.choice.consider(number, self.calc.model, model, self.check_frames(), anchor, head,
                                               tolerance=self.choice_tolerance)
        record.reason = self.choice.history[-1]["reason"]
        if record.accepted:
            record.calibration = self._swap_in(model, tuned.replay_unseen, passed, trigger)
            model_file, posterior_file = f"model_round{number}.pt", f"posterior_round{number}.npz"
            save_model(self.calc.model, self._path(model_file))
            self.calc.save_posterior(self._path(posterior_file))
            self.state.update(model=model_file, posterior=posterior_file,
                              trained_ids=[a.info["store_id"] for a in frames])
        record.model_hash = self.calc.model_hash
        return record

    def _swap_in(self, model, forgotten: Sequence[Atoms], passed: Sequence[Atoms],
                 trigger: UncertaintyTrigger) -> Optional[dict[str, CalibrationReport]]:
        """Put the fine-tuned ``model`` in use with a posterior and calibration built from the run's start.

        1. The posterior holds ``conditioning`` under the new model.
        2. The calibration is the one the run started with, its floors raised
           by what the new model forgot against the pretrained one on the
           replay frames it left out (``forgotten``; the pretrained model
           trained on them, so its errors there are the baseline:
           :func:`~ase_mlipal.uncertainty.calibration.forgetting_floor`).
           Each round's floor used to move from the last round's, measured
           against the last fine-tune, which had not trained on all of those
           frames: not what the floor's rule assumes. (The floor may fall:
           the fine-tunes fit energies better than the pretrained model,
           even on replay frames they left out.)
        3. Every stored frame but the passed checks enters through
           ``trigger``: a labelled one into the posterior, settling no lower
           than the new model's errors on it
           (:meth:`UncertaintyTrigger.residual_floors`); one without a label
           is seen, not learned (:meth:`UncertaintyModel.seen`).
        4. Every calibrated variance is multiplied by the factor the new
           model's errors on the ``passed`` checks justify, shrunk towards 1
           (:meth:`MLIPALCalculator.rescale`): frames neither model trained
           on nor the posterior holds, read on the posterior the run goes on
           with. (It was fitted before step 3, on variances the labelled
           frames near the checks then cut by an order of magnitude:
           held-out nitromethane's MD learner cut its energy variances 17x
           at one swap and read an energy sigma of 0.01 eV where its next
           audits were 0.04-0.08 eV off.)
        5. The passed checks enter the posterior as in step 3.
        """
        self.calc.set_model(model, self.conditioning, progress=self.progress)
        energy, forces = self.start_calibration
        if self.calc.calibrated and forgotten:
            head = self.calc.batch_maker.head
            energy_before, forces_before = frame_errors(self.pretrained, forgotten, head=head)
            after = self.calc.residuals(forgotten, progress=self.progress)
            energy = forgetting_floor(energy, energy_before, after.energy, after.n_atoms)
            forces = forgetting_floor(forces, np.concatenate(forces_before), after.forces)
        self.calc.calibrations = energy, forces
        checks = {atoms.info["store_id"] for atoms in passed}
        self._absorb_store(trigger, lambda atoms: atoms.info["store_id"] not in checks)
        report = self.calc.rescale(passed, progress=self.progress) if passed and self.calc.calibrated else None
        self._absorb_store(trigger, lambda atoms: atoms.info["store_id"] in checks)
        return report

    def _absorb_store(self, trigger: UncertaintyTrigger, chosen: Callable[[Atoms], bool]) -> None:
        """Enter the ``chosen`` stored frames into the (new) posterior; labelled ones bounded by the model's errors."""
        labelled = [a for s in ("labelled", "verified") for a in self.store.frames(s) if chosen(a)]
        others = [a for s in ("flagged", "failed", "skipped") for a in self.store.frames(s) if chosen(a)]
        floors = [trigger.residual_floors(atoms) for atoms in labelled] + [None] * len(others)
        trigger.absorb(labelled + others, floors=floors)
