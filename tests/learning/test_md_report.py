"""What the MD learner's report says about a run it could not verify (tiny model, no xTB)."""

import re

import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from ase_mlipal import MLIPALCalculator, OnTheFlyLearner

from ..conftest import seeded_langevin, widen_force_sigma
from .test_neb import formaldehyde_calc


class ForcesOffReference(Calculator):
    """The model itself as the reference, every force component ``offset`` eV/A larger (default 10: the model
    fails every audit; 0: it passes every one)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model, offset: float = 10.0):
        super().__init__()
        self.model, self.offset = model, offset

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.calc = MLIPALCalculator(model=self.model)
        self.results = {"energy": probe.get_potential_energy(), "forces": probe.get_forces() + self.offset}


def plain_calc(model) -> MLIPALCalculator:
    """The posterior's own variance: forces 10 eV/A off must lie outside the raw 2 sigma of this uncalibrated
    tiny model on every audit, which the distance inflation (unitless before calibration) does not promise (on
    the distance-aware default one audit in a few passed, as the MD wandered)."""
    return formaldehyde_calc(model, distance_aware=False)


@pytest.mark.parametrize("audit_interval, why", [
    (None, r"no audit checked the final model \(round 0\): audit_interval=None audits nothing"),
    (5, r"(\d+) of \1 audits of the final model \(round 0\) failed when the MD ended at step 20"),
])
def test_an_unverified_md_run_says_why_it_ended(tiny_model, tmp_path, audit_interval, why):
    """Not confident and not stopped: ``ended`` names what is missing (no audit, or the audits it failed)."""
    start, calc = molecule("H2CO"), plain_calc(tiny_model)
    report = OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model), tmp_path / "run", threshold=1e9,
                             steps=20, interval=5, audit_interval=audit_interval, max_rounds=0, conditioning=[],
                             progress=False, dynamics=seeded_langevin).run()
    assert not report.confident and report.stopped == ""
    tail = "; they are labelled: a longer run with more rounds \\(max_rounds=0\\) trains on them"
    assert re.fullmatch(why + (tail if audit_interval else ""), report.ended)
    assert (len([c for c in report.checks if c.kind == "audit"]) > 0) == (audit_interval is not None)


def test_audits_the_budget_cannot_pay_for_stop_the_run_and_stopped_says_why(tiny_model, tmp_path):
    """``stopped`` and ``ended`` never both speak: a run the budget stopped has ``ended`` empty."""
    start, calc = molecule("H2CO"), plain_calc(tiny_model)
    report = OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model), tmp_path / "run", threshold=1e9,
                             steps=20, interval=5, audit_interval=5, max_rounds=0, max_labels=1, conditioning=[],
                             progress=False, dynamics=seeded_langevin).run()
    assert report.stopped.startswith("the label budget is spent (max_labels=1")
    assert "the last audits" in report.stopped and report.ended == "" and not report.confident


def test_a_final_model_no_draw_audited_is_audited_where_the_md_ended(tiny_model, tmp_path):
    """Audits drawn so rarely that none falls in 20 steps: one closing audit of the last frame checks the final
    model (here exact, so the run is verified); a resume adds none twice; a flagged last frame is no audit."""
    start, calc = molecule("H2CO"), plain_calc(tiny_model)

    def learner(workdir, threshold=1e9):
        return OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model, offset=0.0), workdir,
                               threshold=threshold, steps=20, interval=5, audit_interval=10**9, max_rounds=0,
                               conditioning=[], progress=False, dynamics=seeded_langevin)

    run = learner(tmp_path / "run")
    report = run.run()
    audits = [c for c in report.checks if c.kind == "audit"]
    assert [(c.step, c.passed) for c in audits] == [(20, True)] and report.confident and report.ended == ""
    assert run.labels_used() == 1
    again = learner(tmp_path / "run").run()  # a resume of the finished run
    assert [c.step for c in again.checks if c.kind == "audit"] == [20] and again.confident
    flagged = learner(tmp_path / "flagged", threshold=1e-9).run()  # every check flags, the last frame too
    assert not [c for c in flagged.checks if c.kind == "audit"] and not flagged.confident
    assert flagged.ended.startswith("no audit checked the final model (round 0)")


def test_a_failed_audit_starts_a_round_at_once(tiny_model, tmp_path):
    """No flag (threshold 1e9) and 8 labels a batch: only the audit, checked when drawn, sees the model 10 eV/A
    off, and the round runs on it right away, not once 8 frames wait; a passed audit starts none."""
    start, calc = molecule("H2CO"), plain_calc(tiny_model)

    def learner(workdir, offset):
        return OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model, offset=offset), workdir,
                               threshold=1e9, steps=10, interval=5, labels_per_round=8, audit_interval=5,
                               max_rounds=1, conditioning=[], progress=False, dynamics=seeded_langevin,
                               finetune_options={"epochs": 1, "replay_ratio": 1})

    wrong = learner(tmp_path / "wrong", offset=10.0)
    report = wrong.run()
    audits = [c for c in report.checks if c.kind == "audit"]
    assert [(c.step, c.round, c.passed) for c in audits][0] == (5, 0, False)
    assert len(report.rounds) == 1 and report.rounds[0].n_train_frames == 1  # the failed audit alone
    assert not report.confident  # the step-10 audit fails too, with no round left to learn from it
    right = learner(tmp_path / "right", offset=0.0).run()
    assert not right.rounds and all(c.passed for c in right.checks) and right.confident


@pytest.mark.parametrize("force_tolerance", [None, 0.1])
def test_force_tolerance_fails_an_audit_whose_error_sigma_covers(tiny_model, tmp_path, monkeypatch, force_tolerance):
    """Every force sigma a million times wider: forces 0.5 eV/A off pass the 2-sigma test. Without a tolerance the
    run is verified; with ``force_tolerance=0.1`` (eV/A) the first audit fails, says why and starts a round."""
    start, calc = molecule("H2CO"), plain_calc(tiny_model)
    widen_force_sigma(monkeypatch, calc, 1e6)
    report = OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model, offset=0.5), tmp_path / "run",
                             threshold=1e9, steps=10, interval=5, labels_per_round=8, audit_interval=5,
                             max_rounds=1, conditioning=[], progress=False, force_tolerance=force_tolerance,
                             dynamics=seeded_langevin, finetune_options={"epochs": 1, "replay_ratio": 1}).run()
    first = next(c for c in report.checks if c.kind == "audit")
    assert first.step == 5 and first.forces_agree and first.force_mae == pytest.approx(0.5, abs=1e-6)
    if force_tolerance is None:
        assert first.passed and not report.rounds and report.confident
    else:
        assert not first.passed and len(report.rounds) == 1 and not report.confident
        assert first.reason == "force error 0.500 eV/A (mean per component) beyond the tolerance 0.1 eV/A"


def test_force_tolerance_must_be_positive(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="force_tolerance must be positive"):
        OnTheFlyLearner(molecule("H2CO"), plain_calc(tiny_model), None, tmp_path / "run", threshold=1.0,
                        force_tolerance=0.0)
    assert not (tmp_path / "run").exists()
