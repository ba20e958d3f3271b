"""Fine-tune a pretrained MACE on newly labelled frames, replaying pretraining data."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms

from ..frames import read_frames, read_labels, with_labels
from ..models.graphs import resolve_head
from ..models.model import DEFAULT_DIR, ModelSpec, load_model
from .prototypes import PrototypeAlignment
from .trainer import TrainedModel, frame_errors, split_frames, train

DEFAULT_REPLAY_PATH = DEFAULT_DIR / "default_replay.xyz.gz"


def finetune(
    model: ModelSpec,
    frames: Sequence[Atoms],
    replay: Union[Sequence[Atoms], str, None] = "default",
    replay_ratio: float = 1.0,
    valid_fraction: float = 0.0,
    valid: Optional[Sequence[Atoms]] = None,
    epochs: int = 200,
    lr: float = 1e-2,
    batch_size: int = 8,
    patience: int = 50,
    energy_weight: float = 100.0,
    forces_weight: float = 10.0,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
    alignment: Optional[PrototypeAlignment] = None,
    head: Optional[str] = None,
    device: Optional[str] = None,
    trust: bool = False,
    **train_kwargs,
) -> TrainedModel:
    """Start from ``model``'s weights and train on labelled ``frames`` with replay.

    Args:
        model: anything :func:`~ase_mlipal.load_model` accepts (copied; the
            original is untouched). A module is trained on its own device,
            a file or name on the CPU.
        frames: newly labelled frames (energy and forces readable by
            :func:`~ase_mlipal.read_labels`).
        replay: frames of the pretraining data mixed into training so the
            model does not forget; ``"default"`` is the sample shipped with
            the default model, a path is read with :func:`read_frames`.
        replay_ratio: replay frames per new frame (at most all of them).
        valid_fraction: share of the new frames held out for early stopping.
            The default 0 trains on every new frame (with a handful of labels
            near a saddle, each one counts) and picks the epoch on the new
            frames together with ``valid`` and as many replay frames not
            replayed as there are new frames (at least 8): the fit to the new
            data weighed against forgetting. On the round-0 labels of two
            reactive NEBs (``benchmarks/learning_loop.py``) the spare replay
            alone stopped at epoch 15-25 with barrier-path energy errors of
            0.7-0.9 eV; with the new frames in, 0.17-0.62 eV.
        valid: labelled frames for early stopping that are never trained on
            (e.g. the checks a learner's model passed).
        checkpoint: path for an atomic checkpoint after every epoch.
        alignment: a fitted :class:`~ase_mlipal.training.prototypes.PrototypeAlignment`
            ("Prototype-Guided Latent Alignment for Data-Efficient Fine-Tuning of Molecular Foundation Models", arXiv:2605.29969) whose term is added to the training loss.
        head: the head of a multi-head model to fit (its loss; the shared
            layers and its readout learn). Default: the head the calculator
            predicts, the only one or the one named ``default``; give a
            calculator's ``calc.batch_maker.head`` to fine-tune what it runs.
        device: where to train (``"cpu"``, ``"cuda"``); default a module's own
            device, ``"cpu"`` for a file or name. Training runs in float64.
        trust: allow loading a pickled model file (mace's own ``.model``), as
            in :func:`~ase_mlipal.load_model`.
        epochs, lr, patience: a few labelled frames make few optimiser
            steps per epoch, hence the many epochs; on the reactive
            benchmark lr 1e-2 lowered the path force error most of 1e-3,
            5e-3 and 1e-2 (10 new frames, fine-tuning the default model).
        energy_weight, forces_weight: weights of mace's per-atom energy and
            force terms. With pretraining's 1:10 the energy term is ~1% of
            the loss and the test energy error wandered between rounds of
            active learning; 100:10 lowered both errors on the reactive
            benchmark (``python benchmarks/finetune_weights.py``).

    Returns:
        a :class:`~ase_mlipal.training.trainer.TrainedModel`: ``.model``
        (the fine-tuned copy), ``.training`` (the record) and ``.valid``
        (frames the fine-tune never trained on, what early stopping watched:
        held-out new frames, ``valid`` and spare replay frames; empty with
        nothing to spare: ``replay=None``, no ``valid``,
        ``valid_fraction=0``). Recalibrate on the held-out and ``valid``
        frames only: replay frames are pretraining frames, which the
        pretrained model trained on and the shipped posterior holds. Before
        0.2 this was the tuple of the three.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("fine-tuning needs at least one labelled frame")
    rng = np.random.default_rng(seed)
    new_train, held_out = split_frames(frames, valid_fraction, rng) if valid_fraction > 0 else (frames, [])
    replay_frames = _replay(replay)
    n_replay = min(len(replay_frames), int(round(replay_ratio * len(new_train))))
    order = rng.permutation(len(replay_frames))
    replayed = [replay_frames[i] for i in order[:n_replay]]
    spare = [replay_frames[i] for i in order[n_replay:]]
    unseen = held_out + list(valid or []) + spare[:max(8, len(new_train))]
    monitored = unseen + (new_train if valid_fraction == 0 else [])
    if device is None:
        device = str(next(model.parameters()).device) if isinstance(model, torch.nn.Module) else "cpu"
    tuned = load_model(model, device=device, trust=trust)
    result = train(tuned, new_train + replayed, monitored, epochs=epochs, lr=lr,
                   batch_size=batch_size, energy_weight=energy_weight, forces_weight=forces_weight,
                   patience=patience, checkpoint=checkpoint, seed=seed, progress=progress, extra_loss=alignment,
                   head=head, **train_kwargs)
    return TrainedModel(tuned, result, unseen, replay_unseen=spare)


def _replay(replay: Union[Sequence[Atoms], str, None]) -> list[Atoms]:
    if replay is None:
        return []
    if isinstance(replay, (str, os.PathLike)):
        return read_frames(DEFAULT_REPLAY_PATH if replay == "default" else replay)
    return list(replay)


def rereference_energies(model: torch.nn.Module, frames: Sequence[Atoms], head: Optional[str] = None) -> dict[int, float]:
    """Move ``model``'s isolated-atom energies (E0s) to the level of theory of ``frames``, in place.

    A model pretrained at one level of theory (GFN2-xTB for the shipped
    default) is fine-tuned on labels of another (DFT) whose total energies
    differ by thousands of eV, nearly additively per element. Before
    fine-tuning, this fits per-element shifts ``d_z`` (eV) by least squares
    to ``E_reference - E_model = sum_z n_z d_z`` over the labelled
    ``frames`` (minimum norm: with one composition, as along one reaction,
    only that composition's total is determined, which is all it needs) and
    adds them to the E0s of ``head`` (default: the model's only or
    ``Default`` head). Features, forces and uncertainties are unchanged.
    Returns ``{atomic number: shift}``; shift replay frames of the old level
    by the same amounts (:func:`shift_energies`) before mixing them in.
    """
    zs = [int(z) for z in model.atomic_numbers]
    if not frames:
        raise ValueError("rereference_energies needs labelled frames of the new level of theory")
    unknown = sorted({int(z) for a in frames for z in a.numbers} - set(zs))
    if unknown:
        raise ValueError(f"frames hold elements {unknown} the model does not know (it has {zs})")
    energy_errors, _ = frame_errors(model, frames, head=head)  # model - reference, eV
    gap = -energy_errors
    counts = np.array([[np.sum(a.numbers == z) for z in zs] for a in frames], dtype=float)
    shifts = np.linalg.lstsq(counts, gap, rcond=None)[0]
    energies = model.atomic_energies_fn.atomic_energies
    with torch.no_grad():
        delta = torch.as_tensor(shifts, dtype=energies.dtype, device=energies.device)
        if energies.dim() == 2:
            energies[list(model.heads).index(resolve_head(model, head))] += delta
        else:
            energies += delta
    return dict(zip(zs, shifts.tolist()))


def shift_energies(frames: Sequence[Atoms], shifts: dict[int, float]) -> list[Atoms]:
    """Copies of labelled ``frames`` with ``sum_i shifts[z_i]`` (eV) added to each energy; forces kept."""
    out = []
    for atoms in frames:
        energy, forces = read_labels(atoms)
        out.append(with_labels(atoms, energy + sum(shifts[int(z)] for z in atoms.numbers), forces))
    return out


def train_committee(model: ModelSpec, frames: Sequence[Atoms], size: int = 4, **finetune_options) -> list[torch.nn.Module]:
    """``size - 1`` models fine-tuned from ``model`` on ``frames`` with seeds 1, 2, ...

    Each seed draws its own replay sample, validation frames and batch
    order (:func:`~ase_mlipal.finetune`; for a multi-head model give the
    calculator's ``head=``). With ``model`` itself they form a
    committee of ``size``: pass the result as
    ``MLIPALCalculator(model, kernel="committee", kernel_options={"members": ...})``.
    """
    if size < 2:
        raise ValueError("a committee needs at least 2 models")
    return [finetune(model, frames, seed=seed, **finetune_options).model for seed in range(1, size)]
