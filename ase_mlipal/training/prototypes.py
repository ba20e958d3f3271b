"""Prototype-guided latent alignment for fine-tuning ("Prototype-Guided Latent Alignment for Data-Efficient Fine-Tuning of Molecular Foundation Models", arXiv:2605.29969).

Atoms of the source (pretraining) data are clustered, element by element,
by the pretrained model's latent features ``psi``; each cluster ``c`` is a
prototype with centre ``mu_c`` and mean atomic energy ``e_c`` (the
pretrained model's per-atom energies of its members). While fine-tuning,
each atom ``i`` of a training batch is assigned, by the *pretrained*
model's latent features ``psi_i^0``, to the nearest prototype of its
element, and its atomic energy contribution ``eps_i(theta)`` is pulled
toward that prototype's energy:

    L(theta) = L_EF(theta) + w * (1 / N) * sum_i (eps_i(theta) - e_{c(i)})^2,
    c(i) = argmin_{c : Z_c = Z_i} |psi_i^0 - mu_c|^2,

with ``L_EF`` mace's weighted energy-force loss and ``N`` the atoms of the
batch. It anchors the fine-tuned atomic energies to what the pretrained
model assigns to similar environments: an inductive bias for small data
budgets, and a bias, not a help, where matched environments differ in
energy (measured in ``benchmarks/prototypes.py``).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from scipy.cluster.vq import kmeans2

from ..models.graphs import BatchMaker, forward
from ..uncertainty.features import ActivationFeatures


class PrototypeAlignment:
    """The alignment term above, fitted on source frames; pass it to :func:`~ase_mlipal.finetune`.

    Args:
        n_prototypes: clusters per element (fewer if an element has fewer atoms).
        weight: ``w``, in units of the energy loss per eV^2 of atomic energy.
        seed: seed of the k-means initialisation.
    """

    def __init__(self, n_prototypes: int = 8, weight: float = 0.1, seed: int = 0):
        if n_prototypes < 1 or weight < 0:
            raise ValueError("n_prototypes must be at least 1 and weight non-negative")
        self.n_prototypes, self.weight, self.seed = int(n_prototypes), float(weight), int(seed)

    def fit(self, model: torch.nn.Module, source: Sequence[Atoms], batch_size: int = 16) -> "PrototypeAlignment":
        """Cluster the atoms of ``source`` by ``model``'s latent features (``model`` is copied and frozen)."""
        source = list(source)
        if not source:
            raise ValueError("prototypes need source frames")
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.features = ActivationFeatures(self.model, by_element=False)  # the plain latent the prototypes cluster
        psi, energy, numbers = [], [], []
        for chunk, batch in BatchMaker(self.model).batches(source, batch_size):
            out, features = self.features.evaluate(batch, compute_force=False)
            psi.append(features.atom)
            energy.append(out["node_energy"].detach().cpu().numpy())
            numbers.append(np.concatenate([a.numbers for a in chunk]))
        psi, energy, numbers = np.concatenate(psi), np.concatenate(energy), np.concatenate(numbers)
        self.centres: dict[int, np.ndarray] = {}
        self.energies: dict[int, np.ndarray] = {}
        for z in np.unique(numbers):
            mine = numbers == z
            k = min(self.n_prototypes, int(mine.sum()))
            centres, label = kmeans2(psi[mine], k, minit="++", seed=self.seed)
            used = np.unique(label)  # k-means may leave a cluster empty
            self.centres[int(z)] = centres[used]
            self.energies[int(z)] = np.array([energy[mine][label == c].mean() for c in used])
        return self

    def targets(self, batch) -> torch.Tensor:
        """The prototype energy ``e_c(i)`` of every atom of a mace batch (by the pretrained latents)."""
        self._check_fitted()
        with torch.no_grad():
            psi = self.features.from_output(forward(self.model, batch, compute_force=False)).atom
        numbers = self.model.atomic_numbers[batch.node_attrs.argmax(dim=1)].cpu().numpy()
        target = np.empty(len(psi))
        for z in np.unique(numbers):
            if int(z) not in self.centres:
                raise ValueError(f"element {int(z)} has no prototype: the source frames lack it")
            mine = numbers == z
            distance = ((psi[mine, None, :] - self.centres[int(z)][None]) ** 2).sum(axis=2)
            target[mine] = self.energies[int(z)][distance.argmin(axis=1)]
        return torch.as_tensor(target, dtype=batch.positions.dtype, device=batch.positions.device)

    def __call__(self, batch, out: dict) -> torch.Tensor:
        """``w * mean_i (eps_i - e_c(i))^2`` for a batch and the fine-tuned model's output on it."""
        if self.weight == 0:
            return out["node_energy"].sum() * 0.0
        return self.weight * torch.mean((out["node_energy"] - self.targets(batch)) ** 2)

    def _check_fitted(self) -> None:
        if not hasattr(self, "centres"):
            raise RuntimeError("call PrototypeAlignment.fit(model, source_frames) first")
