"""What fine-tuning on a handful of reactive labels forgets, by replay ratio.

    python benchmarks/forgetting.py [--reactions NAME ...] [--out benchmarks/results/forgetting.json]
    python benchmarks/forgetting.py --merge PART.json ... --out benchmarks/results/forgetting.json

For each reaction of the reactive set: the 8 pool frames the shipped
posterior is least sure of (MaxDet, as ``benchmarks/calibration_learning.py``
picks round 1) get their xTB labels and the pretrained default is
fine-tuned on them with the learners' settings (``LEARNER_FINETUNE``) at
each replay ratio of ``RATIOS`` (replay frames per new frame), the same
seed. Printed side by side: the force and per-atom energy RMSE on the
reaction's test frames (what the learning is for) and on 150 frames of the
pretraining validation split (what it must not forget), and the seconds of
the fine-tune. The ratio 10 was chosen on cyclobutane, methanol and formic
acid -> CO + H2O; the other reactions are held out of that choice.

About 1.5 minutes per reaction on 2 cores. Run reactions in parts and merge.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from reactive import physical

from ase_mlipal.frames import read_frames
from ase_mlipal.learning.learning_run import LEARNER_FINETUNE
from ase_mlipal.training.finetune import finetune

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
RATIOS = (3.0, 10.0)  # 3: the learners' ratio before this benchmark
TUNED_ON = ("cyclobutane_to_2_ethylene", "methanol_to_formaldehyde_H2", "formic_acid_to_CO_H2O")


def rmse(model, frames: list) -> dict:
    """Force (eV/A, per component) and energy (eV/atom) RMSE of ``model`` on labelled ``frames``."""
    errors = ase_mlipal.evaluate(model, frames)
    return {"forces": errors["forces_rmse"], "energy_per_atom": errors["energy_rmse_per_atom"] / 1e3}


def run_reaction(reaction: str, reactive: list, valid: list) -> dict:
    shipped = ase_mlipal.MLIPALCalculator(distance_aware=False)  # the plain posterior this benchmark measured
    mine = [a for a in reactive if a.info["reaction"] == reaction]
    pool = [a for a in mine if a.info["split"] == "pool"]
    test = [a for a in mine if a.info["split"] == "test"]
    picks = [pool[int(i)] for i in ase_mlipal.select(shipped, pool, 8, progress=False)]
    row = {"reaction": reaction, "held_out_of_the_choice": reaction not in TUNED_ON,
           "pretrained": {"test": rmse(shipped.model, test), "valid": rmse(shipped.model, valid)}}
    for ratio in RATIOS:
        start = time.perf_counter()
        options = {**LEARNER_FINETUNE, "replay_ratio": ratio}
        model = finetune("default", picks, progress=False, seed=1, **options).model
        seconds = round(time.perf_counter() - start, 1)
        row[f"replay {ratio:g}"] = {"test": rmse(model, test), "valid": rmse(model, valid), "seconds": seconds}
        print(f"  {reaction} replay {ratio:g}: {row[f'replay {ratio:g}']}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    names = [f"replay {r:g}" for r in RATIOS]
    lines = ["| reaction | held out | pretrained: test / valid force RMSE | "
             + " | ".join(f"{n}: test / valid | s" for n in names) + " |",
             "|---|:-:|---:|" + "---:|---:|" * len(names)]
    for row in rows:
        cells = [f"{row[n]['test']['forces']:.3f} / {row[n]['valid']['forces']:.3f} | {row[n]['seconds']:.0f}"
                 for n in names]
        lines.append(f"| {row['reaction']} | {'yes' if row['held_out_of_the_choice'] else 'no'} | "
                     f"{row['pretrained']['test']['forces']:.3f} / {row['pretrained']['valid']['forces']:.3f} | "
                     + " | ".join(cells) + " |")
    for held in (False, True):
        subset = [r for r in rows if r["held_out_of_the_choice"] == held]
        if subset:
            ratios = {n: (np.median([r[n]["test"]["forces"] / r[names[0]]["test"]["forces"] for r in subset]),
                          np.median([r[n]["valid"]["forces"] / r[names[0]]["valid"]["forces"] for r in subset]))
                      for n in names[1:]}
            text = "; ".join(f"{n} / {names[0]}: test {t:.2f}x, valid {v:.2f}x" for n, (t, v) in ratios.items())
            lines.append(f"\n{'Held out' if held else 'Chosen on'} ({len(subset)}), median force RMSE ratio: {text}.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reactions", nargs="*", help="default: every reaction of the reactive set")
    parser.add_argument("--merge", nargs="*", type=Path, help="merge these part files instead of running")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "forgetting.json")
    args = parser.parse_args()
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(path.read_text())["reactions"]]
    else:
        pretrain = read_frames(DATA / "pretrain.xyz.gz")
        valid = random.Random(0).sample([a for a in pretrain if a.info["split"] == "valid"], 150)
        reactive = [a for a in read_frames(DATA / "reactive.xyz.gz") if physical(a)]
        names = args.reactions or sorted({a.info["reaction"] for a in reactive if a.info["split"] == "pool"})
        rows = [run_reaction(name, reactive, valid) for name in names]
    result = {"settings": {"learner_finetune": LEARNER_FINETUNE, "ratios": RATIOS, "labels": 8, "seed": 1},
              "reactions": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
