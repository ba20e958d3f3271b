"""benchmarks/audit_holes.py: the failed audits' energy errors, their widest gap and the default in it."""

import json

import pytest

from .conftest import load_benchmark


def audit(error: float, passed: bool, step: int = 5) -> dict:
    return {"energy_error": error, "energy_std": 0.1, "passed": passed, "step": step}


def test_the_widest_gap_of_the_failed_audits_and_records_read_from_a_folder(tmp_path):
    """Passed audits and unlabelled ones (NaN) are no part of the gap; a NEB record and a broken file are
    skipped; the gap is the widest ratio between failed errors above 0.1 eV."""
    holes = load_benchmark("audit_holes")
    (tmp_path / "archive").mkdir()
    audits = [audit(-0.2, False), audit(0.3, False), audit(9.0, True), audit(float("nan"), False)]
    (tmp_path / "md_a.json").write_text(json.dumps({"kind": "md", "molecule": "a", "audits": audits}))
    (tmp_path / "archive" / "md_b.json").write_text(json.dumps({"kind": "md", "molecule": "b",
                                                                "audits": [audit(-4.0, False, 10)]}))
    (tmp_path / "neb.json").write_text(json.dumps({"kind": "neb", "audits": [audit(50.0, False)]}))
    (tmp_path / "broken.json").write_text("{")
    records = holes.md_records(tmp_path)
    assert sorted(records) == ["archive/md_b.json", "md_a.json"]
    rows = holes.audit_errors(records)
    assert [row["error"] for row in rows] == [9.0, 4.0, 0.3, 0.2]  # sorted, absolute, NaN left out
    failed = [row for row in rows if not row["passed"]]
    assert holes.largest_gap(failed) == (0.3, 4.0)
    assert holes.largest_gap(failed[:1]) != holes.largest_gap(failed[:1])  # NaN: one error has no gap


def test_leave_one_molecule_out_reads_the_tolerance_off_the_others():
    """Each held-out molecule gets the geometric midpoint of the others' widest gap; a molecule whose hole the
    others' tolerance misses disagrees with the default, one with no failed audit has no fold."""
    holes = load_benchmark("audit_holes")
    default = holes.REWIND_TOLERANCE

    def record(molecule, *errors):
        return {"kind": "md", "molecule": molecule, "audits": [audit(e, False) for e in errors]}

    records = {"x": record("x", 0.2, 0.3, 4.0 * default), "y": record("y", 0.25, 5.0 * default),
               "z": record("z", 0.5 * default), "w": {"kind": "md", "molecule": "w", "audits": [audit(9.0, True)]}}
    folds = {f["molecule"]: f for f in holes.held_out(records)}
    assert sorted(folds) == ["x", "y", "z"]
    assert folds["x"]["gap"] == (0.5 * default, 5.0 * default)
    assert folds["x"]["tolerance"] == pytest.approx((0.5 * default * 5.0 * default) ** 0.5)
    assert (folds["x"]["holes"], folds["y"]["holes"], folds["z"]["holes"]) == (1, 1, 0)
    assert all(f["agrees"] for f in folds.values())
    records["z"] = record("z", 1.05 * default)  # the others' gap (0.3 to 4x) puts the tolerance at 1.1x
    folds = {f["molecule"]: f for f in holes.held_out(records)}
    assert folds["z"]["tolerance"] == pytest.approx((0.3 * 4.0 * default) ** 0.5)
    assert folds["z"]["holes"] == 0 and not folds["z"]["agrees"]  # the default calls 1.05x a hole
