import warnings

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from ase_mlipal import MLIPALCalculator
from ase_mlipal.learning.store import FrameStore
from ase_mlipal.learning.trigger import UncertaintyLimitExceeded, UncertaintyTrigger

from ..conftest import rattled


@pytest.fixture()
def setup(tiny_model, tmp_path):
    calc = MLIPALCalculator(model=tiny_model)
    known = molecule("CH3OH")
    calc.condition(rattled(known, 20, stdev=0.02, seed=0))
    return calc, FrameStore(tmp_path / "frames.db"), known


def novel_frame_and_trigger(setup):
    """An ethanol frame on the methanol-conditioned calculator, and a trigger at 0.3x its uncertainty."""
    calc, store, _ = setup
    novel = molecule("CH3CH2OH")
    novel.calc = calc
    before = calc.get_property("uncertainty", novel)
    return calc, novel, before, UncertaintyTrigger(calc, store, threshold=0.3 * before, settle=0.5)


def test_flags_the_new_event_once_and_not_the_known_one(setup):
    calc, store, known = setup
    novel = molecule("CH3CH2OH")
    threshold = 0.5 * calc.get_property("uncertainty", novel.copy())
    trigger = UncertaintyTrigger(calc, store, threshold=threshold)
    assert calc.get_property("uncertainty", known.copy()) < threshold
    frames = rattled(known, 5, stdev=0.01, seed=1) + rattled(novel, 10, stdev=0.002, seed=2)
    for frame in frames:
        frame.calc = calc
        trigger(frame)
    assert len(trigger.flagged) == 1 and trigger.flagged[0][0] == 5  # the first ethanol frame only
    (row,) = store.rows("flagged")
    assert row.formula == "C2H6O" and row.step == 5 and row.model_hash == calc.model_hash
    assert row.data["forces_uncertainty"].shape == (9,)


def test_relative_mode_hard_limit_and_callback(setup):
    calc, store, known = setup
    seen = []
    trigger = UncertaintyTrigger(calc, store, threshold=3.0, mode="relative", hard_limit=5.0,
                                 typical_frames=rattled(known, 5, stdev=0.02, seed=3),
                                 callback=lambda atoms, value: seen.append(value))
    assert trigger.threshold == pytest.approx(3.0 * trigger.typical)
    far = molecule("C6H6")
    far.calc = calc
    assert calc.get_property("uncertainty", far) > trigger.hard_limit
    with pytest.raises(UncertaintyLimitExceeded, match="hard limit"):
        trigger(far)
    assert len(seen) == 1 and store.counts()["flagged"] == 1  # flagged before stopping


def test_watches_ase_dynamics_as_an_observer(setup):
    calc, store, known = setup
    atoms = known.copy()
    atoms.calc = calc
    atoms.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3)))
    trigger = UncertaintyTrigger(calc, store, threshold=calc.get_property("uncertainty", atoms) * 1.5,
                                 atoms=atoms, source="md", run_id="test")
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.attach(trigger, interval=2)
    dyn.run(30)
    assert trigger.nsteps == 16
    assert store.counts()["flagged"] == len(trigger.flagged)
    assert all(row.run_id == "test" and row.source == "md" for row in store.rows())


def test_bad_arguments_are_refused(setup):
    calc, store, _ = setup
    with pytest.raises(ValueError, match="fit_typical"):  # a custom model has no typical uncertainty
        UncertaintyTrigger(calc, store, threshold=0.1, mode="relative")
    with pytest.raises(ValueError):
        UncertaintyTrigger(calc, store, threshold=-1)
    with pytest.raises(ValueError):
        UncertaintyTrigger(calc, store, threshold=1, quantity="stress")
    with pytest.raises(TypeError, match="threshold must be a number"):
        UncertaintyTrigger(calc, store, threshold="4")
    assert UncertaintyTrigger(calc, store, threshold=np.float32(0.5)).threshold == 0.5  # scalars of any library


def test_an_absolute_threshold_on_raw_variances_warns(setup, tmp_path):
    calc, store, _ = setup
    assert not calc.calibrated
    with pytest.warns(UserWarning, match="not calibrated"):
        UncertaintyTrigger(calc, store, threshold=0.1)
    calibrated = MLIPALCalculator()  # the shipped default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UncertaintyTrigger(calibrated, FrameStore(tmp_path / "other.db"), threshold=0.1)


def test_a_flagged_frame_is_seen_not_learned(setup, tmp_path):
    """A flag leaves the uncertainty the calculator reports as it was (the model learned nothing there) and
    settles the frame in the posterior the trigger scores on; a saved posterior keeps both."""
    calc, novel, before, trigger = novel_frame_and_trigger(setup)
    energy_before = calc.get_property("energy_uncertainty", novel)
    assert trigger(novel)
    assert calc.get_property("uncertainty", novel.copy()) == before
    assert calc.get_property("energy_uncertainty", novel.copy()) == energy_before
    assert trigger.score(novel) < trigger.threshold
    calc.save_posterior(tmp_path / "posterior.npz")
    loaded = MLIPALCalculator(model=calc.model).load_posterior(tmp_path / "posterior.npz")
    assert loaded.get_property("uncertainty", novel.copy()) == pytest.approx(before, rel=1e-12)
    again = UncertaintyTrigger(loaded, FrameStore(tmp_path / "other.db"), threshold=trigger.threshold)
    assert again.score(novel.copy()) == pytest.approx(trigger.score(novel), rel=1e-9)


def test_a_flagged_frame_settles_below_the_threshold(setup):
    calc, novel, before, trigger = novel_frame_and_trigger(setup)
    calls = []
    hook = calc.model.register_forward_hook(lambda *args: calls.append(1))
    assert trigger(novel)
    assert len(calls) == 1  # flagging runs one pass for the conditioning rows (the force kernels' probes)
    hook.remove()
    assert trigger.score(novel) <= 0.5 * trigger.threshold * 1.0001


@pytest.mark.parametrize("quantity", ["forces", "energy"])
def test_relative_trigger_on_the_default_needs_no_reference_frames(tmp_path, quantity):
    calc = MLIPALCalculator()  # the shipped default carries the typical uncertainty of its validation split
    assert set(calc.typical) == {"forces", "energy"}
    trigger = UncertaintyTrigger(calc, FrameStore(tmp_path / "frames.db"), threshold=4.0, mode="relative",
                                 quantity=quantity)
    assert trigger.threshold == pytest.approx(4.0 * calc.typical[quantity])
    familiar, strained = molecule("CH3CH2OH"), molecule("CH3CH2OH")
    strained.rattle(0.2, seed=1)
    ratios = []
    for atoms in (familiar, strained):
        atoms.calc = calc
        ratios.append(trigger.score(atoms) / calc.typical[quantity])
        trigger(atoms)
    assert ratios[0] < 4.0 < ratios[1]  # about 1x and 9x the typical uncertainty
    assert [step for step, _ in trigger.flagged] == [1]


def test_fit_typical_is_the_median_of_the_trigger_values(setup):
    calc, store, known = setup
    frames = rattled(known, 7, stdev=0.05, seed=4)
    typical = calc.fit_typical(frames)
    trigger = UncertaintyTrigger(calc, store, threshold=1.0)
    assert typical["forces"] == pytest.approx(np.median([trigger.score(f) for f in frames]), rel=1e-9)
    relative = UncertaintyTrigger(calc, store, threshold=2.0, mode="relative")
    assert relative.threshold == pytest.approx(2.0 * typical["forces"])


def test_absorbed_frame_settles_no_lower_than_its_floor(setup):
    calc, novel, before, trigger = novel_frame_and_trigger(setup)
    energy_before = calc.get_property("energy_uncertainty", novel.copy()) / len(novel)
    floors = {"forces": 0.8 * before, "energy": 0.9 * energy_before}  # e.g. the fine-tuned model's errors
    trigger.absorb([novel.copy()], floors=[floors])
    after = calc.get_property("uncertainty", novel.copy())
    energy_after = calc.get_property("energy_uncertainty", novel.copy()) / len(novel)
    assert after < before and energy_after < energy_before  # the frame entered
    assert after >= floors["forces"] * 0.999 and energy_after >= floors["energy"] * 0.999  # and kept both bounds
    assert min(after / floors["forces"], energy_after / floors["energy"]) < 1.001  # the binding one is met
    with pytest.raises(ValueError, match="floors"):
        trigger.absorb([novel.copy()], floors=[floors, floors])


def test_residual_floors_are_half_the_largest_errors(setup):
    calc, store, known = setup
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = known.copy()
    frame.calc = calc
    forces = frame.get_forces().copy()
    labelled = known.copy()
    shifted = forces.copy()
    shifted[2, 1] += 0.6
    labelled.calc = SinglePointCalculator(labelled, energy=frame.get_potential_energy() + 1.2, forces=shifted)
    trigger = UncertaintyTrigger(calc, store, threshold=1.0)
    floors = trigger.residual_floors(labelled)
    assert floors["forces"] == pytest.approx(0.3, abs=1e-9)
    assert floors["energy"] == pytest.approx(0.6 / len(known), abs=1e-9)


def test_a_force_kernel_flag_is_seen_in_the_force_variance_it_draws(tiny_model, tmp_path):
    """force_ntk draws its force variance with the features: the trigger draws it again on what it has seen, as
    a calculator that learned the flagged frame with the same weight draws it."""
    def conditioned_calc():
        calc = MLIPALCalculator(model=tiny_model, kernel="force_ntk", kernel_options={"dim": 64, "probes": 2})
        return calc.condition(rattled(molecule("CH3OH"), 3, stdev=0.02, seed=0))

    calc, learned = conditioned_calc(), conditioned_calc()
    novel = molecule("CH3CH2OH")
    novel.calc = calc
    before = calc.get_property("uncertainty", novel)
    trigger = UncertaintyTrigger(calc, FrameStore(tmp_path / "frames.db"), threshold=0.3 * before)
    assert trigger(novel)
    assert calc.get_property("uncertainty", novel.copy()) == pytest.approx(before, rel=1e-12)  # reported: as before
    learned.condition(novel.copy(), weight=trigger._weight(before, len(novel)))
    assert trigger.score(novel) == pytest.approx(learned.get_property("uncertainty", novel.copy()), rel=1e-9)
    assert trigger.score(novel) != pytest.approx(before, rel=1e-3)
