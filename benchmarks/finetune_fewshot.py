"""Fine-tuning from a handful of path labels: which settings learn a barrier, chosen leave one reaction out.

    python benchmarks/finetune_fewshot.py [--workers 2] [--out benchmarks/results]

The learners fine-tune the pretrained model on a few labelled frames of a
reaction path. This measures that step alone. For each of the six xTB NEB
bands of ``benchmarks/data/reactive_bands.xyz.gz`` (11 images), the shipped
default is fine-tuned on the endpoints and images 2, 4, 6, 8 (six labels
spread evenly: :func:`train_images`; on a 17-image band 0, 3, 6, 10, 13,
16), once per setting, and scored on the images it did not see: the
mean absolute error of their energies relative to the first endpoint, and
the barrier error (the band's highest model energy minus the reactant's,
against xTB's).

Settings: the learners' fine-tuning before this study (lr 5e-3, energy
weight 10, 100 epochs, 3 replay frames per new one) and its variations in
learning rate and energy weight; "pretrained" is no fine-tune. The learners
now use the pick (energy weight 100: ``LEARNER_FINETUNE``).

The choice is made the way it would be judged, leave one reaction out: for
each reaction, the setting with the lowest median held-out error over the
*other five* is picked and scored on it. The report says how often each
setting was picked (a stable choice generalises) and the held-out errors
of the picks beside those of the default.
Writes ``finetune_fewshot.json`` and ``finetune_fewshot.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
import torch
from learning_loop import reference_bands

from ase_mlipal.frames import read_labels
from ase_mlipal.training.trainer import frame_errors

RESULTS = Path(__file__).resolve().parent / "results"
N_LABELS = 6  # labels per band: the endpoints and four images between


def train_images(n_images: int) -> list[int]:
    """``N_LABELS`` images spread evenly over a band of ``n_images``: 0, 2, 4, 6, 8, 10 of 11."""
    return sorted({int(k) for k in np.round(np.linspace(0, n_images - 1, N_LABELS))})
BEFORE = {"replay_ratio": 3, "energy_weight": 10.0, "lr": 5e-3, "epochs": 100, "patience": 100}
SETTINGS = {
    "before": BEFORE,
    "lr 1e-3": {**BEFORE, "lr": 1e-3},
    "energy weight 100": {**BEFORE, "energy_weight": 100.0},
    "lr 1e-3, energy weight 100": {**BEFORE, "lr": 1e-3, "energy_weight": 100.0},
}


def path_errors(model, images: list) -> dict:
    """Held-out relative-energy MAE and barrier error (eV) of ``model`` on one reference band."""
    errors, _ = frame_errors(model, images)
    reference = np.array([read_labels(a)[0] for a in images])
    predicted = reference + errors
    relative_error = (errors - errors[0])
    held_out = [k for k in range(len(images)) if k not in train_images(len(images))]
    barrier = predicted.max() - predicted[0]
    return {"held_out_mae": float(np.mean(np.abs(relative_error[held_out]))),
            "barrier_error": float(barrier - (reference.max() - reference[0]))}


def one(task: tuple) -> dict:
    """Fine-tune with one setting on one reaction's six labels; errors on its held-out images."""
    reaction, name, seed = task
    torch.set_num_threads(1)
    images = reference_bands()[reaction]
    start = time.perf_counter()
    if name == "pretrained":
        model = ase_mlipal.MLIPALCalculator().model
    else:
        model = ase_mlipal.finetune("default", [images[k] for k in train_images(len(images))], seed=seed, progress=False,
                                    **SETTINGS[name]).model
    return {"reaction": reaction, "setting": name, "seed": seed, **path_errors(model, images),
            "seconds": time.perf_counter() - start}


def leave_one_reaction_out(rows: list[dict], metric: str) -> dict:
    """For each reaction, the setting with the lowest median ``metric`` over the others, scored on it."""
    reactions = sorted({r["reaction"] for r in rows})
    settings = sorted({r["setting"] for r in rows})
    value = per_cell(rows, metric, absolute=True)
    picks = {}
    for held_out in reactions:
        others = [x for x in reactions if x != held_out]
        best = min(settings, key=lambda s: np.median([value[(x, s)] for x in others]))
        picks[held_out] = {"setting": best, "held_out": value[(held_out, best)]}
    return picks


def per_cell(rows: list[dict], metric: str, absolute: bool = False) -> dict:
    """``{(reaction, setting): mean over seeds of metric}`` (of its absolute value with ``absolute``)."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["reaction"], r["setting"]), []).append(abs(r[metric]) if absolute else r[metric])
    return {key: float(np.mean(values)) for key, values in cells.items()}


def markdown(rows: list[dict], picks: dict, metric: str) -> str:
    reactions = sorted({r["reaction"] for r in rows})
    settings = ["pretrained"] + list(SETTINGS)
    value = per_cell(rows, metric)
    n_seeds = len({r["seed"] for r in rows})
    lines = [f"# `python benchmarks/finetune_fewshot.py`: {metric} (eV) on held-out images of each xTB band "
             f"(mean over {n_seeds} seed(s))",
             "", "| reaction | " + " | ".join(settings) + " | picked leaving it out |",
             "|---|" + "---:|" * len(settings) + "---|"]
    for reaction in reactions:
        cells = " | ".join(f"{value[(reaction, s)]:+.3f}" for s in settings)
        lines.append(f"| {reaction} | {cells} | {picks[reaction]['setting']} |")
    magnitude = per_cell(rows, metric, absolute=True)
    medians = " | ".join(f"{np.median([magnitude[(x, s)] for x in reactions]):.3f}" for s in settings)
    lines.append(f"| median abs | {medians} | |")
    picked = float(np.median([p["held_out"] for p in picks.values()]))
    lines += ["", f"Leave one reaction out: the pick's median held-out |{metric}| {picked:.3f} eV against the "
              f"earlier setting's {np.median([magnitude[(x, 'before')] for x in reactions]):.3f} eV; picks: "
              + ", ".join(f"{s} x{sum(p['setting'] == s for p in picks.values())}"
                          for s in sorted({p['setting'] for p in picks.values()})) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, nargs="+", help="report again from earlier runs (merged)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(path.read_text())["rows"]]
    else:
        tasks = [(reaction, name, args.seed) for reaction in sorted(reference_bands())
                 for name in ["pretrained", *SETTINGS]]
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            for row in pool.map(one, tasks):
                print(f"{row['reaction']:<28} {row['setting']:<28} held-out MAE {row['held_out_mae']:.3f} eV, "
                      f"barrier {row['barrier_error']:+.3f} eV ({row['seconds']:.0f} s)", flush=True)
                rows.append(row)
    report = {"train_images": {r: train_images(len(b)) for r, b in reference_bands().items()},
              "settings": SETTINGS, "rows": rows,
              "picks": {m: leave_one_reaction_out(rows, m) for m in ("held_out_mae", "barrier_error")},
              "seconds": sum(r["seconds"] for r in rows) if args.from_json else time.perf_counter() - started}
    (args.out / "finetune_fewshot.json").write_text(json.dumps(report, indent=1, default=float))
    text = "".join(markdown(rows, report["picks"][m], m) + "\n" for m in ("held_out_mae", "barrier_error"))
    (args.out / "finetune_fewshot.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
