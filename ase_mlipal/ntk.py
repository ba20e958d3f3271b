"""Finite-width neural tangent kernels of a MACE: energy, force and joint energy-force.

With the model's parameters ``theta`` (all of them by default, or those whose
name matches a regular expression) and a :class:`~ase_mlipal.sketch.CountSketch`
``S`` of ``P -> p`` dimensions:

* ``ntk`` (seed 000): ``phi(x) = S dE(x)/dtheta``.
* ``force_ntk`` (seed 001): force component ``F_ia`` has the feature
  ``g_ia = S dF_ia/dtheta`` (a mixed parameter-coordinate derivative);
  the rows ``G = [g_ia]`` of a structure condition the force posterior
  ``A_F = lambda I + sum_x G^T G``.
* ``ef_ntk`` (seed 001): one posterior conditioned on energies and forces,
  ``A = lambda I + sum_x (phi phi^T + w^2 G^T G)``.

Structures are evaluated one at a time (``max_batch = 1``: a per-structure
gradient needs its own backward pass in any case); energy, forces, stress
and ``dE/dtheta`` come out of one backward pass.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np
import torch

from .features import ActivationFeatures, Features, to_numpy
from .posterior import FeaturePosterior
from .sketch import CountSketch, flatten, tracking


class NTKFeatures:
    """Energy NTK: ``phi(x) = S dE(x)/dtheta``, sketched to ``dim`` dimensions.

    The force posterior (per-atom force uncertainty) uses the activation
    features of the same forward pass: for MACE's linear first readout they
    are the gradient of the atomic energy with respect to that readout's
    weights. Use ``force_ntk`` or ``ef_ntk`` for force uncertainties from
    the NTK itself.

    Args:
        model: the MACE model.
        dim: sketch dimension ``p``.
        seed: seed of the sketch (same seed, same features on any machine).
        parameters: regular expression on parameter names (``None``: all).
    """

    name = "ntk"
    atoms_in_energy_space = False
    prior_precision = None
    max_batch = 1  # a per-structure gradient needs its own backward pass

    def __init__(self, model: torch.nn.Module, dim: int = 512, seed: int = 0, parameters: Optional[str] = None):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if parameters is None or re.search(parameters, n)]
        if not named:
            raise ValueError(f"no model parameter name matches {parameters!r}")
        self.parameter_names = [n for n, _ in named]
        self.parameters = [p for _, p in named]
        self.sketch = CountSketch(sum(p.numel() for p in self.parameters), dim, seed)
        self.dim = dim
        self.activation = ActivationFeatures(model)
        self.force_dim = self.activation.dim

    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior: Optional[FeaturePosterior] = None) -> tuple[dict, Features]:
        """Energy, forces (and stress) and the sketched gradient of a batch of one structure."""
        if int(batch.num_graphs) != 1:
            raise ValueError(f"{self.name} evaluates one structure at a time (max_batch = 1)")
        with tracking(self.parameters), torch.enable_grad():
            out, features = self._one(batch, compute_force, compute_stress, force_posterior)
        for key in ("energy", "node_energy"):
            out[key] = out[key].detach()
        return out, features

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Energy posterior on the NTK rows, force posterior on the activation rows."""
        return features.structure, features.atom

    # -- one structure -------------------------------------------------------

    def _run(self, single, compute_stress: bool) -> tuple[dict, dict]:
        data = single.to_dict()
        out = dict(self.model(data, training=False, compute_force=False, compute_displacement=compute_stress))
        out["batch"], out["ptr"] = data["batch"], data["ptr"]
        return data, out

    def _inputs(self, data: dict, out: dict, compute_force: bool, compute_stress: bool) -> list[torch.Tensor]:
        coordinates = [data["positions"]] if compute_force or compute_stress else []
        if compute_stress:
            coordinates.append(out["displacement"])
        return coordinates

    def _one(self, single, compute_force, compute_stress, force_posterior):
        data, out = self._run(single, compute_stress)
        coordinates = self._inputs(data, out, compute_force, compute_stress)
        grads = torch.autograd.grad(out["energy"].sum(), coordinates + self.parameters, allow_unused=True)
        _mechanics(out, data, grads[:len(coordinates)], compute_force, compute_stress)
        phi = self.sketch(flatten(grads[len(coordinates):], self.parameters).unsqueeze(0))
        atom = self.activation.from_output(out).atom
        return out, Features(atom=atom, structure=to_numpy(phi), ptr=np.array([0, len(atom)]))


class ForceNTKFeatures(NTKFeatures):
    """Force NTK (seed 001) with probes: force uncertainties from mixed derivatives.

    **Conditioning rows (probes).** Exact rows ``g_ia`` would cost ``3N``
    backward passes. Instead, for ``m = probes`` Rademacher vectors ``v_k``
    over the ``3N`` force components (fixed seed, so a structure always gets
    the same probes), ``h_k = S d(v_k . F)/dtheta / sqrt(m)`` costs one
    double backward each, and ``sum_k h_k h_k^T`` is an unbiased estimate
    of ``G^T G`` (Hutchinson), exact as ``m -> infinity``. The probe rows
    are random, so they are invariant to rotations and atom order in
    distribution only; the uncertainties below are exactly invariant.

    **Per-atom force variance.** ``g_ia^T A_F^{-1} g_ia`` for every atom
    from ``s = samples`` posterior draws ``z ~ N(0, A_F^{-1})``
    (:meth:`FeaturePosterior.samples`, fixed noise): the linearised force
    change ``J S^T z`` under each draw is one more backward pass for all
    atoms at once, and ``mean_z (g_ia . z)^2`` estimates the variance with
    relative error ``sqrt(2/s)``. It is reported per Cartesian component
    (the mean over the atom's three components).

    The energy posterior is conditioned on the energy NTK rows, as ``ntk``.
    """

    name = "force_ntk"

    def __init__(self, model: torch.nn.Module, dim: int = 512, seed: int = 0, parameters: Optional[str] = None,
                 probes: int = 4, samples: int = 8):
        super().__init__(model, dim, seed, parameters)
        if probes < 1 or samples < 1:
            raise ValueError("probes and samples must be at least 1")
        self.probes, self.samples, self.seed = probes, samples, seed
        self.force_dim = dim
        self.noise = np.random.default_rng(seed).standard_normal((samples, dim))

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Energy posterior on the NTK rows, force posterior on the probe rows."""
        return features.structure, features.probes.reshape(-1, self.dim)

    def _one(self, single, compute_force, compute_stress, force_posterior):
        data, out = self._run(single, compute_stress)
        coordinates = self._inputs(data, out, True, compute_stress)
        grads = torch.autograd.grad(out["energy"].sum(), coordinates + self.parameters,
                                    allow_unused=True, create_graph=True)
        _mechanics(out, data, grads[:len(coordinates)], True, compute_stress)
        energy_gradient = flatten(grads[len(coordinates):], self.parameters)
        forces = -grads[0]
        phi = self.sketch(energy_gradient.detach().unsqueeze(0))
        features = Features(atom=None, structure=to_numpy(phi), ptr=np.array([0, len(forces)]),
                            probes=to_numpy(self._probe_rows(forces))[None])
        if force_posterior is not None:
            features.force_variance = self._force_variance(energy_gradient, data["positions"], force_posterior)
        return out, features

    def _probe_rows(self, forces: torch.Tensor) -> torch.Tensor:
        """``S d(v_k . F)/dtheta / sqrt(m)`` for the ``m`` probes, ``(m, p)``."""
        generator = torch.Generator().manual_seed(self.seed)
        v = torch.randint(2, (self.probes,) + tuple(forces.shape), generator=generator).to(forces) * 2 - 1
        grads = torch.autograd.grad(forces, self.parameters, grad_outputs=v, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True)
        return self.sketch(flatten(grads, self.parameters, batch=self.probes)) / np.sqrt(self.probes)

    def _force_variance(self, energy_gradient: torch.Tensor, positions: torch.Tensor,
                        posterior: FeaturePosterior) -> np.ndarray:
        """Per-atom raw force variance from posterior draws (see the class docstring)."""
        z = torch.from_numpy(posterior.samples(self.noise)).to(energy_gradient)
        directions = self.sketch.transpose(z)  # (s, P): S^T z
        along = directions @ energy_gradient  # (s,): dE/dtheta . S^T z, still a function of positions
        eye = torch.eye(self.samples, dtype=along.dtype)
        (response,) = torch.autograd.grad(along, positions, grad_outputs=eye, is_grads_batched=True,
                                          retain_graph=True)  # (s, N, 3): -J S^T z
        return to_numpy((response ** 2).mean(dim=(0, 2)))


class EnergyForceNTKFeatures(ForceNTKFeatures):
    """Joint energy-force NTK (seed 001): one posterior on energies and forces.

    Both posteriors are conditioned on the same rows, the energy row and the
    force probe rows times ``w = force_weight``:
    ``A = lambda I + sum_x (phi phi^T + w^2 G^T G)``. This is the posterior
    of the linearised model fitted to energies with noise ``sigma_E`` and
    force components with noise ``sigma_F`` when ``w = sigma_E / sigma_F``:
    ``w = 1`` weighs an eV of energy like an eV/A of one force component;
    a larger ``w`` lets forces dominate what counts as known. The energy
    variance is then ``phi^T A^{-1} phi`` and the force variance that of
    ``force_ntk``, both under this joint ``A``.
    """

    name = "ef_ntk"

    def __init__(self, model: torch.nn.Module, dim: int = 512, seed: int = 0, parameters: Optional[str] = None,
                 probes: int = 4, samples: int = 8, force_weight: float = 1.0):
        super().__init__(model, dim, seed, parameters, probes, samples)
        if not force_weight > 0:
            raise ValueError("force_weight must be positive")
        self.force_weight = force_weight

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """The joint rows ``[phi; w h_1 .. w h_m]`` for both posteriors."""
        rows = np.concatenate([features.structure, self.force_weight * features.probes.reshape(-1, self.dim)])
        return rows, rows


# -- helpers -------------------------------------------------------------------


def _mechanics(out: dict, data: dict, grads, compute_force: bool, compute_stress: bool) -> None:
    """Forces and stress from ``dE/dr`` and ``dE/d(displacement)``, as mace computes them."""
    out["forces"] = -grads[0].detach() if compute_force else None
    out["stress"] = None
    if compute_stress:
        volume = torch.linalg.det(data["cell"].view(-1, 3, 3)).abs().view(-1, 1, 1)
        out["stress"] = grads[-1].detach() / volume
