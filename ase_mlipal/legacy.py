"""The module paths of ase-mlipal 0.1 (flat modules), kept for one release as deprecated aliases.

``from ase_mlipal.calibration import fit_recalibration`` still works: the
old path is an alias module whose names come from
:mod:`ase_mlipal.uncertainty.calibration`, with a ``DeprecationWarning``
naming the new path. The public API (``ase_mlipal.<name>``) is unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

#: old module name -> new path under ``ase_mlipal``
MOVED = {
    "model": "models.model", "inference": "models.graphs",
    "posterior": "uncertainty.posterior", "calibration": "uncertainty.calibration",
    "features": "uncertainty.features", "ntk": "uncertainty.ntk", "sketch": "uncertainty.sketch",
    "cumulant": "uncertainty.cumulant", "committee": "uncertainty.committee", "kernels": "uncertainty.kernels",
    "store": "learning.store", "trigger": "learning.trigger", "labelling": "learning.labelling",
    "learner": "learning.md_learner", "neb": "learning.neb_learner", "retrain": "learning.learning_run",
    "verification": "learning.verification", "transition_state": "learning.transition_state",
    "finetune": "training.finetune", "prototypes": "training.prototypes", "distill": "training.distill",
    "reference": "references.xtb", "dft": "references.pyscf",
}


class LegacyModule(types.ModuleType):
    """Stands at an old module path; the first attribute read warns and every read comes from the new module."""

    def __init__(self, old: str, new: str):
        super().__init__(old, f"deprecated alias of {new}")
        self._new, self._warned = new, False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.__name__} is deprecated and will be removed in the next release; "
                          f"import from {self._new} instead", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(self._new), name)


def install() -> None:
    """Register an alias module in ``sys.modules`` for every old path (never set as attributes of
    the package, so ``ase_mlipal.finetune`` stays the function)."""
    for old, new in MOVED.items():
        sys.modules.setdefault(f"ase_mlipal.{old}", LegacyModule(f"ase_mlipal.{old}", f"ase_mlipal.{new}"))


def renamed_argument(new_value, deprecated: dict, old: str, new: str, owner: str):
    """The value of argument ``new``, taking it from the deprecated name ``old`` in ``deprecated`` (with a warning).

    ``deprecated`` is the caller's ``**kwargs``; ``old`` is removed from it.
    """
    if old not in deprecated:
        return new_value
    warnings.warn(f"{owner}({old}=...) is deprecated and will be removed in the next release; use {new}=",
                  DeprecationWarning, stacklevel=3)
    if new_value is not None:
        raise TypeError(f"{owner} got both {old}= and its new name {new}=")
    return deprecated.pop(old)


def refuse_unknown(deprecated: dict, owner: str) -> None:
    """``TypeError`` for keyword arguments left after the renamed ones were taken."""
    if deprecated:
        raise TypeError(f"{owner} got unexpected keyword arguments {sorted(deprecated)}")
