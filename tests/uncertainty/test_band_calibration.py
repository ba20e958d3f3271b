"""The calibration of bands relaxed on the model: its fit, where path_profile reads it, and its file."""

import numpy as np
import pytest
from ase.build import molecule

import ase_mlipal
from ase_mlipal import MLIPALCalculator, band, band_residuals, fit_band_calibration, path_profile
from ase_mlipal.uncertainty.calibration import Recalibration
from ase_mlipal.uncertainty.features import per_structure

from ..conftest import labelled_by, rattled


def formaldehyde_bands(reference_model) -> list[list]:
    """Two short bands H2CO -> CO + H2 and H2CO -> HCOH-like, labelled by ``reference_model``."""
    reactant = molecule("H2CO")
    leaving = reactant.copy()
    leaving.positions[2:] = [[0.0, 0.37, -2.6], [0.0, -0.37, -2.6]]
    shifted = reactant.copy()
    shifted.positions[2] = reactant.positions[1] + [0.0, 0.9, 0.3]
    return [labelled_by(reference_model, band(reactant, product, 4)) for product in (leaving, shifted)]


@pytest.fixture()
def conditioned(tiny_model):
    calc = MLIPALCalculator(model=tiny_model)
    calc.condition(rattled(molecule("H2CO"), 6, 0.05, seed=2))
    return calc


def test_band_residuals_are_the_errors_of_the_differences_beside_their_posterior_variance(conditioned):
    other = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, seed=7)
    bands = formaldehyde_bands(other)
    residuals, raw, n_atoms, number = band_residuals(conditioned, bands)
    assert len(residuals) == len(raw) == sum(len(b) - 1 for b in bands) and set(number) == {0, 1}
    assert np.all(n_atoms == 4)
    inverse = np.linalg.inv(conditioned.energy_posterior.precision())
    for k, images in enumerate(bands):
        model = np.array([conditioned.get_potential_energy(a.copy()) for a in images])
        reference = np.array([a.get_potential_energy() for a in images])
        np.testing.assert_allclose(residuals[number == k], (model[1:] - model[0]) - (reference[1:] - reference[0]),
                                   atol=1e-8)
        phi = np.concatenate([f.structure for f in per_structure(conditioned.features(images))])
        delta = phi[1:] - phi[0]
        np.testing.assert_allclose(raw[number == k], np.einsum("ij,jk,ik->i", delta, inverse, delta), rtol=1e-6)


def test_band_calibration_is_the_maximum_likelihood_scale_each_group_weighing_the_same(conditioned):
    other = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, seed=7)
    bands = formaldehyde_bands(other)
    kept = conditioned.energy_posterior.calibration
    report = fit_band_calibration(conditioned, bands, groups=["a", "b"])
    residuals, raw, _, number = band_residuals(conditioned, bands)
    # a plain scale: the mean of residual^2 / raw within each band, the bands weighing the same
    expected = np.mean([np.mean(residuals[number == k] ** 2 / raw[number == k]) for k in (0, 1)])
    fitted = conditioned.band_calibration
    assert fitted.scale == pytest.approx(expected, rel=1e-6) and (fitted.exponent, fitted.floor) == (1.0, 0.0)
    assert conditioned.energy_posterior.calibration == kept  # every other uncertainty keeps its calibration
    assert report.n == len(residuals)
    with pytest.raises(ValueError, match="groups has 1 labels for 2 bands"):
        fit_band_calibration(conditioned, bands, groups=["a"])


def test_path_profile_reads_the_band_calibration_only_for_a_band_relaxed_on_the_model(conditioned):
    images = formaldehyde_bands(conditioned.model)[0]
    plain = path_profile(conditioned, images)
    assert conditioned.band_calibration is None  # none fitted: the posterior's calibration either way
    np.testing.assert_allclose(path_profile(conditioned, images, relaxed_on_model=False).energy_std, plain.energy_std)
    conditioned.band_calibration = conditioned.energy_posterior.calibration.times(9.0)  # a plain scale, 9x
    relaxed = path_profile(conditioned, images)
    np.testing.assert_allclose(relaxed.energy_std, 3.0 * plain.energy_std, rtol=1e-10)
    assert relaxed.barrier_std == pytest.approx(3.0 * plain.barrier_std, rel=0.05)  # a maximum: not exactly 3x
    elsewhere = path_profile(conditioned, images, relaxed_on_model=False)  # e.g. a reference band
    np.testing.assert_allclose(elsewhere.energy_std, plain.energy_std)
    probe = images[2].copy()
    probe.calc = conditioned
    probe.get_potential_energy()
    assert conditioned.results["energy_uncertainty"] == pytest.approx(  # a single structure's sigma: unchanged
        np.sqrt(conditioned.energy_posterior.variance(conditioned.last_features.structure, 4))[0])


def test_the_band_calibration_is_saved_with_the_posterior_and_an_older_file_has_none(conditioned, tmp_path):
    conditioned.band_calibration = Recalibration(scale=2.5, exponent=1.2, floor=0.01)
    conditioned.save_posterior(tmp_path / "with.npz")
    fresh = MLIPALCalculator(model=conditioned.model, posterior=tmp_path / "with.npz")
    assert fresh.band_calibration == conditioned.band_calibration
    conditioned.band_calibration = None
    conditioned.save_posterior(tmp_path / "without.npz")  # what a file written before the band calibration holds
    assert MLIPALCalculator(model=conditioned.model, posterior=tmp_path / "without.npz").band_calibration is None
