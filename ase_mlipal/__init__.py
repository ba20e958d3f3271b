"""ase-mlipal: latent-space uncertainty and active learning for MACE in ASE.

The public API is re-exported here. ``mace`` is imported first on purpose:
e3nn 0.4.4 only imports with torch >= 2.6 after mace has set
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. That setting would make every later
``torch.load`` without ``weights_only=`` unpickle arbitrary code, so it
holds only while the package imports (:func:`~ase_mlipal.environment.torch_load_override`)
and the variable is as it was once ``import ase_mlipal`` returns. Every
load in this package passes ``weights_only`` explicitly.
"""

import warnings

from .environment import torch_load_override, without_cuequivariance_notice

with torch_load_override(), without_cuequivariance_notice(), warnings.catch_warnings():
    # e3nn's own constants load triggers torch's notice about that variable
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    import mace  # noqa: F401  (must precede any e3nn import)
    from e3nn import o3  # noqa: F401

    from .calculator import MLIPALCalculator
    from .uncertainty.calibration import (CalibrationReport, Recalibration, calibration_report, fit_recalibration,
                                          fit_scale, forgetting_floor)
    from .uncertainty.committee import CommitteeFeatures
    from .uncertainty.features import ActivationFeatures, FeatureMap, FixedFeatures
    from .uncertainty.kernels import FEATURE_MAPS, get_feature_map
    from .training.distill import DistillResult, distill
    from .training.finetune import finetune, rereference_energies, shift_energies, train_committee
    from .frames import read_frames, read_labels, with_labels
    from .references.pyscf import PySCF, pyscf_calculator
    from .learning.labelling import LabelReport, ReferenceSetupError, label
    from .learning.learning_run import default_conditioning
    from .learning.md_learner import OnTheFlyLearner, langevin
    from .models.model import (
        ModelLoadError,
        build_mace,
        load_model,
        model_elements,
        model_hash,
        random_like,
        save_model,
    )
    from .uncertainty.ntk import EnergyForceNTKFeatures, ForceNTKFeatures, NTKFeatures
    from .guards import EnergyRunaway, PhysicalGuard, UnphysicalFrame
    from .learning.neb_learner import NEBLearner, NEBReport, NoBandError
    from .paths import PathProfile, band, band_residuals, fit_band_calibration, path_profile
    from .learning.transition_state import TransitionState, refine_ts
    from .uncertainty.posterior import FeaturePosterior
    from .uncertainty.distance import NearestNeighbours
    from .uncertainty.uncertainty_model import UncertaintyModel
    from .training.prototypes import PrototypeAlignment
    from .references.xtb import RobustXTB, xtb_calculator, xtb_label
    from .selection import select
    from .learning.store import FrameStore, StoreBusy
    from .learning.trigger import UncertaintyLimitExceeded, UncertaintyTrigger
    from .training.trainer import TrainedModel, TrainResult, evaluate, train
    from .learning.verification import Check, ModelChoice

from . import legacy

legacy.install()  # old flat module paths (ase_mlipal.calibration, ...) as deprecated aliases

__version__ = "0.1.0"

__all__ = [
    "ActivationFeatures",
    "FeatureMap",
    "CommitteeFeatures",
    "EnergyForceNTKFeatures",
    "FEATURE_MAPS",
    "FixedFeatures",
    "ForceNTKFeatures",
    "NTKFeatures",
    "CalibrationReport",
    "FeaturePosterior",
    "NearestNeighbours",
    "UncertaintyModel",
    "PrototypeAlignment",
    "FrameStore",
    "StoreBusy",
    "PySCF",
    "pyscf_calculator",
    "rereference_energies",
    "shift_energies",
    "ReferenceSetupError",
    "LabelReport",
    "MLIPALCalculator",
    "ModelLoadError",
    "NEBLearner",
    "NEBReport",
    "NoBandError",
    "PhysicalGuard",
    "UnphysicalFrame",
    "EnergyRunaway",
    "band",
    "refine_ts",
    "TransitionState",
    "OnTheFlyLearner",
    "langevin",
    "PathProfile",
    "RobustXTB",
    "UncertaintyLimitExceeded",
    "UncertaintyTrigger",
    "Check",
    "ModelChoice",
    "build_mace",
    "Recalibration",
    "calibration_report",
    "evaluate",
    "distill",
    "DistillResult",
    "TrainedModel",
    "TrainResult",
    "default_conditioning",
    "band_residuals",
    "finetune",
    "fit_band_calibration",
    "fit_recalibration",
    "forgetting_floor",
    "fit_scale",
    "get_feature_map",
    "label",
    "load_model",
    "model_elements",
    "model_hash",
    "path_profile",
    "random_like",
    "read_frames",
    "read_labels",
    "with_labels",
    "save_model",
    "select",
    "train",
    "train_committee",
    "xtb_calculator",
    "xtb_label",
]
