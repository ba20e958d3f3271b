"""Feature maps: from one MACE forward pass to per-atom and per-structure features.

A feature map turns the output of :func:`ase_mlipal.inference.forward` into
atom-level features ``psi_i`` (one row per atom) and structure-level
features ``phi(x)`` (one row per structure). Kernels are inner products of
these features; the posterior never needs anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from e3nn import o3
from mace.modules.utils import extract_invariant


@dataclass
class Features:
    """Features of a batch of structures.

    Attributes:
        atom: ``(n_atoms, p)`` atom-level features of every atom of the batch.
        structure: ``(n_structures, p)`` structure-level features.
        ptr: ``(n_structures + 1,)`` offsets: structure ``s`` owns atom rows
            ``ptr[s]:ptr[s+1]``.
    """

    atom: np.ndarray
    structure: np.ndarray
    ptr: np.ndarray

    def split_atoms(self) -> list[np.ndarray]:
        """Atom-level features of each structure, as a list."""
        return [self.atom[a:b] for a, b in zip(self.ptr[:-1], self.ptr[1:])]

    def split(self) -> list["Features"]:
        """One :class:`Features` per structure of the batch."""
        return [Features(atom=atom, structure=self.structure[s:s + 1], ptr=np.array([0, len(atom)]))
                for s, atom in enumerate(self.split_atoms())]


def per_structure(batches: list[Features]) -> list[Features]:
    """One :class:`Features` per structure from a list of batch features."""
    return [f for batch in batches for f in batch.split()]


class ActivationFeatures:
    """Activation kernel of seed 000: invariant hidden features of a pretrained MACE.

    ``psi_i`` concatenates the invariant (l=0) node features of atom ``i``
    from every interaction layer (what the readouts see). MACE's energy is a
    sum of atomic energies, so the structure feature is ``phi(x) = sum_i psi_i``
    and ``k(x, x') = phi(x) . phi(x')``. The features come out of the forward
    pass that gives the energy, so they cost no extra model call.
    """

    name = "activation"
    needs_forces_graph = False

    def __init__(self, model: torch.nn.Module):
        irreps = o3.Irreps(str(model.products[0].linear.irreps_out))
        self.l_max = irreps.lmax
        self.num_invariant = irreps.dim // (self.l_max + 1) ** 2
        self.num_layers = int(model.num_interactions)
        self.dim = self.num_invariant * self.num_layers

    def __call__(self, output: dict) -> Features:
        """Features from the output of :func:`ase_mlipal.inference.forward`."""
        node_feats = output["node_feats"].detach()
        psi = extract_invariant(node_feats, self.num_layers, self.num_invariant, self.l_max)
        batch = output["batch"]
        n_structures = len(output["ptr"]) - 1
        phi = torch.zeros(n_structures, psi.shape[1], dtype=psi.dtype, device=psi.device)
        phi.index_add_(0, batch, psi)
        return Features(
            atom=psi.cpu().numpy().astype(np.float64),
            structure=phi.cpu().numpy().astype(np.float64),
            ptr=output["ptr"].cpu().numpy(),
        )


FEATURE_MAPS = {"activation": ActivationFeatures}


def get_feature_map(name: str, model: torch.nn.Module):
    """The feature map called ``name`` for ``model`` (see ``FEATURE_MAPS``)."""
    try:
        cls = FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(f"Unknown kernel {name!r}; available: {sorted(FEATURE_MAPS)}") from None
    return cls(model)
