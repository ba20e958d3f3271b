"""One learning round: label the flagged frames, fine-tune, swap the model in.

Shared by :class:`~ase_mlipal.OnTheFlyLearner` and
:class:`~ase_mlipal.NEBLearner`. Each round fine-tunes the *pretrained*
model on every frame labelled so far (plus the replay sample), rather
than continuing from the last round's model: the result depends only on
the labelled set and the seed, errors do not compound from round to
round, and a run resumed after a crash rebuilds exactly the same model.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms

from .calculator import MLIPALCalculator
from .calibration import CalibrationReport
from .finetune import DEFAULT_REPLAY_PATH, finetune
from .frames import read_frames, read_labels
from .labelling import LabelReport, Reference, label
from .store import FrameStore
from .training import TrainResult
from .trigger import UncertaintyTrigger


@dataclass
class RoundRecord:
    """What one learning round did."""

    round: int
    labelled: LabelReport
    n_train_frames: int
    train: Optional[TrainResult] = None
    calibration: Optional[dict[str, CalibrationReport]] = None
    model_hash: str = ""


def default_references() -> list[Atoms]:
    """Frames that define "known" after a model swap: the shipped replay sample."""
    return read_frames(DEFAULT_REPLAY_PATH)


def learning_round(
    number: int,
    calc: MLIPALCalculator,
    pretrained: torch.nn.Module,
    store: FrameStore,
    reference: Reference,
    trigger: UncertaintyTrigger,
    references: Sequence[Atoms],
    executor: Optional[Executor] = None,
    finetune_options: Optional[dict] = None,
    checkpoint: Union[str, os.PathLike, None] = None,
    progress: Optional[bool] = None,
) -> RoundRecord:
    """Label ``store``'s flagged frames, fine-tune ``pretrained`` on all labelled ones, swap it into ``calc``.

    After the swap the posterior holds the features of ``references``
    under the new model and absorbs every labelled and failed frame
    through ``trigger`` (so nothing already handled is flagged again); a
    labelled frame settles no lower than the new model's errors on it, in
    forces and energy (:meth:`UncertaintyTrigger.residual_floors`), so one
    the fine-tune did not fit stays uncertain.
    The scales are refitted on the labelled frames held out from
    fine-tuning pooled with as many labelled ``references``: held-out new
    frames alone are few and all from the region the model knows least,
    and a scale fitted on them alone would inflate the uncertainty of the
    pretraining domain the model still covers. With fewer than two
    labelled frames nothing is trained and the model is kept.
    """
    labelled = label(store, reference, executor=executor, progress=progress)
    frames = store.frames("labelled")
    record = RoundRecord(number, labelled, len(frames), model_hash=calc.model_hash)
    if len(frames) < 2:
        return record
    model, record.train, held_out = finetune(pretrained, frames, checkpoint=checkpoint, progress=progress,
                                             **(finetune_options or {}))
    calibration = held_out + _labelled_sample(references, len(held_out), seed=number)
    record.calibration = calc.set_model(model, references, calibration=calibration, progress=progress)
    failed = store.frames("failed")
    floors = [trigger.residual_floors(atoms) for atoms in frames] + [None] * len(failed)
    trigger.absorb(frames + failed, floors=floors)
    record.model_hash = calc.model_hash
    return record


def _labelled_sample(frames: Sequence[Atoms], n: int, seed: int) -> list[Atoms]:
    """Up to ``n`` frames of ``frames`` that carry reference labels, drawn at random."""
    labelled = []
    for atoms in frames:
        try:
            read_labels(atoms)
        except ValueError:
            continue
        labelled.append(atoms)
    rng = np.random.default_rng(seed)
    return [labelled[i] for i in rng.permutation(len(labelled))[:n]]
