"""Cumulant structure descriptors ("Comparing the latent features of universal machine-learning interatomic potentials", arXiv:2512.05717): atom-level latent features summarised per structure.

For each feature dimension ``d`` and structure ``x``, the cumulants
``kappa_1 .. kappa_k`` of the distribution of ``psi_id`` over the atoms
``i`` of ``x`` (``kappa_1`` the mean, ``kappa_2`` the variance, ``kappa_3``
the third central moment, ``kappa_4 = mu_4 - 3 mu_2^2``, ...), each put on the
scale of the features by its signed ``n``-th root ``sign(kappa_n)
|kappa_n|^(1/n)``, are concatenated: ``k * D`` numbers per structure. Each
order adds how the atomic environments of the structure vary, which a sum or
mean over atoms (the activation kernel) loses.
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch

from .features import ActivationFeatures, Features


def cumulants(samples: np.ndarray, order: int) -> np.ndarray:
    """Cumulants ``kappa_1 .. kappa_order`` of each column of ``samples`` ``(n, D)``: ``(order, D)``.

    Population cumulants (the moments divide by ``n``), from the central
    moments by the moment-cumulant recursion
    ``kappa_n = mu_n - sum_{m=2}^{n-2} C(n-1, m-1) kappa_m mu_{n-m}``.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or len(samples) == 0:
        raise ValueError(f"need a non-empty (n, D) array, got shape {samples.shape}")
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    mean = samples.mean(axis=0)
    centred = samples - mean
    mu = [np.ones_like(mean), np.zeros_like(mean)] + [np.mean(centred ** n, axis=0) for n in range(2, order + 1)]
    kappa = [mean]
    for n in range(2, order + 1):
        kappa.append(mu[n] - sum(comb(n - 1, m - 1) * kappa[m - 1] * mu[n - m] for m in range(2, n - 1)))
    return np.stack(kappa)


def cumulant_descriptor(atom_features: np.ndarray, ptr: np.ndarray, order: int = 3) -> np.ndarray:
    """Signed-root cumulant descriptors of each structure, ``(n_structures, order * D)``.

    ``atom_features`` are the rows of all atoms, structure ``s`` owning
    ``ptr[s]:ptr[s+1]``; columns are ordered cumulant by cumulant.
    """
    rows = []
    for a, b in zip(ptr[:-1], ptr[1:]):
        kappa = cumulants(atom_features[a:b], order)
        roots = np.array([1.0 / n for n in range(1, order + 1)])[:, None]
        rows.append((np.sign(kappa) * np.abs(kappa) ** roots).reshape(-1))
    return np.stack(rows)


class CumulantFeatures(ActivationFeatures):
    """Cumulant kernel: ``phi(x)`` is the cumulant descriptor of the activation features of ``x``.

    The energy posterior is conditioned on the descriptors, the force
    posterior on the atom rows as in ``activation``. Invariant to rotations,
    translations and atom order, like the features it summarises.

    Args:
        model: the MACE model.
        order: highest cumulant ``k`` (1 gives the mean of the atom features).
    """

    name = "cumulant"
    atoms_in_energy_space = False

    def __init__(self, model: torch.nn.Module, order: int = 3):
        super().__init__(model, by_element=False)  # the cumulants summarise the plain features
        if not 1 <= int(order) <= 8:
            raise ValueError(f"order must be between 1 and 8, got {order}")
        self.order = int(order)
        self.dim = self.order * self.force_dim

    def from_output(self, output: dict) -> Features:
        features = super().from_output(output)
        features.structure = cumulant_descriptor(features.atom, features.ptr, self.order)
        return features
