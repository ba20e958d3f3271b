"""The energy sigma where a model-driven NEB goes: calibrated on the model's own bands, with a distance term?

    python benchmarks/calibration_model_bands.py [--out benchmarks/results] [--smoke]

Every calibration frame until now lay along a reference path (xTB's band,
with thermal noise). A NEB on the model leaves that path where the model is
wrong, and there the shipped energy sigma was several times too small: on
the learners' round-0 checks (images of the pretrained model's own bands),
38% of the energy errors lay inside 2 sigma, the median error was 5 sigma.
``scripts/make_model_band_data.py`` labels those bands with xTB (the
learner's round-0 relaxation on the pretrained model, interior images at
three points of it: ``benchmarks/data/model_bands.xyz.gz``).

This compares, on the default ``MLIPALCalculator()`` (distance-aware, a
power law for the forces), two calibration data and three energy sigmas,
every reaction scored by a fit that never saw it (each of the calibration's
22 reactions left out in turn, with its path frames *and* its band frames):

* data ``paths``: the shipped recipe (pretraining validation split + the
  path frames of 22 reactions, each reaction weighing as much as the split);
  ``paths + bands``: the same plus each reaction's model-band frames as a
  group of their own (weighing as much again);
* energy ``plain``: the posterior variance of the structure's features (the
  shipped one); ``largest``: times the largest distance factor
  ``1 + (d / d0)^2`` of its atoms (the force sigma's factor, the atom least
  like the data); ``mean``: times the mean factor over its atoms.

Scored: the reference-path test frames (all, TS region), the model-band
frames (all, the band's highest image), the pretraining test split; and,
with the full fits, frames no fit saw: the model bands of the four reactions
outside the calibration (acetaldehyde -> CH4 + CO, acetamide -> imidic acid,
propyne -> allene, dimethyl ether -> CH4 + H2CO) and the fourth fresh set's
path frames. Every constant is fitted by maximum likelihood
(:func:`~ase_mlipal.uncertainty.calibration.fit_recalibration`); nothing is
tuned. Writes ``calibration_model_bands.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

import numpy as np
from calibration import DATA, METHODS, SHIPPED, Split, fit_pair, report, scored
from reactive import physical

from ase_mlipal.frames import read_frames

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_posterior import calibration_reactions  # noqa: E402

ENERGY = {"plain": SHIPPED, "largest": "distance energy", "mean": "distance mean energy"}  # variant: METHODS key
METHODS["distance mean energy"] = METHODS["distance energy"]._replace(energy_distance="mean")
DATASETS = ("paths", "paths + bands")
SPLITS = (("path", "reference paths (left out)"), ("path_ts", "  their TS region"),
          ("bands", "model bands (left out)"), ("bands_top", "  the band's highest image"),
          ("test", "pretraining test"), ("unseen_bands", "model bands of 4 reactions outside the fit"),
          ("unseen_bands_top", "  the band's highest image"), ("fourth", "fourth fresh set's paths"),
          ("fourth_ts", "  its TS region"))
BAND_GROUP = " (model band)"


def fit(parts: list, method: str, leave_out: str = "") -> tuple:
    """``method``'s energy and force maps on ``parts`` = [(Split, mask)], without reaction ``leave_out`` (its path
    and its band groups)."""
    return fit_pair([(split, mask & (split.groups != leave_out) & (split.groups != leave_out + BAND_GROUP))
                     for split, mask in parts], METHODS[method])


def score(parts: list, method: str, splits: dict[str, Split]) -> dict:
    """Pooled reports and per-reaction energy 2σ coverage of ``parts``' fits, each calibration reaction left out."""
    full = fit(parts, method)
    pieces = {name: [] for name, _ in SPLITS}
    per_reaction = {}
    path, bands = splits["path"], splits["bands"]
    for reaction in sorted(set(path.groups) - {"pretraining valid"}):
        energy, forces = fit(parts, method, reaction)
        mine = (path.groups == reaction) & path.test
        pieces["path"].append(scored(path, mine, energy, forces, METHODS[method]))
        if (mine & path.ts).sum() > 2:
            pieces["path_ts"].append(scored(path, mine & path.ts, energy, forces, METHODS[method]))
        band = bands.groups == reaction + BAND_GROUP
        if band.any():
            pieces["bands"].append(scored(bands, band, energy, forces, METHODS[method]))
            per_reaction[reaction] = report([pieces["bands"][-1]])["energy"]["coverage_2sigma"]
            if (band & bands.top).any():
                pieces["bands_top"].append(scored(bands, band & bands.top, energy, forces, METHODS[method]))
    for name, split in (("test", splits["test"]), ("unseen_bands", splits.get("unseen_bands")),
                        ("fourth", splits.get("fourth"))):
        if split is not None:
            every = np.ones(len(split.groups), bool)
            pieces[name].append(scored(split, every, *full, METHODS[method]))
            if name != "test" and (split.top if name == "unseen_bands" else split.ts).any():
                region = split.top if name == "unseen_bands" else split.ts
                pieces[name + ("_top" if name == "unseen_bands" else "_ts")].append(
                    scored(split, region, *full, METHODS[method]))
    return {"pooled": {name: report(p) for name, p in pieces.items() if p},
            "energy_2sigma_on_bands_per_reaction": per_reaction,
            "fit_all": {"energy": full[0].as_dict(), "forces": full[1].as_dict()}}


class BandSplit(Split):
    """A :class:`Split` of model-band frames: ``top`` marks each band's highest image (on the model)."""

    def __init__(self, calc, frames, groups):
        super().__init__(calc, frames, groups)
        self.top = np.array([bool(a.info.get("band_top", False)) for a in frames])


def markdown(results: dict) -> str:
    lines = [f"# The energy σ on the model's own bands (`python benchmarks/calibration_model_bands.py`, "
             f"{results['seconds']:.0f} s)", "",
             "Default `MLIPALCalculator()` (distance-aware). Each of the calibration's reactions scored by the fit "
             "without it (its path and band frames); the pretraining test, the 4 reactions outside the fit "
             f"({', '.join(results['unseen_reactions'])}) and the fourth fresh set by the full fit.", ""]
    for quantity in ("energy", "forces"):
        lines += [f"{quantity}:", "", "| data | energy σ | split | cov 1σ | cov 2σ | NLL | miscal | sharpness |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for data in DATASETS:
            for variant in ENERGY:
                for key, label in SPLITS:
                    r = results[data][variant]["pooled"].get(key, {}).get(quantity)
                    if r is not None:
                        lines.append(f"| {data} | {variant} | {label} | {r['coverage_1sigma']:.2f} | "
                                     f"{r['coverage_2sigma']:.2f} | {r['nll']:.2f} | {r['miscalibration_area']:.3f} "
                                     f"| {r['sharpness']:.2f} |")
        lines.append("")
    lines += ["Energy 2σ coverage on each reaction's model-band frames (left out):", "",
              "| reaction | " + " | ".join(f"{d}, {v}" for d in DATASETS for v in ENERGY) + " |",
              "|---|" + "---:|" * (len(DATASETS) * len(ENERGY))]
    per = [results[d][v]["energy_2sigma_on_bands_per_reaction"] for d in DATASETS for v in ENERGY]
    for reaction in sorted(per[0]):
        lines.append(f"| {reaction} | " + " | ".join(f"{p[reaction]:.2f}" for p in per) + " |")
    lines += ["", "Full fits:", ""] + [f"- {d}, {v}: {results[d][v]['fit_all']}" for d in DATASETS for v in ENERGY]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="every 10th frame (for the tests)")
    args = parser.parse_args()
    start, step = time.perf_counter(), 10 if args.smoke else 1
    pretrain = read_frames(DATA / "pretrain.xyz.gz")[::step]
    calibration = [a for a in calibration_reactions()[::step] if physical(a)]
    reactions = {a.info["reaction"] for a in calibration}
    bands = read_frames(DATA / "model_bands.xyz.gz")[::max(1, step // 5)]
    valid = [a for a in pretrain if a.info["split"] == "valid"]
    frames = {"test": [a for a in pretrain if a.info["split"] == "test"],
              "bands": [a for a in bands if a.info["reaction"] in reactions],
              "unseen_bands": [a for a in bands if a.info["reaction"] not in reactions]}
    fourth = DATA / "fourth_reactions.xyz.gz"
    if fourth.exists():
        frames["fourth"] = [a for a in read_frames(fourth)[::step] if physical(a) and a.info["split"] == "test"]
    calc = ase_mlipal.MLIPALCalculator(posterior=None)
    calc.condition(ase_mlipal.default_conditioning()[::step], progress=False)
    splits = {name: (BandSplit if "bands" in name else Split)(
        calc, f, [a.info["reaction"] + (BAND_GROUP if name == "bands" else "") if "reaction" in a.info
                  else f"pretraining {name}" for a in f]) for name, f in frames.items()}
    splits["path"] = Split(calc, valid + calibration,
                           ["pretraining valid"] * len(valid) + [a.info["reaction"] for a in calibration])
    every = {name: np.ones(len(split.groups), bool) for name, split in splits.items()}
    data = {"paths": [(splits["path"], every["path"])],
            "paths + bands": [(splits["path"], every["path"]), (splits["bands"], every["bands"])]}
    results = {"unseen_reactions": sorted({a.info["reaction"] for a in frames["unseen_bands"]}),
               "band_frames": len(frames["bands"]), "unseen_band_frames": len(frames["unseen_bands"])}
    for name, parts in data.items():
        results[name] = {variant: score(parts, method, splits) for variant, method in ENERGY.items()}
        print(f"{name} done ({time.perf_counter() - start:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    (args.out / f"calibration_model_bands{suffix}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"calibration_model_bands{suffix}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
