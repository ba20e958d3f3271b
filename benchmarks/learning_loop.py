"""The verified learning loop on the project's seven reactive bands, from their endpoints.

For each reaction of ``benchmarks/data/reactive_bands.xyz.gz`` (xTB
climbing-image NEBs, 11 or 17 images, fmax 0.05 eV/A): build a 9-image IDPP band
between the xTB endpoints and run :class:`ase_mlipal.NEBLearner` on the
shipped default model with GFN2-xTB labels (the settings of ``mlipal
demo``). Per reaction: barrier error before (round 0, pretrained) and after
learning against the reference NEB barrier, the verified error (model -
xTB at the final climbing image) next to the predicted sigma, whether the
reference barrier lies inside the final 2 sigma, labels (= reference
calls), the reference calls of a direct xTB NEB from the same band to the
same fmax, rounds, model choices, wall time.

Two references, both reported: the stored band, and the direct
xTB climbing-image NEB from the learner's own 9-image IDPP band (the run
the learner replaces). They differ where a reaction has more than one
pass: from the IDPP band xTB finds 1.86 eV for formaldehyde -> CO + H2
(stored band 3.17), so the same-start NEB is the fair target of the
learner's barrier. A direct NEB counts only where it converged to an
interior maximum: for methanol -> formaldehyde + H2 it converged onto the
product's plateau (its highest image is the product endpoint, 1.83 eV:
the reaction energy, no saddle; stored band 4.34), which is no barrier.

The MD part runs :class:`ase_mlipal.OnTheFlyLearner` at 1200 K on the
reactants of those reactions (xTB-relaxed, the first band image): the
audited frames (about one unflagged frame per ``audit_interval`` steps, labelled
with xTB) give the error of the forces that drove the dynamics, first vs
last third of the run, and the 2-sigma coverage there.

Run one reaction (or MD molecule) per process (they are independent; two
at a time fit two cores) and merge::

    python benchmarks/learning_loop.py --reaction formaldehyde_to_CO_H2
    python benchmarks/learning_loop.py --md formic_acid_to_CO2_H2
    python benchmarks/learning_loop.py --merge      # results/learning_loop.{json,md,png}

``python benchmarks/learning_loop.py`` runs all six NEBs and the MD runs, then merges.
``--smoke`` runs a seconds-long version (the test suite's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
from ase import Atoms
from ase.io import read
from ase.mep import NEB
from ase.optimize import FIRE

import ase_mlipal
from ase_mlipal.frames import read_labels
from ase_mlipal.learning.learning_run import LEARNER_FINETUNE
from ase_mlipal.learning.md_learner import AUDIT_PRIOR_FRAMES, REWIND_TOLERANCE
from ase_mlipal.learning.neb_learner import NEBRound
from ase_mlipal.learning.verification import Check
from ase_mlipal.paths import PathProfile, band, reaction_coordinate
from ase_mlipal.references.xtb import RobustXTB

HERE = Path(__file__).resolve().parent
BANDS = HERE / "data" / "reactive_bands.xyz.gz"
RESULTS = HERE / "results"
PARTS = RESULTS / "learning_loop"
DISTANCE_PARTS = "distance_aware"  # the runs on MLIPALCalculator(distance_aware=True), a subfolder of the parts
TRUST_PARTS = "trust_region"  # the same with NEBLearner(trust_radius=) the initial band's spacing, another subfolder
MAX_LABELS = 40  # the label budget
# Rounds are bounded by the label budget, not by a count of their own: each band's checks take up to three
# labels (climbing image, band maximum, audit), so the budget pays for at most MAX_LABELS // 3 bands.
SETTINGS = {"images": 9, "threshold": 0.5, "max_rounds": MAX_LABELS // 3, "steps": 300, "fmax": 0.1,
            "barrier_tolerance": 0.1, "band_start": "initial", "finetune": LEARNER_FINETUNE, "max_labels": MAX_LABELS}
SMOKE = {"images": 5, "threshold": 0.5, "max_rounds": 1, "steps": 3, "fmax": 0.1, "barrier_tolerance": 0.1,
         "band_start": "initial", "finetune": {"epochs": 1, "replay_ratio": 1}}


def reference_bands() -> dict[str, list]:
    bands: dict[str, list] = {}
    for atoms in read(BANDS, ":"):
        bands.setdefault(atoms.info["reaction"], []).append(atoms)
    return {name: sorted(images, key=lambda a: a.info["image"]) for name, images in bands.items()}


def run_reaction(name: str, settings: dict, workdir: Path, direct: bool = True,
                 same_start: Optional[dict] = None) -> dict:
    """The learner on reaction ``name``; ``same_start``: a direct NEB result already run from the same band."""
    reference = reference_bands()[name]
    energies = np.array([read_labels(a)[0] for a in reference])
    ref_barrier = float(energies.max() - energies[0])
    images = band(reference[0], reference[-1], settings["images"])
    if same_start is None and direct:
        same_start = direct_reference_neb(images, settings["fmax"])
    start = time.perf_counter()
    calc = ase_mlipal.MLIPALCalculator(distance_aware=settings.get("distance_aware", False))
    learner = ase_mlipal.NEBLearner(calc, RobustXTB, workdir, images, settings["threshold"],
                                    max_rounds=settings["max_rounds"], steps=settings["steps"],
                                    fmax=settings["fmax"], barrier_tolerance=settings["barrier_tolerance"],
                                    band_start=settings["band_start"], finetune_options=settings["finetune"],
                                    max_labels=settings.get("max_labels"), progress=False,
                                    trust_radius="spacing" if settings.get("trust_region") else None)
    report = learner.run()
    seconds = time.perf_counter() - start
    counts = learner.store.counts()
    if not report.rounds:  # a guard stopped the first band
        return {"reaction": name, "reference_barrier": ref_barrier, "stopped": report.stopped, "rounds": [],
                "labels": counts["labelled"] + counts["verified"], "unphysical": counts["unphysical"],
                "seconds": seconds, "confident": False, "settings": settings}
    rounds = [{"round": r.round, "barrier": r.profile.barrier, "barrier_std": r.profile.barrier_std,
               "barrier_error": r.profile.barrier - ref_barrier, "n_flagged": r.n_flagged, "converged": r.converged,
               "check": None if r.check is None else r.check.as_dict(),
               "band_check": None if r.band_check is None else r.band_check.as_dict(),
               "audit": None if r.audit is None else r.audit.as_dict(), "quiet": r.quiet,
               "next_model": None if r.learning is None else ("accepted" if r.learning.accepted else "rejected"),
               "model_round": r.model_round, "runaway": r.runaway, "paused": r.paused,
               "lower_route": r.lower_route, "profile": r.profile.as_dict()} for r in report.rounds]
    first, last = report.rounds[0].profile, report.final.profile  # final: the best verified band
    after_std = report.barrier[1]  # the predicted sigma with what the checks found
    low, high = report.barrier_interval  # ± 2 after_std, one-sided where the top is no reference saddle
    result = {
        "reaction": name, "reference_barrier": ref_barrier,
        "reference_profile": {"s": reaction_coordinate(reference).tolist(), "energy": (energies - energies[0]).tolist()},
        "before": first.barrier - ref_barrier, "after": last.barrier - ref_barrier, "after_std": after_std,
        "after_std_predicted": last.barrier_std,
        "barrier_interval": [low, high], "covered_2sigma": bool(low <= ref_barrier <= high),
        "verified_error": report.verified_barrier_error,
        "verified_std": None if report.final.check is None else report.final.check.energy_std,
        "final_round": report.final.round, "last_band_error": report.rounds[-1].profile.barrier - ref_barrier,
        "confident": report.confident, "stopped": report.stopped, "rounds": rounds,
        "labels": counts["labelled"] + counts["verified"], "failed": counts["failed"],
        "unphysical": counts["unphysical"], "model_choice": report.model_choice, "seconds": seconds,
        "settings": {k: v for k, v in settings.items()},
    }
    if same_start is not None:
        result["direct_neb"] = same_start
        if found_a_pass(same_start):  # errors against the pass a reference NEB from the same band finds
            target = same_start["barrier"]
            result.update(before_direct=first.barrier - target, after_direct=last.barrier - target,
                          covered_2sigma_direct=bool(low <= target <= high))
    return result


def found_a_pass(direct: dict) -> bool:
    """Did the direct NEB converge to a band whose highest image is interior (a saddle, not an endpoint)?"""
    energy = direct["profile"]["energy"]
    return bool(direct["converged"]) and max(energy[1:-1]) > max(energy[0], energy[-1])


def earlier_direct_neb(path: Path, settings: dict) -> Optional[dict]:
    """The direct NEB of an earlier part at ``path``, if it ran from the same band to the same fmax."""
    if not path.exists():
        return None
    earlier = json.loads(path.read_text())
    same = all(earlier.get("settings", {}).get(k) == settings[k] for k in ("images", "fmax"))
    return earlier.get("direct_neb") if same else None


def reference_neb(images, fmax: float, max_steps: int = 1500) -> tuple[list, dict]:
    """A plain xTB climbing-image NEB from ``images`` to ``fmax``: (the relaxed band, its force calls, barrier
    (eV) and profile)."""
    images = [image.copy() for image in images]
    for image in images:
        image.calc = RobustXTB()
    neb = NEB(images, climb=True, method="improvedtangent")
    dyn = FIRE(neb, logfile=None)
    converged = bool(dyn.run(fmax=fmax, steps=max_steps))
    energies = np.array([image.get_potential_energy() for image in images])
    return images, {"calls": (len(images) - 2) * (dyn.nsteps + 1), "steps": int(dyn.nsteps), "converged": converged,
                    "barrier": float(energies.max() - energies[0]),
                    "profile": {"s": reaction_coordinate(images).tolist(),
                                "energy": (energies - energies[0]).tolist()}}


def direct_reference_neb(images, fmax: float, max_steps: int = 1500) -> dict:
    """:func:`reference_neb`'s summary alone."""
    return reference_neb(images, fmax, max_steps)[1]


MD_SETTINGS = {"temperature_K": 1200.0, "steps": 2000, "timestep_fs": 0.5, "threshold": 0.5, "interval": 5,
               "batch_size": 8, "audit_interval": 100, "max_rounds": 6, "finetune": LEARNER_FINETUNE,
               "seed": 0,  # the thermostat's random forces: a rerun repeats the run
               "recalibrate": True,  # audits rescale sigma (records without the key ran before they did)
               "prior_frames": AUDIT_PRIOR_FRAMES,  # their prior weight (records without the key: 20)
               "rewind_tolerance": REWIND_TOLERANCE,  # a hole sends the MD back (records without the key: never)
               # flags are seen, not learned: they stay out of the reported sigma (records without the key ran
               # when they entered it)
               "flags_apart": True,
               # the audits move the energy's sigma linearly, the forces' in log space (records without the key:
               # both in log space)
               "energy_rescale": "linear"}
OLD_PRIOR_FRAMES = 20.0  # the audits' prior weight before benchmarks/audit_rescale.py chose AUDIT_PRIOR_FRAMES
MD_SMOKE = {**MD_SETTINGS, "steps": 20, "audit_interval": 5, "batch_size": 2, "max_rounds": 1,
            "finetune": {"epochs": 1, "replay_ratio": 1}}
MD_MOLECULES = ["formic_acid_to_CO2_H2", "methanol_to_formaldehyde_H2"]


def run_md(name: str, settings: dict, workdir: Path, start_atoms: Atoms | None = None,
           distance_aware: bool = False) -> dict:
    """The MD learner from ``start_atoms`` (default: the reactant of reaction ``name``'s stored band); the audits
    score the dynamics (``distance_aware``: on ``MLIPALCalculator(distance_aware=True)``)."""
    from ase_mlipal.learning.md_learner import langevin

    start_atoms = reference_bands()[name][0] if start_atoms is None else start_atoms
    start = time.perf_counter()
    learner = ase_mlipal.OnTheFlyLearner(
        start_atoms, ase_mlipal.MLIPALCalculator(distance_aware=distance_aware), RobustXTB, workdir,
        settings["threshold"],
        steps=settings["steps"], interval=settings["interval"], labels_per_round=settings["batch_size"],
        max_rounds=settings["max_rounds"], audit_interval=settings["audit_interval"],
        dynamics=lambda atoms: langevin(atoms, settings["temperature_K"], settings["timestep_fs"],
                                        seed=settings.get("seed")),
        finetune_options=settings["finetune"], progress=False, force_tolerance=settings.get("force_tolerance"),
        recalibrate=settings.get("recalibrate", False), prior_frames=settings["prior_frames"],
        rewind_tolerance=settings.get("rewind_tolerance"))
    report = learner.run()
    audits = [c.as_dict() for c in report.checks if c.kind == "audit"]
    thirds = {}  # on the trajectory the run kept; the coverage below counts the rewound audits too
    kept = [a for a in audits if not a.get("rewound")]
    for label, low, high in (("first_third", 0, 1 / 3), ("last_third", 2 / 3, 1.01)):
        chosen = [a for a in kept if low * settings["steps"] <= a["step"] < high * settings["steps"]]
        thirds[label] = {"n": len(chosen),
                         "force_mae": float(np.mean([a["force_mae"] for a in chosen])) if chosen else None,
                         "coverage_2sigma": float(np.mean([a["force_coverage"] for a in chosen])) if chosen else None}
    counts = report.counts
    return {"molecule": name, "kind": "md", "steps": report.steps, "audits": audits, **thirds,
            "coverage_2sigma": float(np.mean([a["force_coverage"] for a in audits])) if audits else None,
            "labels": counts["labelled"] + counts["verified"], "rounds": len(report.rounds),
            "rejected": sum(not c["accepted"] for c in report.model_choice), "confident": report.confident,
            "stopped": report.stopped, "ended": report.ended, "flags": len(report.flagged_steps),
            "rewinds": report.rewinds,
            "seconds": time.perf_counter() - start,
            "settings": settings}


def band_round(record: dict) -> NEBRound:
    """One round's record of a part as an :class:`NEBRound` (its checks, profile and flags)."""

    def check(key: str) -> Check | None:
        checked = record.get(key)
        if checked is None:
            return None
        if "reference_saddle" not in checked and checked.get("saddle_force") is not None:  # parts made before the field
            checked = {**checked, "reference_saddle": "not a saddle of the reference" not in checked["reason"]}
        return Check(**checked)

    return NEBRound(record["round"], PathProfile.from_dict(record["profile"]), record["converged"], 0,
                    record["n_flagged"], check("check"), band_check=check("band_check"), audit=check("audit"))


def final_band(part: dict) -> NEBRound:
    """The final band of a part as an :class:`NEBRound`."""
    return band_round(next(r for r in part["rounds"] if r["round"] == part["final_round"]))


def merge(paths: list[Path]) -> dict:
    loaded = [json.loads(p.read_text()) for p in sorted(paths)]
    stopped = [p for p in loaded if p.get("kind") != "md" and not p["rounds"]]
    parts = [p for p in loaded if p.get("kind") != "md" and p["rounds"]]
    md = [p for p in loaded if p.get("kind") == "md"]
    for p in parts:
        last = final_band(p)
        p["checks_off"], p["top_unconfirmed"] = last.verified_error, last.top_unconfirmed
        # the predicted sigma alone is the calibration test; the reported one holds the checks' own error
        p["covered_2sigma_predicted"] = bool(abs(p["after"]) <= 2 * p["after_std_predicted"])
        if "after_direct" in p:
            p["covered_2sigma_direct_predicted"] = bool(abs(p["after_direct"]) <= 2 * p["after_std_predicted"])
    before = np.array([abs(p["before"]) for p in parts]) if parts else np.zeros(1)
    after = np.array([abs(p["after"]) for p in parts]) if parts else np.zeros(1)
    summary = {
        "reactions": [p["reaction"] for p in parts],
        "median_abs_before": float(np.median(before)), "median_abs_after": float(np.median(after)),
        "covered_2sigma": int(sum(p["covered_2sigma"] for p in parts)),
        "covered_2sigma_predicted": int(sum(p["covered_2sigma_predicted"] for p in parts)),
        "worse_than_before": int(sum(a > b + 0.05 for a, b in zip(after, before))),
        "confident": int(sum(p["confident"] for p in parts)),
        "confident_and_within_tolerance": int(sum(p["confident"] and abs(p["after"]) <= 0.1 for p in parts)),
        "max_labels": int(max(p["labels"] for p in parts)) if parts else 0,
        **same_start_summary(parts),
        "check_calibration": check_calibration(parts),
        "parts": parts, "md": md, "stopped_before_a_band": stopped,
    }
    return summary


def same_start_summary(parts: list[dict]) -> dict:
    """The errors against the direct xTB NEB from the learner's own band (where it found a pass)."""
    judged = [p for p in parts if "after_direct" in p]
    if not judged:
        return {"same_start_reactions": []}
    before = np.array([abs(p["before_direct"]) for p in judged])
    after = np.array([abs(p["after_direct"]) for p in judged])
    return {"same_start_reactions": [p["reaction"] for p in judged],
            "median_abs_before_direct": float(np.median(before)), "median_abs_after_direct": float(np.median(after)),
            "covered_2sigma_direct": int(sum(p["covered_2sigma_direct"] for p in judged)),
            "covered_2sigma_direct_predicted": int(sum(p["covered_2sigma_direct_predicted"] for p in judged)),
            "worse_than_before_direct": int(sum(a > b + 0.05 for a, b in zip(after, before))),
            "confident_and_within_tolerance_direct": int(sum(p["confident"] and abs(p["after_direct"]) <= 0.1
                                                             for p in judged))}


def check_calibration(parts: list[dict]) -> list[dict]:
    """How often the reference lies inside the predicted 2 sigma on the learner's own checks.

    The checks are frames of the bands the model's own NEB made, checked
    before anything trained on them: the climbing image (picked by the
    band), the band's other possible maximum (highest energy + 2 sigma) and
    its least certain image; the last two are picked *for* a large sigma,
    which flatters their coverage. Rows: the pretrained model (round 0) and
    the fine-tuned ones; climbing images the reference confirms as a
    saddle, and all other checks. Checks without a reference label (NaN)
    are left out.
    """
    groups = {}
    for p in parts:
        for r in p["rounds"]:
            model = "pretrained" if r.get("model_round", r["round"]) == 0 else "fine-tuned"
            for c in band_round(r).checks:
                if np.isfinite(c.energy_error):
                    where = "top at a reference saddle" if c.reference_saddle else "other checks"
                    groups.setdefault((model, where), []).append(c)
    rows = []
    for (model, where), checks in sorted(groups.items(), key=lambda kv: (kv[0][0] != "pretrained", kv[0][1])):
        z = np.array([abs(c.energy_error) / c.energy_std for c in checks])
        rows.append({"model": model, "checks": where, "n": len(checks),
                     "energy_coverage_2sigma": float(np.mean(z <= 2)), "median_abs_z": float(np.median(z)),
                     "force_coverage_2sigma": float(np.mean([c.force_coverage for c in checks]))})
    return rows


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def unconfirmed(part: dict) -> str:
    """The table's note on a final band whose top xTB does not confirm as a saddle, with its one-sided interval."""
    if not part["top_unconfirmed"]:
        return ""
    interval = part.get("barrier_interval")
    return " (top not an xTB saddle" + ("" if interval is None else
                                         f"; the barrier's 2σ interval [{interval[0]:.2f}, {interval[1]:.2f}]") + ")"


HEADING = ["# `python benchmarks/learning_loop.py` (NEBLearner from the xTB endpoints, default model, xTB labels)",
           "",
           "On `MLIPALCalculator(distance_aware=False)` (the plain σ), the default σ when these records began; "
           "`--distance-aware` runs on the default `MLIPALCalculator()` are in their own section below."]
DISTANCE_HEADING = ["# The same on the default `MLIPALCalculator()` (distance-aware σ, `--distance-aware`)"]
TRUST_HEADING = ["# The same with a trust region (`--distance-aware --trust-region`: `NEBLearner(trust_radius=)` the "
                 "initial band's spacing between images)"]


def markdown(summary: dict, heading: list[str] = HEADING) -> str:
    lines = [*heading,
             "",
             "Barrier errors (model - reference, eV) against the stored xTB band and against the direct "
             "xTB NEB from the learner's own band (same start; '-' where it did not converge to an interior maximum). The 1σ after "
             "learning is the report's (`NEBReport.barrier`: the predicted σ and the checks' verified error in "
             "quadrature), then the predicted σ alone. 'In 2σ' is judged with the predicted σ, then with the "
             "reported interval (`NEBReport.barrier_interval`): the reported σ holds the error the checks found near the saddle, "
             "so it covers the reference almost by construction, and where xTB does not confirm the final band's top as "
             "a saddle the interval is one-sided, from the lowest barrier the endpoints allow up to the barrier + 2σ "
             "(such a band estimates xTB's barrier from above; xTB's own pass may lie anywhere below); only the "
             "predicted σ's coverage tests the calibration.",
             "",
             "| reaction | stored band: before | after (1σ; predicted) | in 2σ (predicted; reported) "
             "| same start: barrier | before | after | in 2σ (predicted; reported) "
             "| verified error (1σ) | checks show off by | confident | labels | direct NEB calls | bands (final) "
             "| models rejected | min |",
             "|---|---:|---:|:-:|---:|---:|---:|:-:|---:|---:|:-:|---:|---:|---:|---:|---:|"]
    for p in summary["parts"]:
        verified = "-" if p["verified_error"] is None else f"{p['verified_error']:+.2f} ({p['verified_std']:.2f})"
        direct = p.get("direct_neb", {})
        same = (f"{direct['barrier']:.2f} | {p['before_direct']:+.2f} | {p['after_direct']:+.2f} | "
                f"{yes(p['covered_2sigma_direct_predicted'])}; {yes(p['covered_2sigma_direct'])}") \
            if "after_direct" in p else "- | - | - | -"
        rejected = sum(not c["accepted"] for c in p["model_choice"])
        note = f" (stopped: {p['stopped'][:60]})" if p["stopped"] else ""
        lines.append(f"| {p['reaction']}{note} | {p['before']:+.2f} | {p['after']:+.2f} ({p['after_std']:.2f}; "
                     f"{p['after_std_predicted']:.2f}) | "
                     f"{yes(p['covered_2sigma_predicted'])}; {yes(p['covered_2sigma'])} | {same} | {verified} | "
                     f"{p['checks_off']:.2f}"
                     f"{unconfirmed(p)} | "
                     f"{'yes' if p['confident'] else 'no'} | {p['labels']} | {direct.get('calls', '-')} | "
                     f"{len(p['rounds'])} ({p['final_round']}) | {rejected} | {p['seconds'] / 60:.1f} |")
    s = summary
    lines += ["", f"Against the stored bands: median |barrier error| {s['median_abs_before']:.2f} eV before, "
              f"{s['median_abs_after']:.2f} eV after (target <= 0.10); reference inside the final 2σ: "
              f"{s['covered_2sigma_predicted']}/{len(s['parts'])} with the predicted σ "
              f"({s['covered_2sigma']}/{len(s['parts'])} with the reported one); worse than before (by > 0.05 eV): {s['worse_than_before']}; "
              f"confident: {s['confident']} ({s['confident_and_within_tolerance']} of them within 0.1 eV); most labels: "
              f"{s['max_labels']} (target <= 40)."]
    if s.get("same_start_reactions"):
        n = len(s["same_start_reactions"])
        lines += ["", f"Against the same-start xTB NEB ({n} reactions where it converged to an interior maximum): median |barrier error| "
                  f"{s['median_abs_before_direct']:.2f} eV before, {s['median_abs_after_direct']:.2f} eV after; "
                  f"inside the final 2σ: {s['covered_2sigma_direct_predicted']}/{n} with the predicted σ "
                  f"({s['covered_2sigma_direct']}/{n} with the reported one); worse than before: "
                  f"{s['worse_than_before_direct']}; confident and within 0.1 eV: "
                  f"{s['confident_and_within_tolerance_direct']}."]
    if s.get("check_calibration"):
        lines += ["", "The predicted σ on the learner's own checks (frames of the model's own bands, checked before "
                  "anything trained on them; the climbing image is picked by the band, the other checks partly "
                  "for a large σ, which flatters them; energy: the check's barrier or energy difference to the "
                  "first endpoint; forces: the mean over checks of the share of components inside 2σ; "
                  "calibrated would be 0.95):", "",
                  "| model | checks | n | energy in 2σ | median abs(error)/σ | force components in 2σ (mean share) |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {c['model']} | {c['checks']} | {c['n']} | {c['energy_coverage_2sigma']:.2f} | "
                  f"{c['median_abs_z']:.2f} | {c['force_coverage_2sigma']:.2f} |" for c in s["check_calibration"]]
    for p in summary["stopped_before_a_band"]:
        lines.append(f"\n{p['reaction']}: stopped before a band could be checked ({p['stopped']}).")
    runaways = [(p["reaction"], r) for p in summary["parts"] for r in p["rounds"] if r.get("runaway")]
    if runaways:
        lines += ["", "Guard stops the learner learned from (an energy runaway the reference puts below `max_energy` "
                  "or the model is off by more than its 2σ at, in energy or forces; a geometric stop the model's "
                  "steps led to, the model failing its check where the band was last judged; labelled, and the loop "
                  "went on):",
                  ""] + [f"- {name}, round {r['round']}: {r['runaway']}" for name, r in runaways]
    if summary["md"]:
        lines += [""] + md_table(summary["md"])
    return "\n".join(lines) + "\n"


def md_table(runs: list[dict]) -> list[str]:
    """Markdown lines: the MD learner per molecule (audited force error and coverage, labels, outcome), then why
    each run that is not confident ended."""
    settings = runs[0]["settings"]

    def number(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"MD learner ({settings['temperature_K']:g} K, {settings['steps']} steps, seed "
             f"{settings.get('seed', 'none')}{' unless the row names another' if len({m['settings'].get('seed') for m in runs}) > 1 else ''}"
             "; audited frames: the forces that drove the dynamics):", "",
             "| molecule | steps | audits | force MAE first / last third eV/A | 2σ coverage (last third) | "
             "labels | rounds (rejected) | flags | confident | min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|"]
    for m in runs:
        first, last = m["first_third"], m["last_third"]
        label = run_label(m)
        lines.append(f"| {label}{' (stopped)' if m['stopped'] else ''} | {m['steps']} | "
                     f"{len(m['audits'])} | {number(first['force_mae'])} / {number(last['force_mae'])} | "
                     f"{number(m['coverage_2sigma'])} ({number(last['coverage_2sigma'])}) | {m['labels']} | "
                     f"{m['rounds']} ({m['rejected']}) | {m['flags']} | {'yes' if m['confident'] else 'no'} | "
                     f"{m['seconds'] / 60:.1f} |")
    unverified = [m for m in runs if not m["confident"]]
    if unverified:
        lines += ["", "Why the MD runs that are not confident ended:", ""]
        lines += [f"- {run_label(m)}: " + (f"stopped: {m['stopped']}" if m["stopped"]
                                           else f"ended: {m.get('ended') or 'not recorded'}") for m in unverified]
    return lines


def md_tag(settings: dict) -> str:
    """The file-name tail of an MD part: its seed and force tolerance where they are not the defaults,
    ``_recal`` where audits rescale sigma (the parts before they did have no tail), ``_prior<P>`` where
    their prior weight is not the old 20 frames, ``_rewind<T>`` where holes send the MD back, ``_apart``
    where flags stayed out of the reported sigma and ``_elin`` where the audits moved the energy's sigma
    linearly."""
    seed, tolerance, prior = settings["seed"], settings["force_tolerance"], settings["prior_frames"]
    rewind = settings.get("rewind_tolerance")
    return ((f"_seed{seed}" if seed else "") + (f"_ftol{tolerance:g}" if tolerance is not None else "")
            + ("_recal" if settings["recalibrate"] else "")
            + (f"_prior{prior:g}" if settings["recalibrate"] and prior != OLD_PRIOR_FRAMES else "")
            + (f"_rewind{rewind:g}" if rewind is not None else "") + ("_apart" if settings.get("flags_apart") else "")
            + ("_elin" if energy_rescale(settings) == "linear" else ""))


def energy_rescale(settings: dict) -> str:
    """How the audits moved the energy's sigma in an MD record: ``"linear"`` or ``"log"`` (records before the key)."""
    return settings.get("energy_rescale", "log")


def prior_frames(run: dict) -> float:
    """The audits' prior weight an MD record ran with."""
    return run["settings"].get("prior_frames", OLD_PRIOR_FRAMES)


def run_label(run: dict) -> str:
    """An MD run's molecule, with its σ and its seed where they are not the table's."""
    notes = ["distance-aware σ"] * bool(run.get("distance_aware"))
    tolerance = run["settings"].get("force_tolerance")
    notes += [] if tolerance is None else [f"force_tolerance {tolerance:g} eV/A"]
    if run["settings"].get("recalibrate"):
        prior = prior_frames(run)
        notes.append("audits rescale σ" + (f", prior {prior:g} frames" if prior != OLD_PRIOR_FRAMES else ""))
    rewind = run["settings"].get("rewind_tolerance")
    if rewind is not None:
        rewinds = len(run.get("rewinds", []))
        notes.append(f"holes > {rewind:g} eV rewind" + (f": {rewinds} rewind{'s' * (rewinds != 1)}" if rewinds else ""))
    notes += ["flags in σ"] * (not run["settings"].get("flags_apart"))
    notes += ["energy σ rescaled linearly"] * (energy_rescale(run["settings"]) == "linear")
    seed = run["settings"].get("seed", 0)
    notes += [f"seed {seed}"] * (seed != 0)
    return run["molecule"] + (f" ({', '.join(notes)})" if notes else "")


def plot(summary: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    parts = summary["parts"]
    fig, axes = plt.subplots(2, (len(parts) + 1) // 2, figsize=(4.2 * ((len(parts) + 1) // 2), 7), squeeze=False)
    for ax, p in zip(axes.ravel(), parts):
        ref = p["reference_profile"]
        ax.plot(np.array(ref["s"]) / ref["s"][-1], ref["energy"], "k-", lw=2, label="xTB NEB (stored)")
        if "profile" in p.get("direct_neb", {}):
            same = p["direct_neb"]["profile"]
            ax.plot(np.array(same["s"]) / same["s"][-1], same["energy"], "k--", lw=1.5, label="xTB NEB (same start)")
        for r in p["rounds"]:
            prof = PathProfile.from_dict(r["profile"])
            s = prof.s / max(prof.s[-1], 1e-9)
            ax.errorbar(s, prof.energy, yerr=2 * prof.energy_std, marker="o", ms=3, capsize=2,
                        label=f"round {r['round']}")
        ax.set_title(p["reaction"], fontsize=9)
        ax.set_xlabel("path (normalised)")
        ax.set_ylabel("E - E(reactant) / eV")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(parts):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reaction", help="run one reaction, write results/learning_loop/<reaction>.json")
    parser.add_argument("--md", help="run the MD learner from this reaction's reactant, write md_<name>.json")
    parser.add_argument("--merge", action="store_true", help="merge the per-reaction JSON files")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on one reaction (for tests)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results)")
    parser.add_argument("--band-start", choices=["initial", "previous"], default="initial",
                        help="where each round's band starts (NEBLearner's band_start)")
    parser.add_argument("--reuse-direct", action="store_true",
                        help="take the direct xTB NEB from the reaction's earlier part when it ran from the same "
                             "band (same images and fmax: the IDPP band is deterministic) instead of rerunning it")
    parser.add_argument("--distance-aware", action="store_true",
                        help="on the default MLIPALCalculator() (distance-aware; without: distance_aware=False): "
                             "parts in learning_loop/distance_aware/, merged into their own section")
    parser.add_argument("--seed", type=int, default=0,
                        help="the MD learner's thermostat seed (another seed: another trajectory, file "
                             "md_<name>_seed<N>.json)")
    parser.add_argument("--force-tolerance", type=float, default=None,
                        help="the MD learner's force_tolerance (eV/A; file md_<name>[_seed<N>]_ftol<X>.json)")
    parser.add_argument("--no-recalibrate", action="store_true",
                        help="the MD learner's sigma moves only at a swap, as before audits rescaled it (file "
                             "name without the _recal tail)")
    parser.add_argument("--trust-region", action="store_true",
                        help="NEBLearner(trust_radius=) the initial band's spacing between images: parts in "
                             "learning_loop/trust_region/ (with --distance-aware), merged into their own section")
    args = parser.parse_args()
    if args.trust_region and not args.distance_aware:
        parser.error("--trust-region runs on the default calculator: give --distance-aware too")
    out = args.out or RESULTS
    default_parts = out / "learning_loop"
    parts = default_parts / DISTANCE_PARTS if args.distance_aware else default_parts
    parts = default_parts / TRUST_PARTS if args.trust_region else parts
    parts.mkdir(parents=True, exist_ok=True)
    names = sorted(reference_bands())
    if args.smoke:
        names, settings = ["formaldehyde_to_CO_H2"], SMOKE
    else:
        settings = SETTINGS
    settings = {**settings, "band_start": args.band_start, "distance_aware": args.distance_aware,
                "trust_region": args.trust_region}
    if args.md or (not args.merge and not args.reaction):
        for name in ([args.md] if args.md else MD_MOLECULES[:1] if args.smoke else MD_MOLECULES):
            workdir = Path(tempfile.mkdtemp(prefix=f"mlipal_md_{name}_"))
            try:
                md_settings = {**(MD_SMOKE if args.smoke else MD_SETTINGS), "seed": args.seed,
                               "force_tolerance": args.force_tolerance, "recalibrate": not args.no_recalibrate}
                result = run_md(name, md_settings, workdir, distance_aware=args.distance_aware)
                result["distance_aware"] = args.distance_aware
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            tag = md_tag(md_settings)
            (parts / f"md_{name}{tag}.json").write_text(json.dumps(result, indent=1, default=float))
            print(f"MD {name}: audits {len(result['audits'])}, last-third force MAE "
                  f"{result['last_third']['force_mae']}, confident {result['confident']}", flush=True)
        if args.md:
            return
    if not args.merge:
        for name in ([args.reaction] if args.reaction else names):
            if name not in names:
                sys.exit(f"unknown reaction {name!r}; choose from {', '.join(names)}")
            workdir = Path(tempfile.mkdtemp(prefix=f"mlipal_loop_{name}_"))
            try:
                reuse = args.reuse_direct and not args.smoke
                earlier = earlier_direct_neb(default_parts / f"{name}.json", settings) if reuse else None
                result = run_reaction(name, settings, workdir, direct=not args.smoke, same_start=earlier)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            (parts / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
            if result["rounds"]:
                print(f"{name}: before {result['before']:+.2f} eV, after {result['after']:+.2f} ± "
                      f"{result['after_std']:.2f} eV, confident {result['confident']}, labels {result['labels']}, "
                      f"{result['seconds']:.0f} s", flush=True)
            else:
                print(f"{name}: stopped before its first band was checked: {result['stopped']}", flush=True)
        if args.reaction:
            return
    summary = merge(list(default_parts.glob("*.json")))
    text = markdown(summary)
    distance_parts = list((default_parts / DISTANCE_PARTS).glob("*.json"))
    if distance_parts:
        summary[DISTANCE_PARTS] = merge(distance_parts)
        text += "\n\n" + markdown(summary[DISTANCE_PARTS], DISTANCE_HEADING)
    trust_parts = list((default_parts / TRUST_PARTS).glob("*.json"))
    if trust_parts:
        summary[TRUST_PARTS] = merge(trust_parts)
        text += "\n\n" + markdown(summary[TRUST_PARTS], TRUST_HEADING)
    (out / "learning_loop.json").write_text(json.dumps(summary, indent=1, default=float))
    (out / "learning_loop.md").write_text(text)
    if summary["parts"]:
        plot(summary, out / "learning_loop.png")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
