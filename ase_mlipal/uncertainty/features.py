"""Feature maps: from a MACE forward pass to per-atom and per-structure features.

Every kernel (a feature map by name, see :mod:`ase_mlipal.uncertainty.kernels`)
implements :class:`FeatureMap`; the calculator, the trigger and selection use
nothing else of it. This module also holds :class:`Features` (what a map
returns) and the activation kernel with its fixed-descriptor baseline.
Kernels are inner products of features; the posterior needs nothing else.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
from e3nn import o3
from mace.modules.utils import extract_invariant

from ..models.graphs import forward
from ..models.model import random_like


@dataclass
class Features:
    """Features of a batch of structures.

    Attributes:
        atom: ``(n_atoms, q)`` atom-level rows of every atom of the batch
            (the rows of the force posterior), or ``None`` for the force
            kernels, whose per-atom variance comes in ``force_variance``.
        structure: ``(n_structures, p)`` structure-level (energy) features.
        ptr: ``(n_structures + 1,)`` offsets: structure ``s`` owns atom rows
            ``ptr[s]:ptr[s+1]``.
        probes: ``(n_structures, m, p)`` force-probe features (force kernels).
        force_variance: ``(n_atoms,)`` raw force variance per Cartesian
            component of each atom, estimated against the force posterior
            the features were computed with (force kernels).
    """

    atom: Optional[np.ndarray]
    structure: np.ndarray
    ptr: np.ndarray
    probes: Optional[np.ndarray] = None
    force_variance: Optional[np.ndarray] = None

    def split_atoms(self) -> list[np.ndarray]:
        """Atom-level features of each structure, as a list."""
        return [self.atom[a:b] for a, b in zip(self.ptr[:-1], self.ptr[1:])]

    def split(self) -> list["Features"]:
        """One :class:`Features` per structure of the batch."""
        out = []
        for s, (a, b) in enumerate(zip(self.ptr[:-1], self.ptr[1:])):
            out.append(Features(
                atom=None if self.atom is None else self.atom[a:b],
                structure=self.structure[s:s + 1],
                ptr=np.array([0, b - a]),
                probes=None if self.probes is None else self.probes[s:s + 1],
                force_variance=None if self.force_variance is None else self.force_variance[a:b],
            ))
        return out


def per_structure(batches: list[Features]) -> list[Features]:
    """One :class:`Features` per structure from a list of batch features."""
    return [f for batch in batches for f in batch.split()]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached float64 numpy copy."""
    return tensor.detach().cpu().numpy().astype(np.float64)



class FeatureMap(abc.ABC):
    """What every kernel implements, bound to one model.

    Attributes:
        name: the kernel's name (:data:`~ase_mlipal.uncertainty.kernels.FEATURE_MAPS`).
        dim: width of the structure (energy) features ``p``.
        force_dim: width of the rows of the force (atom-level) posterior.
        atoms_in_energy_space: ``Features.atom`` lives in the space of
            ``Features.structure`` (then per-atom energies get a variance).
        prior_precision: ``None``, or a ``lambda`` the kernel fixes itself.
        max_batch: ``None``, or the most structures :meth:`evaluate` takes at once.
        selects_on: the posterior candidate rows are scored against in
            selection: ``"energy"`` (structure features) or ``"forces"``.
    """

    name: ClassVar[str]
    atoms_in_energy_space: ClassVar[bool] = False
    prior_precision: ClassVar[Optional[float]] = None
    max_batch: ClassVar[Optional[int]] = None
    selects_on: ClassVar[str] = "energy"
    dim: int
    force_dim: int

    @abc.abstractmethod
    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior=None, rows: bool = True) -> tuple[dict, Features]:
        """Run the model on a mace batch: ``(output, Features)``.

        ``output`` holds ``energy``, ``node_energy``, ``forces`` and ``stress``
        as :func:`ase_mlipal.models.graphs.forward` does. ``force_posterior``
        is the posterior the force kernels draw their per-atom variance
        against; ``rows=False`` says the caller will not condition on these
        features, so a map whose conditioning rows cost extra passes (the
        force kernels' probes) may leave them out. Maps that need neither
        ignore both.
        """

    @abc.abstractmethod
    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``(energy_rows, force_rows)`` that condition the two posteriors on these structures."""

    def selection_rows(self, features: Features) -> np.ndarray:
        """The ``(k, p)`` rows of one structure that batch selection scores (default: its structure feature)."""
        rows = self.conditioning(features)[1] if self.selects_on == "forces" else features.structure
        return np.asarray(rows)

MAX_ELEMENT_BLOCKS = 10  # models with more elements (foundation models) share one block


def element_blocks(psi: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
    """``(n, E * q)`` rows: atom ``i``'s ``psi_i`` in the block of its element, zeros elsewhere.

    ``node_attrs`` is mace's one-hot ``(n, E)`` over the model's elements.
    The inner product of two such rows is ``delta(z_i, z_j) psi_i . psi_j``.
    """
    return (node_attrs.to(psi.dtype)[:, :, None] * psi[:, None, :]).reshape(len(psi), -1)


class ActivationFeatures(FeatureMap):
    """Activation kernel: invariant hidden features of a pretrained MACE.

    ``psi_i`` concatenates the invariant (l=0) node features of atom ``i``
    from every interaction layer (what the readouts see), as in
    "Pretrained Model Representations as Acquisition Signals for Active
    Learning of MLIPs" (Varga-Umbrich et al.). MACE's energy is a sum of
    atomic energies, so the structure feature is
    ``phi(x) = sum_i psi_i`` and ``k(x, x') = phi(x) . phi(x')``. The
    features come out of the forward pass that gives the energy, so they
    cost no extra model call.

    ``by_element`` (the default) puts each ``psi_i`` in a block of its own
    element, so the kernel between atoms is ``delta(z_i, z_j) psi_i . psi_j``
    and ``phi(x)`` stacks one sum per element: an environment is then judged
    against environments of the same element only. Measured with reactions
    held out of the calibration (``benchmarks/calibration.py``), this ranks
    force errors better and separates bond breaking from near-equilibrium
    frames more (median raw force variance 3.4x that of the validation split
    against 2.4x with one shared block), so the calibrated uncertainty is
    both sharper in distribution and wide enough on reactions. Models with
    more than ``MAX_ELEMENT_BLOCKS`` elements use one shared block (E blocks
    of a foundation model's width would not fit in memory).
    """

    name = "activation"
    atoms_in_energy_space = True
    prior_precision = None
    max_batch = None

    def __init__(self, model: torch.nn.Module, by_element: bool = True):
        self.model = model
        irreps = o3.Irreps(str(model.products[0].linear.irreps_out))
        self.l_max = irreps.lmax
        self.num_invariant = irreps.dim // (self.l_max + 1) ** 2
        self.num_layers = int(model.num_interactions)
        n_elements = len(model.atomic_numbers)
        self.by_element = bool(by_element) and n_elements <= MAX_ELEMENT_BLOCKS
        blocks = n_elements if self.by_element else 1
        self.dim = self.force_dim = blocks * self.num_invariant * self.num_layers

    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior=None, rows: bool = True) -> tuple[dict, Features]:
        """One forward pass; the features come from its node features."""
        out = self._forward(batch, compute_force, compute_stress)
        return out, self.from_output(out)

    def _forward(self, batch, compute_force: bool, compute_stress: bool) -> dict:
        """The model's output; autograd only where forces or stress need it."""
        with torch.set_grad_enabled(compute_force or compute_stress):
            return forward(self.model, batch, compute_force=compute_force, compute_stress=compute_stress)

    def from_output(self, output: dict) -> Features:
        """Features from the output of :func:`ase_mlipal.models.graphs.forward`."""
        psi = extract_invariant(output["node_feats"].detach(), self.num_layers, self.num_invariant, self.l_max)
        if self.by_element:
            psi = element_blocks(psi, output["node_attrs"])
        phi = torch.zeros(len(output["ptr"]) - 1, psi.shape[1], dtype=psi.dtype, device=psi.device)
        phi.index_add_(0, output["batch"], psi)
        return Features(atom=to_numpy(psi), structure=to_numpy(phi), ptr=output["ptr"].cpu().numpy())

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Structure rows condition the energy posterior, atom rows the force posterior."""
        return features.structure, features.atom


class FixedFeatures(ActivationFeatures):
    """Fixed-descriptor baseline: activation features of the same architecture at random initialisation.

    Energies and forces still come from the calculator's model; the
    features come from a copy of its architecture with freshly drawn
    weights (:func:`ase_mlipal.models.model.random_like`, seeded), which
    isolates what pretraining adds to the latent space.
    """

    name = "fixed"

    def __init__(self, model: torch.nn.Module, seed: int = 0, by_element: bool = True):
        super().__init__(model, by_element)
        self.seed = seed
        self.random_model = random_like(model, seed)
        for parameter in self.random_model.parameters():
            parameter.requires_grad_(False)

    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior=None, rows: bool = True) -> tuple[dict, Features]:
        out = self._forward(batch, compute_force, compute_stress)
        with torch.no_grad():
            random_out = forward(self.random_model, batch, compute_force=False)
        return out, self.from_output(random_out)
