"""Checks of a learner's model against the reference, and the choice of the best model."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import ase_mlipal
from ase_mlipal.learning.verification import (SADDLE_FMAX, Check, ModelChoice, allowed_outside, check_frame,
                                              forces_agree_together, verification_error)

from ..conftest import rattled, widen_force_sigma


def labelled_by(model, frames, energy_shift=0.0):
    calc = ase_mlipal.MLIPALCalculator(model=model)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy() + energy_shift, atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


@pytest.fixture()
def calc(tiny_model):
    # the posterior's own variance: the checks below put forces tens of eV/A off against the raw sigma of an
    # uncalibrated tiny model, which the distance inflation (unitless before calibration) would swamp
    calc = ase_mlipal.MLIPALCalculator(model=tiny_model, distance_aware=False)
    calc.condition(rattled(molecule("CH3OH"), 10, stdev=0.02, seed=0))
    return calc


def test_a_frame_the_model_reproduces_passes_and_a_shifted_barrier_fails(calc, tiny_model):
    anchor, frame = labelled_by(tiny_model, rattled(molecule("CH3OH"), 2, stdev=0.1, seed=1))
    exact = check_frame(calc, frame, 0, "climbing_image", anchor=anchor, tolerance=0.1)
    assert exact.passed and abs(exact.energy_error) < 1e-8 and exact.force_mae < 1e-8 and exact.force_coverage == 1
    shifted = labelled_by(tiny_model, [frame], energy_shift=-0.5)[0]  # the reference barrier is 0.5 eV lower
    wrong = check_frame(calc, shifted, 0, "climbing_image", anchor=anchor, tolerance=0.1)
    assert wrong.energy_error == pytest.approx(0.5) and not wrong.passed
    assert "beyond the tolerance" in wrong.reason
    # the predicted sigma is that of the difference to the anchor (path_profile)
    profile = ase_mlipal.path_profile(calc, [anchor, frame])
    assert wrong.energy_std == pytest.approx(profile.energy_std[1])


def test_a_ceiling_bounds_the_reference_difference_not_the_error(calc, tiny_model):
    """An audited image may err by more than a tolerance; it fails only when the reference lifts it above the top."""
    anchor, frame = labelled_by(tiny_model, rattled(molecule("CH3OH"), 2, stdev=0.1, seed=1))
    difference = frame.get_potential_energy() - anchor.get_potential_energy()
    below = check_frame(calc, frame, 0, "audit", anchor=anchor, ceiling=difference + 0.01)
    above = check_frame(calc, frame, 0, "audit", anchor=anchor, ceiling=difference - 0.01)
    assert below.passed and not above.passed
    assert f"puts it {difference:.3f} eV above the anchor" in above.reason
    assert below.energy_error == above.energy_error  # the ceiling judges the reference, not the model's error
    with pytest.raises(ValueError, match="pass anchor="):
        check_frame(calc, frame, 0, "audit", ceiling=difference - 0.01)  # a ceiling to nothing


def with_forces_pushed(calc, tiny_model, push):
    """A methanol frame labelled by ``tiny_model``, its reference forces moved by ``push`` (a function of the
    per-atom force sigma ``calc`` predicts there, shape (N,) -> (N, 3))."""
    frame = labelled_by(tiny_model, rattled(molecule("CH3OH"), 1, stdev=0.1, seed=2))[0]
    probe = frame.copy()
    probe.calc = calc
    probe.get_forces()
    pushed = frame.copy()
    pushed.calc = SinglePointCalculator(pushed, energy=frame.get_potential_energy(),
                                        forces=frame.get_forces() + push(calc.results["forces_uncertainty"]))
    return pushed


def test_forces_outside_two_sigma_fail_the_check(calc, tiny_model):
    pushed = with_forces_pushed(calc, tiny_model, lambda sigma: 5 * sigma[:, None] * np.ones(3))
    check = check_frame(calc, pushed, 0, "audit")
    assert check.force_coverage == 0 and not check.passed and "force components outside 2 sigma" in check.reason


@pytest.mark.parametrize("n_atoms", [1, 3, 4, 6, 7, 20, 100])
def test_allowed_outside_is_what_a_calibrated_model_rarely_exceeds(n_atoms):
    """Components outside 2 sigma, 5% each: the count allowed is passed by chance at most 1% of the time,
    never stricter than the 20% share, and equal to that share for large frames."""
    from scipy.stats import binom
    n = 3 * n_atoms
    allowed = allowed_outside(n)
    assert binom.sf(allowed, n, 0.05) <= 0.01 and allowed >= n // 5
    assert allowed == n // 5 or binom.sf(allowed - 1, n, 0.05) > 0.01  # not more than the 1% needs
    if n_atoms >= 7:
        assert allowed == n // 5
    with pytest.raises(ValueError, match="n_components"):
        allowed_outside(-1)


def test_a_small_frame_may_have_a_few_components_outside(calc, tiny_model):
    """Methanol (18 components): 4 outside 2 sigma pass (a calibrated model: ~1%), 5 fail."""
    def first(count):  # the first `count` components (atom by atom) pushed 5 sigma out
        return lambda sigma: np.where(np.arange(3 * len(sigma)) < count, 5 * np.repeat(sigma, 3), 0.0).reshape(-1, 3)

    checks = [check_frame(calc, with_forces_pushed(calc, tiny_model, first(count)), 0, "audit") for count in (4, 5)]
    assert checks[0].passed and checks[0].forces_agree and checks[0].force_coverage == pytest.approx(14 / 18)
    assert not checks[1].passed and not checks[1].forces_agree
    assert "5 of 18 force components outside 2 sigma (a calibrated model: at most 4)" in checks[1].reason
    # a check stored by an earlier version (no forces_agree) keeps the rule it was judged by: the share alone
    old = {k: v for k, v in checks[0].as_dict().items() if k != "forces_agree"}
    assert Check(**old).forces_agree is False


def test_audits_that_each_pass_can_fail_together():
    """Five 3-atom audits with 2 of 9 components outside each pass one by one (allowed 2) but not pooled
    (8 of 45: a calibrated model exceeds 6 of 45 under 1% of the time); 1 of 9 each pools to 5 of 45, fine."""
    from scipy.stats import binom

    def audit(outside, n=9):
        return Check(1, "audit", 0, 0.0, 0.1, 0.05, 1 - outside / n, passed=outside <= allowed_outside(n),
                     forces_agree=outside <= allowed_outside(n), forces_outside=outside, force_components=n)

    assert all(audit(2).passed for _ in range(5)) and binom.sf(6, 45, 0.05) <= 0.01 < binom.sf(5, 45, 0.05)
    assert not forces_agree_together([audit(2)] * 4 + [audit(0)])  # 8 of 45
    assert forces_agree_together([audit(1)] * 5) and forces_agree_together([audit(2)] * 3 + [audit(0)] * 2)
    old = Check(1, "audit", 0, 0.0, 0.1, 0.05, 0.5, passed=False)  # an earlier version's check: no counts
    assert old.forces_outside is None and forces_agree_together([old]) and forces_agree_together([])


def test_a_worse_model_is_rejected_and_a_better_one_accepted(tiny_model):
    other = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                  radial_mlp=(16,), atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0],
                                  shift=0.1, scale=0.5, seed=7)
    frames = labelled_by(tiny_model, rattled(molecule("CH3OH"), 4, stdev=0.1, seed=3))
    assert verification_error(tiny_model, frames) == pytest.approx(0.0, abs=1e-10)
    assert verification_error(other, frames) > 0.01
    choice = ModelChoice()
    assert not choice.consider(1, tiny_model, other, frames)  # worse on the checks: kept round 0
    assert choice.round == 0 and "kept round 0" in choice.history[-1]["reason"]
    assert choice.consider(2, other, tiny_model, frames, anchor=frames[0])  # better: swapped in
    assert choice.round == 2 and choice.history[-1]["accepted"]
    assert ModelChoice().consider(1, tiny_model, other, [])  # no checks yet: the fine-tune is taken
    energies = np.array([a.get_potential_energy() for a in frames])
    assert verification_error(tiny_model, frames[1:], anchor=frames[0]) == pytest.approx(0.0, abs=1e-8)
    assert np.ptp(energies) > 0


def test_a_fine_tune_within_the_tolerance_is_taken_beyond_it_rejected(tiny_model):
    """An incumbent that meets a check exactly (a climbing image beside the reactant) must not block learning."""
    other = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                  radial_mlp=(16,), atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0],
                                  shift=0.1, scale=0.5, seed=7)
    frames = labelled_by(tiny_model, rattled(molecule("CH3OH"), 4, stdev=0.1, seed=3))
    error = verification_error(other, frames[1:], anchor=frames[0])
    assert error > 0.01
    assert not ModelChoice().consider(1, tiny_model, other, frames[1:], anchor=frames[0], tolerance=0.5 * error)
    choice = ModelChoice()
    assert choice.consider(1, tiny_model, other, frames[1:], anchor=frames[0], tolerance=2.0 * error)
    assert choice.round == 1 and "the tolerance" in choice.history[-1]["reason"]


def test_a_climbing_image_must_be_a_saddle_of_the_reference(calc, tiny_model):
    anchor, frame = labelled_by(tiny_model, rattled(molecule("CH3OH"), 2, stdev=0.1, seed=4))
    forces = frame.get_forces()
    tangent = np.zeros_like(forces)
    tangent[0, 2] = 1.0
    climbing = forces.copy()
    climbing[0, 2] *= -1.0  # F - 2 (F . t) t flips the force along the tangent
    largest = np.linalg.norm(climbing, axis=1).max()
    for bound, confirmed in ((0.5 * largest, False), (2.0 * largest, True)):
        check = check_frame(calc, frame, 0, "climbing_image", anchor=anchor, tangent=tangent, saddle_fmax=bound)
        assert check.saddle_force == pytest.approx(largest)
        assert ("not a saddle" in check.reason) is not confirmed
        assert check.reference_saddle is confirmed
    flat = frame.copy()  # the reference says: a stationary point (and the model agrees)
    flat.calc = SinglePointCalculator(flat, energy=frame.get_potential_energy(), forces=np.zeros_like(forces))
    stationary = check_frame(calc, flat, 0, "climbing_image", tangent=tangent)
    assert stationary.saddle_force == 0.0 and stationary.reference_saddle is True
    steep = frame.copy()  # the reference pushes atom 0 off the path hard: no saddle there
    steep_forces = np.zeros_like(forces)
    steep_forces[0, 0] = 50.0
    steep.calc = SinglePointCalculator(steep, energy=frame.get_potential_energy(), forces=steep_forces)
    assert check_frame(calc, steep, 0, "climbing_image", tangent=tangent).reference_saddle is False


def test_the_saddle_test_does_not_widen_with_sigma(calc, tiny_model, monkeypatch):
    """A sigma ten times larger lets no larger climbing force of the reference pass as a saddle."""
    anchor, frame = labelled_by(tiny_model, rattled(molecule("CH3OH"), 2, stdev=0.1, seed=4))
    tangent = np.zeros((len(frame), 3))
    tangent[0, 2] = 1.0
    sloped = frame.copy()  # the reference: a climbing force just above the bound on atom 1
    forces = np.zeros((len(frame), 3))
    forces[1, 0] = 1.2 * SADDLE_FMAX
    sloped.calc = SinglePointCalculator(sloped, energy=frame.get_potential_energy(), forces=forces)
    narrow = check_frame(calc, sloped, 0, "climbing_image", tangent=tangent)
    widen_force_sigma(monkeypatch, calc, 10.0)
    calc.reset()
    wide = check_frame(calc, sloped, 0, "climbing_image", tangent=tangent)
    assert 0.05 + 2.0 * np.sqrt(3.0) * calc.results["forces_uncertainty"][1] > forces[1, 0]  # the old bound: passed
    assert narrow.reference_saddle is False and wide.reference_saddle is False
    assert "atom 1" in wide.reason and f"allowed {SADDLE_FMAX:.2f}" in wide.reason
    assert check_frame(calc, frame, 0, "audit", anchor=anchor).reference_saddle is None  # no tangent: not asked
