"""xTB frames of reactions outside the reactive set, for calibration and its tests (the held-out learning benchmark's).

    python scripts/make_heldout_data.py            # writes benchmarks/data/heldout_*.xyz.gz
    python scripts/make_heldout_data.py --fresh    # the three fresh reactions: benchmarks/data/fresh_*
    python scripts/make_heldout_data.py --later    # the second and third fresh sets: benchmarks/data/later_*
    python scripts/make_heldout_data.py --fourth   # the fourth fresh set: benchmarks/data/fourth_*

The five reactions of ``benchmarks/learning_loop_heldout.py`` (two 1,3-H
shifts, a 1,2-H shift, HCN -> HNC and acetonitrile -> methyl isocyanide;
three carry N, which the reactive set has in one hot MD run only). For each,
the direct xTB climbing-image NEB from the learner's own 9-image band (the
learning benchmark's target, the same call as there), then frames along the
converged path with thermal noise, the recipe of the reactive set
(``scripts/make_data.py``: 150 test frames uniform in the path coordinate,
then 330 pool frames, transition-state frames kept in the pool with
probability 0.1; 0.04 A noise, ``ts_region`` within 0.15 of the top).

``heldout_reactions.xyz.gz`` holds the frames (``info``: ``reaction``,
``image``, ``path_s``, ``ts_region``, ``split``: ``test`` or ``pool``),
``heldout_bands.xyz.gz`` the converged bands, each image labelled,
``heldout_summary.json`` barriers and counts. The bands are the learning
benchmark's (9 images, fmax 0.1 eV/A), coarser than the reactive set's
(11-17 images, 0.05 eV/A).
``benchmarks/calibration.py`` scores the shipped calibration on the test
frames; ``benchmarks/calibration_learning.py --new`` learns from the pool.

``--fresh`` does the same for the three reactions added to the held-out
learning benchmark after every choice of the project was made
(``learning_loop_heldout.FRESH``: acetone -> propen-2-ol, acetic acid ->
ethene-1,1-diol, formic acid -> dihydroxycarbene) and writes
``fresh_reactions.xyz.gz``, ``fresh_bands.xyz.gz`` and ``fresh_summary.json``;
``benchmarks/calibration.py --fresh`` scores on them.

``--later`` does the same for the six reactions of the two fresh sets added
after that (``learning_loop_heldout.SECOND_FRESH`` and ``THIRD_FRESH``:
glyoxal, methyl formate, pyrrole, ethylamine, aziridine and cyclobutene,
reactants in no earlier reactive record; the third set's reactions are an
elimination to two molecules, an inversion at N and an electrocyclic ring
opening) and writes ``later_*``; ``benchmarks/calibration.py --later`` scores on them.

``--fourth`` does the same for the fourth fresh set
(``learning_loop_heldout.FOURTH_FRESH``: propyne -> allene, dimethyl ether
-> methane + formaldehyde), added after the shipped calibration was fitted
on the three sets above, and writes ``fourth_*``;
``benchmarks/calibration_wider.py`` scores on them.
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
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_data  # noqa: E402
from learning_loop import SETTINGS, reference_neb  # noqa: E402
from learning_loop_heldout import FOURTH_FRESH, FRESH, REACTIONS, SECOND_FRESH, THIRD_FRESH, endpoints  # noqa: E402

from ase_mlipal.paths import band  # noqa: E402
from ase_mlipal.references.xtb import LabelStats, xtb_label  # noqa: E402


def reaction_frames(name: str) -> tuple[list, list, dict]:
    """(frames along the converged path, the labelled band, a summary) of reaction ``name``.

    Raises:
        RuntimeError: the xTB NEB did not converge, or its images are not all
            labelled on one electronic temperature (energies from two surfaces;
            ``make_data.converged_band`` refuses such a band too).
    """
    rng = np.random.default_rng(make_data.seed_of(name))
    images, result = reference_neb(band(*endpoints(name), SETTINGS["images"]), SETTINGS["fmax"])
    stats = LabelStats()
    labelled = [xtb_label(image, stats) for image in images]
    temperatures = {None if label is None else label.info["xtb_electronic_temperature"] for label in labelled}
    if not result["converged"] or len(temperatures) != 1 or None in temperatures:
        raise RuntimeError(f"{name}: the xTB NEB {'converged' if result['converged'] else 'did not converge'}, its "
                           f"images labelled at electronic temperatures {sorted(temperatures, key=str)} K: no band")
    for k, (image, s) in enumerate(zip(labelled, make_data.path_coordinates(images))):
        image.info.update(reaction=name, image=k, path_s=float(s))
    frames = make_data.path_frames(labelled, rng, stats, initial=False, reaction=name)
    test = [f for f in frames if f.info["split"] == "test"]
    summary = {"barrier_eV": result["barrier"], "converged": result["converged"], "neb_steps": result["steps"],
               "test_frames": len(test), "ts_region_test_frames": sum(f.info["ts_region"] for f in test),
               "pool_frames": len(frames) - len(test), "skipped_scf": stats.skipped, "retried": stats.retried}
    return frames, labelled, summary


def frames_or_why(name: str):
    """:func:`reaction_frames`, or why the reaction gives none (its xTB NEB did not converge): left out, not fatal."""
    try:
        return reaction_frames(name)
    except RuntimeError as error:
        return str(error)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fresh", action="store_true", help="the fresh reactions, into fresh_*")
    which.add_argument("--later", action="store_true", help="the second and third fresh sets, into later_*")
    which.add_argument("--fourth", action="store_true", help="the fourth fresh set, into fourth_*")
    args = parser.parse_args()
    reactions, prefix = ((FRESH, "fresh") if args.fresh else (SECOND_FRESH + THIRD_FRESH, "later") if args.later
                         else (FOURTH_FRESH, "fourth") if args.fourth else (REACTIONS, "heldout"))
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(reactions, tqdm(pool.map(frames_or_why, reactions), total=len(reactions),
                                           desc="xTB NEBs and frames")))
    made = [name for name in reactions if not isinstance(results[name], str)]
    if not made:
        raise SystemExit("no reaction gave a band: " + "; ".join(results.values()))
    write(args.out / f"{prefix}_reactions.xyz.gz", [f for name in made for f in results[name][0]], format="extxyz")
    write(args.out / f"{prefix}_bands.xyz.gz", [f for name in made for f in results[name][1]], format="extxyz")
    summary = {name: results[name][2] if name in made else {"left_out": results[name]} for name in reactions}
    (args.out / f"{prefix}_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
