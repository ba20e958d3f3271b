"""NEB: the trigger on a band, path profiles with uncertainty, NEBLearner rounds."""

import json

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.build import molecule
from ase.mep import NEB
from ase.optimize import FIRE

from ase_mlipal import (EnergyRunaway, FrameStore, MLIPALCalculator, NEBLearner, PhysicalGuard, UnphysicalFrame,
                        path_profile)
from ase_mlipal.uncertainty.features import per_structure
from ase_mlipal.learning.neb_learner import band
from ase_mlipal.learning.trigger import UncertaintyTrigger
from ase_mlipal.learning.labelling import LabelReport
from ase_mlipal.learning.learning_run import RoundRecord

from ..conftest import assert_no_label_repeated, rattled, widen_force_sigma


def formaldehyde_band(n_images=5):
    """H2CO -> CO + H2, IDPP-interpolated (no relaxation: the tiny model is not physical anyway)."""
    reactant = molecule("H2CO")
    product = reactant.copy()
    product.positions[2:] = [[0.0, 0.37, -2.6], [0.0, -0.37, -2.6]]  # the two H leave as H2
    return band(reactant, product, n_images)


def formaldehyde_calc(model, distance_aware=None) -> MLIPALCalculator:
    """A calculator of ``model`` conditioned on rattled formaldehyde (the band's start is known)."""
    calc = MLIPALCalculator(model=model, distance_aware=distance_aware)
    calc.condition(rattled(molecule("H2CO"), 10, stdev=0.02, seed=0))
    return calc


@pytest.fixture()
def calc(tiny_model):
    return formaldehyde_calc(tiny_model)


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


def test_bands_of_other_atoms_are_refused_naming_the_image(calc, tmp_path):
    images = formaldehyde_band(5)
    swapped = images[3].copy()
    swapped.numbers[[0, 2]] = swapped.numbers[[2, 0]]  # O and H exchanged: same count, other order
    shorter = images[2][:-1]
    with pytest.raises(ValueError, match=r"image 3's atom 0 is H where image 0's is O"):
        path_profile(calc, images[:3] + [swapped] + images[4:])
    with pytest.raises(ValueError, match="image 2 has 3 atoms where image 0 has 4"):
        path_profile(calc, images[:2] + [shorter] + images[3:])
    with pytest.raises(ValueError, match="image 2 has 3 atoms"):
        NEBLearner(calc, None, tmp_path, images[:2] + [shorter] + images[3:], 0.1)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError, match="image 1's atom 0"):
        band(images[0], swapped, 5)
    chlorinated = [image.copy() for image in images]
    for image in chlorinated:
        image.numbers[3] = 17  # an element the model lacks, on every image
    with pytest.raises(ValueError, match=r"image 0: The model does not know element\(s\) \['Cl'\] \(atoms \[3\]\)"):
        NEBLearner(calc, None, tmp_path, chlorinated, 0.1)
    assert not any(tmp_path.iterdir())


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


@pytest.mark.filterwarnings("error:set_model conditioned")  # the swap conditions on what the posterior held
def test_neb_learner_checks_the_climbing_image_and_never_claims_an_unverified_barrier(calc, tmp_path):
    """The tiny random model is wrong by eVs: it must not end confident, whatever the trigger says."""
    pytest.importorskip("tblite")
    import ase_mlipal

    learner = NEBLearner(calc, ase_mlipal.xtb_calculator, tmp_path / "run", formaldehyde_band(5), threshold=1e3,
                         max_rounds=1, steps=4, interval=2,
                         conditioning=rattled(molecule("H2CO"), 10, stdev=0.02, seed=0),
                         finetune_options={"epochs": 2, "replay": None}, optimizer=FIRE, progress=False)
    report = learner.run()
    assert all(r.n_flagged == 0 for r in report.rounds)  # a threshold nothing passes: the trigger is quiet
    assert not report.confident
    accepted = [c["accepted"] for c in report.model_choice]
    assert len(accepted) == 1 and len(report.rounds) == 1 + accepted[0]  # a rejected fine-tune reruns no band
    first = report.rounds[0]
    assert first.check.kind == "climbing_image" and not first.check.passed
    assert report.checks[:len(first.checks)] == first.checks and first.checks[0] is first.check  # round by round
    assert len(report.checks) == sum(len(r.checks) for r in report.rounds)
    assert first.check.image == 1 + int(np.argmax(first.profile.energy[1:-1]))
    assert abs(first.check.energy_error) > learner.barrier_tolerance
    sources = sorted(row.source for row in learner.store.rows())
    assert sources.count("endpoint") == 2 and sources.count("verify") >= 1
    assert first.learning is not None and first.learning.n_train_frames >= 3  # endpoints + the failed check
    assert (report.rounds[-1].learning is None) == accepted[0]
    assert report.stopped == "" and report.ended.startswith("max_rounds=1 reached before a band was verified")
    assert ("were rejected by the model choice" in report.ended) == (not accepted[0])
    assert f"ended: {report.ended}" in report.table()
    errors = np.array([r.verified_error for r in report.rounds])
    unconfirmed = np.array([r.top_unconfirmed for r in report.rounds])
    kind = unconfirmed == report.final.top_unconfirmed  # chosen among bands at a reference saddle, or among the others
    as_good = np.flatnonzero(kind & (errors <= np.nanmin(errors[kind]) + learner.barrier_tolerance))
    assert report.final_round == as_good[-1]  # the latest band its checks show least off, at the tolerance
    if unconfirmed.any() and not unconfirmed.all():  # a band at a saddle only loses to one it is worse than
        at_saddle = np.nanmin(errors[~unconfirmed]) <= min(r.possible_error for r in report.rounds if r.top_unconfirmed)
        assert bool(at_saddle) != report.final.top_unconfirmed
    assert report.verified_barrier_error == report.final.check.energy_error
    lines = report.table().splitlines()
    rows, notes = lines[1:1 + len(report.rounds)], lines[1 + len(report.rounds):]
    assert [int(row.split()[0]) for row in rows] == [r.round for r in report.rounds]
    assert any("not a saddle of the reference" in n for n in notes) == report.final.top_unconfirmed
    barrier, std = report.barrier
    assert np.isfinite(barrier) and std > 0


def test_a_band_is_judged_on_the_posterior_the_flags_do_not_enter(tiny_model, calc, tmp_path):
    """The trigger's flags settle their frames at once in what it has seen; the round's profile and checks, and
    the calculator, do not count them."""
    images = formaldehyde_band(5)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0]), tmp_path / "run", images,
                         threshold=1e-6, max_rounds=0, steps=4, interval=1, conditioning=[], progress=False)
    report = learner.run()
    first = report.rounds[0]
    assert first.n_flagged > 0
    fresh = path_profile(formaldehyde_calc(tiny_model), report.images)  # the posterior before any flag
    np.testing.assert_allclose(first.profile.energy_std, fresh.energy_std, rtol=1e-6)
    reported = path_profile(learner.calc, report.images)
    np.testing.assert_allclose(reported.energy_std, fresh.energy_std, rtol=1e-6)
    model = learner.calc.uncertainty_model
    with model.posteriors_of(model.seen()):  # the flags read as knowledge
        settled = path_profile(learner.calc, report.images)
    assert np.all(settled.energy_std[1:-1] < fresh.energy_std[1:-1])
    assert first.check.energy_std == pytest.approx(fresh.energy_std[first.check.image], rel=1e-6)


def test_posteriors_of_needs_a_snapshot_and_puts_the_posteriors_back(tiny_model, calc):
    model = calc.uncertainty_model
    before = model.snapshot()
    calc.condition([formaldehyde_band(5)[2]])
    image = formaldehyde_band(5)[2]
    image.calc = calc
    conditioned = calc.get_property("energy_uncertainty", image)
    with model.posteriors_of(before):
        image.calc = calc
        assert calc.get_property("energy_uncertainty", image) > conditioned
    assert calc.get_property("energy_uncertainty", image) == pytest.approx(conditioned)
    with pytest.raises(ValueError, match="snapshot of this model"):
        with model.posteriors_of(MLIPALCalculator(model=tiny_model).uncertainty_model):
            pass
    share = calc.share()
    share_image = image.copy()
    share_image.calc = share
    with pytest.raises(RuntimeError, match="inside"):
        with model.posteriors_of(before):
            assert share.get_property("energy_uncertainty", share_image) > conditioned  # a share sees the swap
            raise RuntimeError("inside")
    assert calc.get_property("energy_uncertainty", image) == pytest.approx(conditioned)  # back after an error


def test_the_final_band_is_the_latest_whose_checks_are_within_the_tolerance_of_the_least_off(calc, tmp_path):
    """Checks 0.30, 0.12, 0.13 eV off (tolerance 0.1): the last band is as good as the second at the tolerance
    and its model learned more; 0.30, 0.12, 0.25: the second. A band a guard cut short is never chosen."""
    from types import SimpleNamespace

    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", formaldehyde_band(5), threshold=1e3,
                         conditioning=[], progress=False)
    learner.state.update(confident=False, stopped="")
    learner.calc.set_model = learner.calc.load_posterior = learner._restore_band = lambda *a, **k: None

    def rounds(*errors, cut=()):
        return [SimpleNamespace(verified_error=e, possible_error=e, top_unconfirmed=False,
                                runaway="cut" if k in cut else "", cut_short=k in cut, round=k, model_round=k)
                for k, e in enumerate(errors)]

    assert learner._best_verified(rounds(0.30, 0.12, 0.13)) == 2
    assert learner._best_verified(rounds(0.30, 0.12, 0.25)) == 1
    assert learner._best_verified(rounds(0.30, 0.12, 0.13, cut=(2,))) == 1
    assert learner._best_verified(rounds(float("nan"), 0.5)) == 1


@pytest.mark.parametrize("band_start", ["initial", "previous"])
def test_each_band_starts_where_band_start_says(calc, tmp_path, monkeypatch, band_start):
    """"initial": every round relaxes from the given band (as a direct reference NEB would start);
    "previous": from where the last round left it. Learning is stubbed (always swapped in)."""
    from ase.calculators.emt import EMT

    from ase_mlipal.learning import neb_learner
    from ase_mlipal.learning.labelling import LabelReport
    from ase_mlipal.learning.learning_run import RoundRecord

    starts = []

    def moving_relax(images, *args, **kwargs):
        starts.append(np.array([image.positions.copy() for image in images]))
        for image in images[1:-1]:
            image.positions += 0.01  # the band moves: the next round can tell where it started
        return False, 1

    monkeypatch.setattr(neb_learner, "relax_band", moving_relax)
    monkeypatch.setattr(NEBLearner, "_onto_the_pass", lambda self: "")  # the stub's band has no model on it
    monkeypatch.setattr(NEBLearner, "_lower_route", lambda self, trigger, number: None)
    monkeypatch.setattr(NEBLearner, "learn", lambda self, number, trigger, anchor=None:
                        RoundRecord(number, LabelReport(), 0, accepted=True))
    images = formaldehyde_band(5)
    learner = NEBLearner(calc, EMT, tmp_path / "run", images, threshold=1e3, max_rounds=2, conditioning=[],
                         band_start=band_start, progress=False)
    report = learner.run()
    assert len(report.rounds) == 3 and len(starts) == 3
    initial = np.array([image.positions for image in images])
    for k, start in enumerate(starts):
        expected = initial if band_start == "initial" else initial + 0.01 * k * (np.arange(5) % 4 != 0)[:, None, None]
        np.testing.assert_allclose(start, expected, atol=1e-9)
    with pytest.raises(ValueError, match="band_start"):
        NEBLearner(calc, EMT, tmp_path / "other", images, threshold=1.0, band_start="last")


def test_the_band_maximum_is_checked_where_the_reference_could_top_the_climbing_image(calc, tmp_path):
    """A barrier is the band's maximum: the other image with the highest energy + 2 sigma is labelled and checked."""
    from ase.calculators.emt import EMT

    learner = NEBLearner(calc, EMT, tmp_path / "run", formaldehyde_band(5), threshold=1e3, max_rounds=0, steps=2,
                         barrier_tolerance=1e3, conditioning=[], progress=False)  # any rival qualifies
    report = learner.run()
    first = report.rounds[0]
    energy, std = first.profile.energy, first.profile.energy_std
    top = 1 + int(np.argmax(energy[1:-1]))
    rival = max((k for k in (1, 2, 3) if k != top), key=lambda k: energy[k] + 2 * std[k])
    assert first.check.image == top and first.band_check.kind == "band_max" and first.band_check.image == rival
    audited = [] if first.audit is None else [first.audit.image]
    assert sorted(row.image for row in learner.store.rows() if row.source == "verify") == sorted([top, rival] + audited)
    above = [] if first.audit is None else [first.profile.energy[first.audit.image] - first.audit.energy_error
                                            - first.profile.barrier]
    assert first.verified_error == pytest.approx(max([abs(first.check.energy_error),
                                                      abs(first.band_check.energy_error), 0.0] + above))
    assert not report.confident or first.band_check.passed
    strict = NEBLearner(calc, EMT, tmp_path / "strict", formaldehyde_band(5), threshold=1e3, max_rounds=0, steps=2,
                        barrier_tolerance=1e-9, conditioning=[], progress=False)
    bound = energy + 2 * std
    expect_rival = bound[rival] >= energy[top] - 1e-9
    assert (strict.run().rounds[0].band_check is not None) == expect_rival


def test_the_least_certain_image_left_is_audited(calc, tmp_path):
    """Beside the climbing image and the band maximum, the interior image with the largest sigma is checked."""
    from ase.calculators.emt import EMT

    learner = NEBLearner(calc, EMT, tmp_path / "run", formaldehyde_band(7), threshold=1e3, max_rounds=0, steps=2,
                         barrier_tolerance=1e3, conditioning=[], progress=False)
    first = learner.run().rounds[0]
    std = first.profile.energy_std
    checked = {first.check.image, first.band_check.image}
    left = [k for k in range(1, 6) if k not in checked]
    assert first.audit.kind == "audit" and first.audit.image == max(left, key=lambda k: std[k])
    assert sorted(row.image for row in learner.store.rows() if row.source == "verify") == sorted(
        checked | {first.audit.image})
    assert first.checks == [first.check, first.band_check, first.audit]
    three = NEBLearner(calc, EMT, tmp_path / "three", formaldehyde_band(5), threshold=1e3, max_rounds=0, steps=2,
                       barrier_tolerance=1e3, conditioning=[], progress=False).run().rounds[0]
    assert three.audit is not None and three.audit.image not in (three.check.image, three.band_check.image)


def test_an_audit_above_the_top_counts_in_the_verified_error():
    """A barrierless band whose audited image the reference puts 4.6 eV up is 4.6 eV off, however right its top."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    energy = np.array([0.0, 0.01, -1.2, -1.2, -0.4])  # the model's band: a well between the endpoints
    profile = PathProfile("r0", np.arange(5.0), energy, np.full(5, 0.3), np.zeros(5), barrier=0.01, barrier_std=0.05)
    top = Check(0, "climbing_image", 1, energy_error=0.002, energy_std=0.05, force_mae=0.0, force_coverage=1.0,
                passed=True, image=1)
    for reference, expected in ((4.6, 4.59), (-1.0, 0.002)):
        audit = Check(0, "audit", 2, energy_error=-1.2 - reference, energy_std=0.3, force_mae=0.0, force_coverage=1.0,
                      passed=reference < 0.11, image=2)
        band = NEBRound(0, profile, True, 10, 0, top, audit=audit)
        assert band.verified_error == pytest.approx(expected)
        # the reported sigma: the predicted one with what the checks found, in quadrature
        assert NEBReport([band], final_round=0).barrier == pytest.approx((0.01, np.hypot(0.05, expected)))
    unlabelled = Check(0, "audit", 2, *(float("nan"),) * 3, 0.0, passed=False, image=2)  # the reference failed
    band = NEBRound(0, profile, True, 10, 0, top, audit=unlabelled)
    assert np.isnan(band.verified_error)  # unverified, not 0
    assert NEBReport([band], final_round=0).barrier == pytest.approx((0.01, 0.05))


def test_a_top_the_reference_does_not_confirm_as_a_saddle_is_reported():
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    profile = PathProfile("r0", np.arange(3.0), np.array([0.0, 1.0, 0.2]), np.full(3, 0.1), np.zeros(3),
                          barrier=1.0, barrier_std=0.1)
    lines = {}
    for saddle in (True, False, None):
        top = Check(0, "climbing_image", 1, energy_error=0.05, energy_std=0.1, force_mae=0.0, force_coverage=1.0,
                    passed=bool(saddle), image=1, reference_saddle=saddle)
        band = NEBRound(0, profile, True, 10, 0, top)
        assert band.top_unconfirmed is (saddle is False)
        lines[saddle] = NEBReport([band], final_round=0).table()
    assert "not a saddle of the reference" in lines[False]
    assert "not a saddle of the reference" not in lines[True] + lines[None]


@pytest.mark.parametrize("product", [0.2, 0.6])
def test_an_unconfirmed_top_bounds_the_barrier_from_above_only(product):
    """A band over a pass the reference does not have: its maximum on the reference is an upper bound of the
    reference's barrier (the lowest maximum over all paths); below, only the endpoints bound it."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    profile = PathProfile("r0", np.arange(3.0), np.array([0.0, 1.0, product]), np.full(3, 0.1), np.zeros(3),
                          barrier=1.0, barrier_std=0.1)
    std = np.hypot(0.1, 0.05)  # predicted sigma and the check's error in quadrature
    for saddle in (True, False):
        top = Check(0, "climbing_image", 1, energy_error=0.05, energy_std=0.1, force_mae=0.0, force_coverage=1.0,
                    passed=saddle, image=1, reference_saddle=saddle)
        band = NEBRound(0, profile, True, 10, 0, top)
        report = NEBReport([band], final_round=0)
        assert report.barrier == pytest.approx((1.0, std))  # the estimate itself is the band's
        assert band.lowest_barrier == pytest.approx(max(0.0, product - 0.2))
        if saddle:
            assert band.possible_error == pytest.approx(0.05)
            assert report.barrier_interval == pytest.approx((1.0 - 2 * std, 1.0 + 2 * std))
            low = NEBReport([NEBRound(0, PathProfile("r", np.arange(3.0), np.array([0.0, 0.1, -0.5]), np.full(3, 0.1),
                                                     np.zeros(3), barrier=0.1, barrier_std=0.1), True, 10, 0, top)],
                            final_round=0).barrier_interval[0]
            assert low == 0.0  # a barrier is never below the first endpoint
        else:
            assert band.possible_error == pytest.approx(1.0 - band.lowest_barrier)
            assert report.barrier_interval == pytest.approx((band.lowest_barrier, 1.0 + 2 * std))
            assert f"[{band.lowest_barrier:.2f}, {1.0 + 2 * std:.2f}] eV" in report.table()


@pytest.mark.parametrize("lower_barrier, reaches", [(3.8, True), (5.4, False)])
def test_an_earlier_band_crossing_lower_widens_the_final_interval_down_to_it(lower_barrier, reaches):
    """A final band at a saddle of the reference, 5.76 eV, and an earlier band whose checks agree at
    ``lower_barrier``: the barrier is the lowest pass, so the interval reaches down to the earlier band's when
    that band's whole 2-sigma interval lies below the final one's; a band cut short by a guard never counts."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    def checked_band(number, barrier, runaway=""):
        profile = PathProfile(f"r{number}", np.arange(3.0), np.array([0.0, barrier, 0.2]), np.full(3, 0.1),
                              np.zeros(3), barrier=barrier, barrier_std=0.1)
        top = Check(number, "climbing_image", number + 1, energy_error=0.1, energy_std=0.1, force_mae=0.0,
                    force_coverage=1.0, passed=False, image=1, reference_saddle=True)
        return NEBRound(number, profile, True, 10, 0, top, runaway=runaway)

    std = np.hypot(0.1, 0.1)
    earlier, final = checked_band(0, lower_barrier), checked_band(1, 5.76)
    report = NEBReport([earlier, final], final_round=1)
    assert report.barrier == pytest.approx((5.76, std))  # the estimate stays the final band's
    if reaches:
        assert report.lower_crossing is earlier
        assert report.barrier_interval == pytest.approx((lower_barrier - 2 * std, 5.76 + 2 * std))
        assert "the band of round 0 crossed lower (3.80 ± 0.14 eV" in report.table()
    else:  # 5.4 + 2 sigma reaches into the final band's interval: no evidence of a lower pass
        assert report.lower_crossing is None
        assert report.barrier_interval == pytest.approx((5.76 - 2 * std, 5.76 + 2 * std))
    cut_short = NEBReport([checked_band(0, lower_barrier, runaway="a guard stopped it"), final], final_round=1)
    assert cut_short.lower_crossing is None


def test_a_band_at_a_saddle_of_the_reference_is_preferred_to_one_whose_checks_agree_over_another_pass(calc,
                                                                                                      tmp_path):
    """Formic acid -> CO2 + H2 in the benchmark: a band at an xTB saddle 0.18 eV off, a later one whose top is no
    xTB saddle but agrees within 0.07 eV (its barrier was 0.48 eV above xTB's). The first is the answer; a
    confirmed band further off than the unconfirmed one could be is not."""
    from ase_mlipal.learning.neb_learner import NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", formaldehyde_band(5), threshold=1e3,
                         conditioning=[], progress=False)
    learner.state.update(confident=False, stopped="")
    learner.calc.set_model = learner.calc.load_posterior = learner._restore_band = lambda *a, **k: None

    def band(number, barrier, error, saddle):
        profile = PathProfile("r", np.arange(3.0), np.array([0.0, barrier, 0.1]), np.full(3, 0.05), np.zeros(3),
                              barrier=barrier, barrier_std=0.1)
        top = Check(number, "climbing_image", 1, energy_error=error, energy_std=0.1, force_mae=0.0,
                    force_coverage=1.0, passed=False, image=1, reference_saddle=saddle)
        return NEBRound(number, profile, True, 10, 0, top, model_round=number)

    assert learner._best_verified([band(0, 2.95, -0.18, True), band(1, 3.60, -0.07, False)]) == 0
    assert learner._best_verified([band(0, 2.95, -0.18, True), band(1, 3.60, -0.07, True)]) == 1
    assert learner._best_verified([band(0, 2.95, -4.0, True), band(1, 3.60, -0.07, False)]) == 1
    # ethanol in the benchmark: among bands over other passes the checks decide, not the lower barrier
    assert learner._best_verified([band(0, 2.0, -4.0, True), band(1, 3.51, -0.22, False),
                                   band(2, 3.45, -0.65, False)]) == 1


@pytest.mark.parametrize("kernel", ["activation", "force_ntk"])
def test_confidence_judges_the_final_band_on_the_posterior_its_relaxation_started_with(tiny_model, tmp_path,
                                                                                      monkeypatch, kernel):
    """A flag settles its own frame below the threshold at once; that must not make the final band look certain.
    A force kernel runs the same band (its trigger stores no per-atom energy uncertainty, which it has not)."""
    from ase.calculators.emt import EMT

    calc = MLIPALCalculator(model=tiny_model, kernel=kernel)
    calc.condition(rattled(molecule("H2CO"), 10, stdev=0.02, seed=0))

    from ase_mlipal.learning import neb_learner
    from ase_mlipal.learning.verification import Check

    def relax(images, calc, trigger, **kwargs):
        for image in images:
            image.calc = calc.share()
        neb = NEB(list(images), climb=True, method="improvedtangent")
        trigger(neb, step=0)  # flags (and settles) the band
        trigger(neb, step=10)  # the same band again: now below the threshold on the settled posterior
        return True, 10

    seen = {}

    def passing(self, frame, number, kind, **options):
        seen[kind] = options
        return Check(number, kind, frame.info["store_id"], 0.0, 0.1, 0.0, 1.0, passed=True, image=frame.info["image"])

    monkeypatch.setattr(neb_learner, "relax_band", relax)
    monkeypatch.setattr(NEBLearner, "check", passing)
    images = formaldehyde_band(5)
    values = [calc.uncertainty_from(f)["uncertainty"] for f in per_structure(calc.predict(images[1:-1], rows=False)[1])]
    for threshold, confident in ((0.5 * min(values), False), (2.0 * max(values), True)):
        learner = NEBLearner(calc.share(), EMT, tmp_path / f"run{confident}", images, threshold=threshold,
                             max_rounds=0, conditioning=[], progress=False)
        report = learner.run()
        first = report.rounds[0]
        assert report.confident is confident and first.quiet is confident and first.converged
        assert (first.n_flagged > 0) is not confident
        if not confident and kernel == "activation":  # a force kernel's flag need not settle in one step
            trigger = UncertaintyTrigger(learner.calc, learner.store, threshold)
            assert trigger.last_value is None and max(trigger.score(a) for a in images[1:-1]) < threshold  # settled
    tolerance = learner.barrier_tolerance
    assert seen["audit"] == {"anchor": seen["audit"]["anchor"],
                             "ceiling": pytest.approx(first.profile.barrier + tolerance)}
    assert seen["climbing_image"]["tolerance"] == tolerance and "ceiling" not in seen["climbing_image"]


def test_the_energy_guard_judges_each_round_from_its_own_start(calc, tmp_path):
    """A later model that prices the (physical) initial band high is not stopped at step 0 as unphysical."""
    from ase.calculators.emt import EMT

    from ase_mlipal.guards import PhysicalGuard

    images = formaldehyde_band(5)
    guard = PhysicalGuard([images[0], images[-1]], max_energy=-1.0)
    guard.initial_top = -100.0  # as if an earlier round's model had put this band far lower
    learner = NEBLearner(calc, EMT, tmp_path / "run", images, threshold=1e3, max_rounds=0, steps=0, guard=guard,
                         conditioning=[], progress=False)
    report = learner.run()
    assert report.stopped == "" and len(report.rounds) == 1
    assert guard.initial_top == pytest.approx(report.rounds[0].profile.energy[1:].max(), abs=1e-6)


class CountingReference:
    """A reference that must not be called (counts calls, raises)."""

    calls = 0

    def __call__(self):
        CountingReference.calls += 1
        raise AssertionError("the reference was called on an unphysical band")


def test_a_fragmenting_band_is_stopped_and_nothing_is_labelled(calc, tmp_path):
    images = formaldehyde_band(5)
    images[2].positions[2:] += [[0.0, 9.0, 0.0], [0.0, -9.0, 0.0]]  # CO + H + H: more than CO + H2
    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e-6, max_rounds=2,
                         steps=4, conditioning=[], progress=False)
    report = learner.run()
    assert report.stopped.startswith("round 0, NEB step 0, image 2: 3 fragments")
    assert "atom 2 (H)" in report.stopped and not report.confident and report.rounds == []
    counts = learner.store.counts()
    assert counts["unphysical"] == 1 and counts["labelled"] == counts["flagged"] == counts["verified"] == 0
    row = next(learner.store.rows("unphysical"))
    assert "3 fragments" in row.error and CountingReference.calls == 0
    assert NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e-6, max_rounds=2,
                      steps=4, conditioning=[], progress=False).run().stopped == report.stopped  # resumed: stopped


class RunsAwayInRoundZero(PhysicalGuard):
    """A guard that reports an energy runaway of image 2 at NEB step 2 of round 0, whatever the energies."""

    def check_band(self, images, where, energies=None):
        super().check_band(images, where)
        if where == "round 0, NEB step 2":
            raise EnergyRunaway(f"{where}, image 2: 50 eV", atoms=images[2], where=f"{where}, image 2", image=2,
                                energy=50.0)


class ModelAsReference(Calculator):
    """The model itself as the reference, its energies raised by ``shift`` eV and every force component by
    ``force_shift`` eV/A away from the band's first image."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model, first, shift=0.0, force_shift=0.0):
        super().__init__()
        self.model, self.first, self.shift, self.force_shift = model, first, shift, force_shift

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.calc = MLIPALCalculator(model=self.model)
        moved = not np.allclose(probe.positions, self.first.positions)
        self.results = {"energy": probe.get_potential_energy() + self.shift * moved,
                        "forces": probe.get_forces() + self.force_shift * moved}


@pytest.mark.parametrize("max_energy, shift, force_shift, stops", [
    (1e3, 1e-3, 0.0, False), (-1e3, 1e-3, 0.0, True), (-1e3, 50.0, 0.0, False), (-1e3, 1e-3, 50.0, False),
    (-1e3, 50.0, 50.0, False)])
def test_an_energy_runaway_asks_the_reference_before_it_stops(tiny_model, tmp_path, max_energy, shift,
                                                              force_shift, stops):
    """The model's runaway image is labelled as a check: the run stops only if the reference too puts it
    above ``max_energy`` and the model is right there, energy and forces; a model wrong about the climb, or
    whose forces drove the band up, learns from it."""
    # the posterior's own variance: forces 50 eV/A off must lie outside the raw 2 sigma of this uncalibrated
    # tiny model, which the distance inflation (unitless before calibration) does not promise
    calc = MLIPALCalculator(model=tiny_model, distance_aware=False)
    images = formaldehyde_band(5)
    guard = RunsAwayInRoundZero([images[0], images[-1]], max_energy=max_energy)
    reference = lambda: ModelAsReference(tiny_model, images[0], shift, force_shift)  # noqa: E731
    learner = NEBLearner(calc, reference, tmp_path / "run", images,
                         threshold=1e3, max_rounds=1, steps=4, guard=guard, conditioning=[], progress=False,
                         finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    climbing = [c for c in learner.checks if c.kind == "climbing_image"]
    assert climbing[0].round == 0 and climbing[0].image == 2 and climbing[0].step == 2
    assert climbing[0].energy_error == pytest.approx(-shift, abs=1e-6)
    runaway_row = learner.store.db.get(id=climbing[0].store_id)
    if stops:  # the reference confirms and the model is right there: stopped, the frame never trained on
        assert report.stopped.startswith("round 0, NEB step 2, image 2: 50 eV (the reference: ")
        assert "through an intermediate image" in report.stopped  # what the user can do about it
        assert report.rounds == [] and runaway_row.status == "unphysical" and "50 eV" in runaway_row.error
        assert climbing[0].store_id not in {a.info["store_id"] for a in learner.check_frames()}
        assert not climbing[0].passed and climbing[0].reason == "an energy runaway the reference confirms"
    else:  # the reference finds it low, or the model wrong there: the run learns from it and goes on
        why = ("not a runaway of the chemistry" if max_energy > 0 else
               "the model is wrong about this climb, and the model's forces there are wrong (100% of components"
               if shift > 1 and force_shift else "the model is wrong about this climb; its check" if shift > 1
               else "the model's forces there are wrong (100% of components outside 2 sigma")
        assert report.stopped == "" and len(report.rounds) == 2
        assert report.rounds[0].runaway.startswith("round 0, NEB step 2, image 2: the model put the image 50.0 eV")
        assert why in report.rounds[0].runaway and "\nround 0, NEB step 2, image 2: the model" in report.table()
        assert not report.rounds[0].converged and report.rounds[0].steps == 2
        assert climbing[0].passed is (shift < 1 and force_shift == 0)  # off by 50 eV or eV/A: failed, trained on
        assert (climbing[0].store_id in learner.state["trained_ids"]) is (not climbing[0].passed)
        assert runaway_row.status == ("verified" if climbing[0].passed else "labelled")
        assert report.final_round == 1  # the band cut short is not the final one
    resumed = NEBLearner(MLIPALCalculator(model=tiny_model, distance_aware=False), reference, tmp_path / "run",
                         images, threshold=1e3, max_rounds=1, steps=4, guard=guard, conditioning=[],
                         progress=False).run()
    assert (resumed.stopped, resumed.final_round) == (report.stopped, report.final_round)  # state.json keeps it
    assert [r.runaway for r in resumed.rounds] == [r.runaway for r in report.rounds]


@pytest.mark.parametrize("force_shift, stops", [(5.0, False), (0.2, True)])
def test_a_wide_sigma_does_not_confirm_a_runaway_the_model_forces_drove(tiny_model, tmp_path, monkeypatch,
                                                                        force_shift, stops):
    """With every sigma a million times wider, the model's forces 5 eV/A off still fail the runaway judge's
    bound of 2 x threshold (1 eV/A): the run learns from the image. Forces 0.2 eV/A off pass it, and the
    reference's confirmed climb stops the run."""
    calc = MLIPALCalculator(model=tiny_model, distance_aware=False)
    widen_force_sigma(monkeypatch, calc, 1e6)
    images = formaldehyde_band(5)
    guard = RunsAwayInRoundZero([images[0], images[-1]], max_energy=-1e3)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0], 1e-3, force_shift),
                         tmp_path / "run", images, threshold=0.5, max_rounds=1, steps=4, guard=guard,
                         conditioning=[], progress=False, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    climbing = next(c for c in learner.checks if c.kind == "climbing_image")
    assert climbing.forces_agree  # the widened 2 sigma covers the reference's forces
    if stops:
        assert "within 1.00 eV/A: the band itself climbs" in report.stopped and report.rounds == []
    else:
        assert report.stopped == "" and len(report.rounds) == 2
        assert "12 of 12 off by more than 1.00 eV/A" in report.rounds[0].runaway
        assert climbing.store_id in learner.state["trained_ids"]


def test_a_runaway_verdict_survives_a_kill_before_the_state_is_written(tiny_model, calc, tmp_path):
    """Killed after the store marked the runaway image unphysical but before state.json said stopped: the
    resumed run reruns the band, finds the row judged and stops with the stored verdict."""
    images = formaldehyde_band(5)
    options = dict(threshold=1e3, max_rounds=1, steps=4, conditioning=[], progress=False)
    reference = lambda: ModelAsReference(tiny_model, images[0], 1e-3)  # noqa: E731
    guard = RunsAwayInRoundZero([images[0], images[-1]], max_energy=-1e3)
    report = NEBLearner(calc, reference, tmp_path / "run", images, guard=guard, **options).run()
    state_file = tmp_path / "run" / "state.json"
    state = json.loads(state_file.read_text())
    state["stopped"] = ""  # as if killed between the store's write and the state's
    state_file.write_text(json.dumps(state))
    guard = RunsAwayInRoundZero([images[0], images[-1]], max_energy=1e3)  # would now call it no runaway
    learner = NEBLearner(calc, reference, tmp_path / "run", images, guard=guard, **options)
    assert learner.run().stopped == report.stopped and learner.store.counts()["unphysical"] == 1


class RecordsRoundOneStart(RunsAwayInRoundZero):
    """:class:`RunsAwayInRoundZero` that keeps the band round 1 starts from."""

    def check_band(self, images, where, energies=None):
        if where == "round 1, NEB step 0":
            self.round_one_start = [image.positions.copy() for image in images]
        super().check_band(images, where, energies)


def test_a_band_cut_short_is_not_where_the_next_round_starts(tiny_model, calc, tmp_path):
    """band_start='previous' after a runaway the loop learned from: the next band starts from the initial one."""
    images = formaldehyde_band(5)
    guard = RecordsRoundOneStart([images[0], images[-1]], max_energy=-1e3)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0], 50.0), tmp_path / "run", images,
                         threshold=1e3, max_rounds=1, steps=4, guard=guard, conditioning=[], progress=False,
                         band_start="previous", finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    assert report.rounds[0].runaway and len(report.rounds) == 2
    np.testing.assert_allclose(np.array(guard.round_one_start), np.array([a.positions for a in images]))


class OverlapsInRoundZero(PhysicalGuard):
    """A guard that finds image 2 squashed at NEB step ``at`` of round 0 and keeps the band of step 2."""

    at = 3

    def check_band(self, images, where, energies=None):
        super().check_band(images, where, energies)
        if where == "round 0, NEB step 2":
            self.step_two = [image.positions.copy() for image in images]
        if where == f"round 0, NEB step {self.at}":
            squashed = images[2].copy()
            squashed.positions[1] = squashed.positions[0] + [0.2, 0.0, 0.0]
            raise UnphysicalFrame(f"{where}, image 2: atoms 0 (O) and 1 (C) are 0.20 A apart; the run is stopped",
                                  atoms=squashed, where=f"{where}, image 2", image=2)


@pytest.mark.parametrize("shift, stops, at", [(1e-3, True, 3), (50.0, False, 3), (50.0, False, 4)])
def test_a_guard_stop_the_model_moved_into_asks_the_reference_where_the_band_was_judged(
        tiny_model, calc, tmp_path, shift, stops, at):
    """The squashed frame is stored 'unphysical', never labelled; image 2 of the band the trigger last judged
    before the stop (step 2, interval 2; a stop at step 4 does not judge its own band) is the round's check. A
    model right there stops the run; one off learns and goes on."""
    images = formaldehyde_band(5)
    guard = OverlapsInRoundZero([images[0], images[-1]])
    guard.at = at
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0], shift), tmp_path / "run", images,
                         threshold=1e3, max_rounds=1, steps=6, interval=2, guard=guard, conditioning=[],
                         progress=False, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    unphysical = list(learner.store.rows("unphysical"))
    assert len(unphysical) == 1 and "0.20 A apart" in unphysical[0].error and unphysical[0].get("energy") is None
    climbing = [c for c in learner.checks if c.kind == "climbing_image"]
    assert (climbing[0].round, climbing[0].image, climbing[0].step) == (0, 2, 2)
    checked = learner.store.frame(climbing[0].store_id)
    np.testing.assert_allclose(checked.positions, guard.step_two[2])
    assert checked.get_potential_energy() is not None and climbing[0].energy_error == pytest.approx(-shift, abs=1e-6)
    if stops:
        assert report.stopped.startswith("round 0, NEB step 3, image 2: atoms 0 (O) and 1 (C)"), climbing[0].reason
        assert "the model is right about image 2" in report.stopped and report.rounds == []
        np.testing.assert_allclose(np.array([a.positions for a in learner.images]), np.array(guard.step_two))
    else:
        assert report.stopped == "" and len(report.rounds) == 2 and report.final_round == 1
        assert report.rounds[0].runaway.startswith(f"round 0, NEB step {at}, image 2: atoms 0 (O) and 1 (C) are 0.20 A")
        assert "at NEB step 2 image 2 fails its check (energy error -50.000 eV outside" in report.rounds[0].runaway
        assert not report.rounds[0].converged and report.rounds[0].steps == 2
        assert climbing[0].store_id in learner.state["trained_ids"]


def test_a_run_ends_after_max_rejections_fine_tunes_in_a_row_are_rejected(tiny_model, calc, tmp_path,
                                                                          monkeypatch):
    """Every check 50 eV off and every fine-tune rejected: after ``max_rejections`` of them on round 0's labels
    the run ends and says why, well before ``max_rounds``; a resume trains nothing more."""
    images = formaldehyde_band(5)
    tried = []

    def rejected(self, number, trigger, anchor=None):
        tried.append(number)
        return RoundRecord(number, LabelReport(), 0, accepted=False, reason="rejected by the test")

    monkeypatch.setattr(NEBLearner, "learn", rejected)
    options = dict(threshold=1e3, max_rounds=13, max_rejections=3, steps=2, conditioning=[], progress=False)
    reference = lambda: ModelAsReference(tiny_model, images[0], 50.0)  # noqa: E731
    report = NEBLearner(calc, reference, tmp_path / "run", images, **options).run()
    assert tried == [1, 2, 3] and len(report.rounds) == 1 and not report.confident and report.stopped == ""
    assert report.ended.startswith("the model choice rejected max_rejections=3 fine-tunes in a row on the labels "
                                   "of round 0")
    again = NEBLearner(calc, reference, tmp_path / "run", images, **options).run()
    assert tried == [1, 2, 3] and again.ended == report.ended
    with pytest.raises(ValueError, match="max_rejections >= 1"):
        NEBLearner(calc, reference, tmp_path / "bad", images, **{**options, "max_rejections": 0})


class RightOnlyAtTheGuardedImage(ModelAsReference):
    """:class:`ModelAsReference` off by ``shift`` everywhere but at image 2 of the band ``guard`` kept (where the
    guard stop is judged)."""

    def __init__(self, model, first, guard, shift):
        super().__init__(model, first, shift)
        self.guard = guard

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if np.allclose(self.atoms.positions, self.guard.step_two[2]):
            self.results["energy"] -= self.shift


def test_a_guard_stop_is_judged_on_every_check_of_the_band(tiny_model, calc, tmp_path):
    """The model right at the guarded image (2) but 50 eV off at the band's other checked images: the model is at
    fault somewhere on the band it drove, so the run learns from those checks and goes on."""
    images = formaldehyde_band(5)
    guard = OverlapsInRoundZero([images[0], images[-1]])
    learner = NEBLearner(calc, lambda: RightOnlyAtTheGuardedImage(tiny_model, images[0], guard, 50.0),
                         tmp_path / "run", images, threshold=1e3, max_rounds=1, steps=6, interval=2, guard=guard,
                         conditioning=[], progress=False, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    first = [c for c in learner.checks if c.round == 0]
    guarded, others = first[0], first[1:]
    assert (guarded.kind, guarded.image) == ("climbing_image", 2) and abs(guarded.energy_error) < 1e-3
    assert others and all(not c.passed and c.energy_error == pytest.approx(-50.0, abs=1e-3) for c in others)
    assert report.stopped == "" and len(report.rounds) == 2
    assert "the model drove the band there; at NEB step 2 image 2 fails" not in report.rounds[0].runaway
    assert f"image {others[0].image} fails its check (energy error -50.000 eV" in report.rounds[0].runaway
    assert all(c.store_id in learner.state["trained_ids"] for c in others)


@pytest.mark.parametrize("force_shift, stops", [(5.0, False), (0.2, True)])
def test_a_wide_sigma_does_not_pass_a_guard_stop_the_model_forces_drove(tiny_model, tmp_path, monkeypatch,
                                                                        force_shift, stops):
    """Every sigma a million times wider and no saddle test (``saddle_fmax`` huge): the check where the trigger
    last judged the band passes outright. Forces 5 eV/A off still fail the guard judge's bound of 2 x threshold
    (1 eV/A): the check fails after all, is trained on and the run goes on. Forces 0.2 eV/A off pass the bound,
    and the run stops with the model right there."""
    calc = MLIPALCalculator(model=tiny_model, distance_aware=False)
    widen_force_sigma(monkeypatch, calc, 1e6)
    images = formaldehyde_band(5)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0], 1e-3, force_shift), tmp_path / "run",
                         images, threshold=0.5, max_rounds=1, steps=6, interval=2, saddle_fmax=1e6,
                         guard=OverlapsInRoundZero([images[0], images[-1]]), conditioning=[], progress=False,
                         finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    climbing = next(c for c in learner.checks if c.kind == "climbing_image")
    assert climbing.forces_agree  # the widened 2 sigma covers the reference's forces
    if stops:
        assert climbing.passed and report.rounds == []
        assert "within 1.00 eV/A; and about the band's other checked images (3, 1))" in report.stopped
    else:
        assert not climbing.passed and climbing.reason == "force components 12 of 12 off by more than 1.00 eV/A"
        assert report.stopped == "" and len(report.rounds) == 2
        assert "12 of 12 off by more than 1.00 eV/A" in report.rounds[0].runaway
        assert climbing.store_id in learner.state["trained_ids"]


class EndpointRunsAway(PhysicalGuard):
    """A guard that reports the last endpoint 50 eV above the first at the first NEB step."""

    def check_band(self, images, where, energies=None):
        super().check_band(images, where)
        last = len(images) - 1
        raise EnergyRunaway(f"{where}, image {last}: 50 eV", atoms=images[last], where=f"{where}, image {last}",
                            image=last, energy=50.0)


def test_a_runaway_endpoint_stops_the_run_unlabelled(calc, tmp_path):
    """Endpoints do not move: an endpoint far above the other is no band the reference can correct."""
    images = formaldehyde_band(5)
    guard = EndpointRunsAway([images[0], images[-1]])
    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e3, max_rounds=1, steps=4,
                         guard=guard, conditioning=[], progress=False)
    report = learner.run()
    assert report.stopped.startswith("round 0, NEB step 0, image 4: 50 eV") and report.rounds == []
    assert report.ended == ""  # a stopped run says why in ``stopped``
    assert learner.store.counts()["unphysical"] == 1 and CountingReference.calls == 0


NEB_RUN = r'''
import sys
from concurrent.futures import ThreadPoolExecutor
from ase.build import molecule
from ase.optimize import FIRE
import ase_mlipal
from tests.conftest import LoggedXTB, rattled
from tests.learning.test_neb import formaldehyde_band

workdir, model, log = sys.argv[1:4]
LoggedXTB.log = log

calc = ase_mlipal.MLIPALCalculator(model=model)
calc.condition(rattled(molecule("H2CO"), 10, stdev=0.02, seed=0))
learner = ase_mlipal.NEBLearner(
    calc, LoggedXTB, workdir, formaldehyde_band(5), threshold=1e-6, max_rounds=2, steps=4, interval=2,
    conditioning=rattled(molecule("H2CO"), 4, seed=2), executor=ThreadPoolExecutor(1),
    guard=ase_mlipal.PhysicalGuard([molecule("H2CO")], min_distance_ratio=0.05, bond_ratio=50.0),
    finetune_options={"epochs": 3, "replay": None}, optimizer=FIRE, progress=False)
report = learner.run()
print("BANDS", len(report.rounds), "CONFIDENT", report.confident, "STOPPED", report.stopped)
'''


def test_killed_neb_learner_resumes_without_losing_or_repeating_a_label(tiny_model, tmp_path):
    pytest.importorskip("tblite")
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ase_mlipal import save_model

    model = save_model(tiny_model, tmp_path / "tiny.pt")
    script = tmp_path / "run.py"
    script.write_text(NEB_RUN)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [sys.executable, str(script), str(tmp_path / "run"), str(model), str(tmp_path / "log.txt")]

    def start():
        return subprocess.Popen(args, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start()
    state = tmp_path / "run" / "state.json"
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None:  # kill once round 1's band is running
        if state.exists() and json.loads(state.read_text())["round"] >= 1:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before it could be killed:\n" + first.stdout.read()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    store = FrameStore(tmp_path / "run" / "frames.db")
    before = {row.id: row.energy for s in ("labelled", "verified") for row in store.rows(s)}
    assert len(before) >= 3  # endpoints and the first check at least

    second = start()
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert "BANDS 3" in out and "CONFIDENT False" in out  # round 0 restored from the state, 1 and 2 run
    after = {row.id: row.energy for s in ("labelled", "verified") for row in store.rows(s)}
    assert all(after.get(i) == e for i, e in before.items())  # nothing labelled was lost or changed
    assert_no_label_repeated(tmp_path / "log.txt", store, before)  # one worker: at most one frame in flight
    final = json.loads(state.read_text())
    assert final["round"] == 3 and len(final["rounds"]) == 3
    assert len(final["checks"]) == sum(1 + (r["band_check"] is not None) + (r["audit"] is not None)
                                       for r in final["rounds"])  # none repeated


@pytest.mark.parametrize("why", [{"stopped": "the reference failed on the first endpoint"},
                                 {"ended": "max_rounds=0 reached before a band was verified"}])
def test_a_report_without_a_band_says_why_instead_of_an_index_error(why):
    from ase_mlipal import NEBReport, NoBandError

    report = NEBReport(**why)
    reason = next(iter(why.values()))
    for read_out in (lambda: report.final, lambda: report.barrier, lambda: report.barrier_interval):
        with pytest.raises(NoBandError, match=f"no band was run: {reason}"):
            read_out()
    assert reason in report.table()  # the table prints without a band


@pytest.mark.parametrize("quiet, converged", [(False, True), (True, False), (True, True)])
def test_the_report_says_why_a_final_band_that_passed_its_checks_is_not_confident(quiet, converged):
    """A run that ends on a band whose checks all passed, but not confident (its flags, an unconverged NEB):
    the table says which; a failed check needs no such line."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    profile = PathProfile("r0", np.arange(3.0), np.array([0.0, 1.0, 0.2]), np.full(3, 0.1), np.zeros(3),
                          barrier=1.0, barrier_std=0.1)
    lines = {}
    for passed in (True, False):
        top = Check(5, "climbing_image", 1, energy_error=0.02, energy_std=0.1, force_mae=0.0, force_coverage=1.0,
                    passed=passed, image=1, reference_saddle=True)
        band = NEBRound(5, profile, converged, 10, 3, top, quiet=quiet)
        lines[passed] = NEBReport([band], confident=False, stopped="the label budget is spent", final_round=0).table()
    expected = {(False, True): "but the trigger flagged images on it: not confident",
                (True, False): "but its NEB did not converge: not confident"}.get((quiet, converged))
    if expected is None:  # quiet and converged: nothing to explain beside the stop
        assert "passed every check" not in lines[True]
    else:
        assert f"the final band (round 5) passed every check, {expected}" in lines[True]
    assert "passed every check" not in lines[False]


def test_swept_images_the_reference_puts_above_the_barrier_count_in_the_verified_error():
    """The band's barrier is its maximum: a swept image (no check saw it) the reference puts 2.5 eV up makes a
    band with a right top 1.5 eV off, and the reported interval reaches it; a swept image without a label or
    below the barrier adds nothing. The sweep survives the state file."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound, SweptImage
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    profile = PathProfile("r0", np.arange(5.0), np.array([0.0, 0.3, 0.5, 1.0, 0.2]), np.full(5, 0.1), np.zeros(5),
                          barrier=1.0, barrier_std=0.1)
    top = Check(0, "climbing_image", 1, energy_error=0.02, energy_std=0.1, force_mae=0.0, force_coverage=1.0,
                passed=True, image=3, reference_saddle=True)
    band = NEBRound(0, profile, True, 10, 0, top, sweep=[SweptImage(1, 2.5, 0.3), SweptImage(2, float("nan"), 0.5),
                                                         SweptImage(4, 0.1, 0.2)])
    assert band.verified_error == pytest.approx(1.5)
    low, high = NEBReport([band], final_round=0).barrier_interval
    assert low <= 2.5 <= high
    again = NEBRound.from_dict(json.loads(json.dumps(band.as_dict())))
    assert [vars(s) for s in again.sweep[::2]] == [vars(s) for s in band.sweep[::2]]
    assert np.isnan(again.sweep[1].reference) and again.verified_error == pytest.approx(1.5)
    table = NEBReport([band], confident=False, final_round=0).table()
    assert "the reference puts image 1, which no check saw, 1.50 eV above its barrier" in table
    band.sweep[0].reference = 1.05  # above the barrier within barrier_tolerance: no reason to doubt the band
    table = NEBReport([band], confident=False, final_round=0).table()
    assert "which no check saw" not in table and "the trigger flagged images on it" in table


class OffAt(ModelAsReference):
    """The model itself as the reference but ``shift`` eV higher at the positions ``hole``."""

    def __init__(self, model, first, hole, shift):
        super().__init__(model, first)
        self.hole, self.hole_shift = hole, shift

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if np.allclose(self.atoms.positions, self.hole):
            self.results["energy"] += self.hole_shift


def test_a_band_passing_its_checks_is_not_confident_while_an_unchecked_image_tops_it(tiny_model, calc, tmp_path,
                                                                                      monkeypatch):
    """Only the climbing image is checked (no rival, no audit) and it is right; the reference is 50 eV higher at
    another image. The sweep before confidence labels every other interior image, finds it, and the run goes on:
    the next round trains on that label."""
    monkeypatch.setattr(NEBLearner, "_band_rival", lambda self, profile, top: None)
    monkeypatch.setattr(NEBLearner, "_band_audit", staticmethod(lambda profile, checked: None))
    images = formaldehyde_band(7)
    top = 1 + int(np.argmax(path_profile(calc, images).energy[1:-1]))
    hole = 1 if top != 1 else 2
    learner = NEBLearner(calc, lambda: OffAt(tiny_model, images[0], images[hole].positions.copy(), 50.0),
                         tmp_path / "run", images, threshold=1e3, max_rounds=1, fmax=1e3, conditioning=[],
                         progress=False, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    first = report.rounds[0]
    assert first.check.passed and first.band_check is None and first.audit is None
    assert sorted(s.image for s in first.sweep) == [k for k in range(1, 6) if k != top]
    off = {s.image: s.reference - s.model for s in first.sweep}
    assert off[hole] == pytest.approx(50.0, abs=1e-3) and all(abs(v) < 1e-3 for k, v in off.items() if k != hole)
    assert first.verified_error > 40 and not report.confident
    assert len(report.rounds) == 2 and first.learning is not None  # the loop went on and learned
    swept = {row.image: row.id for row in learner.store.rows() if row.source == "sweep"}
    assert swept[hole] in learner.state["trained_ids"]


def test_the_sweep_takes_no_label_beyond_the_budget(tiny_model, calc, tmp_path, monkeypatch):
    """With one label left after the checks, the sweep labels the one image most likely to top the band."""
    monkeypatch.setattr(NEBLearner, "_band_rival", lambda self, profile, top: None)
    monkeypatch.setattr(NEBLearner, "_band_audit", staticmethod(lambda profile, checked: None))
    images = formaldehyde_band(7)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0]), tmp_path / "run", images,
                         threshold=1e3, max_rounds=0, fmax=1e3, conditioning=[], progress=False, max_labels=4)
    report = learner.run()
    profile = report.rounds[0].profile
    bound = profile.energy + 2 * profile.energy_std
    left = [k for k in range(1, 6) if k != report.rounds[0].check.image]
    assert [s.image for s in report.rounds[0].sweep] == [max(left, key=lambda k: bound[k])]
    assert learner.labels_used() == 4 and report.confident  # two endpoints, the climbing image, one swept


@pytest.mark.parametrize("reverse", [False, True])
def test_line_maximum_is_the_highest_point_of_a_cubic_energy_along_the_line(reverse):
    """E = a cubic in the distance x along the line + a term linear across it: the highest point the ends'
    energies and forces imply is the cubic's maximum, where it is; forces across the line do not move it."""
    from ase_mlipal.paths import line_maximum, point_between

    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    end = start + rng.normal(size=(4, 3))
    length = np.linalg.norm(end - start)
    along = (end - start) / length
    across = rng.normal(size=(4, 3))
    across -= np.sum(across * along) * along

    def cubic(x):
        return 0.3 + 4.0 * x * (length - x) * (x + length) / length ** 3

    def labels(positions):
        x = np.sum((positions - start) * along)
        slope = (cubic(x + 1e-6) - cubic(x - 1e-6)) / 2e-6
        return cubic(x) + 2.0 * np.sum((positions - start) * across), -(slope * along + 2.0 * across)

    ends = (end, start) if reverse else (start, end)
    (e0, f0), (e1, f1) = labels(ends[0]), labels(ends[1])
    energy, fraction = line_maximum(*ends, (e0, e1), (f0, f1))
    grid = np.linspace(0.0, length, 100001)
    expected = grid[np.argmax(cubic(grid))] / length
    assert energy == pytest.approx(cubic(grid).max(), abs=1e-6)
    assert fraction == pytest.approx(1.0 - expected if reverse else expected, abs=1e-4)
    peak = point_between(ends, 0, fraction)  # the structure there: on the line, at the cubic's maximum
    assert np.sum((peak - start) * along) == pytest.approx(expected * length, abs=1e-3)
    assert np.allclose(peak - start, np.sum((peak - start) * along) * along)
    assert line_maximum(start, end, (1.0, 0.2), (np.zeros((4, 3)), np.zeros((4, 3)))) == (1.0, 0.0)


class PassBetween(ModelAsReference):
    """The model itself as the reference at the band's images, but ``height`` eV higher anywhere else; at images
    ``a`` and ``a + 1`` its forces along the line between them point at each other (``kick`` eV/A)."""

    def __init__(self, model, images, a, kick=100.0, height=50.0):
        super().__init__(model, images[0])
        self.images, self.a, self.kick, self.height = [i.positions.copy() for i in images], a, kick, height

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        at = [k for k, positions in enumerate(self.images) if np.allclose(self.atoms.positions, positions)]
        step = self.images[self.a + 1] - self.images[self.a]
        along = step / np.linalg.norm(step)
        if not at:
            self.results["energy"] += self.height
        elif at[0] in (self.a, self.a + 1):
            self.results["forces"] = self.results["forces"] + (self.kick if at[0] == self.a + 1 else -self.kick) * along


def test_a_pass_between_images_that_passed_their_checks_is_found_and_learned(tiny_model, calc, tmp_path,
                                                                              monkeypatch):
    """Every image is right on the reference, but its forces at two neighbouring images say the energy rises
    between them: the highest point the line between them implies is labelled, it is 50 eV up, the run is not
    confident and the next round trains on it."""
    monkeypatch.setattr(NEBLearner, "_band_rival", lambda self, profile, top: None)
    monkeypatch.setattr(NEBLearner, "_band_audit", staticmethod(lambda profile, checked: None))
    images = formaldehyde_band(7)
    top = 1 + int(np.argmax(path_profile(calc, images).energy[1:-1]))
    a = 1 if top > 2 else 4
    learner = NEBLearner(calc, lambda: PassBetween(tiny_model, images, a), tmp_path / "run", images,
                         threshold=1e3, max_rounds=1, fmax=1e3, conditioning=[], progress=False,
                         finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    first = report.rounds[0]
    assert first.check.passed
    between = [s for s in first.sweep if s.image != int(s.image)]
    assert len(between) == 1 and a < between[0].image < a + 1
    assert between[0].reference - between[0].model == pytest.approx(50.0, abs=1e-3)
    assert all(abs(s.reference - s.model) < 1e-3 for s in first.sweep if s.image == int(s.image))
    assert first.verified_error > 40 and not report.confident and first.learning is not None
    row = [r for r in learner.store.rows() if r.source == "between"]
    assert len(row) == 1 and row[0].id in learner.state["trained_ids"]
    assert f"the point {between[0].image - a:.2f} of the way from image {a} to {a + 1}" in report.table()


@pytest.mark.parametrize("errors, widened, final", [((0.05, 0.02), 1, 0), ((0.02, 0.5), 0, 1)])
def test_a_sweep_that_shows_the_chosen_band_off_hands_the_choice_to_another(calc, tmp_path, monkeypatch, errors,
                                                                             widened, final):
    """The band the checks allow the least error is swept; the sweep puts a place of it 2 eV above its barrier,
    so the run ends on the other band, whose model and band are restored (swept in turn)."""
    from ase_mlipal.learning.neb_learner import NEBRound, SweptImage
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", formaldehyde_band(5), threshold=1e3,
                         conditioning=[], progress=False)
    learner.state.update(confident=False, stopped="", rounds=[])
    restored = []
    learner.calc.set_model = learner.calc.load_posterior = lambda *a, **k: None
    learner._restore_band = restored.append
    for k in (0, 1):
        learner._save_band(f"band_round{k}.traj")

    def sweep(neb_round, images):
        if neb_round.round == widened:
            neb_round.sweep.append(SweptImage(1.5, neb_round.profile.barrier + 2.0, neb_round.profile.barrier))

    monkeypatch.setattr(learner, "_sweep", sweep)
    rounds = []
    for number, error in enumerate(errors):
        profile = PathProfile("r", np.arange(3.0), np.array([0.0, 1.0, 0.1]), np.full(3, 0.05), np.zeros(3),
                              barrier=1.0, barrier_std=0.1)
        top = Check(number, "climbing_image", 1, energy_error=error, energy_std=0.1, force_mae=0.0,
                    force_coverage=1.0, passed=False, image=1, reference_saddle=True)
        rounds.append(NEBRound(number, profile, True, 10, 0, top, model_round=number))
    assert learner._final_band(rounds) == final
    assert rounds[widened].verified_error == pytest.approx(2.0)
    assert restored == (["band_round0.traj"] if final == 0 else ["band_round0.traj", "band_round1.traj"])


@pytest.mark.parametrize("model, says", [(1.8, True), (0.9, False), (1.05, False)])
def test_the_report_says_when_the_model_itself_puts_a_point_between_images_above_the_barrier(model, says):
    """A point between images 2 and 3 the reference puts 1 eV above the barrier: where the model too puts it above
    (by more than barrier_tolerance), the band's images do not resolve its own pass, and the table says so; where the
    model is wrong there, or within the tolerance, not."""
    from ase_mlipal.learning.neb_learner import NEBReport, NEBRound, SweptImage
    from ase_mlipal.learning.verification import Check
    from ase_mlipal.paths import PathProfile

    profile = PathProfile("r0", np.arange(5.0), np.array([0.0, 0.3, 1.0, 0.5, 0.2]), np.full(5, 0.1), np.zeros(5),
                          barrier=1.0, barrier_std=0.1)
    top = Check(0, "climbing_image", 1, energy_error=0.02, energy_std=0.1, force_mae=0.0, force_coverage=1.0,
                passed=True, image=2, reference_saddle=True)
    band = NEBRound(0, profile, True, 10, 0, top, sweep=[SweptImage(2.4, 2.0, model)])
    table = NEBReport([band], confident=False, final_round=0).table()
    line = "the model itself puts the point 0.40 of the way from image 2 to 3 0.80 eV above the final band's barrier"
    assert (line in table) == says
    assert "the reference puts the point 0.40 of the way from image 2 to 3, which no check saw, 1.00 eV" in table


class PassAlongX(Calculator):
    """A Gaussian pass of 2 eV in atom 0's x at ``centre`` (width 0.05 A), nothing else."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, centre):
        super().__init__()
        self.centre = centre

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions[0, 0] - self.centre
        energy = 2.0 * np.exp(-x ** 2 / (2 * 0.05 ** 2))
        forces = np.zeros((len(self.atoms), 3))
        forces[0, 0] = energy * x / 0.05 ** 2
        self.results = {"energy": energy, "forces": forces}


@pytest.mark.parametrize("centre, moved", [(0.5, True), (0.4, False)])
def test_an_image_is_moved_onto_a_pass_the_band_steps_over(calc, tmp_path, centre, moved):
    """A band translating formaldehyde along x, images at x = 0, .1, .2, .4, .6, .8, 1.2 A, on a 2 eV pass at x = 0.5:
    the images beside it see 0.27 eV, their forces say it rises between them; image 1, whose neighbours are nearest,
    is moved onto the pass. A pass at an image (x = 0.4) is resolved already: nothing moves."""
    shifts = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.2]
    base = molecule("H2CO")
    images = []
    for x in shifts:
        image = base.copy()
        image.positions += [x, 0.0, 0.0]
        images.append(image)
    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e3, conditioning=[],
                         progress=False)
    for image in learner.images:
        image.calc = PassAlongX(centre)
    done = learner._onto_the_pass()
    now = [image.positions[0, 0] - base.positions[0, 0] for image in learner.images]
    if moved:
        assert now == pytest.approx([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.2], abs=1e-6)
        assert "the point 0.50 of the way from image 3 to 4" in done and "image 1 was moved there" in done
    else:
        assert done == "" and now == pytest.approx(shifts, abs=1e-12)


def test_a_band_with_an_image_moved_onto_its_pass_is_relaxed_again_and_says_so(tiny_model, calc, tmp_path,
                                                                                 monkeypatch):
    """The round relaxes the band a second time after an image was moved onto the pass, records what was done, and
    the record survives the state file."""
    from ase_mlipal.learning.neb_learner import NEBRound

    relaxations, moves = [], iter(["moved image 2 onto the pass"])
    real_relax = NEBLearner._relax
    monkeypatch.setattr(NEBLearner, "_onto_the_pass", lambda self: next(moves, ""))
    monkeypatch.setattr(NEBLearner, "_relax", lambda self, trigger, where: (relaxations.append(where),
                                                                           real_relax(self, trigger, where))[1])
    images = formaldehyde_band(5)
    learner = NEBLearner(calc, lambda: ModelAsReference(tiny_model, images[0]), tmp_path / "run", images,
                         threshold=1e3, max_rounds=0, fmax=1e3, conditioning=[], progress=False)
    report = learner.run()
    assert relaxations == ["round 0", "round 0, after moving an image onto the pass"]
    assert report.rounds[0].onto_pass == "moved image 2 onto the pass"
    again = NEBRound.from_dict(json.loads(json.dumps(report.rounds[0].as_dict())))
    assert again.onto_pass == report.rounds[0].onto_pass


@pytest.mark.parametrize("energy, says_endpoint", [([0.0, 1.2, 0.4], None), ([0.0, 0.6, 1.5], "last"),
                                                   ([0.0, -0.5, -1.0], "first")])
def test_a_profile_summary_gives_the_interval_and_says_when_the_top_is_an_endpoint(energy, says_endpoint):
    """A band without an interior maximum has no pass on the model: its 'barrier' is the reaction energy."""
    from ase_mlipal import PathProfile

    energy = np.array(energy)
    profile = PathProfile("p", np.arange(3.0), energy, np.full(3, 0.2), np.zeros(3), barrier=float(energy.max()),
                          barrier_std=0.4)
    text = profile.summary()
    low, high = max(0.0, energy.max() - 0.8), energy.max() + 0.8
    assert f"barrier {energy.max():.3f} ± 0.400 eV (2σ interval {low:.2f}-{high:.2f} eV)" in text
    assert ("endpoint" in text) == (says_endpoint is not None)
    if says_endpoint:
        assert f"highest image is its {says_endpoint} endpoint" in text and "lower bound" in text


@pytest.mark.parametrize("stored", ["lower", "higher", "guard stop"])
def test_the_earlier_band_the_model_puts_lowest_is_relaxed_and_kept_if_its_pass_is_lower(calc, tmp_path,
                                                                                        monkeypatch, stored):
    """A climbing-image NEB finds the pass of the route it starts on: the earlier round's band the current model
    puts lowest is relaxed too and kept where its pass is lower than the round's by more than
    ``barrier_tolerance``; a higher one is dropped, and so is a relaxation a guard stops."""
    from ase.calculators.emt import EMT

    route = formaldehyde_band(5)
    other = [image.copy() for image in route]
    for image in other[1:-1]:
        image.positions[2:] += [0.0, 0.0, 0.4]  # the H atoms take another way
    probe = NEBLearner(calc, EMT, tmp_path / "probe", route, threshold=1e3, conditioning=[], progress=False)
    barriers = [probe._model_barrier([image.copy() for image in band])[0] for band in (route, other)]
    low, high = (route, other) if barriers[0] < barriers[1] else (other, route)
    gap = abs(barriers[0] - barriers[1])
    assert gap > 1e-3  # the two routes differ on the model
    current, earlier = (high, low) if stored != "higher" else (low, high)
    learner = NEBLearner(calc, EMT, tmp_path / "run", current, threshold=1e3, conditioning=[], progress=False,
                         barrier_tolerance=gap / 2)
    learner.state.update(rounds=[{"round": 0}])
    kept = [image.positions.copy() for image in learner.images]
    for image, positions in zip(learner.images, earlier):
        image.positions = positions.positions
    learner._save_band("band_round0.traj")
    for image, positions in zip(learner.images, kept):
        image.positions = positions
    relaxed = []

    def relax(self, trigger, where):  # the band stays where it starts: its pass is the start's highest image
        relaxed.append(where)
        if stored == "guard stop":
            raise UnphysicalFrame("atoms 1 and 2 overlap")
        return True, 7

    monkeypatch.setattr(NEBLearner, "_relax", relax)
    found = learner._lower_route(learner._trigger(1), 1)
    now = np.array([image.positions for image in learner.images])
    if stored == "lower":
        assert relaxed == ["round 1, from band_round0.traj"]
        text, converged, steps = found
        assert converged and steps == 7 and "band_round0.traj" in text
        assert f"lower pass: {min(barriers):.2f} eV against {max(barriers):.2f} eV" in text
        np.testing.assert_allclose(now, [image.positions for image in earlier])
    else:
        assert found is None and relaxed == ["round 1, from band_round0.traj"]
        np.testing.assert_allclose(now, kept)  # the band the round relaxed stays


@pytest.mark.parametrize("trust_radius", [None, 10.0])
def test_a_lower_route_found_is_recorded_with_its_round_and_survives_a_resume(calc, tmp_path, monkeypatch,
                                                                               trust_radius):
    """The round records what ``_lower_route`` found and its steps; under a trust region it is not asked."""
    from ase.calculators.emt import EMT

    from ase_mlipal.learning import neb_learner
    from ase_mlipal.learning.neb_learner import NEBRound

    asked = []

    def lower_route(self, trigger, number):
        asked.append(number)
        return ("relaxed from band_round0.traj: a lower pass", True, 5) if number == 1 else None

    monkeypatch.setattr(neb_learner, "relax_band", lambda images, *args, **kwargs: (False, 1))
    monkeypatch.setattr(NEBLearner, "_onto_the_pass", lambda self: "")
    monkeypatch.setattr(NEBLearner, "_lower_route", lower_route)
    monkeypatch.setattr(NEBLearner, "learn", lambda self, number, trigger, anchor=None:
                        RoundRecord(number, LabelReport(), 0, accepted=True))
    learner = NEBLearner(calc, EMT, tmp_path / "run", formaldehyde_band(5), threshold=1e3, max_rounds=1,
                         conditioning=[], progress=False, trust_radius=trust_radius)
    report = learner.run()
    assert len(report.rounds) == 2
    if trust_radius is not None:
        assert asked == [] and all(r.lower_route == "" for r in report.rounds)
        return
    assert asked == [0, 1]
    assert [r.lower_route for r in report.rounds] == ["", "relaxed from band_round0.traj: a lower pass"]
    assert [r.steps for r in report.rounds] == [1, 6]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert NEBRound.from_dict(state["rounds"][1]).lower_route == report.rounds[1].lower_route
    assert "round 1: relaxed from band_round0.traj: a lower pass" in report.table()
