"""xTB labels on the pretrained model's own NEB bands: the frames a user's NEB on the default calculator visits.

    python scripts/make_model_band_data.py [--workers 2]   # writes benchmarks/data/model_bands.xyz.gz (~30 min)

Every other calibration record holds frames *along the reference path*
(xTB's converged band, with thermal noise). A climbing-image NEB on the
model does not stay there: where the model is wrong it bends the band
into its own errors, and there its energy sigma was found several times
too small (the learners' round-0 checks: 38% of energy errors inside 2
sigma, a median error of 5 sigma, where the force components had 0.8).
This script records those frames. For each reaction with endpoints (the
project's seven reactive bands, the held-out learning benchmark's
reactions and its fourth fresh set), it builds the learner's 9-image
IDPP band between the xTB endpoints and relaxes it on the shipped
default model exactly as round 0 of ``NEBLearner`` does (climbing image,
improved tangent, FIRE, fmax 0.1 eV/A, at most 300 steps), and labels
the interior images with GFN2-xTB at three points of the relaxation
(after 30 and 100 steps and at its end; a band whose length passes 3x its
initial one, the learner's guard, ends there), and the two endpoints (a
barrier is an energy difference to the first). ``info``: ``reaction``,
``image``, ``neb_step``, ``band_top`` (the band's highest interior image
on the model at that step), ``split="test"``, ``model_band`` (False for
the endpoints).
Frames failing :func:`reactive.physical` are dropped.

The NEB depends on the model alone (not on its posterior or calibration),
so the frames stay valid for any calibration of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase.io import write  # noqa: E402
from ase.mep import NEB  # noqa: E402
from ase.optimize import FIRE  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import ase_mlipal  # noqa: E402  (first: imports mace before e3nn)
from learning_loop import SETTINGS, reference_bands  # noqa: E402
from learning_loop_heldout import (FOURTH_FRESH, FRESH, LEARNER_ONLY, REACTIONS, SECOND_FRESH,  # noqa: E402
                                   THIRD_FRESH, endpoints)
from reactive import physical  # noqa: E402

from ase_mlipal.guards import MAX_LENGTH_RATIO  # noqa: E402
from ase_mlipal.paths import band, reaction_coordinate  # noqa: E402
from ase_mlipal.references.xtb import LabelStats, xtb_label  # noqa: E402

SNAPSHOT_STEPS = (30, 100)  # NEB steps labelled besides the relaxation's end
OWN = sorted(reference_bands())
HELDOUT = REACTIONS + LEARNER_ONLY + FRESH + SECOND_FRESH + THIRD_FRESH


class _TooLong(Exception):
    pass


def reaction_endpoints(name: str):
    """Reactant and product: the stored band's ends for the project's own reactions, else the builders'."""
    if name in OWN:
        stored = reference_bands()[name]
        return stored[0], stored[-1]
    return endpoints(name)


def model_band_frames(name: str) -> tuple[list, dict]:
    """The labelled interior images of the model's round-0 band of ``name`` at :data:`SNAPSHOT_STEPS` and at the
    end, and a summary."""
    images = band(*reaction_endpoints(name), SETTINGS["images"])
    calc = ase_mlipal.MLIPALCalculator()
    for image in images:
        image.calc = calc.share()
    initial_length = float(reaction_coordinate(images)[-1])
    neb = NEB(images, climb=True, method="improvedtangent")
    optimizer = FIRE(neb, logfile=None)
    snapshots = []

    def take_snapshot():  # the band now: its step, images and energies on the model
        snapshots.append((optimizer.nsteps, [image.copy() for image in images],
                          [image.get_potential_energy() for image in images]))

    def snapshot():
        if optimizer.nsteps in SNAPSHOT_STEPS:
            take_snapshot()
        if reaction_coordinate(images)[-1] > MAX_LENGTH_RATIO * initial_length:  # the learner's guard stops there
            raise _TooLong

    optimizer.attach(snapshot, interval=1)
    try:
        converged = optimizer.run(fmax=SETTINGS["fmax"], steps=SETTINGS["steps"])
        ended = "converged" if converged else "steps"
    except _TooLong:
        ended = "length guard"
    take_snapshot()
    stats, frames = LabelStats(), []
    for k in (0, len(images) - 1):  # the endpoints: what a barrier (an energy difference) is measured from
        labelled = xtb_label(images[k], stats)
        if labelled is not None:
            labelled.info.update(reaction=name, image=k, neb_step=0, band_top=False, split="test", model_band=False)
            frames.append(labelled)
    for step, band_images, energies in snapshots:
        top = 1 + int(np.argmax(energies[1:-1]))
        for k, image in enumerate(band_images[1:-1], start=1):
            labelled = xtb_label(image, stats)
            if labelled is None or not physical(labelled):
                continue
            labelled.info.update(reaction=name, image=k, neb_step=step, band_top=k == top, split="test",
                                 model_band=True)
            frames.append(labelled)
    length = float(reaction_coordinate(images)[-1])
    return frames, {"ended": ended, "neb_steps": optimizer.nsteps, "frames": len(frames),
                    "skipped_scf": stats.skipped, "length_ratio": length / initial_length}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reactions", nargs="*", default=None, help="default: all (own, held-out, fourth fresh)")
    args = parser.parse_args()
    reactions = args.reactions or OWN + HELDOUT + FOURTH_FRESH
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(reactions, tqdm(pool.map(model_band_frames, reactions), total=len(reactions),
                                           desc="model bands")))
    frames = [f for name in reactions for f in results[name][0]]
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "model_bands.xyz.gz", frames, format="extxyz")
    summary = {name: results[name][1] for name in reactions}
    (args.out / "model_bands_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
