"""Hessian distillation ("Towards Fast, Specialized Machine Learning Force Fields: Distilling Foundation Models via Energy Hessians", arXiv:2501.09009): a small, fast MACE student trained on a teacher's energy surface.

The student is fitted to the teacher's energies and forces on ``frames``
and to ``s`` rows of the teacher's Hessian per structure:

    L = L_EF(student; teacher labels)
        + w_H * (1 / s) * sum_k mean_x (dF_{j_k}/dx [student] - dF_{j_k}/dx [teacher])^2,

where ``j_1 .. j_s`` are Cartesian coordinates drawn per structure (seeded)
and ``dF_j/dx = -d^2E/(dx_j dx)`` is one Hessian row: a vector-Jacobian
product of the forces, one backward pass per row for a whole batch (the
rows of different structures sit in different atoms). The full ``3N x 3N``
Hessian is never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
from ase import Atoms

from ..frames import with_labels
from ..models.graphs import BatchMaker, forward
from ..models.model import ModelSpec, build_mace, load_model
from ..progress import progress_bar
from .trainer import TrainedModel, dataset_statistics, split_frames, train


@dataclass
class HessianRows:
    """``s`` teacher Hessian rows per frame: coordinates ``rows[f]`` ``(s,)`` and values ``values[f]`` ``(s, N, 3)``."""

    rows: list[np.ndarray]
    values: list[torch.Tensor]


def hessian_rows(model: torch.nn.Module, frames: Sequence[Atoms], per_structure: int = 1, seed: int = 0,
                 batch_size: int = 16, progress: Optional[bool] = None) -> HessianRows:
    """``per_structure`` random rows ``dF_j/dx`` of ``model``'s Hessian for each frame, by vector-Jacobian products."""
    rng = np.random.default_rng(seed)
    frames = list(frames)
    rows = [rng.choice(3 * len(a), min(per_structure, 3 * len(a)), replace=False) for a in frames]
    values: list[torch.Tensor] = []
    maker = BatchMaker(model)
    done = 0
    with progress_bar(total=len(frames), progress=progress, desc="teacher Hessian rows") as bar:
        for chunk, batch in maker.batches(frames, batch_size):
            with torch.enable_grad():
                out = forward(model, batch, compute_force=True, training=True)
                chunk_rows = rows[done:done + len(chunk)]
                blocks = [_rows_of(out["forces"], batch.positions, batch.ptr, [r[k] for r in chunk_rows])
                          for k in range(len(chunk_rows[0]))]  # each (n_atoms, 3)
            ptr = batch.ptr.tolist()
            for b in range(len(chunk)):
                values.append(torch.stack([block[ptr[b]:ptr[b + 1]].detach() for block in blocks]))
            done += len(chunk)
            bar.update(len(chunk))
    return HessianRows(rows, values)


def _rows_of(forces: torch.Tensor, positions: torch.Tensor, ptr: torch.Tensor, coordinates: Sequence[int],
             create_graph: bool = False) -> torch.Tensor:
    """Row ``dF_j/dx`` of every structure of a batch (``coordinates[b]`` within structure ``b``), ``(n_atoms, 3)``."""
    flat = forces.reshape(-1)
    picked = torch.stack([flat[3 * int(ptr[b]) + int(j)] for b, j in enumerate(coordinates)]).sum()
    (row,) = torch.autograd.grad(picked, positions, create_graph=create_graph, retain_graph=True)
    return row


class HessianMatch:
    """The Hessian term of the distillation loss (an ``extra_loss`` of :func:`~ase_mlipal.train`)."""

    def __init__(self, targets: HessianRows, weight: float):
        self.targets, self.weight = targets, float(weight)

    def __call__(self, batch, out: dict) -> torch.Tensor:
        frames = batch.frame_number.tolist()
        s = min(len(self.targets.rows[f]) for f in frames)
        loss = out["forces"].new_zeros(())
        for k in range(s):
            row = _rows_of(out["forces"], batch.positions, batch.ptr,
                           [self.targets.rows[f][k] for f in frames], create_graph=True)
            target = torch.cat([self.targets.values[f][k] for f in frames]).to(row)
            loss = loss + torch.mean((row - target) ** 2)
        return self.weight * loss / s


@dataclass
class DistillResult(TrainedModel):
    """What :func:`distill` returns: the student (``model``), its training record, held-out frames and sizes."""

    teacher_parameters: int
    student_parameters: int

    _made_by: ClassVar[str] = "distill"

    def _legacy_tuple(self) -> tuple:
        return self.model, self


def distill(
    teacher: ModelSpec,
    frames: Sequence[Atoms],
    student_config: Optional[dict] = None,
    hessian_rows_per_structure: int = 1,
    hessian_weight: float = 1.0,
    valid_fraction: float = 0.1,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 8,
    patience: int = 20,
    seed: int = 0,
    progress: Optional[bool] = None,
    **train_kwargs,
) -> DistillResult:
    """Train a smaller MACE on ``teacher``'s energies, forces and Hessian rows on ``frames``.

    Args:
        teacher: the model to distil (anything :func:`load_model` accepts).
        frames: structures of the chemistry the student is for (no labels
            needed; the teacher labels them, so use many: on the reactive
            benchmark 1600 structures brought the student's forces within
            1.14x of the teacher's error, 400 only within 1.38x).
        student_config: :func:`build_mace` sizes of the student (default: 32
            channels, ``max_ell=1``, one interaction, radial MLP (32,): about
            6x faster than the shipped default on a 576-atom cluster).
            Elements, cutoff, E0s, scale and shift follow the teacher/data.
        hessian_rows_per_structure: ``s``, rows drawn per structure (seeded).
        hessian_weight: ``w_H``; 0 gives plain energy-force distillation.
        valid_fraction: share of frames held out for early stopping.

    Returns:
        a :class:`DistillResult`: the student is ``.model`` (before 0.2 the
        result was the tuple ``(student, DistillResult)``).
    """
    teacher = load_model(teacher)
    frames = [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames]
    if len(frames) < 2:
        raise ValueError("distillation needs at least two frames (one to validate)")
    labelled = _teacher_labels(teacher, frames, progress)
    train_frames, valid = split_frames(labelled, valid_fraction, np.random.default_rng(seed))
    elements = [int(z) for z in teacher.atomic_numbers]
    config = {"channels": 32, "max_ell": 1, "num_interactions": 1, "mlp_channels": 16, "radial_mlp": (32,)}
    config.update(student_config or {})
    config.setdefault("r_max", float(teacher.r_max))
    statistics = dataset_statistics(train_frames, elements, config["r_max"])
    statistics["atomic_energies"] = teacher.atomic_energies_fn.atomic_energies.detach().cpu().numpy().ravel().tolist()
    student = build_mace(elements, **{**statistics, **config, "seed": seed})
    extra = None
    if hessian_weight > 0:
        targets = hessian_rows(teacher, train_frames, hessian_rows_per_structure, seed=seed, progress=progress)
        extra = HessianMatch(targets, hessian_weight)
    result = train(student, train_frames, valid, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
                   seed=seed, progress=progress, extra_loss=extra, **train_kwargs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return DistillResult(student, result, valid, count(teacher), count(student))


def _teacher_labels(teacher: torch.nn.Module, frames: list[Atoms], progress: Optional[bool]) -> list[Atoms]:
    """``frames`` labelled with the teacher's energy and forces."""
    out = []
    maker = BatchMaker(teacher)
    with progress_bar(total=len(frames), progress=progress, desc="teacher labels") as bar:
        for chunk, batch in maker.batches(frames, 16):
            with torch.enable_grad():
                result = forward(teacher, batch, compute_force=True)
            energies = result["energy"].detach().cpu().numpy()
            forces = result["forces"].detach().cpu().numpy()
            ptr = batch.ptr.tolist()
            out.extend(with_labels(atoms, energies[b], forces[ptr[b]:ptr[b + 1]]) for b, atoms in enumerate(chunk))
            bar.update(len(chunk))
    return out
