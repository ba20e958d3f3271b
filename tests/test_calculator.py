import copy
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator
from mace.calculators import MACECalculator
from scipy.spatial.transform import Rotation

import ase_mlipal
from ase_mlipal import MLIPALCalculator

from .conftest import rattled

UNCERTAINTIES = ("energy_uncertainty", "energies_uncertainty", "forces_uncertainty", "uncertainty")


def mace_reference(model, atoms):
    atoms = atoms.copy()
    atoms.calc = MACECalculator(models=copy.deepcopy(model), default_dtype="float64")
    return atoms


def results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    return dict(calc.results)


def test_energy_forces_agree_with_mace_calculator(tiny_model, ethanol):
    ours = ethanol.copy()
    ours.calc = MLIPALCalculator(model=tiny_model)
    ref = mace_reference(tiny_model, ethanol)
    assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    assert ours.get_potential_energy(force_consistent=True) == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), atol=1e-6)
    np.testing.assert_allclose(ours.get_potential_energies(), ref.get_potential_energies(), atol=1e-6)
    assert ours.get_potential_energies().sum() == pytest.approx(ours.get_potential_energy(), abs=1e-8)


def test_periodic_stress_agrees_with_mace_calculator(tiny_model):
    cell = bulk("C", "diamond", a=3.6, cubic=True).repeat(2)
    cell.rattle(0.05, seed=0)
    ours = cell.copy()
    ours.calc = MLIPALCalculator(model=tiny_model)
    ref = mace_reference(tiny_model, cell)
    assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(ours.get_stress(), ref.get_stress(), atol=1e-6)
    np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), atol=1e-6)


def test_a_supercell_repeats_the_cell_s_forces_and_force_sigma():
    """A supercell of a periodic cell: same forces and force sigma on each copy, energy k times the cell's; the
    energy sigma grows faster than k (the power law of the total raw variance, documented in calculator.rst)."""
    calc = MLIPALCalculator()
    cell = bulk("C", "diamond", a=3.57)
    cell.rattle(0.02, seed=0)
    one, eight = results(calc, cell), results(calc, cell.repeat(2))
    np.testing.assert_allclose(eight["forces"], np.tile(one["forces"], (8, 1)), atol=1e-5)
    np.testing.assert_allclose(eight["forces_uncertainty"], np.tile(one["forces_uncertainty"], 8), rtol=1e-5)
    assert eight["energy"] == pytest.approx(8 * one["energy"], rel=1e-8)
    ratio = eight["energy_uncertainty"] / one["energy_uncertainty"]
    assert ratio == pytest.approx(8 ** calc.energy_posterior.calibration.exponent, rel=0.05)


def test_molecule_has_no_stress(calc, ethanol):
    ethanol.calc = calc
    with pytest.raises(PropertyNotImplementedError):
        ethanol.get_stress()


def test_forces_are_minus_the_energy_gradient(calc, ethanol):
    ethanol.calc = calc
    forces = ethanol.get_forces()
    h = 1e-5
    for i, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        energies = []
        for sign in (1, -1):
            moved = ethanol.copy()
            moved.positions[i, axis] += sign * h
            moved.calc = calc
            energies.append(moved.get_potential_energy())
        assert forces[i, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-6)


def test_energy_and_uncertainty_are_invariant(calc, ethanol):
    calc.condition(rattled(ethanol, 5, seed=1))
    base = results(calc, ethanol)

    rotated = ethanol.copy()
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0])
    rotated.positions = rotation.apply(rotated.positions)
    moved = ethanol.copy()
    moved.positions += [1.5, -3.0, 7.0]
    order = np.random.default_rng(0).permutation(len(ethanol))
    permuted = ethanol[order]

    for other, forces_map in [(rotated, rotation.apply), (moved, None), (permuted, None)]:
        got = results(calc, other)
        assert got["energy"] == pytest.approx(base["energy"], abs=1e-8)
        assert got["energy_uncertainty"] == pytest.approx(base["energy_uncertainty"], rel=1e-6)
        assert got["uncertainty"] == pytest.approx(base["uncertainty"], rel=1e-6)
    got = results(calc, permuted)
    np.testing.assert_allclose(got["forces_uncertainty"], base["forces_uncertainty"][order], rtol=1e-6)
    np.testing.assert_allclose(got["energies_uncertainty"], base["energies_uncertainty"][order], rtol=1e-6)
    np.testing.assert_allclose(got["forces"], base["forces"][order], atol=1e-8)
    got = results(calc, rotated)
    np.testing.assert_allclose(got["forces"], rotation.apply(base["forces"]), atol=1e-8)
    np.testing.assert_allclose(got["forces_uncertainty"], base["forces_uncertainty"], rtol=1e-6)


def test_uncertainty_shapes_and_the_trigger_scalar(calc, ethanol):
    got = results(calc, ethanol)
    assert got["forces_uncertainty"].shape == (len(ethanol),)
    assert got["energies_uncertainty"].shape == (len(ethanol),)
    assert got["uncertainty"] == pytest.approx(got["forces_uncertainty"].max())
    assert all(np.all(np.asarray(got[k]) > 0) for k in UNCERTAINTIES)


def test_one_forward_pass_per_call(calc, ethanol):
    calls = []
    calc.model.register_forward_hook(lambda *args: calls.append(1))
    ethanol.calc = calc
    ethanol.get_potential_energy()
    ethanol.get_forces()
    ethanol.get_potential_energies()
    calc.get_property("uncertainty", ethanol)
    calc.get_property("forces_uncertainty", ethanol)
    assert len(calls) == 1


def test_variance_drops_for_added_structure_and_barely_moves_far_away(tiny_model):
    calc = MLIPALCalculator(model=tiny_model, distance_aware=False)  # the posterior's own variance
    water, far = molecule("H2O"), molecule("N2")  # N2 shares no element with water
    before = {name: results(calc, a) for name, a in [("water", water), ("far", far)]}
    calc.condition([water])
    after = {name: results(calc, a) for name, a in [("water", water), ("far", far)]}
    assert after["water"]["energy_uncertainty"] < 0.15 * before["water"]["energy_uncertainty"]
    assert after["water"]["uncertainty"] < 0.15 * before["water"]["uncertainty"]
    assert after["far"]["energy_uncertainty"] > 0.95 * before["far"]["energy_uncertainty"]
    assert after["far"]["uncertainty"] > 0.8 * before["far"]["uncertainty"]
    assert calc.energy_posterior.n_added == 1 and calc.atom_posterior.n_added == len(water)


def test_adding_references_invalidates_cached_results(calc, ethanol):
    ethanol.calc = calc
    ethanol.get_forces()
    before = calc.get_property("uncertainty", ethanol)
    calc.condition(ethanol)
    assert calc.get_property("uncertainty", ethanol) < before


@pytest.mark.parametrize("settings", [{"kernel_options": {"by_element": False}}, {"regularization": 0.1}])
def test_shipped_posterior_is_skipped_with_a_warning_when_asked_for_other_settings(settings, ethanol):
    with pytest.warns(UserWarning, match="starting from an empty, uncalibrated posterior"):
        calc = MLIPALCalculator(**settings)
    assert not calc.calibrated and calc.n_conditioning == 0
    assert calc.regularization == settings.get("regularization", 1e-2)
    ethanol.calc = calc
    assert ethanol.get_forces().shape == (9, 3)
    assert MLIPALCalculator().calibrated  # the default settings load it


def test_another_kernel_on_the_default_model_says_it_starts_uncalibrated():
    with pytest.warns(UserWarning, match="the ntk kernel starts from an empty, uncalibrated posterior"):
        calc = MLIPALCalculator(kernel="ntk", kernel_options={"dim": 64})
    assert not calc.calibrated and calc.n_conditioning == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert not MLIPALCalculator(kernel="ntk", kernel_options={"dim": 64}, posterior=None).calibrated


def test_building_a_mace_prints_no_torchscript_notices():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ase_mlipal.build_mace(["H", "C"], channels=4, max_ell=1, r_max=3.0, mlp_channels=4, radial_mlp=(8,))
    assert not [w for w in caught if "TorchScript" in str(w.message)]


def label_with_noise(calc, images, s2_energy, s2_forces, seed=0):
    """Frames labelled model + Gaussian noise whose variance is s^2 times the raw variance."""
    rng = np.random.default_rng(seed)
    out = []
    for atoms in images:
        got = results(calc, atoms)
        # raw variances: calc is uncalibrated, so its std are raw
        e = got["energy"] + rng.normal(scale=np.sqrt(s2_energy) * got["energy_uncertainty"])
        sigma_f = np.sqrt(s2_forces) * got["forces_uncertainty"][:, None]
        f = got["forces"] + rng.normal(size=(len(atoms), 3)) * sigma_f
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=e, forces=f)
        out.append(labelled)
    return out


def test_calibration_recovers_a_known_scale(calc, ethanol):
    calc.condition(rattled(ethanol, 10, seed=1))
    frames = label_with_noise(calc, rattled(ethanol, 300, stdev=0.08, seed=2), 4.0, 0.25)
    report = calc.calibrate(frames)
    assert calc.calibrated
    assert calc.energy_posterior.scale == pytest.approx(4.0, rel=0.25)
    assert calc.atom_posterior.scale == pytest.approx(0.25, rel=0.1)
    assert report["forces"].coverage_1sigma == pytest.approx(0.683, abs=0.03)
    assert report["energy"].coverage_2sigma == pytest.approx(0.954, abs=0.05)

    # held-out frames labelled by the same process: fit=False keeps the scale and reports
    uncalibrated = MLIPALCalculator(model=calc.model).condition(rattled(ethanol, 10, seed=1))
    held_out = label_with_noise(uncalibrated, rattled(ethanol, 100, stdev=0.08, seed=5), 4.0, 0.25, seed=1)
    scale_before = calc.atom_posterior.scale
    check = calc.calibrate(held_out, fit=False)
    assert calc.atom_posterior.scale == scale_before
    assert check["forces"].coverage_1sigma == pytest.approx(0.683, abs=0.05)
    assert check["forces"].miscalibration_area < 0.05


def test_calibrate_reads_labels_from_info_and_arrays(calc, ethanol):
    frames = []
    for atoms in rattled(ethanol, 5, seed=4):
        got = results(calc, atoms)
        atoms.info["energy"] = got["energy"] + 0.01
        atoms.arrays["forces"] = got["forces"] + 0.01
        frames.append(atoms)
    report = calc.calibrate(frames)
    assert report["energy"].rmse == pytest.approx(0.01)
    assert report["forces"].rmse == pytest.approx(0.01)


def test_calibrate_refuses_unlabelled_frames(calc, ethanol):
    with pytest.raises(ValueError, match="no reference"):
        calc.calibrate([ethanol])


def test_posterior_saves_and_refuses_another_model(calc, tiny_model, ethanol, tmp_path):
    from ase_mlipal import build_mace

    calc.condition(rattled(ethanol, 3))
    calc.energy_posterior.scale = 2.5
    calc.save_posterior(tmp_path / "post.npz")
    fresh = MLIPALCalculator(model=tiny_model).load_posterior(tmp_path / "post.npz")
    assert results(fresh, ethanol)["energy_uncertainty"] == pytest.approx(results(calc, ethanol)["energy_uncertainty"])
    other = MLIPALCalculator(model=build_mace(["H", "C", "N", "O"], channels=8, r_max=4.0, seed=99))
    with pytest.raises(ValueError, match="another model|was built on model"):
        other.load_posterior(tmp_path / "post.npz")


def test_unknown_element_is_named(calc):
    with pytest.raises(ValueError, match=r"\['Si'\]"):
        results(calc, Atoms("SiH4", positions=np.random.default_rng(0).normal(size=(5, 3))))


def test_empty_structure_is_refused(calc):
    with pytest.raises(ValueError, match="no atoms"):
        results(calc, Atoms())


def test_nan_positions_are_refused(calc, ethanol):
    ethanol.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[3\]|\[3\].*NaN"):
        results(calc, ethanol)


def test_periodic_without_cell_is_refused(calc):
    with pytest.raises(ValueError, match="zero volume"):
        results(calc, Atoms("H2O", positions=[[0, 0, 0], [0.9, 0, 0], [0, 0.9, 0]], pbc=True))


def test_atom_with_no_neighbours_has_a_defined_answer(calc):
    lonely = Atoms("OH", positions=[[0, 0, 0], [20.0, 0, 0]])
    got = results(calc, lonely)
    assert np.isfinite(got["energy"])
    np.testing.assert_allclose(got["forces"], 0.0, atol=1e-12)
    assert np.all(np.isfinite(got["forces_uncertainty"])) and got["uncertainty"] > 0


def test_set_model_rebuilds_and_recalibrates_the_posterior(calc, ethanol):
    from ase_mlipal import build_mace

    calc.condition(rattled(ethanol, 4, seed=1))
    old_hash = calc.model_hash
    other = build_mace(["H", "C", "N", "O"], channels=8, r_max=4.0, seed=42,
                       atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])
    labelled = []
    for atoms in rattled(ethanol, 6, seed=2):
        got = results(calc, atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=got["energy"] + 0.05, forces=got["forces"])
        labelled.append(atoms)
    calc.energy_posterior.scale = 2.0
    report = calc.set_model(other, conditioning=rattled(ethanol, 3, seed=3), calibration=labelled)
    assert calc.model_hash != old_hash and calc.calibrated
    assert calc.energy_posterior.n_added == 3 and set(report) == {"energy", "forces"}
    assert report["energy"].scale == calc.energy_posterior.scale  # the report is of the calibration in use
    # the maximum-likelihood factor on the kept variances (mean residual^2 / variance, by hand from the
    # new model's errors and raw variances), moved 6 / (6 + 20) of the way from 1 (linearly: the energy)
    alone = MLIPALCalculator(model=other)
    alone.condition(rattled(ethanol, 3, seed=3))
    res = alone.residuals(labelled, progress=False)
    ratio = np.mean(res.energy**2 / (2.0 * res.energy_raw))
    assert calc.energy_posterior.scale == pytest.approx(2.0 * (20 + 6 * ratio) / 26, rel=1e-9)
    fresh = ethanol.copy()
    fresh.calc = MACECalculator(models=copy.deepcopy(other), default_dtype="float64")
    assert results(calc, ethanol)["energy"] == pytest.approx(fresh.get_potential_energy(), abs=1e-6)


def test_set_model_keeps_the_calibration_and_moves_its_floors_by_what_was_forgotten(calc, ethanol):
    import ase_mlipal
    from ase_mlipal.uncertainty.calibration import Recalibration

    from .conftest import labelled_by

    conditioning = rattled(ethanol, 4, seed=1)
    calc.condition(conditioning)
    shapes = Recalibration(2.0, 0.8, 1e-4), Recalibration(3.0, 1.0, 0.0)
    calc.calibrations = shapes
    calc.calibrated = True
    old, other = calc.model, ase_mlipal.random_like(calc.model, seed=7)
    trained_on = labelled_by(old, rattled(ethanol, 5, seed=4))  # frames the old model fits exactly
    calc.set_model(copy.deepcopy(old), conditioning)  # no frames to refit on: the calibration stays
    assert calc.calibrated and calc.calibrations == shapes
    calc.set_model(other, conditioning, forgetting_frames=trained_on)
    energy_sq, forces_sq = [], []
    for atoms in trained_on:  # the new model's errors, by MACECalculator, where the old one had none
        fresh = mace_reference(other, atoms)
        energy_sq.append((fresh.get_potential_energy() - atoms.get_potential_energy()) ** 2 / len(atoms))
        forces_sq.append((fresh.get_forces() - atoms.get_forces()).ravel() ** 2)
    assert calc.energy_posterior.calibration.floor == pytest.approx(1e-4 + np.mean(energy_sq), rel=1e-6)
    assert calc.atom_posterior.calibration.floor == pytest.approx(np.mean(np.concatenate(forces_sq)), rel=1e-6)
    assert calc.atom_posterior.calibration.scale == 3.0 and calc.energy_posterior.calibration.exponent == 0.8


def test_a_refit_on_residuals_below_the_floor_moves_every_variance_by_one_bounded_factor(calc, ethanol):
    """One held-out frame the new model fits far inside the floor: the variances fall by the shrunk
    factor (scale and floor alike), not by the ~4x a refit of the scale alone (which runs to zero) gave."""
    import ase_mlipal
    from ase_mlipal.uncertainty.calibration import Recalibration

    from .conftest import labelled_by

    conditioning = rattled(ethanol, 4, seed=1)
    calc.condition(conditioning)
    shapes = Recalibration(2.0, 1.5, 0.5), Recalibration(3.0, 1.0, 0.2)
    calc.calibrations = shapes
    calc.calibrated = True
    other = ase_mlipal.random_like(calc.model, seed=7)
    frame = labelled_by(other, rattled(ethanol, 1, seed=5))[0]
    frame.calc.results["energy"] += 0.01  # 0.01 eV and 0.01 eV/A off: far inside the floors
    frame.calc.results["forces"] = frame.calc.results["forces"] + 0.01
    calc.set_model(other, conditioning, calibration=[frame])
    for new, old in zip(calc.calibrations, shapes):
        factor = new.scale / old.scale
        assert new.floor / old.floor == pytest.approx(factor) and new.exponent == old.exponent
        assert 0.5 < factor < 1.0  # lower (the residuals are small), by at most 1 / 21 of the way to them
    res = calc.residuals([frame], progress=False)
    ratio = np.mean(res.energy**2 / shapes[0].variance(res.energy_raw, res.n_atoms))
    assert calc.energy_posterior.calibration.scale == pytest.approx(2.0 * (20 + ratio) / 21, rel=1e-6)


def test_set_model_warns_when_the_new_posterior_holds_far_fewer_frames(calc, ethanol):
    import warnings

    import ase_mlipal

    frames = rattled(ethanol, 8, seed=1)
    calc.condition(frames)
    other = ase_mlipal.random_like(calc.model, seed=7)
    with pytest.warns(UserWarning, match="on 2 frames where the old one held 8"):
        calc.set_model(other, conditioning=frames[:2])
    raw_few = float(results(calc, ethanol)["uncertainty"])
    with warnings.catch_warnings():  # the same frames again (or none, to load a posterior next): no warning
        warnings.filterwarnings("error", message="set_model conditioned")
        calc.set_model(other, conditioning=frames)
        calc.set_model(other, conditioning=[])
        calc.set_model(other, conditioning=frames)
    assert float(results(calc, ethanol)["uncertainty"]) < raw_few


def test_set_model_counts_conditioning_frames_not_absorbed_ones(calc, ethanol, tmp_path):
    import warnings

    import ase_mlipal

    frames = rattled(ethanol, 4, seed=1)
    calc.condition(frames)
    for features in calc.features(rattled(ethanol, 12, seed=2), progress=False):  # as a trigger absorbs flags
        calc.add_features(features, weight=5.0)
    assert calc.n_conditioning == 4 and calc.energy_posterior.n_added == 16
    calc.save_posterior(tmp_path / "posterior.npz")
    calc.n_conditioning = 0
    calc.load_posterior(tmp_path / "posterior.npz")
    assert calc.n_conditioning == 4
    with warnings.catch_warnings():  # a learner's second swap, on the same conditioning: no warning
        warnings.filterwarnings("error", message="set_model conditioned")
        calc.set_model(ase_mlipal.random_like(calc.model, seed=7), conditioning=frames)
    assert calc.n_conditioning == 4 and calc.energy_posterior.n_added == 4


def test_shares_follow_a_model_swap_a_loaded_posterior_and_new_conditioning(calc, ethanol, tmp_path):
    import ase_mlipal

    image = ethanol.copy()
    image.calc = calc.share()
    before = image.get_potential_energy(), float(image.calc.results["uncertainty"])
    other = ase_mlipal.random_like(calc.model, seed=7)
    calc.set_model(other, conditioning=[])
    # the share runs the new model without being rebuilt, and its cached result is recomputed
    assert image.calc.model is calc.model and image.calc.model_hash == calc.model_hash == ase_mlipal.model_hash(other)
    reference = mace_reference(other, ethanol)
    assert image.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    assert image.get_potential_energy() != pytest.approx(before[0], abs=1e-3)
    # conditioning through another share lowers this share's uncertainty at once (same positions)
    raw = float(image.calc.get_property("uncertainty", image))
    calc.share().condition([ethanol], weight=100.0)
    assert float(image.calc.get_property("uncertainty", image)) < 0.2 * raw
    # a posterior loaded into the parent reaches the share too
    calc.save_posterior(tmp_path / "conditioned.npz")
    calc.set_model(other, conditioning=[])
    assert float(image.calc.get_property("uncertainty", image)) == pytest.approx(raw, rel=1e-9)
    calc.load_posterior(tmp_path / "conditioned.npz")
    assert float(image.calc.get_property("uncertainty", image)) < 0.2 * raw


def test_after_a_change_each_structure_is_computed_once_and_results_reach_a_trajectory(calc, ethanol, tmp_path,
                                                                                        monkeypatch):
    from ase.io import Trajectory

    image = ethanol.copy()
    image.calc = calc.share()
    image.get_forces()
    calc.condition([ethanol])  # through the parent: the share's cached results are stale
    calls = []
    original = MLIPALCalculator.calculate
    monkeypatch.setattr(MLIPALCalculator, "calculate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    for _ in range(3):
        image.get_potential_energy(), image.get_forces()
    assert len(calls) == 1  # recomputed once, then cached again
    with Trajectory(tmp_path / "one.traj", "w") as trajectory:
        trajectory.write(image)
    stored = Trajectory(tmp_path / "one.traj")[0]
    assert stored.get_potential_energy() == pytest.approx(image.get_potential_energy())
    np.testing.assert_allclose(stored.get_forces(), image.get_forces())


def test_changes_made_directly_to_a_posterior_or_the_weights_reach_cached_results(calc, ethanol):
    """No changed() call needed: each posterior counts its own changes, the weights their autograd versions."""
    import torch

    from ase_mlipal.uncertainty.calibration import Recalibration

    image = ethanol.copy()
    image.calc = calc.share()
    raw = float(image.calc.get_property("uncertainty", image))
    calc.atom_posterior.calibration = Recalibration(scale=4.0 * calc.atom_posterior.calibration.scale)
    assert float(image.calc.get_property("uncertainty", image)) == pytest.approx(2.0 * raw, rel=1e-9)
    _, atom_rows = calc.feature_map.conditioning(calc.features([ethanol])[0])
    calc.atom_posterior.add(atom_rows, weight=100.0)
    assert float(image.calc.get_property("uncertainty", image)) < raw
    energy = image.get_potential_energy()
    with torch.no_grad():
        next(p for p in calc.model.parameters() if p.dim() == 2).mul_(1.5)  # in place, as rereference_energies does
    assert image.get_potential_energy() != pytest.approx(energy, abs=1e-9)


def test_a_conditioned_copy_leaves_the_uncertainty_model_unchanged(calc, ethanol):
    from ase_mlipal.uncertainty.features import per_structure

    _, batches = calc.predict([ethanol])
    features = per_structure(batches)[0]
    before = calc.uncertainty_from(features)["uncertainty"]
    version = calc.uncertainty_model.version
    trial = calc.uncertainty_model.conditioned(calc.features([ethanol])[0], weight=10.0)
    assert trial.uncertainty_from(features)["uncertainty"] < before
    assert calc.uncertainty_from(features)["uncertainty"] == before and calc.uncertainty_model.version == version
    assert trial.model is calc.model


def test_posterior_of_other_features_is_refused_with_a_clear_message(tiny_model, ethanol, tmp_path):
    plain = MLIPALCalculator(model=tiny_model, kernel_options={"by_element": False}).condition([ethanol])
    plain.save_posterior(tmp_path / "plain.npz")
    blocked = MLIPALCalculator(model=tiny_model)
    with pytest.raises(ValueError, match="kernel options"):
        blocked.load_posterior(tmp_path / "plain.npz")


def test_calibration_and_typical_survive_a_save(calc, ethanol, tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    from ase_mlipal.uncertainty.calibration import Recalibration

    calc.condition([ethanol])
    calc.energy_posterior.calibration = Recalibration(2.0, 1.5, 0.01)
    calc.atom_posterior.calibration = Recalibration(3.0)
    calc.typical = {"forces": 0.2, "energy": 0.01}
    calc.save_posterior(tmp_path / "p.npz")
    other = MLIPALCalculator(model=calc.model, posterior=tmp_path / "p.npz")
    assert other.energy_posterior.calibration == Recalibration(2.0, 1.5, 0.01)
    assert other.atom_posterior.calibration == Recalibration(3.0)
    assert other.typical == {"forces": 0.2, "energy": 0.01}
    probe = ethanol.copy()
    probe.calc = other
    q = other.energy_posterior.quadratic_form(other.features([ethanol])[0].structure)[0]
    assert other.get_property("energy_uncertainty", probe) == pytest.approx(np.sqrt(2.0 * q**1.5 + 0.01 * len(ethanol)))
    frames = []
    for k in range(4):
        frame = ethanol.copy()
        frame.positions += 0.01 * k
        frame.calc = SinglePointCalculator(frame, energy=0.1 * k, forces=np.zeros((len(frame), 3)))
        frames.append(frame)
    with pytest.raises(ValueError, match="one per image"):
        other.calibrate(frames, groups=["a"])


def test_model_hash_follows_an_in_place_change_of_the_model(tiny_model, tmp_path):
    import torch

    from ase_mlipal import model_hash

    calc = MLIPALCalculator(model=copy.deepcopy(tiny_model))
    before = calc.model_hash
    assert before == model_hash(tiny_model)
    with torch.no_grad():
        calc.model.atomic_energies_fn.atomic_energies += 1.0  # what rereference_energies does
    assert calc.model_hash != before and calc.model_hash == model_hash(calc.model)
    calc.save_posterior(tmp_path / "p.npz")
    fresh = MLIPALCalculator(model=copy.deepcopy(calc.model), posterior=tmp_path / "p.npz")
    assert fresh.model_hash == calc.model_hash
