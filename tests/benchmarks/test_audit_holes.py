"""benchmarks/audit_holes.py: the failed audits' energy errors, their widest gap and the default in it."""

import json

from .conftest import load_benchmark


def audit(error: float, passed: bool, step: int = 5) -> dict:
    return {"energy_error": error, "energy_std": 0.1, "passed": passed, "step": step}


def test_the_widest_gap_of_the_failed_audits_and_records_read_from_a_folder(tmp_path):
    """Passed audits and unlabelled ones (NaN) are no part of the gap; a NEB record and a broken file are
    skipped; the gap is the widest ratio between failed errors above 0.1 eV."""
    holes = load_benchmark("audit_holes")
    (tmp_path / "archive").mkdir()
    audits = [audit(-0.2, False), audit(0.3, False), audit(9.0, True), audit(float("nan"), False)]
    (tmp_path / "md_a.json").write_text(json.dumps({"kind": "md", "audits": audits}))
    (tmp_path / "archive" / "md_b.json").write_text(json.dumps({"kind": "md", "audits": [audit(-4.0, False, 10)]}))
    (tmp_path / "neb.json").write_text(json.dumps({"kind": "neb", "audits": [audit(50.0, False)]}))
    (tmp_path / "broken.json").write_text("{")
    records = holes.md_records(tmp_path)
    assert sorted(records) == ["archive/md_b.json", "md_a.json"]
    rows = holes.audit_errors(records)
    assert [row["error"] for row in rows] == [9.0, 4.0, 0.3, 0.2]  # sorted, absolute, NaN left out
    failed = [row for row in rows if not row["passed"]]
    assert holes.largest_gap(failed) == (0.3, 4.0)
    assert holes.largest_gap(failed[:1]) != holes.largest_gap(failed[:1])  # NaN: one error has no gap
