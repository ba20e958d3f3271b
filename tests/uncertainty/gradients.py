"""Exact parameter gradients, one backward pass per row: the references the sketched NTK estimators are tested against."""

from typing import Sequence

import torch

from ase_mlipal.models.graphs import forward
from ase_mlipal.uncertainty.sketch import flatten, tracking


def energy_gradients(model: torch.nn.Module, batch, parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """``d E_s / d theta`` for every structure ``s`` of a mace batch, flattened: ``(n_structures, P)``.

    One backward pass per structure (``retain_graph``); ``batch`` comes
    from :class:`ase_mlipal.models.graphs.BatchMaker`.
    """
    with tracking(parameters), torch.enable_grad():
        energy = forward(model, batch, compute_force=False)["energy"]
        rows = [flatten(torch.autograd.grad(energy[s], parameters, retain_graph=s + 1 < len(energy),
                                            allow_unused=True), parameters)
                for s in range(len(energy))]
    return torch.stack(rows).detach()


def force_gradients(model: torch.nn.Module, batch, parameters: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """Exact ``d F_ia / d theta`` for every force component of a mace batch: ``(3 n_atoms, P)``.

    One double backward per component (``3N`` in all): the reference the
    probe estimates of :class:`ase_mlipal.uncertainty.ntk.ForceNTKFeatures` are tested
    against. Rows are ordered atom by atom, ``x, y, z``.
    """
    with tracking(parameters), torch.enable_grad():
        forces = forward(model, batch, compute_force=True, training=True)["forces"].reshape(-1)
        rows = [flatten(torch.autograd.grad(forces[c], parameters, retain_graph=True, allow_unused=True), parameters)
                for c in range(len(forces))]
    return torch.stack(rows).detach()
