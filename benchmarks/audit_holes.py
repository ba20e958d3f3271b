"""How far off the MD learner's failed audits were: where a hole in the model's surface begins.

Reads every MD record in ``benchmarks/results`` (the parts of
``learning_loop.py`` and ``learning_loop_heldout.py``, every seed and
setting, archive included) and sorts the audits by how far the model's
energy was off the reference's. The failed audits fall into two groups
with a gap between them; ``REWIND_TOLERANCE``
(:mod:`ase_mlipal.learning.md_learner`) must lie in that gap, and the
script fails (exit 1) if it does not. Rewound audits count like the
others (each was drawn and checked). Leave one molecule out: the gap read
off the other molecules' records, its geometric midpoint as the tolerance,
and whether that sorts the held-out molecule's failed audits (hole or not)
as the default does. Writes ``results/audit_holes.md``;
seconds to run.

    python benchmarks/audit_holes.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ase_mlipal.learning.md_learner import REWIND_TOLERANCE

RESULTS = Path(__file__).parent / "results"
SHOWN = 8  # the largest errors listed


def md_records(root: Path = RESULTS) -> dict[str, dict]:
    """Every JSON record under ``root`` with MD audits, by path relative to ``root``."""
    records = {}
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and record.get("kind") == "md" and record.get("audits"):
            records[str(path.relative_to(root))] = record
    return records


def audit_errors(records: dict[str, dict]) -> list[dict]:
    """One row per labelled audit: record, step, |energy error| (eV), its sigma and whether it passed."""
    rows = []
    for name, record in records.items():
        for audit in record["audits"]:
            error = audit["energy_error"]
            if error is None or not np.isfinite(error):
                continue  # no reference label
            rows.append({"record": name, "step": audit["step"], "error": abs(error), "std": audit["energy_std"],
                         "passed": audit["passed"], "rewound": audit.get("rewound", False)})
    return sorted(rows, key=lambda row: -row["error"])


def largest_gap(failed: list[dict]) -> tuple[float, float]:
    """The widest gap (in log error) between the failed audits' energy errors above 0.1 eV: (below, above)."""
    errors = sorted({row["error"] for row in failed if row["error"] > 0.1})
    if len(errors) < 2:
        return float("nan"), float("nan")
    ratios = [b / a for a, b in zip(errors, errors[1:])]
    k = int(np.argmax(ratios))
    return errors[k], errors[k + 1]


def held_out(records: dict[str, dict]) -> list[dict]:
    """Per molecule with a failed audit: the tolerance the other molecules' gap gives (its geometric
    midpoint), how many of its failed audits that calls holes, and whether the default calls the same ones."""
    molecules = sorted({record["molecule"] for record in records.values()})
    results = []
    for molecule in molecules:
        own = [r for r in audit_errors({k: v for k, v in records.items() if v["molecule"] == molecule})
               if not r["passed"]]
        if not own:
            continue
        others = audit_errors({k: v for k, v in records.items() if v["molecule"] != molecule})
        below, above = largest_gap([r for r in others if not r["passed"]])
        tolerance = float(np.sqrt(below * above))
        results.append({"molecule": molecule, "gap": (below, above), "tolerance": tolerance, "failed": len(own),
                        "holes": sum(r["error"] > tolerance for r in own),
                        "agrees": all((r["error"] > tolerance) == (r["error"] > REWIND_TOLERANCE) for r in own)})
    return results


def main() -> int:
    records = md_records()
    rows = audit_errors(records)
    failed = [row for row in rows if not row["passed"]]
    below, above = largest_gap(failed)
    holes = [row for row in failed if row["error"] >= above]
    passed_max = max((row["error"] for row in rows if row["passed"]), default=float("nan"))
    inside = below < REWIND_TOLERANCE < above
    lines = ["# `python benchmarks/audit_holes.py`: how far off the failed MD audits were", "",
             f"{len(rows)} labelled audits in {len(records)} MD records, {len(failed)} failed; the largest passed "
             f"audit was {passed_max:.2f} eV off.", "",
             f"The widest gap between failed audits: {below:.2f} eV to {above:.2f} eV. "
             f"{len(holes)} failed audits lie above it (holes), at energy sigma "
             f"{min(r['std'] for r in holes):.2f}-{max(r['std'] for r in holes):.2f} eV. "
             f"REWIND_TOLERANCE = {REWIND_TOLERANCE:g} eV {'lies' if inside else 'does NOT lie'} in the gap.", "",
             "| record | step | energy error eV | sigma eV | passed | rewound |", "|---|---:|---:|---:|:-:|:-:|"]
    lines += [f"| {r['record']} | {r['step']} | {r['error']:.2f} | {r['std']:.3f} | {'yes' if r['passed'] else 'no'} | "
              f"{'yes' if r['rewound'] else 'no'} |" for r in failed[:SHOWN]]
    folds = held_out(records)
    lines += ["", f"Leave one molecule out (the tolerance from the other molecules' gap, its geometric midpoint): "
              f"it sorts the held-out failed audits as {REWIND_TOLERANCE:g} eV does for "
              f"{sum(f['agrees'] for f in folds)} of {len(folds)} molecules.", "",
              "| held out | gap of the others eV | tolerance eV | failed audits | holes |", "|---|---|---:|---:|---:|"]
    lines += [f"| {f['molecule']} | {f['gap'][0]:.2f}-{f['gap'][1]:.2f} | {f['tolerance']:.2f} | {f['failed']} | "
              f"{f['holes']} |" for f in folds]
    text = "\n".join(lines) + "\n"
    (RESULTS / "audit_holes.md").write_text(text)
    print(text)
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
