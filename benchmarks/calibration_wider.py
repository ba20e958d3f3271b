"""Calibrating on more reactions: does a fit that has seen more kinds of chemistry cover a reaction it has not?

    python benchmarks/calibration_wider.py [--out benchmarks/results] [--smoke]

The shipped default's calibration (``scripts/build_posterior.py
--distance-aware``: the pretraining validation split plus the 8 reactions of
the reactive set, each reaction weighing as much as the split) covers the
reactions of the later held-out sets worse than the reactive set's own,
each left out in turn (force 2σ coverage 0.83 against 0.91,
``benchmarks/calibration.py --later``). The model never trained on any of
them; the later ones are other chemistry (H shifts, N and O groups), and a
fit on 8 decompositions has seen none of it.

This compares, on the shipped method (``distance, power``), two recipes,
each reaction scored on its test frames by a fit that never saw it:

* ``shipped``: validation split + the 8 reactive-set reactions. A reactive-set
  reaction is scored by the fit without it, every later reaction by the
  full fit (which never saw any of them).
* ``wider``: validation split + the 8 reactive-set reactions + the 14
  reactions of ``heldout_``, ``fresh_`` and ``later_reactions.xyz.gz``
  (``scripts/make_heldout_data.py``; every frame, pool and test), each
  reaction left out in turn: 22 fits.

Nothing is tuned: the method, its groups' weights and the data are those of
the shipped recipe; only the reactions it sees differ. Writes
``calibration_wider.json`` and ``calibration_wider.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

import numpy as np
from calibration import DATA, METHODS, SHIPPED, Split, fit_pair, report, score_reaction
from reactive import physical

from ase_mlipal.frames import read_frames

ROOT = Path(__file__).resolve().parent.parent
LATER_SETS = ("heldout", "fresh", "later")
SPLITS = (("reactive", "reactive-set reactions"), ("reactive_ts", "  their TS region"),
          ("later", "later held-out reactions"), ("later_ts", "  their TS region"), ("test", "pretraining test"))


def fit(parts: list, leave_out: str = "") -> tuple:
    """The shipped method's energy and force maps on ``parts`` = [(Split, mask)], without the group ``leave_out``."""
    return fit_pair([(split, mask & (split.groups != leave_out)) for split, mask in parts], METHODS[SHIPPED])


def score(recipe: list, reactive: Split, later: Split, test: Split, leave_one_out: dict[str, bool]) -> dict:
    """Pooled and per-reaction reports of ``recipe`` (parts to fit on). A split whose ``leave_one_out`` is true
    is scored reaction by reaction with the fit without it; otherwise with the full fit."""
    method, full = METHODS[SHIPPED], fit(recipe)
    pieces = {name: [] for name, _ in SPLITS}
    per_reaction = {}
    for name, split in (("reactive", reactive), ("later", later)):
        for reaction in sorted(set(split.groups)):
            energy, forces = fit(recipe, reaction) if leave_one_out[name] else full
            path, region = score_reaction(split, (split.groups == reaction) & split.test, energy, forces, method)
            pieces[name].append(path)
            if region is not None:
                pieces[name + "_ts"].append(region)
            per_reaction[reaction] = report([path])["forces"]["coverage_2sigma"]
    pieces["test"].append(score_reaction(test, np.ones(len(test.groups), bool), *full, method)[0])
    return {"pooled": {name: report(p) for name, p in pieces.items()}, "force_2sigma_per_reaction": per_reaction,
            "fit_all": {"energy": full[0].as_dict(), "forces": full[1].as_dict()}}


def markdown(results: dict) -> str:
    lines = [f"# Calibrating on more reactions (`python benchmarks/calibration_wider.py`, {results['seconds']:.0f} s)",
             "", f"Method `{SHIPPED}` (the shipped default's). Every reaction scored on its test frames by a fit that "
             "never saw it. `shipped`: validation split + the 8 reactive-set reactions; `wider`: + the "
             f"{len(results['later_reactions'])} later held-out reactions, each reaction left out in turn.", ""]
    for quantity in ("forces", "energy"):
        lines += [f"{quantity.capitalize()}:", "", "| recipe | split | cov 1σ | cov 2σ | NLL | miscal | sharpness |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for recipe in ("shipped", "wider"):
            for key, label in SPLITS:
                r = results[recipe]["pooled"][key][quantity]
                lines.append(f"| {recipe} | {label} | {r['coverage_1sigma']:.2f} | {r['coverage_2sigma']:.2f} | "
                             f"{r['nll']:.2f} | {r['miscalibration_area']:.3f} | {r['sharpness']:.2f} |")
        lines.append("")
    lines += ["Force 2σ coverage per reaction (whole path):", "", "| reaction | shipped | wider |", "|---|---:|---:|"]
    for reaction in sorted(results["shipped"]["force_2sigma_per_reaction"]):
        a, b = (results[k]["force_2sigma_per_reaction"][reaction] for k in ("shipped", "wider"))
        lines.append(f"| {reaction} | {a:.2f} | {b:.2f} |")
    for recipe in ("shipped", "wider"):
        per = results[recipe]["force_2sigma_per_reaction"]
        worst = min(per, key=per.get)
        lines.append(f"\n{recipe}: lowest {per[worst]:.2f} ({worst}); reactions below 0.90: "
                     f"{sum(v < 0.9 for v in per.values())} of {len(per)}; full fit {results[recipe]['fit_all']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="every 10th frame (for the tests)")
    args = parser.parse_args()
    start, step = time.perf_counter(), 10 if args.smoke else 1
    calc = ase_mlipal.MLIPALCalculator(posterior=None, distance_aware=True)
    calc.condition(ase_mlipal.default_conditioning()[::step], progress=False)  # the shipped posterior's frames
    pretrain = read_frames(DATA / "pretrain.xyz.gz")[::step]
    reactive = [a for a in read_frames(DATA / "reactive.xyz.gz")[::step] if physical(a)]
    later = [a for name in LATER_SETS for a in read_frames(DATA / f"{name}_reactions.xyz.gz")[::step] if physical(a)]
    valid, test = (Split(calc, frames, [f"pretraining {name}"] * len(frames))
                   for name in ("valid", "test") for frames in [[a for a in pretrain if a.info["split"] == name]])
    reactive_split = Split(calc, reactive, [a.info["reaction"] for a in reactive])
    later_split = Split(calc, later, [a.info["reaction"] for a in later])
    every = {split: np.ones(len(split.groups), bool) for split in (valid, reactive_split, later_split)}
    shipped = [(valid, every[valid]), (reactive_split, every[reactive_split])]
    wider = shipped + [(later_split, every[later_split])]
    results = {"reactive_reactions": sorted(set(reactive_split.groups)),
               "later_reactions": sorted(set(later_split.groups)),
               "shipped": score(shipped, reactive_split, later_split, test, {"reactive": True, "later": False}),
               "wider": score(wider, reactive_split, later_split, test, {"reactive": True, "later": True})}
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    (args.out / f"calibration_wider{suffix}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"calibration_wider{suffix}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
