"""Build the shipped posteriors: condition on the training split, calibrate the way that transfers.

    python scripts/build_posterior.py [--out ase_mlipal/data/default_posterior.npz]  # distance_aware=False
    python scripts/build_posterior.py --distance-aware   # default_posterior_distance.npz: the default's

``--distance-aware`` builds the posterior of the default ``MLIPALCalculator()`` (distance-aware):
the same conditioning and calibration frames, its atoms' features kept
as 1024 farthest-point samples per element, and a power law for the
forces (``benchmarks/calibration.py``, row ``distance, power``), recorded
as ``posterior_distance``.

Conditions the activation-kernel posterior of the shipped model on the
pretraining training split, then fits its calibration on the pretraining
validation split plus every physical frame of 22 reactions the model never
trained on: the 8 of the reactive set and the 14 of the held-out learning
benchmark's sets (``heldout_``, ``fresh_`` and ``later_reactions.xyz.gz``,
``scripts/make_heldout_data.py``), each reaction weighing as much as the
whole validation split (``MLIPALCalculator.calibrate``'s defaults: a power
law with an error floor per atom for the energy, a plain scale for the
forces; ``benchmarks/calibration.py`` measures why, with each reaction held
out in turn). More kinds of chemistry transfer better to a reaction none of
them is: ``benchmarks/calibration_wider.py``, each of the 22 left out in
turn, against a fit on the reactive set alone. The band calibration
(:func:`ase_mlipal.fit_band_calibration`, what ``path_profile`` uses on a
band relaxed on the model) is fitted on the same reactions' bands relaxed
on the shipped model (``benchmarks/data/model_bands.xyz.gz``,
``scripts/make_model_band_data.py``; the two hot MD runs have none). Then stores the typical
uncertainty of the validation split, so a relative trigger threshold
works without reference frames, and
records the fit in ``default.json``. The training split's structures go to
``default_conditioning.xyz.gz``: a model swap rebuilds the posterior on
them, so a fine-tuned model's uncertainty is measured against the same
data as the shipped one's. ``scripts/pretrain.py`` calls
:func:`build_posterior` after training. About a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import ase_mlipal  # first: imports mace before e3nn
from ase_mlipal.frames import read_frames
from ase_mlipal.models.model import (DEFAULT_CONDITIONING_PATH, DEFAULT_DIR, DEFAULT_DISTANCE_POSTERIOR_PATH,
                                     DEFAULT_POSTERIOR_PATH)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from reactive import physical  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
VALID_GROUP = "pretraining valid"
#: The held-out learning benchmark's reaction sets the shipped calibration is fitted on (``<name>_reactions.xyz.gz``).
LATER_SETS = ("heldout", "fresh", "later")


def later_reactions() -> list:
    """Every frame of the :data:`LATER_SETS` (pool and test; ``info["reaction"]`` names each one's reaction)."""
    return [a for name in LATER_SETS for a in read_frames(DATA / f"{name}_reactions.xyz.gz")]


def calibration_reactions() -> list:
    """The frames of the 22 reactions the shipped calibration is fitted on: the reactive set's, then
    :func:`later_reactions`."""
    return read_frames(DATA / "reactive.xyz.gz") + later_reactions()


def model_bands(reactions: Optional[set] = None) -> dict[str, list]:
    """The labelled bands of ``benchmarks/data/model_bands.xyz.gz`` (``scripts/make_model_band_data.py``) by
    reaction (default: every one), each the first endpoint then the images relaxed on the model: what
    :func:`ase_mlipal.fit_band_calibration` takes."""
    bands: dict[str, list] = {}
    for atoms in read_frames(DATA / "model_bands.xyz.gz"):
        name = atoms.info["reaction"]
        if reactions is None or name in reactions:
            bands.setdefault(name, [])
            if atoms.info["model_band"]:
                bands[name].append(atoms)
            elif atoms.info["image"] == 0:
                bands[name].insert(0, atoms)
    return bands


def calibration_frames(pretrain_valid: list, reactions: list) -> tuple[list, list[str]]:
    """The validation split and the physical frames of ``reactions``, with a group label each (the reaction's
    name)."""
    reactions = [a for a in reactions if physical(a)]
    frames = list(pretrain_valid) + reactions
    return frames, [VALID_GROUP] * len(pretrain_valid) + [a.info["reaction"] for a in reactions]


def shipped_forces_method(distance_aware: bool) -> str:
    """The force calibration map the shipped posterior uses: a power law on the distance-aware σ, else a scale."""
    return "power" if distance_aware else "linear"


def write_conditioning(frames: list, path: Path = DEFAULT_CONDITIONING_PATH) -> Path:
    """Store the structures of ``frames`` (numbers, positions, cell; no labels) in ``path`` (extxyz)."""
    from ase import Atoms
    from ase.io import write

    bare = [Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc) for a in frames]
    write(path, bare, format="extxyz")
    return path


def build_posterior(model, splits: dict[str, list], reactions: list, distance_aware: bool = False
                    ) -> tuple[ase_mlipal.MLIPALCalculator, dict]:
    """A calculator on ``model`` conditioned on ``splits["train"]`` and calibrated on ``splits["valid"]`` and the
    frames of ``reactions``; and what to record."""
    calc = ase_mlipal.MLIPALCalculator(model=model, posterior=None, distance_aware=distance_aware)
    calc.condition(splits["train"])
    frames, groups = calibration_frames(splits["valid"], reactions)
    report = calc.calibrate(frames, groups=groups, forces_method=shipped_forces_method(distance_aware))
    typical = calc.fit_typical(splits["valid"])
    entry = {
        "kernel": calc.kernel, "dim": calc.feature_map.dim, "conditioned_on": len(splits["train"]),
        "frames": len(frames), "groups": sorted(set(groups)),
        "energy": calc.energy_posterior.calibration.as_dict(), "forces": calc.atom_posterior.calibration.as_dict(),
        "typical": typical, "report_on_fit_frames": {k: v.as_dict() for k, v in report.items()},
    }
    bands = model_bands({a.info["reaction"] for a in reactions})
    band_report = ase_mlipal.fit_band_calibration(calc, list(bands.values()), groups=list(bands))
    entry.update(band_calibration=calc.band_calibration.as_dict(), band_calibration_bands=sorted(bands))
    entry["report_on_fit_frames"]["bands"] = band_report.as_dict()
    return calc, entry


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: the shipped file of the posterior built")
    parser.add_argument("--distance-aware", action="store_true",
                        help="the posterior of the distance-aware default (without: distance_aware=False's)")
    args = parser.parse_args()
    out = args.out or (DEFAULT_DISTANCE_POSTERIOR_PATH if args.distance_aware else DEFAULT_POSTERIOR_PATH)
    pretrain = read_frames(DATA / "pretrain.xyz.gz")
    splits = {s: [a for a in pretrain if a.info["split"] == s] for s in ("train", "valid")}
    calc, entry = build_posterior(ase_mlipal.load_model("default"), splits, calibration_reactions(),
                                  args.distance_aware)
    calc.save_posterior(out)
    if args.distance_aware:
        entry["neighbour_rows"], entry["neighbour_scale"] = len(calc.uncertainty_model.neighbours), \
            calc.uncertainty_model.neighbours.scale
    else:
        write_conditioning(splits["train"], out.parent / DEFAULT_CONDITIONING_PATH.name)
    record_path = DEFAULT_DIR / "default.json"
    record = json.loads(record_path.read_text())
    record["posterior_distance" if args.distance_aware else "posterior"] = entry
    record_path.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in entry.items() if k != "report_on_fit_frames"}, indent=1))
    print(f"wrote {out} and the {'posterior_distance' if args.distance_aware else 'posterior'} entry of {record_path}")


if __name__ == "__main__":
    main()
