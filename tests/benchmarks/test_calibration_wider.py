"""``benchmarks/calibration_wider.py`` end to end on every tenth frame (its bookkeeping, not its numbers)."""

import json

from .conftest import smoke_run


def test_smoke_run_scores_every_reaction_with_both_recipes_and_both_posteriors(tmp_path):
    smoke_run("calibration_wider", tmp_path)
    result = json.loads((tmp_path / "calibration_wider_smoke.json").read_text())
    assert len(result["reactive_reactions"]) == 8 and len(result["later_reactions"]) == 14
    assert not set(result["reactive_reactions"]) & set(result["later_reactions"])
    every = set(result["reactive_reactions"]) | set(result["later_reactions"]) | set(result["fourth_reactions"])
    for method in ("distance, power", "plain"):
        narrow, wide = (result[method][recipe] for recipe in ("reactive only", "22 reactions"))
        assert set(narrow["force_2sigma_per_reaction"]) == set(wide["force_2sigma_per_reaction"]) == every
        assert narrow["fit_all"] != wide["fit_all"]  # the wider recipe saw more reactions
        for recipe in (narrow, wide):
            for report in recipe["pooled"].values():
                for quantity in ("energy", "forces"):
                    assert 0 <= report[quantity]["coverage_1sigma"] <= report[quantity]["coverage_2sigma"] <= 1
    assert result["plain"]["22 reactions"]["fit_all"]["forces"]["exponent"] == 1.0  # the plain posterior: a scale
    text = (tmp_path / "calibration_wider_smoke.md").read_text()
    assert "| 22 reactions | later held-out reactions |" in text and "| reactive only | pretraining test |" in text
