"""The shipped default model and the committed xTB data sets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ase_mlipal
from ase_mlipal.frames import read_frames
from ase_mlipal.models.model import DEFAULT_DIR, DEFAULT_MODEL_PATH
from ase_mlipal.training.trainer import evaluate

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


@pytest.fixture(scope="module")
def record():
    return json.loads((DEFAULT_DIR / "default.json").read_text())


@pytest.fixture(scope="module")
def pretrain():
    return read_frames(DATA / "pretrain.xyz.gz")


@pytest.fixture(scope="module")
def reactive():
    return read_frames(DATA / "reactive.xyz.gz")


def test_default_model_loads_safely_and_matches_its_record(record):
    raw = torch.load(DEFAULT_MODEL_PATH, weights_only=True)
    assert raw["format"] == "ase-mlipal-model"
    model = ase_mlipal.load_model("default")
    assert ase_mlipal.model_hash(model) == record["model_hash"] == raw["hash"]
    hyper = record["hyperparameters"]
    assert float(model.r_max) == hyper["r_max"]
    assert int(model.num_interactions) == hyper["num_interactions"]
    assert ase_mlipal.model_elements(model) == record["elements"] == [1, 6, 7, 8]
    assert ase_mlipal.ActivationFeatures(model, by_element=False).dim == hyper["channels"] * hyper["num_interactions"]
    assert ase_mlipal.MLIPALCalculator().feature_map.dim == 4 * hyper["channels"] * hyper["num_interactions"]
    shipped = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir() if p.is_file())
    assert shipped < 5e6


def test_test_split_force_mae_is_the_recorded_one(record, pretrain):
    test = [f for f in pretrain if f.info["split"] == "test"]
    got = evaluate(ase_mlipal.load_model("default"), test)
    assert got["forces_mae"] == pytest.approx(record["metrics"]["test"]["forces_mae"], rel=1e-6)
    assert got["energy_mae_per_atom"] == pytest.approx(record["metrics"]["test"]["energy_mae_per_atom"], rel=1e-6)


@pytest.mark.parametrize("distance_aware, key", [(None, "posterior_distance"), (True, "posterior_distance"),
                                                   (False, "posterior")])
def test_default_calculator_is_calibrated_on_the_shipped_posterior(record, distance_aware, key):
    calc = ase_mlipal.MLIPALCalculator(distance_aware=distance_aware)  # None, the default: distance-aware
    assert calc.calibrated and calc.uncertainty_model.distance_aware is (key == "posterior_distance")
    assert calc.energy_posterior.n_added == record["data"]["n_train"]
    assert calc.model_hash == record["model_hash"]
    shipped = record[key]
    assert calc.energy_posterior.calibration.as_dict() == pytest.approx(shipped["energy"], rel=1e-12)
    assert calc.atom_posterior.calibration.as_dict() == pytest.approx(shipped["forces"], rel=1e-12)
    assert calc.typical == pytest.approx(shipped["typical"], rel=1e-12)
    assert "pretraining valid" in shipped["groups"] and len(shipped["groups"]) == 23  # and the 22 reactions
    # the band calibration: fitted on the 20 of those reactions that have a band relaxed on the model
    assert calc.band_calibration.as_dict() == pytest.approx(shipped["band_calibration"], rel=1e-12)
    bands = set(shipped["band_calibration_bands"])
    assert len(bands) == 20 and bands < set(shipped["groups"])


def test_pretraining_splits_do_not_overlap(pretrain, record):
    by_split = {}
    for frame in pretrain:
        by_split.setdefault(frame.info["split"], []).append(frame)
    assert {s: len(v) for s, v in by_split.items()} == {
        s: record["data"][f"n_{s}"] for s in ("train", "valid", "test")}
    assert len(pretrain) >= 10_000
    trajectories = {s: {f.info["trajectory"] for f in frames} for s, frames in by_split.items()}
    assert not trajectories["train"] & trajectories["test"]
    assert not trajectories["train"] & trajectories["valid"]
    assert not trajectories["valid"] & trajectories["test"]
    molecules = {s: {f.info["molecule"] for f in frames} for s, frames in by_split.items()}
    assert len(molecules["test"] - molecules["train"] - molecules["valid"]) >= 5  # wholly held-out molecules
    assert set("".join(f.get_chemical_formula() for f in pretrain)) - set("HCNO0123456789") == set()


def test_reactive_set_is_large_labelled_and_split(reactive):
    assert len(reactive) >= 3000
    assert len({f.info["reaction"] for f in reactive}) >= 6
    splits = {f.info["split"] for f in reactive}
    assert splits == {"pool", "test", "initial"}
    keys = {s: {f.positions.tobytes() for f in reactive if f.info["split"] == s} for s in splits}
    assert not keys["pool"] & keys["test"] and not keys["initial"] & keys["test"]
    for frame in reactive[:50]:
        energy, forces = ase_mlipal.frames.read_labels(frame)
        assert np.isfinite(energy) and forces.shape == (len(frame), 3)
    # transition-state frames are scarce in the pool but present in the test set
    neb = [f for f in reactive if f.info["kind"] != "hot_md"]
    ts_fraction = {s: np.mean([f.info["ts_region"] for f in neb if f.info["split"] == s]) for s in ("pool", "test")}
    assert ts_fraction["pool"] < 0.5 * ts_fraction["test"]


def test_a_swap_to_the_shipped_model_rebuilds_the_shipped_posterior(reactive):
    """default_conditioning holds exactly the structures of the shipped posterior: a swap loses no data."""
    from ase_mlipal.learning.learning_run import default_conditioning

    shipped = ase_mlipal.MLIPALCalculator()
    rebuilt = ase_mlipal.MLIPALCalculator(posterior=None)
    rebuilt.set_model("default", default_conditioning(), progress=False)
    assert rebuilt.energy_posterior.n_added == shipped.energy_posterior.n_added
    assert rebuilt.atom_posterior.n_added == shipped.atom_posterior.n_added
    frames = reactive[::400]
    before, after = (calc.residuals(frames, progress=False) for calc in (shipped, rebuilt))
    np.testing.assert_allclose(after.energy_raw, before.energy_raw, rtol=1e-6)
    np.testing.assert_allclose(after.forces_raw, before.forces_raw, rtol=1e-6)
