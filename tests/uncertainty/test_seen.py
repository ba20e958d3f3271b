"""Frames seen but not learned: out of the reported uncertainty, in what a trigger scores on."""

import numpy as np
import pytest
from ase.build import molecule

from ase_mlipal import MLIPALCalculator
from ase_mlipal.uncertainty.calibration import Recalibration


@pytest.fixture()
def conditioned(tiny_model):
    calc = MLIPALCalculator(model=tiny_model, distance_aware=True)
    known = molecule("CH3OH")
    calc.condition([known.copy() for _ in range(3)])
    return calc


def stds(model, atoms, calc) -> tuple[float, np.ndarray]:
    """(energy sigma, per-atom force sigma) of ``atoms`` on ``model``'s posteriors."""
    features = calc.features([atoms])[0]
    results = model.uncertainty_from(features)
    return results["energy_uncertainty"], results["forces_uncertainty"]


def test_a_seen_frame_leaves_the_reported_sigma_and_enters_the_seen_posterior_with_its_weight(conditioned):
    calc, model = conditioned, conditioned.uncertainty_model
    novel = molecule("CH3CH2OH")
    assert model.seen() is model  # nothing seen: the model itself
    energy, forces = stds(model, novel, calc)
    features = calc.features([novel])[0]
    model.add_features(features, weight=4.0, learned=False)
    assert stds(model, novel, calc)[0] == energy
    np.testing.assert_array_equal(stds(model, novel, calc)[1], forces)
    explicit = model.conditioned(features, weight=4.0)  # the same frame learned with the same weight
    seen_energy, seen_forces = stds(model.seen(), novel, calc)
    assert seen_energy < energy
    assert seen_energy == pytest.approx(stds(explicit, novel, calc)[0], rel=1e-9)
    np.testing.assert_allclose(seen_forces, stds(explicit, novel, calc)[1], rtol=1e-9)


def test_the_seen_posterior_follows_a_new_calibration_and_a_new_model_forgets_it(conditioned, tiny_model):
    calc, model = conditioned, conditioned.uncertainty_model
    novel = molecule("CH3CH2OH")
    model.add_features(calc.features([novel])[0], weight=2.0, learned=False)
    before = stds(model.seen(), novel, calc)[0]
    energy, forces = calc.calibrations
    calc.calibrations = Recalibration(scale=4.0 * energy.scale), forces
    assert stds(model.seen(), novel, calc)[0] == pytest.approx(2.0 * before, rel=1e-9)
    model.add_features(calc.features([novel])[0], weight=2.0, learned=False)  # seen again: grows the copy
    assert stds(model.seen(), novel, calc)[0] < 2.0 * before
    calc.set_model(tiny_model, [molecule("CH3OH")] * 3)
    assert model.seen() is model
