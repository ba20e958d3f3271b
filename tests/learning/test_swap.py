"""A learner's model swap: posterior and calibration rebuilt from the run's start, the factor read where it is used."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from ase_mlipal import MLIPALCalculator, UncertaintyTrigger, label
from ase_mlipal.learning import learning_run

from ..conftest import rattled


def labelled(frames):
    """``frames`` labelled by EMT (energy and forces in ``info``/``arrays``, as the store writes them)."""
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.info["energy"], atoms.arrays["forces"] = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        out.append(atoms)
    return out


@pytest.fixture()
def run(tiny_model, tmp_path):
    """A run on a calibrated calculator with 4 labelled frames to train on and 3 passed checks."""
    start = molecule("CH3OH")
    known = rattled(start, 6, stdev=0.03, seed=1)
    calc = MLIPALCalculator(model=tiny_model)
    calc.condition(known)
    calc.calibrate(labelled(rattled(start, 6, stdev=0.05, seed=2)))
    replay = labelled(rattled(start, 12, stdev=0.04, seed=3))
    run = learning_run.LearningRun(calc, EMT(), tmp_path / "run", conditioning=known,
                                   executor=ThreadPoolExecutor(1), progress=False,
                                   finetune_options={"epochs": 2, "replay": replay, "replay_ratio": 1})
    train = rattled(start, 4, stdev=0.15, seed=4)
    checks = rattled(start, 3, stdev=0.15, seed=5)
    ids = [run.store.add_flagged(a, "md")[0] for a in train + checks]
    label(run.store, EMT(), executor=ThreadPoolExecutor(1), progress=False)
    for row_id in ids[len(train):]:
        run.store.mark_verified(row_id)
    return run


def test_the_factor_is_fitted_on_the_posterior_the_run_goes_on_with(run, monkeypatch):
    """At the refit the posterior holds every stored frame but the checks; then the checks join it."""
    calc, seen = run.calc, {}
    rescale = calc.rescale

    def spy(images, *args, **kwargs):
        seen["held"], seen["checks"] = calc.energy_posterior.n_added, {a.info["store_id"] for a in images}
        return rescale(images, *args, **kwargs)

    monkeypatch.setattr(calc, "rescale", spy)
    record = run.learn(1, UncertaintyTrigger(calc, run.store, threshold=1.0))
    assert record.accepted and record.calibration is not None
    verified = {a.info["store_id"] for a in run.store.frames("verified")}
    assert seen["checks"] == verified and len(verified) == 3
    assert seen["held"] == len(run.conditioning) + 4  # the conditioning and the 4 trained frames
    assert calc.energy_posterior.n_added == len(run.conditioning) + 7


def test_a_swap_starts_from_the_runs_calibration_not_the_last_rounds(run):
    """The same swap twice gives the same calibration (each used to move from the last one, and drift), and
    with nothing forgotten and no check it is the calibration the run started with."""
    calc = run.calc
    trigger = UncertaintyTrigger(calc, run.store, threshold=1.0)
    assert run.learn(1, trigger).accepted
    model = calc.model
    forgotten = labelled(rattled(molecule("CH3OH"), 4, stdev=0.04, seed=6))
    passed = run.store.frames("verified")
    run._swap_in(model, forgotten, passed, trigger)
    first = calc.calibrations
    assert first != run.start_calibration
    run._swap_in(model, forgotten, passed, trigger)
    for got, want in zip(calc.calibrations, first):
        np.testing.assert_allclose([got.scale, got.exponent, got.floor], [want.scale, want.exponent, want.floor],
                                   rtol=1e-9)
    run._swap_in(model, [], [], trigger)
    assert calc.calibrations == run.start_calibration
