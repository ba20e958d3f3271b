"""NEB: the trigger on a band, path profiles with uncertainty, NEBLearner rounds."""

import numpy as np
import pytest
from ase.build import molecule
from ase.mep import NEB
from ase.optimize import FIRE

from ase_mlipal import FrameStore, MLIPALCalculator, NEBLearner, path_profile
from ase_mlipal.features import per_structure
from ase_mlipal.neb import band
from ase_mlipal.trigger import UncertaintyTrigger

from .conftest import rattled


def formaldehyde_band(n_images=5):
    """H2CO -> CO + H2, IDPP-interpolated (no relaxation: the tiny model is not physical anyway)."""
    reactant = molecule("H2CO")
    product = reactant.copy()
    product.positions[2:] = [[0.0, 0.37, -2.6], [0.0, -0.37, -2.6]]  # the two H leave as H2
    return band(reactant, product, n_images)


@pytest.fixture()
def calc(tiny_model):
    calc = MLIPALCalculator(model=tiny_model)
    calc.add_reference(rattled(molecule("H2CO"), 10, stdev=0.02, seed=0))
    return calc


def test_band_check_takes_the_climbing_image_first_then_by_energy(calc, tmp_path):
    images = formaldehyde_band(7)
    for image in images:
        image.calc = calc.share()
    neb = NEB(images, climb=True, method="improvedtangent")
    energies, _ = calc.predict(images[1:-1])
    trigger = UncertaintyTrigger(calc, FrameStore(tmp_path / "f.db"), threshold=1e-6, atoms=neb, source="neb")
    assert trigger()  # every interior image is above a tiny threshold
    flagged_images = [row.image for row in trigger.store.rows("flagged")]
    assert flagged_images == list(1 + np.argsort(-energies))  # highest energy (the climber) first
    assert trigger.band_values.shape == (5,)
    assert all(row.source == "neb" and row.step == 0 for row in trigger.store.rows())


def test_a_flag_at_the_top_covers_near_identical_neighbours(calc, tmp_path):
    top = formaldehyde_band(7)[3]
    images = [top.copy()] + rattled(top, 5, stdev=1e-4, seed=1) + [top.copy()]
    neb = NEB(images, climb=True, method="improvedtangent")
    value = max(calc.uncertainty_from(f)["uncertainty"] for f in per_structure(calc.features(images[1:-1])))
    trigger = UncertaintyTrigger(calc, FrameStore(tmp_path / "f.db"), threshold=0.5 * value, atoms=neb)
    trigger()
    assert len(trigger.flagged) == 1  # the first flag settles the others below the threshold
    assert trigger.band_values.max() > trigger.threshold >= np.sort(trigger.band_values)[-2]


def test_path_profile_uncertainty_is_the_posterior_of_the_energy_difference(calc):
    images = formaldehyde_band(5)
    profile = path_profile(calc, images)
    energies = np.array([calc.get_potential_energy(image.copy()) for image in images])
    np.testing.assert_allclose(profile.energy, energies - energies[0], atol=1e-8)
    phi = np.concatenate([f.structure for f in per_structure(calc.features(images))])
    delta = phi - phi[0]
    covariance = calc.energy_posterior.scale * np.linalg.inv(calc.energy_posterior.precision())
    expected = np.sqrt(np.einsum("ij,jk,ik->i", delta, covariance, delta))
    np.testing.assert_allclose(profile.energy_std, expected, rtol=1e-6, atol=1e-10)
    top = int(np.argmax(profile.energy))
    assert profile.barrier == pytest.approx(profile.energy[top])
    # the std of a maximum of jointly Gaussian energies: at least the top image's when it dominates
    cov = np.einsum("ij,jk,lk->il", delta, covariance, delta)
    draws = np.random.default_rng(1).multivariate_normal(profile.energy, cov, size=20000, method="eigh")
    assert profile.barrier_std == pytest.approx(np.std(draws.max(axis=1)), rel=0.1, abs=1e-6)
    assert profile.s[0] == 0 and np.all(np.diff(profile.s) > 0)


def test_neb_learner_checks_the_climbing_image_and_never_claims_an_unverified_barrier(calc, tmp_path):
    """The tiny random model is wrong by eVs: it must not end confident, whatever the trigger says."""
    pytest.importorskip("tblite")
    import ase_mlipal

    learner = NEBLearner(calc, ase_mlipal.xtb_calculator, tmp_path / "run", formaldehyde_band(5), threshold=1e3,
                         max_rounds=1, steps=4, interval=2, references=rattled(molecule("H2CO"), 4, seed=2),
                         finetune_options={"epochs": 2, "replay": None}, optimizer=FIRE, progress=False)
    report = learner.run()
    assert all(r.n_flagged == 0 for r in report.rounds)  # a threshold nothing passes: the trigger is quiet
    assert not report.confident and len(report.rounds) == 2  # round 0 (pretrained) and round 1
    first = report.rounds[0]
    assert first.check.kind == "climbing_image" and not first.check.passed
    assert first.check.image == 1 + int(np.argmax(first.profile.energy[1:-1]))
    assert abs(first.check.energy_error) > learner.barrier_tolerance
    sources = sorted(row.source for row in learner.store.rows())
    assert sources.count("endpoint") == 2 and sources.count("verify") >= 1
    assert first.learning is not None and first.learning.n_train_frames >= 3  # endpoints + the failed check
    assert report.rounds[-1].learning is None
    assert report.verified_barrier_error == report.rounds[-1].check.energy_error
    assert len(report.table().splitlines()) == 1 + len(report.rounds)
    barrier, std = report.barrier
    assert np.isfinite(barrier) and std > 0
