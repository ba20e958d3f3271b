"""The energy sigma of a band relaxed on the model: calibrated on such bands, each reaction left out.

    python benchmarks/calibration_model_bands.py [--out benchmarks/results] [--smoke]

Every calibration frame until now lay along a reference path (xTB's band,
with thermal noise). A NEB on the model leaves that path where the model is
wrong, into the model's own errors, and there the shipped energy sigma was
several times too small: on the learners' round-0 checks (images of the
pretrained model's own bands), 38% of the energy errors lay inside 2 sigma.
``scripts/make_model_band_data.py`` labels those bands with xTB (the
learner's round-0 relaxation on the shipped model, 24 reactions, interior
images at three points of it and the endpoints:
``benchmarks/data/model_bands.xyz.gz``). Two questions, on the default
``MLIPALCalculator()`` (its energy posterior is the plain one's too):

**1. A calibration of its own for such bands** (:func:`ase_mlipal.fit_band_calibration`,
what :func:`ase_mlipal.path_profile` uses on a band relaxed on the model).
Scored on the differences ``E_i - E_0`` to each band's first endpoint (what
a barrier is), every one of the 20 calibration reactions with a band by a
fit without it, and the 4 reactions outside the calibration
(acetaldehyde -> CH4 + CO, acetamide -> imidic acid, propyne -> allene,
dimethyl ether -> CH4 + H2CO) by the fit on all 20:

* ``posterior's``: the energy posterior's own calibration (fitted near
  reference paths; what ``path_profile`` used until now);
* ``band, linear`` (shipped): a plain scale on the raw variance, fitted on
  the bands;
* ``band, power``: a power law with a floor per atom, fitted on the bands;
* ``band, linear, distance``: a plain scale on the raw variance times the
  image's largest distance factor ``1 + (d / d0)^2`` (the force sigma's),
  which would shrink once labels lie near the band.

Then the user's question: the xTB barrier (a direct xTB NEB from the same
band, where it found a pass) against the barrier +- 2 sigma that
``path_profile`` reads on the model's final round-0 band.

**2. One calibration for both** (why a separate map): the shipped recipe's
data (validation split + the path frames of 22 reactions) with and without
the band frames as groups of their own, and with the energy's raw variance
times the structure's ``largest`` or ``mean`` distance factor; scored on the
path frames (left out), the band frames' total energies (left out), the
pretraining test and the fourth fresh set.

Every constant is fitted by maximum likelihood
(:func:`~ase_mlipal.uncertainty.calibration.fit_recalibration`); nothing is
tuned. Writes ``calibration_model_bands.json``, ``.md`` and ``.png`` (the
barriers with their 2σ bars).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

import numpy as np
from calibration import (DATA, METHODS, SHIPPED, Split, fit_pair, pretraining_splits, report, scored, smoke_parser,
                         write_results)
from reactive import physical

from learning_loop import found_a_pass
from learning_loop_heldout import PARTS as HELDOUT_PARTS

from ase_mlipal.frames import read_frames
from ase_mlipal.paths import band_residuals
from ase_mlipal.uncertainty.calibration import Recalibration, calibration_report, fit_recalibration
from ase_mlipal.uncertainty.features import per_structure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_posterior import calibration_reactions, model_bands  # noqa: E402

BAND_VARIANTS = {"posterior's": None, "band, linear": ("linear", False), "band, power": ("power", False),
                 "band, linear, distance": ("linear", True)}  # variant: (fit method, times the distance factor)
SHIPPED_BAND = "band, linear"  # what fit_band_calibration fits (scripts/build_posterior.py)
BAND_SPLITS = (("left_out", "bands of the 20 (each left out)"), ("left_out_top", "  each band's highest image"),
               ("unseen", "bands of the 4 outside"), ("unseen_top", "  each band's highest image"))


class BandData:
    """Residuals of the energy differences of every band image to its band's first endpoint, with what scores
    them: raw variance, distance factor, atoms, reaction, whether the image is its band's highest."""

    def __init__(self, calc, bands: dict[str, list]):
        names = list(bands)
        self.residuals, raw, self.n, band = band_residuals(calc, [bands[r] for r in names])
        self.reaction = np.asarray(names)[band]
        self.top = np.concatenate([[bool(a.info["band_top"]) for a in bands[r][1:]] for r in names])
        neighbours = calc.uncertainty_model.neighbours
        _, batches = calc.predict([a for r in names for a in bands[r][1:]], progress=False, force_variance=False)
        self.factor = np.array([neighbours.inflation(f.atom).max() for f in per_structure(batches)])
        self.raw = raw

    def raw_of(self, distance: bool) -> np.ndarray:
        return self.raw * self.factor if distance else self.raw

    def fit(self, variant: str, mask, posterior: Recalibration) -> Recalibration:
        if BAND_VARIANTS[variant] is None:
            return posterior
        method, distance = BAND_VARIANTS[variant]
        return fit_recalibration(self.residuals[mask], self.raw_of(distance)[mask], self.n[mask],
                                 self.reaction[mask], method)

    def std(self, variant: str, calibration: Recalibration, mask) -> np.ndarray:
        distance = BAND_VARIANTS[variant] is not None and BAND_VARIANTS[variant][1]
        return np.sqrt(calibration.variance(self.raw_of(distance)[mask], self.n[mask]))


def direct_barriers() -> dict[str, float]:
    """The barrier of the direct xTB NEB from each reaction's learner band, where it found a pass."""
    out = {}
    for path in sorted((ROOT / "benchmarks" / "results" / "learning_loop").glob("[!m]*.json")):
        direct = json.loads(path.read_text()).get("direct_neb")
        if direct and found_a_pass(direct):
            out[path.stem] = direct["barrier"]
    for path in sorted(HELDOUT_PARTS.glob("*_direct.json")):
        direct = json.loads(path.read_text())
        if found_a_pass(direct):
            out[path.name.removesuffix("_direct.json")] = direct["barrier"]
    return out


def final_band(reaction: str, frames: list) -> list:
    """The model's final round-0 band of ``reaction``: endpoints and the interior images of its last snapshot."""
    mine = [a for a in frames if a.info["reaction"] == reaction]
    last = max(a.info["neb_step"] for a in mine if a.info["model_band"])
    images = [a for a in mine if not a.info["model_band"] or a.info["neb_step"] == last]
    return sorted(images, key=lambda a: a.info["image"])


def band_calibration_scores(calc, frames: list, calibration_names: set) -> dict:
    """Part 1: each band variant, LORO over the calibration reactions, the full fit on the others; barriers."""
    bands = model_bands()
    data = BandData(calc, bands)
    inside = np.isin(data.reaction, sorted(calibration_names))
    posterior = calc.energy_posterior.calibration
    barriers, out = direct_barriers(), {}
    for variant in BAND_VARIANTS:
        pieces = {key: [] for key, _ in BAND_SPLITS}
        per_reaction, fits = {}, {}
        full = data.fit(variant, inside, posterior)
        for reaction in sorted(set(data.reaction)):
            held_out = reaction in calibration_names  # scored by the fit without it; the others by the full fit
            fits[reaction] = fit = data.fit(variant, inside & (data.reaction != reaction), posterior) if held_out \
                else full
            mine, key = data.reaction == reaction, "left_out" if held_out else "unseen"
            piece = (data.residuals[mine], data.std(variant, fit, mine))
            pieces[key].append(piece)
            pieces[key + "_top"].append((data.residuals[mine & data.top], data.std(variant, fit, mine & data.top)))
            per_reaction[reaction] = float(np.mean(np.abs(piece[0]) < 2 * piece[1]))
        out[variant] = {"pooled": {key: calibration_report(np.concatenate([p[0] for p in v]),
                                                           np.concatenate([p[1] for p in v])).as_dict()
                                   for key, v in pieces.items()},
                        "energy_2sigma_per_reaction": per_reaction, "fit_all": full.as_dict(),
                        "barriers": {} if variant not in ("posterior's", SHIPPED_BAND) else
                        {r: barrier_check(calc, final_band(r, frames), fits[r], barriers[r], variant)
                         for r in sorted(fits) if r in barriers}}
    out["below_reference"] = float(np.mean(data.residuals < 0))
    return out


def barrier_check(calc, images: list, calibration: Recalibration, reference: float, variant: str) -> dict:
    """The xTB barrier against ``path_profile``'s barrier +- 2 sigma on the model's band, with ``calibration``."""
    kept = calc.band_calibration
    calc.band_calibration = calibration
    try:
        profile = ase_mlipal.path_profile(calc, images, relaxed_on_model=BAND_VARIANTS[variant] is not None)
    finally:
        calc.band_calibration = kept
    error = profile.barrier - reference
    return {"reference": reference, "predicted": profile.barrier, "std": profile.barrier_std, "error": error,
            "covered_2sigma": bool(abs(error) < 2 * profile.barrier_std)}

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


def band_markdown(results: dict) -> list[str]:
    """Part 1's tables."""
    part = results["band_calibration"]
    lines = ["## 1. A calibration of its own for bands relaxed on the model", "",
             f"Energy differences to each band's first endpoint; {part['below_reference'] * 100:.0f}% of the "
             "model's band images lie below the reference. 20 calibration reactions each scored by the fit without "
             f"it; the 4 outside ({', '.join(results['unseen_reactions'])}) by the fit on all 20.", "",
             "| energy σ | split | cov 1σ | cov 2σ | NLL | miscal | sharpness (eV) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for variant in BAND_VARIANTS:
        for key, label in BAND_SPLITS:
            r = part[variant]["pooled"][key]
            lines.append(f"| {variant} | {label} | {r['coverage_1sigma']:.2f} | {r['coverage_2sigma']:.2f} | "
                         f"{r['nll']:.2f} | {r['miscalibration_area']:.3f} | {r['sharpness']:.2f} |")
    barred = [v for v in BAND_VARIANTS if part[v]["barriers"]]
    lines += ["", "The xTB barrier (direct NEB from the same band) against `path_profile`'s barrier ± 2σ on the "
              "model's final round-0 band (eV; the band's fit without its reaction):", "",
              "| reaction | xTB | model | " + " | ".join(f"σ, {v} (in 2σ)" for v in barred) + " |",
              "|---|---:|---:|" + "---:|" * len(barred)]
    for reaction in sorted(part[barred[0]]["barriers"]):
        checks = [part[v]["barriers"][reaction] for v in barred]
        cells = [f"{c['std']:.2f} ({'yes' if c['covered_2sigma'] else 'no'})" for c in checks]
        lines.append(f"| {reaction} | {checks[0]['reference']:.2f} | {checks[0]['predicted']:.2f} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    for v in barred:
        rows = part[v]["barriers"].values()
        lines.append(f"- {v}: xTB barrier inside 2σ on {sum(r['covered_2sigma'] for r in rows)} of {len(rows)}; "
                     f"median σ {np.median([r['std'] for r in rows]):.2f} eV; full fit {part[v]['fit_all']}")
    lines += ["", "Energy 2σ coverage per reaction (bands):", "", "| reaction | " + " | ".join(BAND_VARIANTS) + " |",
              "|---|" + "---:|" * len(BAND_VARIANTS)]
    for reaction in sorted(part["posterior's"]["energy_2sigma_per_reaction"]):
        lines.append(f"| {reaction} | " + " | ".join(f"{part[v]['energy_2sigma_per_reaction'][reaction]:.2f}"
                                                  for v in BAND_VARIANTS) + " |")
    return lines + [""]


def plot(results: dict, path: Path) -> None:
    """Each reaction's barrier error on the model's round-0 band with its 2σ bar, posterior's against band σ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = results["band_calibration"]
    names = sorted(part["posterior's"]["barriers"])
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    for shift, variant, colour in ((-0.15, "posterior's", "tab:red"), (0.15, SHIPPED_BAND, "tab:blue")):
        checks = [part[variant]["barriers"][r] for r in names]
        ax.errorbar([c["error"] for c in checks], np.arange(len(names)) + shift, xerr=[2 * c["std"] for c in checks],
                    fmt="o", ms=3, color=colour, capsize=2, label=f"{variant} σ")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(np.arange(len(names)), [n.replace("_", " ") for n in names], fontsize=7)
    ax.set_xlabel("model barrier - xTB barrier on the model's round-0 band (eV), bars 2σ")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = [f"# The energy σ on the model's own bands (`python benchmarks/calibration_model_bands.py`, "
             f"{results['seconds']:.0f} s)", "", "Default `MLIPALCalculator()` (distance-aware).", ""]
    lines += band_markdown(results)
    lines += ["## 2. One calibration for both?", "",
              "Each of the calibration's reactions scored by the fit without it (its path and band frames; total "
              "energies); the pretraining test, the 4 reactions outside the fit and the fourth fresh set by the "
              "full fit.", ""]
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
    args = smoke_parser(__doc__.splitlines()[0]).parse_args()
    start, step = time.perf_counter(), 10 if args.smoke else 1
    pretrain = pretraining_splits(step)
    calibration = [a for a in calibration_reactions()[::step] if physical(a)]
    reactions = {a.info["reaction"] for a in calibration}
    every_band_frame = read_frames(DATA / "model_bands.xyz.gz")
    bands = [a for a in every_band_frame if a.info["model_band"]][::max(1, step // 5)]
    valid = pretrain["valid"]
    frames = {"test": pretrain["test"],
              "bands": [a for a in bands if a.info["reaction"] in reactions],
              "unseen_bands": [a for a in bands if a.info["reaction"] not in reactions]}
    fourth = DATA / "fourth_reactions.xyz.gz"
    if fourth.exists():
        frames["fourth"] = [a for a in read_frames(fourth, f"::{step}") if physical(a) and a.info["split"] == "test"]
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
               "band_frames": len(frames["bands"]), "unseen_band_frames": len(frames["unseen_bands"]),
               "band_calibration": band_calibration_scores(ase_mlipal.MLIPALCalculator(), every_band_frame, reactions)}
    print(f"part 1 done ({time.perf_counter() - start:.0f} s)", flush=True)
    for name, parts in data.items():
        results[name] = {variant: score(parts, method, splits) for variant, method in ENERGY.items()}
        print(f"{name} done ({time.perf_counter() - start:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    stem = "calibration_model_bands" + ("_smoke" if args.smoke else "")
    write_results(args.out, stem, results, markdown(results))
    plot(results, args.out / f"{stem}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
