"""How much data the posterior keeps through a model swap: raw variances after ``set_model`` against the shipped ones.

    python benchmarks/swap_conditioning.py [--frames 60] [--out benchmarks/results/swap_conditioning.json]

Swaps the shipped default back in (the same model, so any change is the
posterior's alone) three ways, side by side in one process: conditioned on
the 300-frame replay sample (what the learners did before), on the same
sample weighted 7861/300, and on ``default_conditioning()`` (the 7861
structures the shipped posterior holds). Prints, per way, the median (and
10-90% range) of the ratio of each frame's raw energy and force variance to
the shipped posterior's, on ``--frames`` validation frames and as many
reactive frames. A ratio of 1 keeps the shipped calibration valid after a
swap; a ratio r makes every calibrated sigma about ``r ** (exponent / 2)``
wider. About two minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from reactive import physical

from ase_mlipal.frames import read_frames
from ase_mlipal.training.finetune import DEFAULT_REPLAY_PATH

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"


def raw_variances(calc, frames: list) -> tuple[np.ndarray, np.ndarray]:
    """Raw energy variance per frame and raw force variance per atom of ``calc``'s posterior."""
    res = calc.residuals(frames, progress=False)
    return res.energy_raw, res.forces_raw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames of each set scored")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "swap_conditioning.json")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    valid = [a for a in read_frames(DATA / "pretrain.xyz.gz") if a.info["split"] == "valid"]
    reactive = [a for a in read_frames(DATA / "reactive.xyz.gz") if physical(a)]
    sets = {name: [frames[i] for i in rng.choice(len(frames), args.frames, replace=False)]
            for name, frames in (("validation", valid), ("reactive", reactive))}
    shipped = ase_mlipal.MLIPALCalculator(distance_aware=False)  # the plain posterior this benchmark measured
    held = shipped.energy_posterior.n_added
    replay = read_frames(DEFAULT_REPLAY_PATH)
    ways = {"replay sample (300)": (replay, 1.0),
            f"replay sample weighted {held / len(replay):.1f}": (replay, held / len(replay)),
            f"default_conditioning ({held})": (ase_mlipal.default_conditioning(), 1.0)}
    before = {name: raw_variances(shipped, frames) for name, frames in sets.items()}
    result = {}
    print(f"{'conditioning after the swap':<34} {'set':<11} {'energy ratio (10-90%)':>24} {'force ratio (10-90%)':>24}")
    for way, (frames, weight) in ways.items():
        calc = ase_mlipal.MLIPALCalculator(posterior=None, distance_aware=False)
        calc.set_model("default", [], progress=False)
        calc.condition(frames, weight=weight, progress=False)
        for name, scored in sets.items():
            ratios = [after / base for after, base in zip(raw_variances(calc, scored), before[name])]
            row = {kind: [float(np.median(r)), *map(float, np.percentile(r, [10, 90]))]
                   for kind, r in zip(("energy", "forces"), ratios)}
            result.setdefault(way, {})[name] = row
            text = ["{:.2f} ({:.2f}-{:.2f})".format(*row[kind]) for kind in ("energy", "forces")]
            print(f"{way:<34} {name:<11} {text[0]:>24} {text[1]:>24}", flush=True)
    args.out.write_text(json.dumps({"frames": args.frames, "shipped_conditioned_on": held, "ratios": result}, indent=1))


if __name__ == "__main__":
    main()
