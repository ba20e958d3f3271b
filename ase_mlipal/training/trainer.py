"""Train a MACE on labelled frames with mace-torch's data pipeline and loss.

Used by the pretraining script and by fine-tuning: mace's
``config_from_atoms`` / ``AtomicData`` / ``DataLoader`` feed
``WeightedEnergyForcesLoss``; the loop adds early stopping on the
validation loss, restoring the best weights, and an atomic checkpoint.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from mace import data as mace_data
from mace import modules
from mace.tools import torch_geometric
from mace.tools.utils import AtomicNumberTable

from ..frames import read_labels
from ..models.graphs import graph_dtype, model_heads, resolve_head
from ..progress import progress_bar
from ..storage import atomic_torch_save

_LABEL_KEYS = mace_data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})


def frames_to_configs(frames: Sequence[Atoms], head: str = "Default") -> list:
    """mace ``Configuration`` objects carrying each frame's reference labels."""
    configs = []
    for atoms in frames:
        energy, forces = read_labels(atoms)
        plain = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        plain.info["REF_energy"] = energy
        plain.arrays["REF_forces"] = forces
        configs.append(mace_data.config_from_atoms(plain, key_specification=_LABEL_KEYS, head_name=head))
    return configs


def _graphs(configs: list, zs: Sequence[int], r_max: float, heads: list[str]) -> list:
    """mace ``AtomicData`` graphs of ``configs``."""
    z_table = AtomicNumberTable(list(zs))
    return [mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=heads)
            for config in configs]


def data_loader(
    frames: Sequence[Atoms],
    model: torch.nn.Module,
    batch_size: int = 16,
    shuffle: bool = False,
    seed: int = 0,
    head: Optional[str] = None,
) -> torch_geometric.dataloader.DataLoader:
    """A mace ``DataLoader`` over labelled ``frames`` for ``model``'s elements and cutoff.

    The graphs are built on the CPU for ``head`` (default: the head the
    calculator predicts, :func:`~ase_mlipal.models.graphs.resolve_head`). Each
    batch carries ``frame_number``, the positions in ``frames`` of its
    structures, so an ``extra_loss`` can look up per-frame targets.
    """
    heads = model_heads(model)
    with graph_dtype(next(model.parameters()).dtype):
        configs = frames_to_configs(frames, head=resolve_head(model, head))
        dataset = _graphs(configs, [int(z) for z in model.atomic_numbers], float(model.r_max), heads)
    for index, graph in enumerate(dataset):  # batches say which frames they hold (batch.frame_number)
        graph.frame_number = torch.tensor([index])
    generator = torch.Generator().manual_seed(seed)
    return torch_geometric.dataloader.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def split_frames(frames: Sequence[Atoms], valid_fraction: float,
                 rng: np.random.Generator) -> tuple[list[Atoms], list[Atoms]]:
    """``(train, valid)``: a random ``valid_fraction`` (at least one frame) held out, drawn with ``rng``."""
    order = rng.permutation(len(frames))
    n_valid = max(1, int(round(valid_fraction * len(frames))))
    return [frames[i] for i in order[n_valid:]], [frames[i] for i in order[:n_valid]]


def dataset_statistics(frames: Sequence[Atoms], elements: Sequence[int], r_max: float) -> dict:
    """Data-dependent MACE arguments: E0s (least squares), neighbours, energy shift/scale.

    Uses mace's ``compute_average_E0s``, ``compute_avg_num_neighbors`` and
    ``compute_mean_rms_energy_forces`` (the ``rms_forces_scaling`` of mace's
    training script).
    """
    zs = sorted(int(z) for z in elements)
    configs = frames_to_configs(frames)
    e0s = mace_data.compute_average_E0s(configs, AtomicNumberTable(zs))
    atomic_energies = np.array([e0s[z] for z in zs])
    loader = torch_geometric.dataloader.DataLoader(_graphs(configs, zs, r_max, ["Default"]), batch_size=64)
    mean, rms = modules.scaling_classes["rms_forces_scaling"](loader, atomic_energies)
    return {
        "atomic_energies": atomic_energies.tolist(),
        "avg_num_neighbors": float(modules.compute_avg_num_neighbors(loader)),
        "shift": float(np.asarray(mean).ravel()[0]),
        "scale": float(np.asarray(rms).ravel()[0]),
    }


def _on_device(loader: torch_geometric.dataloader.DataLoader,
               model: torch.nn.Module) -> Iterator[torch_geometric.Batch]:
    """The batches of ``loader`` moved to the device of ``model``'s parameters."""
    device = next(model.parameters()).device
    for batch in loader:
        yield batch.to(device)


def frame_errors(model: torch.nn.Module, frames: Sequence[Atoms], batch_size: int = 32,
                 head: Optional[str] = None) -> tuple[np.ndarray, list]:
    """Per frame: total energy error (eV, model - reference) and force errors (eV/A, shape (N_i, 3)).

    ``head``: the head scored (default: the calculator's rule, see :func:`data_loader`).
    """
    e_err, f_err = [], []
    for batch in _on_device(data_loader(frames, model, batch_size=batch_size, head=head), model):
        out = model(batch.to_dict(), training=False, compute_force=True)
        e_err.append((out["energy"] - batch.energy).detach().cpu().numpy())
        forces = (out["forces"] - batch.forces).detach().cpu().numpy()
        f_err.extend(np.split(forces, batch.ptr[1:-1].cpu().numpy()))
    return np.concatenate(e_err), f_err


def evaluate(model: torch.nn.Module, frames: Sequence[Atoms], batch_size: int = 32,
             head: Optional[str] = None) -> dict[str, float]:
    """Energy and force errors of ``model``'s ``head`` (default: see :func:`data_loader`) on labelled ``frames``.

    Returns ``energy_mae_per_atom`` (meV/atom), ``energy_rmse_per_atom``
    (meV/atom), ``forces_mae`` and ``forces_rmse`` (eV/A, per component).
    """
    energy, forces = frame_errors(model, frames, batch_size, head)
    e = energy / np.array([len(a) for a in frames])
    f = np.concatenate([x.ravel() for x in forces])
    return {
        "energy_mae_per_atom": 1e3 * float(np.mean(np.abs(e))),
        "energy_rmse_per_atom": 1e3 * float(np.sqrt(np.mean(e**2))),
        "forces_mae": float(np.mean(np.abs(f))),
        "forces_rmse": float(np.sqrt(np.mean(f**2))),
    }


@dataclass
class TrainResult:
    """What :func:`train` did: one row per epoch and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


@dataclass
class TrainedModel:
    """What :func:`~ase_mlipal.finetune` returns (and :func:`~ase_mlipal.distill` extends).

    Attributes:
        model: the trained model (a new module; the starting one is untouched).
        training: the :class:`TrainResult` record of the run.
        valid: labelled frames the fine-tune never trained on (what early
            stopping watched; may be empty). Only those not from the
            pretraining data (not replay) can recalibrate the uncertainty.
        replay_unseen: every replay frame the fine-tune did not train on.
            The starting model trained on them, so the rise of the errors
            from it to this model is what fine-tuning forgot (pass them to
            :meth:`~ase_mlipal.MLIPALCalculator.set_model` as
            ``forgetting_frames``).
    """

    model: torch.nn.Module
    training: TrainResult
    valid: list[Atoms]
    replay_unseen: list[Atoms] = field(default_factory=list, kw_only=True)
    _made_by: ClassVar[str] = "finetune"  # named in the deprecation warning of tuple use

    def __iter__(self) -> Iterator:
        """Deprecated: the tuple returned before 0.2 (``model, training, valid`` for :func:`finetune`)."""
        self._warn_legacy()
        return iter(self._legacy_tuple())

    def __getitem__(self, index: int):
        """Deprecated: an item of the tuple returned before 0.2."""
        self._warn_legacy()
        return self._legacy_tuple()[index]

    def __len__(self) -> int:
        return len(self._legacy_tuple())

    def _warn_legacy(self) -> None:
        warnings.warn(f"using the result of {self._made_by} as a tuple is deprecated and will be removed in the "
                      "next release; use its attributes (.model, .training, .valid)", DeprecationWarning, stacklevel=3)

    def _legacy_tuple(self) -> tuple:
        return self.model, self.training, self.valid


def train(
    model: torch.nn.Module,
    train_frames: Sequence[Atoms],
    valid_frames: Sequence[Atoms],
    *,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-2,
    energy_weight: float = 1.0,
    forces_weight: float = 10.0,
    patience: int = 20,
    max_seconds: Optional[float] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
    extra_loss: Optional[Callable] = None,
    head: Optional[str] = None,
) -> TrainResult:
    """Train ``model`` in place with mace's ``WeightedEnergyForcesLoss``.

    AMSGrad Adam with the learning rate reduced on plateaus; after each
    epoch the validation loss decides the best weights, which are restored
    at the end; training stops after ``patience`` epochs without
    improvement or after ``max_seconds``. With ``checkpoint`` the best
    weights and the history are written atomically after every epoch.
    ``extra_loss(batch, output)``, if given, is added to the training loss
    (e.g. :class:`~ase_mlipal.training.prototypes.PrototypeAlignment`); validation
    uses the plain loss. The loss is that of ``head`` (default: the head
    the calculator predicts, see :func:`data_loader`): the shared layers
    and that head's readout learn. Batches go to the device of the model's
    parameters.
    """
    if not train_frames or not valid_frames:
        raise ValueError("train needs at least one training and one validation frame")
    device = next(model.parameters()).device
    # this run's seed, without reseeding the caller's global generators
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        train_loader = data_loader(train_frames, model, batch_size, shuffle=True, seed=seed, head=head)
        valid_loader = data_loader(valid_frames, model, batch_size, head=head)
        loss_fn = modules.WeightedEnergyForcesLoss(energy_weight=energy_weight, forces_weight=forces_weight)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, amsgrad=True)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=max(1, patience // 4))
        result, best_loss, best_state = TrainResult(), float("inf"), copy.deepcopy(model.state_dict())
        start = time.perf_counter()
        bar = progress_bar(range(epochs), progress, desc="training")
        for epoch in bar:
            model.train()
            train_loss = 0.0
            for batch in _on_device(train_loader, model):
                optimizer.zero_grad()
                out = model(batch.to_dict(), training=True, compute_force=True)
                loss = loss_fn(batch, out)
                if extra_loss is not None:
                    loss = loss + extra_loss(batch, out)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                train_loss += float(loss.detach()) * batch.num_graphs
            model.eval()
            valid_loss = sum(float(loss_fn(b, model(b.to_dict(), training=False)).detach()) * b.num_graphs
                             for b in _on_device(valid_loader, model)) / len(valid_frames)
            scheduler.step(valid_loss)
            row = {"epoch": epoch, "train_loss": train_loss / len(train_frames), "valid_loss": valid_loss,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
            result.history.append(row)
            if valid_loss < best_loss:
                best_loss, result.best_epoch = valid_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(train=f"{row['train_loss']:.4g}", valid=f"{valid_loss:.4g}", best=result.best_epoch)
            if checkpoint is not None:
                state = {"state_dict": best_state, "history": result.history, "best_epoch": result.best_epoch}
                atomic_torch_save(state, checkpoint)
            if epoch - result.best_epoch >= patience or (max_seconds and row["seconds"] > max_seconds):
                result.stopped_early = True
                break
        model.load_state_dict(best_state)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.eval()
        result.seconds = time.perf_counter() - start
        return result
