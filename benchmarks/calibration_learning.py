"""Is the uncertainty still honest after learning? Force and barrier coverage round by round, reactions held out.

    python benchmarks/calibration_learning.py [--reactions NAME ...] [--rounds 2] [--labels 8]
        [--out benchmarks/results/calibration_learning.json]
    python benchmarks/calibration_learning.py --merge PART.json ... --out benchmarks/results/calibration_learning.json
    python benchmarks/calibration_learning.py --new --out benchmarks/results/calibration_learning_new.json
    python benchmarks/calibration_learning.py --distance-aware [--new]   # on MLIPALCalculator(distance_aware=True)
    python benchmarks/calibration_learning.py --distance-aware --fresh   # the three fresh reactions

For each NEB reaction r of the reactive set (held out of the calibration,
as in ``benchmarks/calibration.py``):

* round 0: the shipped default conditioned on its training frames,
  calibrated on the validation split and the *other* reactions;
* each learning round: the ``--labels`` pool frames of r the posterior is
  least sure of (MaxDet on the current posterior, as a trigger flags the
  most uncertain frame and conditions on it) get their xTB labels; then the
  steps of :meth:`ase_mlipal.learning.learning_run.LearningRun.learn`: fine-tune the
  pretrained model on every frame labelled so far with the learners'
  settings (``LEARNER_FINETUNE``), swap it in with ``set_model`` on the
  structures the shipped posterior holds, the calibration kept and its
  floors moved by what the new model forgot on the replay frames it did not
  train on (no scale refit: the learners refit on the checks they passed,
  and there are none here), absorb the labelled frames through a relative
  trigger (4x the typical uncertainty), each settling no lower than the new
  model's errors on it.

Three variants on the same fine-tuned model: ``floors`` (the package),
``no forgetting floor`` (the calibration kept as it was) and ``not
absorbed`` (the posterior holds the conditioning frames alone).
After each round: 2-sigma coverage of the force components on r's test
frames (all, and the transition-state region) and on 150 frames of the
pretraining test split (near-equilibrium molecules held out of
pretraining, far from the reaction: where what a fine-tune forgot shows) and whether the xTB barrier
of r's band is inside ``path_profile``'s barrier +- 2 sigma.

``--new``: the five reactions of ``benchmarks/data/heldout_reactions.xyz.gz``
(``scripts/make_heldout_data.py``) instead, which no calibration, model or
learner constant was fitted on; round 0 is the shipped recipe's calibration
(validation split plus all 8 reactions), which never saw them. ``--fresh``:
the same on the three reactions of ``benchmarks/data/fresh_reactions.xyz.gz``
(``scripts/make_heldout_data.py --fresh``), added after every choice was
made (output name ``calibration_learning_fresh[_distance]``).

One reaction, two rounds: about 3 minutes on 2 cores. Run reactions in
parts and merge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
import torch
from ase.io import write
from reactive import physical

from ase_mlipal.uncertainty.calibration import calibration_report
from ase_mlipal.training.finetune import finetune
from ase_mlipal.frames import read_frames, read_labels
from ase_mlipal.learning.learning_run import LEARNER_FINETUNE, default_conditioning
from ase_mlipal.learning.store import FrameStore
from ase_mlipal.learning.trigger import UncertaintyTrigger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from build_posterior import calibration_frames, shipped_forces_method  # noqa: E402

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
RELATIVE_THRESHOLD = 4.0
VARIANTS = ("floors", "no forgetting floor", "not absorbed")


def scores(calc, test: list, ts: list, band: list, test_molecules: list) -> dict:
    """Force coverage on the test frames (all, TS region), on the pretraining test molecules, and the barrier check."""
    out = {}
    for name, frames in (("forces", test), ("forces_ts", ts), ("forces_test_molecules", test_molecules)):
        res = calc.residuals(frames, progress=False)
        std = np.sqrt(calc.atom_posterior.calibration.variance(np.repeat(res.forces_raw, 3)))
        out[name] = calibration_report(res.forces.ravel(), std).as_dict()
    profile = ase_mlipal.path_profile(calc, band, relaxed_on_model=False)  # an xTB band
    reference = np.array([read_labels(a)[0] for a in band])
    error = profile.barrier - float(np.max(reference - reference[0]))
    out["barrier"] = {"error": error, "std": profile.barrier_std, "covered_2sigma": bool(abs(error) < 2 * profile.barrier_std)}
    return out


def fine_tuned(pretrained, labelled: list, number: int, path: Path):
    """The learners' ``finetune`` of the pretrained model on ``labelled`` (seed = round), cached in ``path``.

    Returns the model, the replay frames it did not train on and the seconds it took.
    """
    model_path, unseen_path = path.with_suffix(".model.pt"), path.with_suffix(".unseen.xyz")
    if path.exists() and model_path.exists() and unseen_path.exists():
        return (ase_mlipal.load_model(model_path), read_frames(unseen_path),
                torch.load(path, weights_only=True)["seconds"])
    start = time.perf_counter()
    tuned = finetune(pretrained, labelled, progress=False, seed=number, **LEARNER_FINETUNE)
    seconds = round(time.perf_counter() - start, 1)
    ase_mlipal.save_model(tuned.model, model_path)
    write(unseen_path, tuned.replay_unseen, format="extxyz")
    torch.save({"seconds": seconds}, path)
    return tuned.model, tuned.replay_unseen, seconds


def run_reaction(reaction: str, valid: list, others: list, mine: list, band: list, rounds: int, labels: int,
                 workdir: Path, cache: Path, test_molecules: list, distance_aware: bool = False) -> dict:
    """Rounds of learning on the pool frames of ``mine`` (reaction ``reaction``), calibrated on ``valid`` and the
    reactive frames ``others`` (with ``distance_aware``: the distance-aware σ and its power law for the forces,
    as ``scripts/build_posterior.py --distance-aware`` ships it)."""
    frames, groups = calibration_frames(valid, others)
    calc = ase_mlipal.MLIPALCalculator(distance_aware=distance_aware)
    calc.calibrate(frames, groups=groups, forces_method=shipped_forces_method(distance_aware), progress=False)
    typical = calc.typical
    pretrained = ase_mlipal.load_model("default")
    conditioning = default_conditioning()
    pool = [a for a in mine if a.info["split"] == "pool"]
    test = [a for a in mine if a.info["split"] == "test"]
    ts = [a for a in test if a.info["ts_region"]]
    record = {"reaction": reaction, "rounds": [{"round": 0, "labels": 0, **scores(calc, test, ts, band, test_molecules)}]}
    variants, calibrated = {"floors": calc}, calc
    labelled_idx: list[int] = []
    for number in range(1, rounds + 1):
        picks = ase_mlipal.select(variants["floors"], pool, labels, labelled=[pool[i] for i in labelled_idx] or None,
                                  progress=False)
        labelled_idx += [int(i) for i in picks if int(i) not in labelled_idx]
        labelled = [pool[i] for i in labelled_idx]
        settings = json.dumps(LEARNER_FINETUNE, sort_keys=True)
        picked = hashlib.sha256((str(sorted(labelled_idx)) + settings).encode()).hexdigest()[:10]  # labels, settings
        model, replay_unseen, seconds = fine_tuned(pretrained, labelled, number,
                                                   cache / f"{reaction}-{number}-{picked}.pt")
        entry = {"round": number, "labels": len(labelled), "finetune_seconds": seconds}
        for name in VARIANTS:
            current = ase_mlipal.MLIPALCalculator(posterior=None, distance_aware=distance_aware)
            current.energy_posterior.calibration = calibrated.energy_posterior.calibration
            current.atom_posterior.calibration = calibrated.atom_posterior.calibration
            current.calibrated = True
            forgetting = [] if name == "no forgetting floor" else replay_unseen
            current.set_model(model, conditioning, forgetting_frames=forgetting, progress=False)  # no checks here
            current.typical = typical
            if name != "not absorbed":
                trigger = UncertaintyTrigger(current, FrameStore(workdir / f"{reaction}-{name}-{number}.db"),
                                             RELATIVE_THRESHOLD, mode="relative")
                trigger.absorb(labelled, floors=[trigger.residual_floors(a) for a in labelled])
            entry[name] = scores(current, test, ts, band, test_molecules)
            entry[name]["floors"] = {"energy": current.energy_posterior.calibration.floor,
                                     "forces": current.atom_posterior.calibration.floor}
            if name == "floors":
                variants["floors"] = current
        record["rounds"].append(entry)
        print(f"  {reaction} round {number}: {len(labelled)} labels, fine-tune {entry['finetune_seconds']} s", flush=True)
    return record


def summary(records: list[dict]) -> dict:
    """Pooled-by-mean coverage and barriers covered, per round and variant."""
    out = {}
    n_rounds = min(len(r["rounds"]) for r in records)
    for k in range(n_rounds):
        variants = list(VARIANTS) if k else [None]
        for name in variants:
            rows = [r["rounds"][k][name] if name else r["rounds"][k] for r in records]
            out[f"round {k}" + (f" ({name})" if name else "")] = {
                "force_coverage_2sigma": float(np.mean([row["forces"]["coverage_2sigma"] for row in rows])),
                "force_coverage_2sigma_ts": float(np.mean([row["forces_ts"]["coverage_2sigma"] for row in rows])),
                "force_coverage_2sigma_test_molecules": float(np.mean(
                    [row["forces_test_molecules"]["coverage_2sigma"] for row in rows])),
                "force_rmse_test_molecules": float(np.mean([row["forces_test_molecules"]["rmse"] for row in rows])),
                "force_rmse": float(np.mean([row["forces"]["rmse"] for row in rows])),
                "barriers_covered": int(sum(row["barrier"]["covered_2sigma"] for row in rows)),
                "barrier_abs_error": float(np.median([abs(row["barrier"]["error"]) for row in rows])),
                "reactions": len(rows),
            }
    return out


def table(result: dict) -> str:
    lines = ["| after | force cov 2s | TS cov 2s | force RMSE eV/A | test molecules: cov 2s | RMSE eV/A | "
             "barriers covered | median abs barrier error eV |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["summary"].items():
        lines.append(f"| {name} | {row['force_coverage_2sigma']:.2f} | {row['force_coverage_2sigma_ts']:.2f} | "
                     f"{row['force_rmse']:.3f} | {row['force_coverage_2sigma_test_molecules']:.2f} | "
                     f"{row['force_rmse_test_molecules']:.3f} | {row['barriers_covered']}/{row['reactions']} | {row['barrier_abs_error']:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reactions", nargs="*", help="default: every reaction with a band")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--labels", type=int, default=8, help="frames labelled per round")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mlipal_calibration_learning",
                        help="fine-tuned models are kept here, so a rerun only redoes the posteriors")
    parser.add_argument("--merge", nargs="*", type=Path, help="merge these part files instead of running")
    parser.add_argument("--new", action="store_true",
                        help="the five reactions of heldout_reactions.xyz.gz (calibrated on all 8 of the reactive set)")
    parser.add_argument("--fresh", action="store_true",
                        help="as --new on the three reactions of fresh_reactions.xyz.gz (output name gains _fresh)")
    parser.add_argument("--distance-aware", action="store_true",
                        help="on MLIPALCalculator(distance_aware=True), its forces calibrated by a power law "
                             "(output name gains _distance)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/calibration_learning[_new][_distance].json")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        modes = {(part["settings"].get("new_reactions", False), part["settings"].get("distance_aware", False),
                  part["settings"].get("fresh", False)) for part in parts}
        if len(modes) > 1:
            raise SystemExit("the parts mix --new, --fresh or --distance-aware runs with others: merge each kind on "
                             "its own")
        args.new, args.distance_aware, args.fresh = modes.pop()
        records = [r for part in parts for r in part["reactions"]]
        names = [r["reaction"] for r in records]
        if len(set(names)) != len(names):
            raise SystemExit(f"parts share reactions: {sorted(n for n in set(names) if names.count(n) > 1)}")
    else:
        args.new = args.new or args.fresh
        new_data = "fresh" if args.fresh else "heldout"
        pretrain = read_frames(DATA / "pretrain.xyz.gz")
        valid = [a for a in pretrain if a.info["split"] == "valid"]
        test_molecules = random.Random(0).sample([a for a in pretrain if a.info["split"] == "test"], 150)
        reactive = [a for a in read_frames(DATA / "reactive.xyz.gz") if physical(a)]
        learnt = [a for a in read_frames(DATA / f"{new_data}_reactions.xyz.gz") if physical(a)] if args.new else reactive
        bands = {}
        for atoms in read_frames(DATA / (f"{new_data}_bands.xyz.gz" if args.new else "reactive_bands.xyz.gz")):
            bands.setdefault(atoms.info["reaction"], []).append(atoms)
        args.cache.mkdir(parents=True, exist_ok=True)
        records = []
        with_frames = {a.info["reaction"] for a in learnt}  # a band without pool frames cannot be learnt here
        with tempfile.TemporaryDirectory() as stores:  # each run its own: parts run side by side
            for reaction in args.reactions or sorted(set(bands) & with_frames):
                others = [a for a in reactive if a.info["reaction"] != reaction]  # --new: all of them
                mine = [a for a in learnt if a.info["reaction"] == reaction]
                records.append(run_reaction(reaction, valid, others, mine, bands[reaction], args.rounds, args.labels,
                                            Path(stores), args.cache, test_molecules, args.distance_aware))
    result = {"settings": {"rounds": args.rounds, "labels": args.labels, "relative_threshold": RELATIVE_THRESHOLD,
                           "new_reactions": args.new, "fresh": args.fresh, "distance_aware": args.distance_aware},
              "reactions": records, "summary": summary(records)}
    suffix = ("_fresh" if args.fresh else "_new" if args.new else "") + ("_distance" if args.distance_aware else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"calibration_learning{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
