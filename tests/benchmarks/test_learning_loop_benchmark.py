"""benchmarks/learning_loop.py --smoke: the NEB and MD learners end to end on xTB, and the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_checked_rounds_and_audits(tmp_path):
    pytest.importorskip("tblite")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_loop.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "learning_loop.json").read_text())
    (neb,), (md,) = summary["parts"], summary["md"]
    assert neb["rounds"][0]["check"]["kind"] == "climbing_image"
    assert neb["labels"] >= 3 and neb["before"] == pytest.approx(neb["rounds"][0]["barrier_error"])
    low, high = neb["barrier_interval"]
    assert neb["covered_2sigma"] == (low <= neb["reference_barrier"] <= high)
    barrier = neb["reference_barrier"] + neb["after"]
    assert high == pytest.approx(barrier + 2 * neb["after_std"])  # one-sided only below, where the top is unconfirmed
    if not neb["top_unconfirmed"]:
        assert low == pytest.approx(max(0.0, barrier - 2 * neb["after_std"]))
    assert md["audits"] and all(a["kind"] == "audit" for a in md["audits"])
    assert md["confident"] == all(a["passed"] for a in md["audits"] if a["round"] == md["audits"][-1]["round"])
    assert "| formaldehyde_to_CO_H2" in (tmp_path / "learning_loop.md").read_text()
    assert (tmp_path / "learning_loop.png").stat().st_size > 10_000


def test_a_direct_neb_counts_as_the_same_start_barrier_only_with_an_interior_maximum():
    """A band that converged onto the product's plateau (highest image an endpoint) found no saddle."""
    from .conftest import load_benchmark

    found_a_pass = load_benchmark("learning_loop").found_a_pass
    saddle = {"converged": True, "profile": {"energy": [0.0, 0.8, 2.1, 0.9, 0.5]}}
    plateau = {"converged": True, "profile": {"energy": [0.0, 0.3, 1.8, 1.8, 1.83]}}
    assert found_a_pass(saddle) and not found_a_pass(plateau)
    assert not found_a_pass({**saddle, "converged": False})
