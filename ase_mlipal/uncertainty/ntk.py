"""Finite-width neural tangent kernels of a MACE: energy, force and joint energy-force.

With the model's parameters ``theta`` (all of them by default, or those whose
name matches a regular expression) and a :class:`~ase_mlipal.uncertainty.sketch.CountSketch`
``S`` of ``P -> p`` dimensions:

* ``ntk`` ("Pretrained Model Representations as Acquisition Signals for
  Active Learning of MLIPs", arXiv:2605.03964): ``phi(x) = S dE(x)/dtheta``.
* ``force_ntk`` ("Force-Aware Neural Tangent Kernels for Scalable and Robust
  Active Learning of MLIPs", arXiv:2605.13788): force component ``F_ia`` has the feature
  ``g_ia = S dF_ia/dtheta`` (a mixed parameter-coordinate derivative);
  the rows ``G = [g_ia]`` of a structure condition the force posterior
  ``A_F = lambda I + sum_x G^T G``.
* ``ef_ntk`` (arXiv:2605.13788): one posterior conditioned on energies and forces,
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

from ..models.graphs import forward
from .features import ActivationFeatures, FeatureMap, Features, to_numpy
from .posterior import FeaturePosterior
from .sketch import CountSketch, flatten, shifted, tracking


class NTKFeatures(FeatureMap):
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
                 force_posterior: Optional[FeaturePosterior] = None, rows: bool = True) -> tuple[dict, Features]:
        """Energy, forces (and stress) and the sketched gradient of a batch of one structure."""
        if int(batch.num_graphs) != 1:
            raise ValueError(f"{self.name} evaluates one structure at a time (max_batch = 1)")
        with tracking(self.parameters), torch.enable_grad():
            out, features = self._one(batch, compute_force, compute_stress, rows)
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
        out["batch"], out["ptr"], out["node_attrs"] = data["batch"], data["ptr"], data["node_attrs"]
        return data, out

    def _inputs(self, data: dict, out: dict, compute_force: bool, compute_stress: bool) -> list[torch.Tensor]:
        coordinates = [data["positions"]] if compute_force or compute_stress else []
        if compute_stress:
            coordinates.append(out["displacement"])
        return coordinates

    def _one(self, single, compute_force: bool, compute_stress: bool, rows: bool):
        data, out = self._run(single, compute_stress)
        coordinates = self._inputs(data, out, compute_force, compute_stress)
        grads = torch.autograd.grad(out["energy"].sum(), coordinates + self.parameters, allow_unused=True)
        _mechanics(out, data, grads[:len(coordinates)], compute_force, compute_stress)
        phi = self.sketch(flatten(grads[len(coordinates):], self.parameters).unsqueeze(0))
        atom = self.activation.from_output(out).atom
        return out, Features(atom=atom, structure=to_numpy(phi), ptr=np.array([0, len(atom)]))


class ForceNTKFeatures(NTKFeatures):
    """Force NTK (arXiv:2605.13788) with probes: force uncertainties from mixed derivatives.

    **Conditioning rows (probes).** Exact rows ``g_ia`` would cost ``3N``
    double backward passes. Instead, for ``m = probes`` Rademacher vectors
    ``v_k`` over the ``3N`` force components (fixed seed, so a structure
    always gets the same probes), ``h_k = S d(v_k . F)/dtheta / sqrt(m)``
    costs one double backward each, and ``sum_k h_k h_k^T`` is an unbiased
    estimate of ``G^T G`` (Hutchinson), exact as ``m -> infinity``. The
    probe rows are random, so they are invariant to rotations and atom
    order in distribution only; the uncertainties below are exactly
    invariant. They are computed only when asked for (``rows=True``): a
    calculator call, which only predicts, skips them.

    **Per-atom force variance.** ``g_ia^T A_F^{-1} g_ia`` for every atom
    from ``s = samples`` posterior draws ``z ~ N(0, A_F^{-1})``
    (:meth:`FeaturePosterior.samples`, fixed noise): ``g_ia . z`` is the
    change of ``F_ia`` when the parameters move along ``u = S^T z``, which
    one force evaluation at ``theta + eps u`` gives for all atoms at once
    (forward difference, ``eps`` at the square root of the machine epsilon
    relative to ``|theta|``: relative error about ``1e-7`` in float64).
    ``mean_z (g_ia . z)^2`` estimates the variance with relative error
    about ``sqrt(2/s)`` per component; it is reported per Cartesian
    component (the mean over the atom's three components). Each draw costs
    one force evaluation, so a call costs about ``1 + s`` of them.

    The energy posterior is conditioned on the energy NTK rows, as ``ntk``.
    """

    name = "force_ntk"
    selects_on = "forces"  # candidates are scored by their probe rows against the force posterior

    def __init__(self, model: torch.nn.Module, dim: int = 512, seed: int = 0, parameters: Optional[str] = None,
                 probes: int = 4, samples: int = 8):
        super().__init__(model, dim, seed, parameters)
        if probes < 1 or samples < 1:
            raise ValueError("probes and samples must be at least 1")
        self.probes, self.samples, self.seed = probes, samples, seed
        self.force_dim = dim
        self.noise = np.random.default_rng(seed).standard_normal((samples, dim))

    def evaluate(self, batch, compute_force: bool = True, compute_stress: bool = False,
                 force_posterior: Optional[FeaturePosterior] = None, rows: bool = True) -> tuple[dict, Features]:
        """As :meth:`NTKFeatures.evaluate`, plus probe rows and (given ``force_posterior``) per-atom variance."""
        out, features = super().evaluate(batch, True, compute_stress, rows=rows)
        if force_posterior is not None:
            features.force_variance = self._force_variance(batch, out["forces"], force_posterior)
        return out, features

    def conditioning(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Energy posterior on the NTK rows, force posterior on the probe rows."""
        return features.structure, self._probe_rows_of(features)

    def _probe_rows_of(self, features: Features) -> np.ndarray:
        if features.probes is None:
            raise ValueError(f"these {self.name} features were computed without probe rows (a calculator call "
                             "skips them); get features to condition on from calc.features(images) or use "
                             "calc.condition(images)")
        return features.probes.reshape(-1, self.dim)

    def _one(self, single, compute_force: bool, compute_stress: bool, rows: bool):
        data, out = self._run(single, compute_stress)
        coordinates = self._inputs(data, out, True, compute_stress)
        grads = torch.autograd.grad(out["energy"].sum(), coordinates + self.parameters,
                                    allow_unused=True, create_graph=rows)  # the probes differentiate again
        _mechanics(out, data, grads[:len(coordinates)], True, compute_stress)
        phi = self.sketch(flatten(grads[len(coordinates):], self.parameters).detach().unsqueeze(0))
        probes = to_numpy(self._probe_rows(-grads[0]))[None] if rows else None
        return out, Features(atom=None, structure=to_numpy(phi), ptr=np.array([0, len(out["forces"])]), probes=probes)

    def _probe_rows(self, forces: torch.Tensor) -> torch.Tensor:
        """``S d(v_k . F)/dtheta / sqrt(m)`` for the ``m`` probes, ``(m, p)``: one double backward each."""
        generator = torch.Generator().manual_seed(self.seed)
        v = torch.randint(2, (self.probes,) + tuple(forces.shape), generator=generator).to(forces) * 2 - 1
        rows = [self.sketch(flatten(torch.autograd.grad(forces, self.parameters, grad_outputs=v_k, retain_graph=True,
                                                        allow_unused=True), self.parameters).unsqueeze(0))
                for v_k in v]
        return torch.cat(rows) / np.sqrt(self.probes)

    def _force_variance(self, batch, forces: torch.Tensor, posterior: FeaturePosterior) -> np.ndarray:
        """Per-atom raw force variance from posterior draws (see the class docstring)."""
        z = torch.from_numpy(posterior.samples(self.noise)).to(forces)
        scale = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in self.parameters)))  # |theta|, once per call
        changes = torch.stack([self._force_change(batch, forces, u, scale) for u in self.sketch.transpose(z)])
        return to_numpy((changes ** 2).mean(dim=(0, 2)))

    def _force_change(self, batch, forces: torch.Tensor, direction: torch.Tensor, scale: float) -> torch.Tensor:
        """``dF/dtheta . direction`` for all atoms, by a forward difference in the parameters (``scale = |theta|``)."""
        step = float(np.sqrt(torch.finfo(forces.dtype).eps) * max(scale, 1.0) / float(direction.norm()))
        with shifted(self.parameters, step * direction), torch.enable_grad():
            moved = forward(self.model, batch, compute_force=True)["forces"].detach()
        return (moved - forces) / step


class EnergyForceNTKFeatures(ForceNTKFeatures):
    """Joint energy-force NTK (arXiv:2605.13788): one posterior on energies and forces.

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
        rows = np.concatenate([features.structure, self.force_weight * self._probe_rows_of(features)])
        return rows, rows


# -- helpers -------------------------------------------------------------------


def _mechanics(out: dict, data: dict, grads, compute_force: bool, compute_stress: bool) -> None:
    """Forces and stress from ``dE/dr`` and ``dE/d(displacement)``, as mace computes them."""
    out["forces"] = -grads[0].detach() if compute_force else None
    out["stress"] = None
    if compute_stress:
        volume = torch.linalg.det(data["cell"].view(-1, 3, 3)).abs().view(-1, 1, 1)
        out["stress"] = grads[-1].detach() / volume
