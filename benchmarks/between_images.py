"""Does the reference's highest point between two labelled images find a pass the images miss?

    python benchmarks/between_images.py [--out benchmarks/results] [--smoke]

The last label of :class:`ase_mlipal.NEBLearner`'s sweep goes to the point
between two neighbouring labelled images where the reference's energies and
forces along the straight line between them imply its highest
(:func:`ase_mlipal.paths.highest_between_images`), when that tops the band's
barrier and every label by more than ``barrier_tolerance`` (0.1 eV, the
default; nothing here is fitted). This tests the rule where the answer is
known: the xTB climbing-image NEB bands in ``benchmarks/data``
(``*_bands.xyz.gz``: the reactive set, the held-out and the fresh sets),
every image labelled by xTB.

* **Full bands.** The climbing image is the top: a label the rule asks for
  is spent for nothing.
* **Half bands.** Every other image is dropped (the odd ones, then the even
  ones; the endpoints stay), as if the band had half the images. Where the
  images left miss the top by more than the tolerance, the pass lies between
  them: does the rule ask, and how much of the missed height does its one
  xTB label show? The band's barrier is taken as its highest image's
  (a model right at every image).

Writes ``between_images.json`` and ``between_images.md``. About a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

import numpy as np
from ase import Atoms

from ase_mlipal.frames import read_frames
from ase_mlipal.learning.neb_learner import BARRIER_TOLERANCE
from ase_mlipal.paths import highest_between_images, point_between
from ase_mlipal.references.xtb import RobustXTB

DATA = Path(__file__).resolve().parent / "data"
BAND_FILES = ("reactive_bands", "heldout_bands", "fresh_bands", "later_bands")
TOLERANCE = BARRIER_TOLERANCE  # NEBLearner's default (eV)


def bands() -> dict[str, list[Atoms]]:
    """Every stored xTB NEB band by reaction, images in order."""
    found = defaultdict(list)
    for name in BAND_FILES:
        for atoms in read_frames(DATA / f"{name}.xyz.gz"):
            found[atoms.info["reaction"]].append(atoms)
    return dict(found)


def judge(images: list[Atoms], top: float, first: float, reference) -> dict:
    """The rule on a band whose every image is labelled: where it asks for a label, and what xTB says there.

    ``top``: the full band's highest energy (eV, absolute); ``first``: its first image's.
    """
    labels = {k: (a.get_potential_energy(), a.get_forces()) for k, a in enumerate(images)}
    shown = max(energy for energy, _ in labels.values())
    energy, k, fraction = highest_between_images([a.positions for a in images], labels)
    row = {"images": len(images), "missed": top - shown, "implied": energy - first,
           "asks": bool(energy > shown + TOLERANCE)}
    if row["asks"]:
        point = images[k].copy()
        point.positions = point_between([a.positions for a in images], k, fraction)
        point.calc = reference
        row.update(between=k + fraction, labelled=point.get_potential_energy() - first)
        row["still_missed"] = top - max(shown, point.get_potential_energy())
    else:
        row["still_missed"] = row["missed"]
    return row


def halves(images: list[Atoms]) -> dict[str, list[Atoms]]:
    """The band with every other image dropped, endpoints kept: the odd images, then the even ones."""
    last = len(images) - 1
    return {"even": [images[k] for k in range(last + 1) if k % 2 == 0 or k == last],
            "odd": [images[k] for k in range(last + 1) if k % 2 == 1 or k in (0, last)]}


def summary(rows: list[dict]) -> dict:
    """Counts over the rows of :func:`judge` (each with its ``variant``)."""
    full = [r for r in rows if r["variant"] == "full"]
    missing = [r for r in rows if r["variant"] != "full" and r["missed"] > TOLERANCE]
    fine = [r for r in rows if r["variant"] != "full" and r["missed"] <= TOLERANCE]
    return {"full_bands": len(full), "full_bands_asking": sum(r["asks"] for r in full),
            "half_bands_missing": len(missing), "asked": sum(r["asks"] for r in missing),
            "shown_within_tolerance": sum(r["still_missed"] <= TOLERANCE for r in missing),
            "median_missed": float(np.median([r["missed"] for r in missing])) if missing else None,
            "median_still_missed": (float(np.median([max(0.0, r["still_missed"]) for r in missing]))
                                    if missing else None),
            "half_bands_not_missing": len(fine), "labels_spent_on_them": sum(r["asks"] for r in fine)}


def markdown(rows: list[dict], totals: dict) -> str:
    """The rows as a table, then the :func:`summary` in words."""
    lines = ["# A label between images: the rule on xTB NEB bands (`python benchmarks/between_images.py`)", "",
             f"Tolerance {TOLERANCE} eV (NEBLearner's default barrier_tolerance). Energies above the first image, eV.",
             "", "| reaction | band | images | top missed by | implied peak | asks | at | xTB there | still missed |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        at = f"{r['between']:.2f}" if r["asks"] else "-"
        there = f"{r['labelled']:.2f}" if r["asks"] else "-"
        lines.append(f"| {r['reaction']} | {r['variant']} | {r['images']} | {r['missed']:.2f} | {r['implied']:.2f} | "
                     f"{'yes' if r['asks'] else 'no'} | {at} | {there} | {max(0.0, r['still_missed']):.2f} |")
    t = totals
    lines += ["", f"- Full bands: {t['full_bands_asking']} of {t['full_bands']} ask for a label (a label spent for "
              "nothing: the climbing image is the top).",
              f"- Half bands whose images miss the top by more than {TOLERANCE} eV: {t['half_bands_missing']}; "
              f"the rule asks on {t['asked']}, and its one label shows the top within {TOLERANCE} eV (or above it) on "
              f"{t['shown_within_tolerance']}.",
              f"- Median height missed on them: {t['median_missed'] or 0:.2f} eV before the label, "
              f"{t['median_still_missed'] or 0:.2f} eV after.",
              f"- Half bands whose images show the top: {t['half_bands_not_missing']}; labels spent on them: "
              f"{t['labels_spent_on_them']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--smoke", action="store_true", help="two reactions only")
    args = parser.parse_args()
    start, reference = time.perf_counter(), RobustXTB()
    rows = []
    for number, (reaction, images) in enumerate(bands().items()):
        if args.smoke and number >= 2:
            break
        first = images[0].get_potential_energy()
        top = max(a.get_potential_energy() for a in images)
        for variant, band in {"full": images, **halves(images)}.items():
            rows.append({"reaction": reaction, "variant": variant, **judge(band, top, first, reference)})
            print(f"{reaction:36s} {variant:5s} missed {rows[-1]['missed']:5.2f} eV, "
                  f"still {rows[-1]['still_missed']:5.2f}")
    totals = summary(rows)
    record = {"tolerance": TOLERANCE, "rows": rows, "summary": totals, "smoke": args.smoke,
              "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "between_images_smoke" if args.smoke else "between_images"
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=float))
    (args.out / f"{stem}.md").write_text(markdown(rows, totals))
    print(markdown(rows, totals))


if __name__ == "__main__":
    main()
