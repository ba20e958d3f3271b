"""Energy loss weight of fine-tuning on the reactive benchmark: test errors for each weight, side by side.

    python benchmarks/finetune_weights.py [--weights 1 100 1000] [--seeds 0 1] [--extra 0 48]

The shipped default is fine-tuned (``finetune``, forces weight 10, 40
epochs) on the 40 near-minimum frames a seed draws plus ``--extra`` random
pool frames, once per energy weight, and evaluated on the test paths:
energy MAE (meV/atom), its signed mean and spread, force MAE (eV/A).
Writes ``benchmarks/results/finetune_weights.txt``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
import torch
from reactive import reactive_splits


def one(task: tuple) -> dict:
    """Fine-tune with one energy weight on one seed's labelled set; the test errors."""
    weight, extra, seed, epochs = task
    torch.set_num_threads(1)
    splits = reactive_splits()
    rng = np.random.default_rng(seed)
    initial = [splits["initial"][i] for i in rng.choice(len(splits["initial"]), 40, replace=False)]
    added = [splits["pool"][i] for i in rng.choice(len(splits["pool"]), extra, replace=False)]
    start = time.perf_counter()
    tuned = ase_mlipal.finetune("default", initial + added, seed=seed, progress=False, epochs=epochs,
                                patience=epochs // 4, energy_weight=weight)
    model, result = tuned.model, tuned.training
    errors = ase_mlipal.evaluate(model, splits["test"])
    signed = signed_energy_errors(model, splits["test"])
    return {"weight": weight, "labels": 40 + extra, "seed": seed, **errors, "energy_bias": float(signed.mean()),
            "energy_spread": float(signed.std()), "best_epoch": result.best_epoch,
            "seconds": time.perf_counter() - start}


def signed_energy_errors(model, frames: list) -> np.ndarray:
    """Per-structure (model - reference) energy per atom, meV/atom."""
    from ase_mlipal.training.trainer import data_loader

    out = []
    for batch in data_loader(frames, model, batch_size=64):
        energy = model(batch.to_dict(), training=False, compute_force=False)["energy"]
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(energy.dtype)
        out.append(((energy - batch.energy) / n_atoms).detach().cpu().numpy())
    return 1e3 * np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 100.0, 1000.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--extra", type=int, nargs="+", default=[0, 48])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "finetune_weights.txt"))
    args = parser.parse_args()
    tasks = [(w, x, s, args.epochs) for w in args.weights for x in args.extra for s in args.seeds]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        rows = list(pool.map(one, tasks))
    lines = [f"{'E weight':>8} {'labels':>6} {'seed':>4} {'E MAE':>7} {'E bias':>7} {'E std':>7} {'F MAE':>7} "
             f"{'best ep':>7} {'s':>5}"]
    lines += [f"{r['weight']:>8g} {r['labels']:>6} {r['seed']:>4} {r['energy_mae_per_atom']:>7.1f} "
              f"{r['energy_bias']:>7.1f} {r['energy_spread']:>7.1f} {r['forces_mae']:>7.3f} {r['best_epoch']:>7} "
              f"{r['seconds']:>5.0f}" for r in rows]
    lines.append("E in meV/atom (bias: mean signed error, std: its spread over test structures), F MAE in eV/A; "
                 f"forces weight 10, {args.epochs} epochs")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
