"""benchmarks/audit_rescale.py: the replay of audits on a known distribution, and the smoke run's bookkeeping."""

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import BENCHMARKS, load_benchmark


def synthetic_group(true_factor: float, frames: int = 40, components: int = 27, seed: int = 0) -> dict:
    """Residuals drawn from N(0, true_factor * variance): a calibration ``true_factor`` too small on sigma^2."""
    rng = np.random.default_rng(seed)
    force_var = [rng.uniform(0.01, 0.1, components) for _ in range(frames)]
    energy_var = rng.uniform(0.01, 0.1, frames)
    return {"forces": [np.sqrt(true_factor * v) * rng.standard_normal(components) for v in force_var],
            "force_var": force_var, "energy": np.sqrt(true_factor * energy_var) * rng.standard_normal(frames),
            "energy_var": energy_var}


def test_replay_covers_a_known_distribution():
    """A calibrated sigma covers 95% at 2 sigma whatever the prior; sigma 2x too small covers P(|z| < 1) = 68% when
    nothing rescales it, and more the less weight the calibration has (each audit checked on the ones before)."""
    bench = load_benchmark("audit_rescale")
    calibrated = bench.replay(synthetic_group(1.0), np.inf, audits=15, orders=50)
    assert calibrated["force_coverage_2sigma"] == pytest.approx(0.954, abs=0.02)
    too_small = synthetic_group(4.0)
    coverage = [bench.replay(too_small, p, audits=15, orders=50)["force_coverage_2sigma"] for p in (0.0, 2.0, 20.0,
                                                                                                   np.inf)]
    assert coverage[3] == pytest.approx(0.683, abs=0.03)
    assert coverage[0] > coverage[1] > coverage[2] > coverage[3]
    assert coverage[0] > 0.9  # after the first audit the factor is the audits' own (about 4)
    nll = [bench.replay(too_small, p, audits=15, orders=50)["force_nll"] for p in (0.0, np.inf)]
    assert nll[0] < nll[1]


def test_smoke_run_chooses_the_prior_with_each_group_held_out(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "audit_rescale.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=BENCHMARKS)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "audit_rescale.json").read_text())
    groups = set(result["frames"])
    assert {g for g in groups if g.startswith("reaction:")} >= {"reaction:HCN_to_HNC",
                                                               "reaction:formic_acid_to_dihydroxycarbene"}
    assert set(result["chosen"]) == groups == set(result["scores"])
    for group, scores in result["scores"].items():
        assert set(scores) == set(result["priors"])
        assert all(0 <= s["force_coverage_2sigma"] <= 1 for s in scores.values())
        assert float(result["chosen"][group]["prior"]) in [float(p) for p in result["priors"]]
    assert (tmp_path / "audit_rescale.png").stat().st_size > 0
    assert "Chosen with the group held out" in (tmp_path / "audit_rescale.md").read_text()


def test_later_choice_compares_the_prior_chosen_before_with_the_best_on_new_groups():
    """Earlier groups calibrated: they choose a large prior (trust the calibration); new groups with sigma 2x too
    small do best with a small one (trust the audits: 5 at most); both are reported, with the new groups' summary."""
    bench = load_benchmark("audit_rescale")

    def scored(true_factor: float, seeds: range) -> dict:
        return {f"reaction:r{seed}": {str(p): bench.replay(synthetic_group(true_factor, seed=seed), p, audits=15,
                                                           orders=20) for p in bench.PRIORS} for seed in seeds}

    result = bench.later_choice(scored(1.0, range(2)), scored(4.0, range(2, 4)))
    assert result["chosen_on_earlier_groups"] >= 20.0
    assert result["best_on_later"] <= 5.0 < result["chosen_on_earlier_groups"]
    assert set(result["scores"]) == {"reaction:r2", "reaction:r3"}
    inf = result["summary"][str(np.inf)]["force_coverage_2sigma"]
    assert inf == pytest.approx(0.683, abs=0.05)  # unrescaled, sigma 2x too small: P(|z| < 1)
    assert result["summary"]["0.0"]["force_coverage_2sigma"] > inf
