"""Training: the loop and errors (:mod:`.trainer`), fine-tuning with replay (:mod:`.finetune`),
prototype-guided alignment (:mod:`.prototypes`) and Hessian distillation (:mod:`.distill`)."""

# ``ase_mlipal.training`` was the module of the loop in 0.1: its names stay importable from here
from .trainer import (  # noqa: F401
    TrainResult,
    data_loader,
    dataset_statistics,
    evaluate,
    frame_errors,
    train,
)
