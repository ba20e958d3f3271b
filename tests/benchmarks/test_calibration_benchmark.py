"""The calibration benchmark end to end on every tenth frame (its bookkeeping, not its numbers)."""

import json

import pytest

from .conftest import BENCHMARKS, smoke_run


def test_smoke_run_holds_out_every_reaction_and_scores_the_new_ones(tmp_path):
    smoke_run("calibration", tmp_path)
    result = json.loads((tmp_path / "calibration.json").read_text())
    shipped = result["methods"][result["shipped"]]
    assert len(result["reactions"]) == 8
    assert set(shipped["per_reaction"]) == set(result["reactions"])
    assert set(shipped["fit_per_held_out_reaction"]) == set(result["reactions"])
    assert len(shipped["barriers"]) == 7 and 0 <= shipped["barriers_covered"] <= 7  # 6 held out, 1 never seen
    assert "acetaldehyde_to_CH4_CO" in shipped["barriers"] and "acetaldehyde_to_CH4_CO" not in result["reactions"]
    made = json.loads((BENCHMARKS / "data" / "heldout_summary.json").read_text())  # the new reactions' xTB NEBs
    assert set(shipped["new_barriers"]) == set(made)
    for reaction, check in shipped["new_barriers"].items():  # each scored on its own band, with a real sigma
        assert abs(check["reference"] - made[reaction]["barrier_eV"]) < 1e-6 and check["std"] > 0
    assert {r for r in shipped["new_per_reaction"] if not r.endswith(" (TS region)")} == set(made)
    for split in ("held_out_reactions", "held_out_ts_region", "pretraining_test", "new_reactions", "new_ts_region"):
        for quantity in ("energy", "forces"):
            report = shipped[split][quantity]
            assert 0 <= report["coverage_1sigma"] <= report["coverage_2sigma"] <= 1
            assert report["sharpness"] > 0
    assert result["shipped"] == "distance, power"  # the default: distance-aware, a power law for the forces
    assert result["methods"]["plain"]["fit_all"]["forces"]["exponent"] == 1.0  # distance_aware=False: a scale
    per_element = result["methods"]["element scales"]["fit_all"]["forces"]
    assert set(per_element) == {"1", "6", "7", "8"} and all(f["exponent"] == 1.0 for f in per_element.values())
    assert len({f["scale"] for f in per_element.values()}) == 4  # each element its own scale
    assert "| element scales | their TS region | forces |" in (tmp_path / "calibration.md").read_text()
    power_laws = result["methods"]["element power laws"]["fit_all"]["forces"]  # a power law per element
    assert set(power_laws) == {"1", "6", "7", "8"} and len({f["exponent"] for f in power_laws.values()}) == 4
    worst = min(r["forces"]["coverage_2sigma"] for r in shipped["per_reaction"].values())
    assert f"| {result['shipped']} | {worst:.2f} (" in (tmp_path / "calibration.md").read_text()  # worst reaction
    assert shipped["fit_all"]["forces"]["exponent"] != 1.0 and shipped["fit_all"]["forces"]["scale"] > 0
    assert "| distance, power | new: their TS region |" in (tmp_path / "calibration.md").read_text()
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    assert "held-out reactions" in (tmp_path / "calibration.md").read_text()
    energy_distance = result["methods"]["distance energy"]["fit_all"]  # the distance in the energy sigma only
    assert energy_distance["forces"] == shipped["fit_all"]["forces"]
    assert energy_distance["energy"] != shipped["fit_all"]["energy"]


@pytest.mark.parametrize("which, named", [("fresh", "the 3 fresh ones"), ("later", "the 6 of")])
def test_a_later_set_is_scored_in_place_of_the_new_ones(tmp_path, which, named):
    """``--fresh`` and ``--later`` score the sets built after the choice, each in its own record."""
    smoke_run("calibration", tmp_path, f"--{which}")
    assert not (tmp_path / "calibration.json").exists()  # the main record is not overwritten
    result = json.loads((tmp_path / f"calibration_{which}.json").read_text())
    made = json.loads((BENCHMARKS / "data" / f"{which}_summary.json").read_text())
    shipped = result["methods"][result["shipped"]]
    assert result[which] and set(result["new_reactions"]) == set(shipped["new_barriers"]) == set(made)
    earlier = {r for data in ("heldout", "fresh") if data != which
               for r in json.loads((BENCHMARKS / "data" / f"{data}_summary.json").read_text())}
    assert not set(made) & earlier  # none of the reactions the shipped choice was checked on before
    for reaction, check in shipped["new_barriers"].items():
        assert abs(check["reference"] - made[reaction]["barrier_eV"]) < 1e-6 and check["std"] > 0
    text = (tmp_path / f"calibration_{which}.md").read_text()
    assert f"--{which}" in text and named in text
