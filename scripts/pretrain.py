"""Pretrain the shipped default MACE on the xTB pretraining set.

    python scripts/pretrain.py                      # writes ase_mlipal/data/default.*
    python scripts/pretrain.py --max-minutes 100 --device cuda

Reads ``benchmarks/data/pretrain.xyz.gz`` (made by ``scripts/make_data.py``),
builds a small MACE with mace's data-dependent arguments (least-squares E0s,
average neighbour count, RMS-force scaling), trains it with mace's
energy-and-forces loss, and writes into ``ase_mlipal/data/``:

* ``default.pt``: the weights in ase-mlipal's safe format (loads with
  ``torch.load(..., weights_only=True)``), float64;
* ``default.json``: hyperparameters, data statistics, training record and
  the validation/test errors measured here;
* ``default_posterior.npz``: the activation-kernel posterior of the
  training frames, calibrated on the validation split and 22 reactions
  (``scripts/build_posterior.py``, which rebuilds it alone);
* ``default_conditioning.xyz.gz``: the training split's structures (no
  labels), on which a model swap rebuilds the posterior;
* ``default_replay.xyz.gz``: a sample of training frames that fine-tuning
  replays so the model does not forget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
from ase.io import write

import ase_mlipal
from ase_mlipal.frames import read_frames
from ase_mlipal.training.trainer import dataset_statistics, evaluate, train
from build_posterior import build_posterior, calibration_reactions, write_conditioning  # scripts/ is on sys.path

warnings.filterwarnings("ignore", message=".*TorchScript.*")

ROOT = Path(__file__).resolve().parent.parent
ELEMENTS = [1, 6, 7, 8]
HYPERPARAMETERS = dict(r_max=5.0, channels=32, max_ell=1, num_interactions=2, correlation=2,
                       num_bessel=8, num_polynomial_cutoff=5, mlp_channels=16, radial_mlp=(32, 32, 32))
TRAINING = dict(epochs=400, batch_size=16, lr=1e-2, energy_weight=1.0, forces_weight=10.0, patience=30, seed=0)
N_REPLAY = 300


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "pretrain.xyz.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "ase_mlipal" / "data")
    parser.add_argument("--max-minutes", type=float, default=100.0, help="wall-time budget of the training loop")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="training precision; the shipped model is float64")
    args = parser.parse_args()
    start = time.perf_counter()

    frames = read_frames(args.data)
    splits = {s: [f for f in frames if f.info["split"] == s] for s in ("train", "valid", "test")}
    print({s: len(v) for s, v in splits.items()})

    stats = dataset_statistics(splits["train"], ELEMENTS, HYPERPARAMETERS["r_max"])
    model = ase_mlipal.build_mace(ELEMENTS, **HYPERPARAMETERS, **stats, seed=TRAINING["seed"], dtype=args.dtype)
    model = model.to(args.device)
    training = {**TRAINING, "epochs": args.epochs}
    result = train(model, splits["train"], splits["valid"], max_seconds=60 * args.max_minutes,
                   checkpoint=args.out / "pretrain_checkpoint.pt", **training)
    print(f"trained {len(result.history)} epochs in {result.seconds / 60:.1f} min, best epoch {result.best_epoch}")

    model = ase_mlipal.load_model(model.cpu(), dtype="float64")
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = ase_mlipal.save_model(model, args.out / "default.pt")
    (args.out / "pretrain_checkpoint.pt").unlink(missing_ok=True)
    metrics = {s: evaluate(model, splits[s]) for s in ("valid", "test")}
    print(json.dumps(metrics, indent=1))

    calc, posterior_record = build_posterior(model, splits, calibration_reactions())
    report = calc.calibrate(splits["valid"], fit=False)
    calc.save_posterior(args.out / "default_posterior.npz")
    write_conditioning(splits["train"], args.out / "default_conditioning.xyz.gz")

    rng = np.random.default_rng(0)
    replay = [splits["train"][i] for i in sorted(rng.choice(len(splits["train"]), N_REPLAY, replace=False))]
    write(args.out / "default_replay.xyz.gz", replay, format="extxyz")

    record = {
        "model_hash": ase_mlipal.model_hash(model),
        "elements": ELEMENTS,
        "hyperparameters": {**HYPERPARAMETERS, "radial_mlp": list(HYPERPARAMETERS["radial_mlp"])},
        "statistics": stats,
        "training": {**training, "dtype": args.dtype, "device": args.device, "epochs_run": len(result.history),
                     "best_epoch": result.best_epoch, "minutes": round(result.seconds / 60, 1),
                     "history": result.history},
        "data": {"file": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT) else str(args.data),
                 "sha256": sha256(args.data), **{f"n_{s}": len(v) for s, v in splits.items()}},
        "metrics": metrics,
        "calibration_valid": {k: v.as_dict() for k, v in report.items()},
        "posterior": posterior_record,
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_sha256": sha256(model_path),
        "total_minutes": round((time.perf_counter() - start) / 60, 1),
    }
    (args.out / "default.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB), total {record['total_minutes']} min")


if __name__ == "__main__":
    main()
