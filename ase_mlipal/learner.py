"""OnTheFlyLearner: molecular dynamics that stops to learn what it does not know.

The learner runs MD with an :class:`~ase_mlipal.UncertaintyTrigger`; once
``batch_size`` frames are flagged it pauses, labels them, fine-tunes,
swaps the model in and resumes the same trajectory.

Everything it needs to go on lives in ``workdir``:

``frames.db``
    the :class:`~ase_mlipal.FrameStore` (flagged, labelled, failed frames);
``state.json``
    step, round, current model file, posterior file, last store row absorbed;
``md.traj``
    positions and momenta at the last checkpoint;
``model_round{k}.pt`` / ``posterior_round{k}.npz``
    the model and posterior of each finished round.

Every file is replaced atomically and ``state.json`` is written last, so
a run killed at any moment (``kill -9`` included) restarts from the last
checkpoint: labelled frames stay labelled and are never computed again
(only a calculation still running at the kill is lost), frames flagged
since the checkpoint stay in the store and are labelled next round, and a
round whose fine-tuning was cut short is trained again from the same
labelled set. Only the thermostat's random numbers differ after a resume.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ase import Atoms, units
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.optimize.optimize import Dynamics

from .calculator import MLIPALCalculator
from .labelling import Reference
from .model import load_model, save_model
from .progress import progress_bar
from .retrain import RoundRecord, default_references, learning_round
from .storage import atomic_write
from .store import FrameStore
from .trigger import UncertaintyTrigger

STATE_FILE = "state.json"


def langevin(atoms: Atoms, temperature_K: float = 300.0, timestep_fs: float = 0.5, friction: float = 0.01) -> Dynamics:
    """The default dynamics: Langevin at ``temperature_K``."""
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction, fixcm=False)


@dataclass
class LearnReport:
    """Outcome of :meth:`OnTheFlyLearner.run`."""

    steps: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    trace: list[tuple[int, float]] = field(default_factory=list)  # (step, trigger value)
    flagged_steps: list[tuple[int, float]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    resumed_from: int = 0


class OnTheFlyLearner:
    """Run MD, pause on a batch of uncertain frames, label, fine-tune, resume.

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
        batch_size: flagged frames that make a learning round.
        max_rounds: stop learning (MD and flagging go on) after this many rounds.
        dynamics: ``dynamics(atoms) -> ASE Dynamics``; Langevin at 300 K by default.
        quantity, mode, trigger_reference: passed to :class:`UncertaintyTrigger`.
        references: frames that define "known" after a model swap
            (default: the replay sample shipped with the default model).
        executor: where reference calculations run (see :func:`~ase_mlipal.label`).
        finetune_options: keyword arguments for :func:`~ase_mlipal.finetune`.
    """

    def __init__(
        self,
        atoms: Atoms,
        calc: MLIPALCalculator,
        reference: Reference,
        workdir: Union[str, os.PathLike],
        threshold: float,
        steps: int = 1000,
        interval: int = 5,
        batch_size: int = 8,
        max_rounds: Optional[int] = None,
        dynamics: Callable[[Atoms], Dynamics] = langevin,
        quantity: str = "forces",
        mode: str = "absolute",
        trigger_reference: Optional[Sequence[Atoms]] = None,
        references: Optional[Sequence[Atoms]] = None,
        executor: Optional[Executor] = None,
        finetune_options: Optional[dict] = None,
        run_id: str = "md",
        progress: Optional[bool] = None,
    ):
        if steps < 0 or interval < 1 or batch_size < 1:
            raise ValueError("steps must be >= 0, interval and batch_size >= 1")
        self.atoms, self.calc, self.reference = atoms.copy(), calc, reference
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = FrameStore(self.workdir / "frames.db")
        self.steps, self.interval, self.batch_size, self.max_rounds = steps, interval, batch_size, max_rounds
        self.dynamics = dynamics
        self.references = list(references) if references is not None else default_references()
        self.executor, self.finetune_options = executor, finetune_options
        self.run_id, self.progress = run_id, progress
        self.pretrained = load_model(calc.model)
        self.trigger = UncertaintyTrigger(calc, self.store, threshold, quantity=quantity, mode=mode,
                                          reference=trigger_reference, source="md", run_id=run_id)
        self.state = {"step": 0, "round": 0, "model": None, "posterior": None, "absorbed_row": 0,
                      "n_trained": 0, "pretrained_hash": calc.model_hash}

    # -- persistence -------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.workdir / name

    def _write_state(self) -> None:
        text = json.dumps(self.state, indent=1)
        atomic_write(self._path(STATE_FILE), lambda tmp: tmp.write_text(text))

    def _checkpoint_md(self, step: int) -> None:
        atomic_write(self._path("md.traj"), lambda tmp: write(tmp, self.atoms, format="traj"))
        self.state["step"] = step
        self._write_state()

    def _resume(self) -> bool:
        """Load the state of an earlier run from ``workdir``; False if there is none."""
        path = self._path(STATE_FILE)
        if not path.exists():
            return False
        state = json.loads(path.read_text())
        if state["pretrained_hash"] != self.calc.model_hash:
            raise ValueError(f"{self.workdir} holds a run started from model {state['pretrained_hash'][:12]}; "
                             f"this calculator runs {self.calc.model_hash[:12]}. Use another workdir.")
        self.state = state
        momenta_atoms = read(self._path("md.traj"))
        self.atoms.set_positions(momenta_atoms.positions)
        self.atoms.set_momenta(momenta_atoms.get_momenta())
        if state["model"]:
            self.calc.set_model(self._path(state["model"]), references=[])
            self.calc.load_posterior(self._path(state["posterior"]))
        # frames flagged after the last round's posterior was saved
        new = [a for s in ("flagged", "labelled", "failed") for a in self.store.frames(s)
               if a.info["store_id"] > state["absorbed_row"]]
        self.trigger.absorb(new)
        return True

    # -- the loop ----------------------------------------------------------

    def run(self) -> LearnReport:
        """Run (or resume) the MD to ``steps``; returns the report."""
        report = LearnReport()
        if self._resume():
            report.resumed_from = self.state["step"]
        else:
            self.atoms.calc = None
            self._checkpoint_md(0)
        self.atoms.calc = self.calc
        dyn = self.dynamics(self.atoms)
        step = self.state["step"]
        with progress_bar(progress=self.progress, total=self.steps, initial=step, desc="MD") as bar:
            while step < self.steps:
                advance = min(self.interval, self.steps - step)
                dyn.run(advance)
                step += advance
                bar.update(advance)
                self._check(step, report)
                if self._round_due():
                    self._learn(report)
                self._checkpoint_md(step)
        report.steps = step
        report.counts = self.store.counts()
        return report

    def _check(self, step: int, report: LearnReport) -> None:
        flagged = self.trigger(self.atoms, step=step)
        report.trace.append((step, self.trigger.last_value))
        if flagged:
            report.flagged_steps.append((step, self.trigger.last_value))

    def _round_due(self) -> bool:
        """A batch is waiting: flagged frames plus labelled ones no model was trained on yet."""
        if self.max_rounds is not None and self.state["round"] >= self.max_rounds:
            return False
        counts = self.store.counts()
        return counts["flagged"] + counts["labelled"] - self.state["n_trained"] >= self.batch_size

    def _learn(self, report: LearnReport) -> None:
        number = self.state["round"] + 1
        record = learning_round(number, self.calc, self.pretrained, self.store, self.reference, self.trigger,
                                self.references, executor=self.executor, finetune_options=self.finetune_options,
                                checkpoint=self._path("finetune.ckpt"), progress=self.progress)
        report.rounds.append(record)
        model_file, posterior_file = f"model_round{number}.pt", f"posterior_round{number}.npz"
        save_model(self.calc.model, self._path(model_file))
        self.calc.save_posterior(self._path(posterior_file))
        last_row = max((row.id for row in self.store.rows()), default=0)
        self.state.update(round=number, model=model_file, posterior=posterior_file, absorbed_row=last_row,
                          n_trained=record.n_train_frames)
        self._write_state()
        self.atoms.calc = self.calc  # results of the old model are gone
