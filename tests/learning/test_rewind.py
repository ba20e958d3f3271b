"""A hole in the model's surface sends the MD back to the last frame an audit passed (tiny model, no xTB)."""

import json

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import all_changes
from ase.io import read

from ase_mlipal import OnTheFlyLearner
from ase_mlipal.guards import PhysicalGuard, UnphysicalFrame

from ..conftest import seeded_langevin
from .test_md_report import ForcesOffReference, plain_calc

HOLE = 5.0  # eV the reference lies above the model from the hole on
HOLE_FORCES = 10.0  # eV/A on every force component: outside the tiny model's raw 2 sigma (see plain_calc)


class HoleAfter(ForcesOffReference):
    """The model itself as the reference (its audits pass) for the first ``clean`` labels, then ``HOLE`` eV
    higher and every force component ``HOLE_FORCES`` larger: the model's surface has a hole the trigger
    cannot see. ``calls`` counts the labels of every instance (the learner makes one per label)."""

    hole_forces = HOLE_FORCES

    def __init__(self, model, clean: int, calls: list):
        super().__init__(model, offset=0.0)
        self.clean, self.calls = clean, calls

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls.append(1)
        hole = len(self.calls) > self.clean
        self.offset = self.hole_forces if hole else 0.0
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += HOLE if hole else 0.0


def hole_run(model, workdir, max_rounds: int = 3, **options) -> OnTheFlyLearner:
    """Every check an audit (no flags): the audits at steps 5, 10 and 15 pass, every later one is 5 eV off."""
    calls = []
    return OnTheFlyLearner(molecule("H2CO"), plain_calc(model), lambda: HoleAfter(model, 3, calls), workdir,
                           threshold=1e9, steps=40, interval=5, audit_interval=5, max_rounds=max_rounds,
                           conditioning=[], progress=False, dynamics=seeded_langevin, recalibrate=False,
                           finetune_options={"epochs": 1, "replay": None, "patience": 10}, **options)


def test_a_hole_sends_the_md_back_to_the_last_audit_passed_at_most_max_rewinds_times(tiny_model, tmp_path):
    """The step-20 audit is 5 eV off: after the round it starts, the MD goes back to step 15 (the last audit
    passed, positions and momenta kept there) and runs step 20 again; the second hole does too; the third,
    with ``max_rewinds=2`` spent, is run through to the end. The rewound audits stay checks, marked. A resume
    of the finished run goes back nowhere."""
    learner = hole_run(tiny_model, tmp_path / "run", max_rewinds=2)
    report = learner.run()
    audits = [c for c in report.checks if c.kind == "audit"]
    assert [c.step for c in audits[:3]] == [5, 10, 15] and all(c.passed for c in audits[:3])
    assert [(r["hole_step"], r["from_step"], r["to_step"]) for r in report.rewinds] == [(20, 20, 15)] * 2
    assert all(abs(r["energy_error"]) > 1.0 and r["round"] == k + 1 for k, r in enumerate(report.rewinds))
    at_20 = [c for c in audits if c.step == 20]
    assert [c.rewound for c in at_20] == [True, True, False] and not any(c.passed for c in at_20)
    assert report.steps == 40 and [c.step for c in audits if not c.rewound] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert not report.confident

    verified = read(tmp_path / "run" / "md_verified.traj")
    at_15 = learner.store.frame(audits[2].store_id)
    assert verified.info["step"] == 15 and np.allclose(verified.positions, at_15.positions)
    assert np.any(verified.get_momenta())
    first, again = (learner.store.frame(c.store_id) for c in at_20[:2])
    assert not np.allclose(first.positions, again.positions)  # the thermostat drew new forces after the rewind

    resumed = hole_run(tiny_model, tmp_path / "run", max_rewinds=2).run()
    assert resumed.rewinds == report.rewinds and len(resumed.checks) == len(report.checks)


def test_a_hole_found_after_max_rounds_still_makes_a_round_while_rewinds_are_left(tiny_model, tmp_path):
    """``max_rounds=0``: no flag or failed audit makes a round, but each hole does, and the MD goes back from
    it, until ``max_rewinds=2`` is spent; the third hole is run through. A guard stop the model drove through
    a hole is learned from the same way."""
    report = hole_run(tiny_model, tmp_path / "run", max_rounds=0, max_rewinds=2).run()
    assert len(report.rounds) == 2 and [r.round for r in report.rounds] == [1, 2]
    assert [(r["hole_step"], r["from_step"], r["to_step"]) for r in report.rewinds] == [(20, 20, 15)] * 2
    assert report.steps == 40 and not report.confident

    guarded = guard_run(tiny_model, tmp_path / "guarded", 0, max_rounds=0).run()
    assert len(guarded.rounds) == 1 and guarded.stopped == "" and guarded.steps == 40
    assert [(r["hole_step"], r["to_step"]) for r in guarded.rewinds] == [(15, 0)]


def test_without_rewind_tolerance_a_hole_is_run_through(tiny_model, tmp_path):
    """``rewind_tolerance=None``: the same holes, the MD never goes back; bad settings are refused."""
    report = hole_run(tiny_model, tmp_path / "run", rewind_tolerance=None).run()
    audits = [c for c in report.checks if c.kind == "audit"]
    assert report.rewinds == [] and [c.step for c in audits] == list(range(5, 45, 5))
    assert not any(c.rewound for c in audits)
    with pytest.raises(ValueError, match="rewind_tolerance must be positive"):
        hole_run(tiny_model, tmp_path / "bad", rewind_tolerance=0.0)
    with pytest.raises(ValueError, match="max_rewinds must be >= 0"):
        hole_run(tiny_model, tmp_path / "bad", max_rewinds=-1)


class EnergyHoleAfter(HoleAfter):
    """:class:`HoleAfter` with the forces right in the hole: only the energy is ``HOLE`` eV off."""

    hole_forces = 0.0


@pytest.mark.parametrize("tolerance", [1.0, None])
def test_an_audit_off_by_more_than_rewind_tolerance_fails_however_wide_its_sigma(tiny_model, tmp_path, tolerance):
    """From step 20 on the audits are 5 eV off in energy alone, on an energy sigma inflated 100x (2 sigma holds
    the error): at ``rewind_tolerance=1`` each fails on the tolerance and the run is not confident; with
    ``None`` (the 2-sigma test alone) each passes and the run ends confident 5 eV off. (No rewind: a hole
    would make a round, see the test above.)"""
    calc, calls = plain_calc(tiny_model), []
    calc.energy_posterior.calibration = calc.energy_posterior.calibration.times(1e4)
    report = OnTheFlyLearner(molecule("H2CO"), calc, lambda: EnergyHoleAfter(tiny_model, 3, calls), tmp_path / "run",
                             threshold=1e9, steps=30, interval=5, audit_interval=5, max_rounds=0, conditioning=[],
                             progress=False, dynamics=seeded_langevin, recalibrate=False,
                             rewind_tolerance=tolerance, max_rewinds=0).run()  # the verdicts alone, no rewind
    audits = [c for c in report.checks if c.kind == "audit"]
    late = [c for c in audits if c.step >= 20]
    assert [c.step for c in audits] == [5, 10, 15, 20, 25, 30] and all(c.passed for c in audits[:3])
    assert all(HOLE - 0.5 < abs(c.energy_error) < 2 * c.energy_std for c in late)  # inside 2 sigma
    assert all(c.forces_agree for c in late)
    if tolerance is None:
        assert all(c.passed for c in late) and report.confident
    else:
        assert not any(c.passed for c in late) and not report.confident
        assert all(c.reason == f"energy error {c.energy_error:+.3f} eV beyond the tolerance 1.0 eV" for c in late)


def test_a_run_killed_as_it_rewinds_resumes_without_losing_or_repeating_a_label(tiny_model, tmp_path, monkeypatch):
    """Killed after the MD went back but before that was written: the resumed run finds the hole again and
    goes back to the same frame; every reference call is one stored label, none lost or repeated."""
    real_checkpoint = OnTheFlyLearner._checkpoint_md

    def killed_after_a_rewind(self, step):
        if self.state["rewinds"]:
            raise KeyboardInterrupt("killed")
        real_checkpoint(self, step)

    monkeypatch.setattr(OnTheFlyLearner, "_checkpoint_md", killed_after_a_rewind)
    first = hole_run(tiny_model, tmp_path / "run", max_rewinds=2)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    monkeypatch.setattr(OnTheFlyLearner, "_checkpoint_md", real_checkpoint)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["rewinds"] == []  # the rewind was lost
    calls = first.reference().calls  # the labels of the killed run, shared with the resumed one's reference
    resumed = hole_run(tiny_model, tmp_path / "run", max_rewinds=2)
    resumed.reference = first.reference
    report = resumed.run()
    assert report.resumed_from > 0 and report.steps == 40
    assert [r["to_step"] for r in report.rewinds] == [15, 15]
    stored = [row for row in resumed.store.rows() if row.get("energy") is not None]
    assert len(calls) == len(stored) == len({row.id for row in stored})


class StopsOnceAt(PhysicalGuard):
    """A guard that finds the frame at MD step ``at`` unphysical the first time the MD gets there."""

    def __init__(self, at: int):
        super().__init__([molecule("H2CO")])
        self.at, self.stopped = at, 0

    def check(self, atoms, where):
        if where == f"MD step {self.at}" and not self.stopped:
            self.stopped += 1
            raise UnphysicalFrame(f"{where}: atom 2 (H) has left; the run is stopped and the frame is stored as "
                                  "'unphysical', not labelled", atoms=atoms, where=where)
        super().check(atoms, where)


def guard_run(model, workdir, clean: int, max_rounds: int = 3, **options) -> OnTheFlyLearner:
    """No flags, no audits (the start is the verified frame); the guard stops step 20 once; the reference is
    the model for ``clean`` labels, then 5 eV off (a hole)."""
    calls = []
    return OnTheFlyLearner(molecule("H2CO"), plain_calc(model), lambda: HoleAfter(model, clean, calls), workdir,
                           threshold=1e9, steps=40, interval=5, audit_interval=None, max_rounds=max_rounds,
                           conditioning=[], progress=False, dynamics=seeded_langevin, recalibrate=False,
                           guard=StopsOnceAt(20),
                           finetune_options={"epochs": 1, "replay": None, "patience": 10}, **options)


@pytest.mark.parametrize("clean, rewinds", [(0, True), (10, False)])
def test_a_guard_stop_the_model_drove_through_a_hole_sends_the_md_back(tiny_model, tmp_path, clean, rewinds):
    """The guard stops step 20: the frame checked before it (step 15) is labelled and checked. 5 eV off there,
    the model drove the dynamics out through a hole: a round learns from it, the MD goes back to the start (no
    audit passed) and runs to the end. Right there, the stop stands and says so. The stopped frame is stored
    'unphysical' and never labelled either way."""
    learner = guard_run(tiny_model, tmp_path / "run", clean)
    report = learner.run()
    guard_checks = [c for c in report.checks if c.kind == "guard"]
    assert [c.step for c in guard_checks] == [15] and guard_checks[0].passed is not rewinds
    unphysical = list(learner.store.rows("unphysical"))
    assert len(unphysical) == 1 and unphysical[0].step == 20 and unphysical[0].get("energy") is None
    if rewinds:
        assert report.stopped == "" and report.steps == 40 and len(report.rounds) == 1
        assert [(r["hole_step"], r["from_step"], r["to_step"]) for r in report.rewinds] == [(15, 20, 0)]
        assert report.rewinds[0]["guard_stop"].startswith("MD step 20: atom 2 (H) has left")
        assert guard_checks[0].rewound and guard_checks[0].store_id in learner.state["trained_ids"]
    else:
        assert report.rewinds == [] and report.steps == 20 and report.rounds == []
        assert report.stopped.startswith("MD step 20: atom 2 (H) has left")
        assert "at MD step 15, the last frame checked before it, the model is off by +0.00 eV" in report.stopped


def test_a_guard_stop_asks_nothing_without_rewinds(tiny_model, tmp_path):
    """``rewind_tolerance=None``: the guard's stop stands as it is, and no label is asked."""
    learner = guard_run(tiny_model, tmp_path / "run", 0, rewind_tolerance=None)
    report = learner.run()
    assert report.stopped.startswith("MD step 20: atom 2 (H) has left") and report.stopped.endswith("not labelled")
    assert learner.labels_used() == 0 and report.steps == 20
