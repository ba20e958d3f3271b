"""Kernels by name: the feature maps the calculator, the trigger and selection accept.

=============  ===============================================================
``activation`` invariant hidden features of the model [1], the default
``ntk``        sketched energy gradient w.r.t. the parameters [1]
``force_ntk``  sketched mixed derivatives of the forces, with probes [2]
``ef_ntk``     joint energy-force NTK [2]
``fixed``      activation features of the same architecture at random init
``committee``  spread of K MACE models (needs ``members``)
``cumulant``   cumulants of the activation features over a structure's atoms [3]
=============  ===============================================================

[1] "Pretrained Model Representations as Acquisition Signals for Active
    Learning of MLIPs", arXiv:2605.03964.
[2] "Force-Aware Neural Tangent Kernels for Scalable and Robust Active
    Learning of MLIPs", arXiv:2605.13788.
[3] "Comparing the latent features of universal machine-learning
    interatomic potentials", arXiv:2512.05717.

``random`` is a selection method (:func:`ase_mlipal.select`), not a kernel.
"""

from __future__ import annotations

from typing import Optional

import torch

from .committee import CommitteeFeatures
from .cumulant import CumulantFeatures
from .features import ActivationFeatures, FixedFeatures
from .ntk import EnergyForceNTKFeatures, ForceNTKFeatures, NTKFeatures

FEATURE_MAPS = {
    "activation": ActivationFeatures,
    "ntk": NTKFeatures,
    "force_ntk": ForceNTKFeatures,
    "ef_ntk": EnergyForceNTKFeatures,
    "fixed": FixedFeatures,
    "committee": CommitteeFeatures,
    "cumulant": CumulantFeatures,
}


def get_feature_map(name: str, model: torch.nn.Module, options: Optional[dict] = None):
    """The feature map called ``name`` for ``model``; ``options`` go to its constructor.

    For example ``{"dim": 1024, "seed": 1}`` for ``ntk``, ``{"probes": 8}``
    for ``force_ntk``, ``{"seed": 3}`` for ``fixed`` and
    ``{"members": [...]}`` for ``committee`` and ``{"order": 4}`` for
    ``cumulant``.
    """
    try:
        cls = FEATURE_MAPS[name]
    except KeyError:
        raise ValueError(f"Unknown kernel {name!r}; available: {sorted(FEATURE_MAPS)}") from None
    try:
        return cls(model, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"bad options for kernel {name!r}: {exc}") from None
