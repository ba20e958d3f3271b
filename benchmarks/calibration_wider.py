"""Calibrating on more reactions: does a fit that has seen more kinds of chemistry cover a reaction it has not?

    python benchmarks/calibration_wider.py [--out benchmarks/results] [--smoke]

Until 2026-12-07 the shipped calibration (``scripts/build_posterior.py``) was
fitted on the pretraining validation split plus the 8 reactions of the
reactive set, each reaction weighing as much as the split. It covered the
reactions of the later held-out sets worse than the reactive set's own, each
left out in turn (force 2σ coverage 0.83 against 0.91,
``benchmarks/calibration.py --later``). The model never trained on any of
them; the later ones are other chemistry (H shifts, N and O groups), and a
fit on 8 decompositions had seen none of it.

This compares, for both shipped posteriors (the default's ``distance,
power`` and ``distance_aware=False``'s ``plain``), two recipes, each reaction
scored on its test frames by a fit that never saw it:

* ``reactive only`` (the recipe until 2026-12-07): validation split + the 8
  reactive-set reactions. A reactive-set reaction is scored by the fit
  without it, every later reaction by the full fit (which saw none of them).
* ``22 reactions`` (shipped since): validation split + the 8 reactive-set
  reactions + the 14 of ``heldout_``, ``fresh_`` and
  ``later_reactions.xyz.gz`` (``scripts/make_heldout_data.py``; every
  frame, pool and test), each reaction left out in turn: 22 fits.

Then both recipes' full fits on the fourth fresh set
(``fourth_reactions.xyz.gz``, ``make_heldout_data.py --fourth``: propyne ->
allene, dimethyl ether -> methane + formaldehyde), made after the shipped
recipe was fitted: reactions neither saw. Nothing is tuned: the method, its
groups' weights and the data are those of the shipped recipe; only the
reactions it sees differ. Writes ``calibration_wider.json`` and
``calibration_wider.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

import numpy as np
from calibration import (DATA, METHODS, SHIPPED, Split, fit_pair, pretraining_splits, report, score_reaction,
                         smoke_parser, write_results)
from reactive import physical

from ase_mlipal.frames import read_frames

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_posterior import later_reactions  # noqa: E402  (the shipped recipe's 14 reactions beyond the 8)
SHIPPED_METHODS = {SHIPPED: True, "plain": False}  # method: distance_aware of the calculator whose posterior it is
RECIPES = ("reactive only", "22 reactions")
SPLITS = (("reactive", "reactive-set reactions"), ("reactive_ts", "  their TS region"),
          ("later", "later held-out reactions"), ("later_ts", "  their TS region"),
          ("fourth", "fourth fresh set (full fit)"), ("fourth_ts", "  its TS region"), ("test", "pretraining test"))


def fit(parts: list, method: str, leave_out: str = "") -> tuple:
    """``method``'s energy and force maps on ``parts`` = [(Split, mask)], without the group ``leave_out``."""
    return fit_pair([(split, mask & (split.groups != leave_out)) for split, mask in parts], METHODS[method])


def score(recipe: list, method: str, splits: dict[str, Split], leave_one_out: dict[str, bool]) -> dict:
    """Pooled and per-reaction reports of ``recipe`` (parts to fit on). A split whose ``leave_one_out`` is true
    is scored reaction by reaction with the fit without it; otherwise with the full fit."""
    full = fit(recipe, method)
    pieces = {name: [] for name, _ in SPLITS}
    per_reaction = {}
    for name in ("reactive", "later", "fourth"):
        split = splits.get(name)
        for reaction in sorted(set(split.groups)) if split is not None else []:
            energy, forces = fit(recipe, method, reaction) if leave_one_out.get(name) else full
            path, region = score_reaction(split, (split.groups == reaction) & split.test, energy, forces,
                                          METHODS[method])
            pieces[name].append(path)
            if region is not None:
                pieces[name + "_ts"].append(region)
            per_reaction[reaction] = report([path])["forces"]["coverage_2sigma"]
    test = splits["test"]
    pieces["test"].append(score_reaction(test, np.ones(len(test.groups), bool), *full, METHODS[method])[0])
    return {"pooled": {name: report(p) for name, p in pieces.items() if p}, "force_2sigma_per_reaction": per_reaction,
            "fit_all": {"energy": full[0].as_dict(), "forces": full[1].as_dict()}}


def markdown(results: dict) -> str:
    lines = [f"# Calibrating on more reactions (`python benchmarks/calibration_wider.py`, {results['seconds']:.0f} s)",
             "", "Every reaction scored on its test frames by a fit that never saw it. `reactive only`: validation "
             "split + the 8 reactive-set reactions (the recipe until 2026-12-07); `22 reactions`: + the "
             f"{len(results['later_reactions'])} later held-out reactions, each reaction left out in turn (shipped "
             f"since). Fourth fresh set: {', '.join(results['fourth_reactions']) or 'no frames'}, each recipe's full "
             "fit.", ""]
    for method in SHIPPED_METHODS:
        for quantity in ("forces", "energy"):
            header = "| recipe | split | cov 1σ | cov 2σ | NLL | miscal | sharpness |"
            lines += [f"`{method}`, {quantity}:", "", header, "|---|---|---:|---:|---:|---:|---:|"]
            for recipe in RECIPES:
                for key, label in SPLITS:
                    r = results[method][recipe]["pooled"].get(key, {}).get(quantity)
                    if r is not None:
                        lines.append(f"| {recipe} | {label} | {r['coverage_1sigma']:.2f} | {r['coverage_2sigma']:.2f} "
                                     f"| {r['nll']:.2f} | {r['miscalibration_area']:.3f} | {r['sharpness']:.2f} |")
            lines.append("")
        lines += [f"`{method}`, force 2σ coverage per reaction (whole path):", "",
                  "| reaction | " + " | ".join(RECIPES) + " |", "|---|---:|---:|"]
        per = [results[method][recipe]["force_2sigma_per_reaction"] for recipe in RECIPES]
        lines += [f"| {reaction} | {per[0][reaction]:.2f} | {per[1][reaction]:.2f} |" for reaction in sorted(per[0])]
        for recipe, values in zip(RECIPES, per):
            worst = min(values, key=values.get)
            lines.append(f"\n{recipe}: lowest {values[worst]:.2f} ({worst}); reactions below 0.90: "
                         f"{sum(v < 0.9 for v in values.values())} of {len(values)}; full fit "
                         f"{results[method][recipe]['fit_all']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = smoke_parser(__doc__.splitlines()[0]).parse_args()
    start, step = time.perf_counter(), 10 if args.smoke else 1
    frames = {**pretraining_splits(step),
              "reactive": [a for a in read_frames(DATA / "reactive.xyz.gz", f"::{step}") if physical(a)],
              "later": [a for a in later_reactions()[::step] if physical(a)]}
    if (DATA / "fourth_reactions.xyz.gz").exists():
        frames["fourth"] = [a for a in read_frames(DATA / "fourth_reactions.xyz.gz", f"::{step}") if physical(a)]
    results = {"reactive_reactions": sorted({a.info["reaction"] for a in frames["reactive"]}),
               "later_reactions": sorted({a.info["reaction"] for a in frames["later"]}),
               "fourth_reactions": sorted({a.info["reaction"] for a in frames.get("fourth", [])})}
    conditioning = ase_mlipal.default_conditioning()[::step]  # the shipped posteriors' frames
    for method, distance_aware in SHIPPED_METHODS.items():
        calc = ase_mlipal.MLIPALCalculator(posterior=None, distance_aware=distance_aware)
        calc.condition(conditioning, progress=False)
        splits = {name: Split(calc, f, [a.info.get("reaction", f"pretraining {name}") for a in f])
                  for name, f in frames.items()}
        every = {name: np.ones(len(splits[name].groups), bool) for name in splits}
        reactive_only = [(splits["valid"], every["valid"]), (splits["reactive"], every["reactive"])]
        wider = reactive_only + [(splits["later"], every["later"])]
        results[method] = {"reactive only": score(reactive_only, method, splits, {"reactive": True}),
                           "22 reactions": score(wider, method, splits, {"reactive": True, "later": True})}
        print(f"{method} done ({time.perf_counter() - start:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out, "calibration_wider" + ("_smoke" if args.smoke else ""), results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
