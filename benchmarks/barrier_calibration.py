"""Does a calibration fitted on energy *differences* along reaction paths cover held-out barriers?

    python benchmarks/barrier_calibration.py [--out benchmarks/results]

``path_profile``'s barrier sigma uses the energy calibration, fitted on total
energies per structure (``benchmarks/calibration.py``), applied to the raw
variance of feature *differences* ``phi(x_i) - phi(x_0)``. A barrier is a
difference, so this script fits the map on differences instead, leave one
reaction out:

* data: for each of the 6 NEB reactions of the reactive set, every frame's
  energy relative to the first image of its xTB band (residual and raw
  variance of the feature difference); for the pretraining validation
  split, each trajectory's frames relative to its first frame;
* for each reaction ``r``: fit ``linear`` (a scale) or ``power`` (a power law
  with a floor) on the validation differences and the other 5 reactions
  (each group weighing the same), then score the test frames of ``r``
  (2-sigma coverage of the relative energies, overall and near the saddle)
  and its barrier (``path_profile`` on the xTB band: is the xTB barrier
  inside the predicted barrier +- 2 sigma?). Acetaldehyde -> CH4 + CO has a
  band but no frames: its barrier is scored with the fit on all 6 others.

The shipped calibration is scored on the same barriers beside it (it was
fitted with every reaction, so its row is not held out and flatters it).
Nothing here is tuned: both maps are fitted by maximum likelihood.
Writes ``barrier_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from reactive import physical

from ase_mlipal.frames import read_frames, read_labels
from ase_mlipal.uncertainty.calibration import fit_recalibration
from ase_mlipal.uncertainty.features import per_structure

warnings.filterwarnings("ignore")
DATA = Path(__file__).resolve().parent / "data"


def differences(calc, frames: list, origin) -> dict:
    """Residuals of ``E(x) - E(origin)`` and the raw variances of their feature differences."""
    energies, batches = calc.predict([origin] + list(frames), progress=False, force_variance=False)
    phi = np.concatenate([f.structure for f in per_structure(batches)])
    reference = np.array([read_labels(a)[0] for a in [origin] + list(frames)])
    residual = (energies[1:] - energies[0]) - (reference[1:] - reference[0])
    raw = calc.uncertainty_model.energy_posterior.quadratic_form(phi[1:] - phi[0])
    return {"res": residual, "raw": raw, "n": np.full(len(frames), len(origin)),
            "ts": np.array([bool(a.info.get("ts_region", False)) for a in frames]),
            "test": np.array([a.info.get("split") == "test" for a in frames])}


def barrier(calc, images: list, calibration) -> dict:
    """The xTB barrier of ``images`` against ``path_profile``'s with ``calibration`` in use."""
    posterior = calc.uncertainty_model.energy_posterior
    shipped, posterior.calibration = posterior.calibration, calibration
    try:
        profile = ase_mlipal.path_profile(calc, images, relaxed_on_model=False)  # an xTB band
    finally:
        posterior.calibration = shipped
    reference = np.array([read_labels(a)[0] for a in images])
    error = profile.barrier - float(np.max(reference - reference[0]))
    return {"error": error, "std": profile.barrier_std, "covered_2sigma": bool(abs(error) < 2 * profile.barrier_std)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    start = time.perf_counter()
    calc = ase_mlipal.MLIPALCalculator(distance_aware=False)  # the shipped plain posterior (barriers: the same)
    bands: dict[str, list] = {}
    for atoms in read_frames(DATA / "reactive_bands.xyz.gz"):
        bands.setdefault(atoms.info["reaction"], []).append(atoms)
    reactive = [a for a in read_frames(DATA / "reactive.xyz.gz") if physical(a) and a.info["reaction"] in bands]
    with_frames = {a.info["reaction"] for a in reactive}  # acetaldehyde -> CH4 + CO has a band and no frames
    groups = {r: differences(calc, [a for a in reactive if a.info["reaction"] == r], images[0])
              for r, images in bands.items() if r in with_frames}
    trajectories: dict[str, list] = {}
    for atoms in read_frames(DATA / "pretrain.xyz.gz"):
        if atoms.info["split"] == "valid":
            trajectories.setdefault(atoms.info["trajectory"], []).append(atoms)
    valid = [differences(calc, frames[1:], frames[0]) for frames in trajectories.values()]
    groups["pretraining valid"] = {k: np.concatenate([v[k] for v in valid]) for k in valid[0]}

    shipped = calc.uncertainty_model.energy_posterior.calibration
    results = {"shipped": {r: barrier(calc, bands[r], shipped) for r in bands}}
    for method in ("linear", "power"):
        rows = {}
        for reaction in bands:
            fit_on = [g for g in groups if g != reaction]
            calibration = fit_recalibration(*(np.concatenate([groups[g][k] for g in fit_on]) for k in ("res", "raw", "n")),
                                            groups=np.concatenate([[g] * len(groups[g]["res"]) for g in fit_on]),
                                            method=method)
            rows[reaction] = {"fit": calibration.as_dict(), **barrier(calc, bands[reaction], calibration)}
            if reaction in groups:
                mine = groups[reaction]
                z = np.abs(mine["res"]) / np.sqrt(calibration.variance(mine["raw"], mine["n"]))
                rows[reaction] |= {"coverage_2sigma": float(np.mean(z[mine["test"]] < 2)),
                                   "ts_coverage_2sigma": float(np.mean(z[mine["test"] & mine["ts"]] < 2))}
        results[method] = rows
    results["seconds"] = round(time.perf_counter() - start, 1)
    for name in ("shipped", "linear", "power"):
        rows = results[name]
        covered = sum(r["covered_2sigma"] for r in rows.values())
        cells = "  ".join(f"{r[:14]} {v['error']:+.2f}±{v['std']:.2f}" for r, v in rows.items())
        extra = ""
        if name != "shipped":
            scored = [v for v in rows.values() if "coverage_2sigma" in v]
            extra = (f"  relative-energy 2σ cov. {np.mean([v['coverage_2sigma'] for v in scored]):.2f}"
                     f" (TS {np.mean([v['ts_coverage_2sigma'] for v in scored]):.2f}; reactions with frames)")
        print(f"{name:<8} barriers covered {covered}/{len(rows)}{extra}\n    {cells}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "barrier_calibration.json").write_text(json.dumps(results, indent=1))
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
