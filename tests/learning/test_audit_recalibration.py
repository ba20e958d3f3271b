"""The MD learner's audits rescale sigma as they come: each audit is checked on the sigma the ones before it justify."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from ase_mlipal import OnTheFlyLearner
from ase_mlipal.learning.md_learner import langevin

from .test_md_report import plain_calc
from .test_swap import labelled
from ..conftest import rattled


def calibrated_calc(model):
    """The plain-sigma tiny calculator, calibrated on EMT labels of rattled formaldehyde (the same every call)."""
    calc = plain_calc(model)
    calc.calibrate(labelled(rattled(molecule("H2CO"), 6, stdev=0.05, seed=2)), progress=False)
    return calc


def audit_run(model, workdir, recalibrate: bool, prior_frames: float = 2.0) -> OnTheFlyLearner:
    """No flag, no round: 40 seeded steps audited against EMT (no rewind either: the tiny model is eV off EMT,
    and a hole would make a round)."""
    return OnTheFlyLearner(molecule("H2CO"), calibrated_calc(model), EMT,
                           workdir, threshold=1e9, steps=40, interval=5, audit_interval=5, max_rounds=0, max_rewinds=0,
                           dynamics=lambda atoms: langevin(atoms, seed=0), conditioning=[], progress=False,
                           recalibrate=recalibrate, prior_frames=prior_frames)


def test_audits_rescale_sigma_each_checked_on_the_ones_before(tiny_model, tmp_path):
    """After the run sigma is the start's rescaled on every audit (the calculator's own ``rescale``); audit k
    was checked before it counted: the first on the start's sigma, the later ones not; without ``recalibrate``
    sigma never moves. A resume of the finished run rebuilds the same calibration."""
    on, off = audit_run(tiny_model, tmp_path / "on", True), audit_run(tiny_model, tmp_path / "off", False)
    start = on.calc.calibrations
    report, fixed = on.run(), off.run()
    audits = [c for c in report.checks if c.kind == "audit"]
    unscaled = [c for c in fixed.checks if c.kind == "audit"]
    assert len(audits) >= 3 and [c.step for c in audits] == [c.step for c in unscaled]  # the same frames
    assert off.calc.calibrations == start

    expected = calibrated_calc(tiny_model)
    expected.rescale(on.check_frames(), prior_frames=2.0, progress=False)  # every check here is an audit
    for got, want, unchanged in zip(on.calc.calibrations, expected.calibrations, start):
        assert got.scale == pytest.approx(want.scale, rel=1e-9) and got.floor == pytest.approx(want.floor, rel=1e-9)
        assert got.scale != pytest.approx(unchanged.scale, rel=1e-9)
    assert audits[0].energy_std == pytest.approx(unscaled[0].energy_std, rel=1e-9)
    assert all(c.energy_std != pytest.approx(u.energy_std, rel=1e-9) for c, u in zip(audits[1:], unscaled[1:]))

    resumed = audit_run(tiny_model, tmp_path / "on", True)
    resumed.run()
    assert [c.store_id for c in resumed.checks] == [c.store_id for c in audits]  # nothing checked twice
    for got, want in zip(resumed.calc.calibrations, on.calc.calibrations):
        assert got.scale == pytest.approx(want.scale, rel=1e-9)


def test_prior_frames_sets_how_far_the_audits_move_sigma(tiny_model, tmp_path):
    """The audits' factor on sigma^2 is the calculator's shrunk one: with no prior weight the audits' own
    maximum-likelihood factor, with more weight less of it, with a heavy one almost none; a negative weight is
    refused."""
    start = calibrated_calc(tiny_model).calibrations
    factors = {}
    for prior in (0.0, 2.0, 1e6):
        learner = audit_run(tiny_model, tmp_path / f"prior{prior:g}", True, prior_frames=prior)
        learner.run()
        factors[prior] = [got.scale / kept.scale for got, kept in zip(learner.calc.calibrations, start)]
        expected = calibrated_calc(tiny_model)
        expected.rescale(learner.check_frames(), prior_frames=prior, progress=False)
        assert factors[prior] == pytest.approx([e.scale / k.scale for e, k in zip(expected.calibrations, start)],
                                               rel=1e-9)
    assert all(abs(f - 1.0) < 1e-3 for f in factors[1e6])  # the calibration weighs as a million audits
    forces = [abs(np.log(factors[prior][1])) for prior in (0.0, 2.0, 1e6)]
    assert forces[0] > forces[1] > forces[2] and forces[0] > 0.1  # the tiny model's force sigma moves
    with pytest.raises(ValueError, match="prior_frames must be >= 0"):
        audit_run(tiny_model, tmp_path / "bad", True, prior_frames=-1.0)
