"""How far off the MD learner's failed audits were: where a hole in the model's surface begins.

Reads every MD record in ``benchmarks/results`` (the parts of
``learning_loop.py`` and ``learning_loop_heldout.py``, every seed and
setting, archive included) and sorts the audits by how far the model's
energy was off the reference's. The failed audits fall into two groups
with a gap between them; ``REWIND_TOLERANCE``
(:mod:`ase_mlipal.learning.md_learner`) must lie in that gap, and the
script fails (exit 1) if it does not. Rewound audits count like the
others (each was drawn and checked). Writes ``results/audit_holes.md``;
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
    text = "\n".join(lines) + "\n"
    (RESULTS / "audit_holes.md").write_text(text)
    print(text)
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
