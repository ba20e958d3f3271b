"""``benchmarks/calibration_model_bands.py`` end to end (part 2 on every tenth frame): its bookkeeping."""

import json

from .conftest import smoke_run


def test_smoke_run_leaves_every_band_reaction_out_and_scores_the_others_with_the_full_fit(tmp_path):
    smoke_run("calibration_model_bands", tmp_path)
    result = json.loads((tmp_path / "calibration_model_bands_smoke.json").read_text())
    part = result["band_calibration"]
    unseen = set(result["unseen_reactions"])
    assert unseen == {"acetaldehyde_to_CH4_CO", "acetamide_to_imidic_acid", "propyne_to_allene",
                      "dimethyl_ether_to_methane_formaldehyde"}
    for variant in ("posterior's", "band, linear", "band, power", "band, linear, distance"):
        per_reaction = part[variant]["energy_2sigma_per_reaction"]
        assert len(per_reaction) == 24 and unseen < set(per_reaction)
        for report in part[variant]["pooled"].values():
            assert 0 <= report["coverage_1sigma"] <= report["coverage_2sigma"] <= 1
    assert part["band, linear"]["fit_all"]["exponent"] == 1.0 and part["band, power"]["fit_all"]["exponent"] != 1.0
    barriers = part["band, linear"]["barriers"]  # the shipped variant
    assert barriers and barriers.keys() == part["posterior's"]["barriers"].keys()
    for name, check in barriers.items():  # the same band and reference, another sigma
        plain = part["posterior's"]["barriers"][name]
        assert check["predicted"] == plain["predicted"] and check["reference"] == plain["reference"]
        assert check["covered_2sigma"] == (abs(check["error"]) < 2 * check["std"])
    assert 0.5 < part["below_reference"] <= 1  # the model's bands bend into its own errors: mostly below xTB
    text = (tmp_path / "calibration_model_bands_smoke.md").read_text()
    assert "## 1. A calibration of its own" in text and "| paths + bands | largest |" in text
