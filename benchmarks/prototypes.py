"""Prototype-guided alignment ("Prototype-Guided Latent Alignment for Data-Efficient Fine-Tuning of Molecular Foundation Models", arXiv:2605.29969) against plain fine-tuning at small data budgets.

    python benchmarks/prototypes.py [--budgets 10 20 40] [--seeds 0 1 2] [--weights 0.1 1.0]
                                    [--out benchmarks/results/prototypes.json]

The shipped default model is fine-tuned on ``budget`` structures drawn (per
seed) from the reactive pool, with the default replay sample, once plainly
and once per alignment weight ``w``, with the same seed (same split, batch
order and replay). Prototypes: 8 per element, k-means on the default
model's latent features of its replay sample (the pretraining data).
Printed: test energy MAE (meV/atom) and force MAE (eV/A), mean ± std over
seeds, and the change against plain fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from ase_mlipal.training.finetune import DEFAULT_REPLAY_PATH
from reactive import reactive_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--prototypes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prototypes.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    splits = reactive_splits()
    pretrained = ase_mlipal.load_model("default")
    source = ase_mlipal.read_frames(DEFAULT_REPLAY_PATH)
    alignments = {w: ase_mlipal.PrototypeAlignment(args.prototypes, weight=w).fit(pretrained, source)
                  for w in args.weights}
    options = dict(epochs=args.epochs, patience=args.patience, progress=False)
    results = {"config": vars(args), "runs": []}
    for budget in args.budgets:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            frames = [splits["pool"][i] for i in rng.choice(len(splits["pool"]), budget, replace=False)]
            for w in [0.0] + args.weights:
                model = ase_mlipal.finetune(pretrained, frames, seed=seed, alignment=alignments.get(w),
                                            **options).model
                errors = ase_mlipal.evaluate(model, splits["test"])
                results["runs"].append({"budget": budget, "seed": seed, "weight": w,
                                        "energy_mae": errors["energy_mae_per_atom"],
                                        "forces_mae": errors["forces_mae"]})
                print(f"budget {budget:>3} seed {seed} w {w:<4}: E {errors['energy_mae_per_atom']:.2f} meV/atom, "
                      f"F {errors['forces_mae']:.4f} eV/A ({time.perf_counter() - started:.0f} s)", flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results["runs"], args.budgets, [0.0] + args.weights))


def table(runs: list, budgets: list, weights: list) -> str:
    """Markdown: mean ± std over seeds, and the mean change against plain fine-tuning (paired by seed)."""
    lines = ["| budget | w | E MAE (meV/atom) | vs plain | F MAE (eV/A) | vs plain |", "|---:|---:|---|---:|---|---:|"]
    for budget in budgets:
        plain = {r["seed"]: r for r in runs if r["budget"] == budget and r["weight"] == 0.0}
        for w in weights:
            mine = [r for r in runs if r["budget"] == budget and r["weight"] == w]
            cells = [str(budget), "plain" if w == 0 else f"{w:g}"]
            for key, fmt in (("energy_mae", ".1f"), ("forces_mae", ".3f")):
                values = np.array([r[key] for r in mine])
                change = np.mean([100 * (r[key] / plain[r["seed"]][key] - 1) for r in mine])
                cells += [f"{values.mean():{fmt}} ± {values.std():{fmt}}", "" if w == 0 else f"{change:+.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
