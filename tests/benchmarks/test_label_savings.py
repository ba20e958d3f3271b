"""The label-savings summary: targets, reductions and bootstrap intervals on curves whose answer is known."""

import json

import numpy as np
import pytest

from .conftest import load_benchmark

LABELS = [40, 60, 90, 135, 200, 300, 450, 675, 1000]


@pytest.fixture(scope="module")
def savings():
    return load_benchmark("label_savings")


def curve(scale: float, labels=LABELS, noise: float = 0.0, seed: int = 0) -> list[dict]:
    """A power-law learning curve ``scale * labels^-0.5`` (the same for energy and forces)."""
    rng = np.random.default_rng(seed)
    return [{"labels": n, "energy_mae": scale * n ** -0.5 * (1 + noise * rng.normal()),
             "forces_mae": scale * n ** -0.5 * (1 + noise * rng.normal())} for n in labels]


def test_a_curve_twice_as_data_efficient_saves_half_the_labels(savings):
    # error(n) = c / sqrt(n): a strategy with c / sqrt(2) reaches any error with half the labels
    curves = {("random", s): curve(1.0, noise=0.02, seed=s) for s in range(3)}
    curves.update({("ntk", s): curve(2 ** -0.5, noise=0.02, seed=10 + s) for s in range(3)})
    result = savings.savings(curves, LABELS, resamples=300)
    assert [t["labels"] for t in result["forces_mae"]["targets"]] == [135, 300, 1000]
    row = result["forces_mae"]["strategies"]["ntk"]["vs_random"]
    assert row["mean"] == pytest.approx(50.0, abs=6.0) and row["seeds"] == 3
    low, high = row["interval_95"]
    assert low <= row["mean"] <= high and high - low < 20.0
    assert "vs_committee" not in result["forces_mae"]["strategies"]["ntk"]


def test_a_target_never_reached_counts_at_the_budget_and_parts_must_match(savings, tmp_path):
    curves = {("random", 0): curve(1.0), ("committee", 0): curve(1.5)}  # committee never reaches random's final
    row = savings.savings(curves, LABELS, resamples=10)["energy_mae"]["strategies"]["committee"]
    assert row["reached"] < 3 and row["labels_needed"][-1] == 1000.0
    assert row["vs_random"]["mean"] < 0  # more labels than random, never overstated as a saving
    part = {"runs": [{"strategy": "random", "seed": 0, "scenario": "full", "curve": curve(1.0)}]}
    other = {"runs": [{"strategy": "ntk", "seed": 0, "scenario": "full", "curve": curve(1.0, labels=LABELS[:-1])}]}
    (tmp_path / "a.json").write_text(json.dumps(part))
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="rounds at"):
        savings.load_runs([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(ValueError, match="two parts"):
        savings.load_runs([tmp_path / "a.json", tmp_path / "a.json"])
