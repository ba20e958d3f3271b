"""Committee baseline: K MACE models, their mean as the prediction and their spread as the uncertainty."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..models.graphs import forward
from ..models.model import ModelSpec, load_model
from .features import FeatureMap, Features, to_numpy


class CommitteeFeatures(FeatureMap):
    """A committee of the calculator's model and ``members`` (``K = 1 + len(members)``).

    Energies, forces and stress are the committee means. The features are
    the members' deviations from the mean, scaled so that their squared
    norm is the committee's sample variance: ``(E_k - E_mean) / sqrt(K - 1)``
    per structure, and per atom the force deviations of all three
    components over ``sqrt(3 (K - 1))`` (the variance per component). The
    kernel fixes ``lambda = 1`` and adds no rows when conditioned, so the
    calculator reports the plain committee standard deviation, which does
    not shrink as conditioning frames are added. In selection, MaxDet on these
    features is greedy selection under the committee's empirical kernel.

    Args:
        model: the calculator's model (one member).
        members: the other members (anything :func:`load_model` accepts),
            e.g. from :func:`~ase_mlipal.training.finetune.train_committee`; at least one.
    """

    name = "committee"
    atoms_in_energy_space = False
    prior_precision = 1.0
    max_batch = None

    def __init__(self, model: torch.nn.Module, members: Optional[Sequence[ModelSpec]] = None):
        if not members:
            raise ValueError("kernel 'committee' needs members=[...] (other models); "
                             "train them with ase_mlipal.train_committee(model, frames)")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        device = str(next(model.parameters()).device)
        self.models = [model] + [load_model(m, device=device, dtype=dtype) for m in members]
        for member in self.models[1:]:
            if [int(z) for z in member.atomic_numbers] != [int(z) for z in model.atomic_numbers]:
                raise ValueError("all committee members must know the same elements in the same order")
            for parameter in member.parameters():
                parameter.requires_grad_(False)
        self.size = len(self.models)
        self.dim = self.size
        self.force_dim = 3 * self.size

    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior=None, rows: bool = True) -> tuple[dict, Features]:
        """Each member once (with forces, which the per-atom spread needs)."""
        outs = [forward(m, batch, compute_force=True, compute_stress=compute_stress) for m in self.models]
        mean = {key: None if outs[0][key] is None else torch.stack([o[key].detach() for o in outs]).mean(0)
                for key in ("energy", "node_energy", "forces", "stress")}
        energies = torch.stack([o["energy"].detach() for o in outs], dim=1)  # (B, K)
        forces = torch.stack([o["forces"].detach() for o in outs], dim=1)  # (n_atoms, K, 3)
        k = self.size
        structure = (energies - energies.mean(1, keepdim=True)) / np.sqrt(k - 1)
        atom = (forces - forces.mean(1, keepdim=True)).reshape(len(forces), -1) / np.sqrt(3 * (k - 1))
        return mean, Features(atom=to_numpy(atom), structure=to_numpy(structure), ptr=outs[0]["ptr"].cpu().numpy())

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """No rows: a committee's spread does not depend on conditioning frames."""
        return np.zeros((0, self.dim)), np.zeros((0, self.force_dim))

