"""The active-learning benchmark's pipeline on a tiny budget (the numbers are not checked, the bookkeeping is)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from .conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "active_learning.py"
STRATEGIES = ["random", "committee", "fixed", "activation", "ntk", "force_ntk", "ef_ntk"]


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("active_learning")


def test_labels_to_reach_interpolates_between_rounds(benchmark):
    curve = [{"labels": 10, "e": 4.0}, {"labels": 20, "e": 2.0}, {"labels": 30, "e": 1.0}]
    assert benchmark.labels_to_reach(curve, "e", 1.5) == pytest.approx(25.0)
    assert benchmark.labels_to_reach(curve, "e", 5.0) == 10.0
    assert math.isinf(benchmark.labels_to_reach(curve, "e", 0.5))


def test_a_curve_is_converged_when_its_last_gain_is_within_the_seed_spread(benchmark):
    assert benchmark.converged([0.30, 0.25, 0.24], [0.03, 0.02, 0.02])["converged"]
    assert not benchmark.converged([0.30, 0.25, 0.20], [0.03, 0.02, 0.02])["converged"]
    assert not benchmark.converged([0.30, 0.20, 0.25], [0.03, 0.02, 0.02])["converged"]  # rising again: unstable
    assert benchmark.converged([0.30, 0.25, 0.20], [0.03, 0.02, 0.02])["last_change"] == pytest.approx(-0.05)


def test_parts_without_shared_runs_merge_and_overlapping_or_different_ones_do_not(benchmark):
    def part(seeds, epochs=40, calibration=None, strategy="random", ends=()):
        runs = [{"strategy": strategy, "seed": s, "scenario": "full", "curve": []} for s in seeds if strategy]
        return {"config": {"epochs": epochs}, "seeds": seeds, "runs": runs, "calibration": calibration or {},
                "seconds": 10.0, "all_labelled": [{"seed": s, "scenario": "full"} for s in ends]}

    merged = benchmark.merge([part([0, 1], calibration={"ntk": 1}), part([2])])
    assert merged["seeds"] == [0, 1, 2] and [r["seed"] for r in merged["runs"]] == [0, 1, 2]
    assert merged["calibration"] == {"ntk": 1} and merged["seconds"] == 20.0
    # the whole-pool references of the same seeds, run on their own, join the runs
    merged = benchmark.merge([part([0, 1]), part([0, 1], strategy=None, ends=[0, 1])])
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2 and len(merged["all_labelled"]) == 2
    with pytest.raises(ValueError, match="share runs"):
        benchmark.merge([part([0, 1]), part([1])])
    with pytest.raises(ValueError, match="share whole-pool references"):
        benchmark.merge([part([0], ends=[0]), part([1], ends=[0])])
    with pytest.raises(ValueError, match="different settings"):
        benchmark.merge([part([0]), part([1], epochs=20)])


def test_the_shifted_pool_lacks_the_transition_states_of_half_the_reactions(benchmark):
    pool = [Atoms("H2", info={"reaction": f"r{k % 4}", "ts_region": k % 2 == 0}) for k in range(16)]
    kept = benchmark.shifted(pool, seed=3)
    dropped = {pool[i].info["reaction"] for i in set(range(16)) - set(kept.tolist())}
    assert len(dropped) == 2  # half of the 4 reactions
    assert all(pool[i].info["ts_region"] for i in set(range(16)) - set(kept.tolist()))
    assert {pool[i].info["reaction"] for i in kept if pool[i].info["ts_region"]}.isdisjoint(dropped)


def test_smoke_run_writes_curves_calibration_plots_and_table(benchmark, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--seeds", "0", "--workers", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "active_learning.json").read_text())
    runs = {(r["scenario"], r["strategy"]): r for r in results["runs"]}
    assert set(runs) == {(scenario, s) for scenario in ("full", "shifted") for s in STRATEGIES}
    expected = np.cumsum([results["config"]["initial"]] + results["config"]["batches"]).tolist()
    for run in runs.values():
        assert [point["labels"] for point in run["curve"]] == expected  # one point per round, growing batches
        assert len(set(run["picked"])) == len(run["picked"])  # never the same structure twice
        assert all(point["energy_mae"] > 0 and point["forces_mae"] > 0 for point in run["curve"])
    pool = benchmark.reactive_splits(results["config"]["limit"])["pool"]
    kept = set(benchmark.shifted(pool, 0).tolist())
    assert all(set(runs[("shifted", s)]["picked"]) <= kept for s in STRATEGIES)
    n_initial, n_pool = results["config"]["initial"], len(pool)
    ends = {end["scenario"]: end for end in results["all_labelled"]}
    assert ends["full"]["labels"] == n_initial + n_pool and ends["shifted"]["labels"] == n_initial + len(kept)
    assert "whole pool labelled" in (tmp_path / "active_learning.md").read_text()
    first = {run["curve"][0]["energy_mae"] for run in runs.values()}
    assert len(first) == 1  # every strategy starts from the same round-0 model
    assert set(results["calibration"]) == {"activation", "ntk", "force_ntk", "ef_ntk"}
    for name in ("active_learning_curves.png", "active_learning_calibration.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "active_learning.md").read_text()
    assert all(f"| {s} |" in table for s in STRATEGIES)
