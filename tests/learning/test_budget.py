"""max_labels: a learner never asks the reference for more labels than its budget, and spends them well."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from ase_mlipal import NEBLearner, OnTheFlyLearner
from ase_mlipal.learning.learning_run import LearningRun

from ..conftest import seeded_langevin
from .test_neb import CountingReference, ModelAsReference, formaldehyde_band, formaldehyde_calc


@pytest.fixture()
def calc(tiny_model):
    return formaldehyde_calc(tiny_model)


class CountedModelReference(ModelAsReference):
    """:class:`ModelAsReference` that counts its calculations (class-wide: each label uses its own copy)."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        type(self).calls += 1
        super().calculate(atoms, properties, system_changes or ["positions"])


def test_the_budget_keeps_the_flags_maxdet_picks_not_near_copies(calc, tmp_path):
    """Two flags that are near copies and one that is not, room for two: one copy is skipped."""
    run = LearningRun(calc, CountingReference(), tmp_path / "run", conditioning=[], max_labels=2, run_id="r")
    water = molecule("H2O")
    copy = water.copy()
    copy.positions[0, 0] += 1e-3
    distinct = molecule("CH4")
    ids = [run.store.add_flagged(a, source="md", run_id="r")[0] for a in (water, copy, distinct)]
    other = run.store.add_flagged(molecule("NH3"), source="md", run_id="another-run")[0]
    assert run.fit_budget()
    status = {row.id: row.status for row in run.store.rows()}
    assert status[ids[2]] == "flagged" and sorted([status[ids[0]], status[ids[1]]]) == ["flagged", "skipped"]
    assert status[other] == "flagged"  # another run's flags are not this run's to skip
    skipped = next(run.store.rows("skipped"))
    assert "max_labels=2" in skipped.error
    tight = LearningRun(calc, CountingReference(), tmp_path / "run", store=run.store, conditioning=[], max_labels=1,
                        run_id="r")
    assert not tight.fit_budget(keep=set(ids))  # two rows to keep, room for one: nothing changes
    assert {row.id: row.status for row in run.store.rows()} == status
    copy_id = next(k for k in ids[:2] if status[k] == "skipped")
    assert run.fit_budget(keep={copy_id})  # a check lands on the skipped copy: it is flagged again, kept
    assert run.store.db.get(id=copy_id).status == "flagged"


@pytest.mark.parametrize("max_labels", [0, 2.5, True, "40"])
def test_max_labels_must_be_a_positive_integer(calc, tmp_path, max_labels):
    with pytest.raises(ValueError, match="max_labels must be a positive"):
        LearningRun(calc, CountingReference(), tmp_path / "run", conditioning=[], max_labels=max_labels)


def test_a_budgeted_run_labels_only_its_own_flags(calc, tmp_path):
    """Rows of another run in a shared store (one whose name starts like this run's too) are neither
    counted, labelled nor skipped by this run."""
    run = LearningRun(calc, EMT(), tmp_path / "run", conditioning=[], max_labels=5, run_id="md")
    own = [run.store.add_flagged(molecule(name), source="md", run_id=rid)[0]
           for name, rid in (("H2O", "md"), ("CH4", "md-round1"))]
    others = [run.store.add_flagged(molecule(name), source="md", run_id=rid)[0]
              for name, rid in (("NH3", "md-600K"), ("C2H6", "another"))]
    assert run.label_within_budget()
    status = {row.id: row.status for row in run.store.rows()}
    assert [status[k] for k in own] == ["labelled", "labelled"]
    assert [status[k] for k in others] == ["flagged", "flagged"]
    assert run.labels_used() == 2


@pytest.mark.parametrize("max_labels", [7, 12])
def test_a_neb_run_never_asks_for_more_labels_than_its_budget(tiny_model, calc, tmp_path, max_labels):
    images = formaldehyde_band(5)
    CountedModelReference.calls = 0
    learner = NEBLearner(calc, lambda: CountedModelReference(tiny_model, images[0], 0.3), tmp_path / "run", images,
                         threshold=1e-6, max_rounds=3, steps=6, interval=2, conditioning=[], progress=False,
                         max_labels=max_labels, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    assert CountedModelReference.calls == learner.labels_used() <= max_labels
    counts = learner.store.counts()
    assert counts["skipped"] > 0 and counts["flagged"] == 0  # every flag labelled or skipped, none left waiting
    assert report.rounds  # round 0's checks fit: a band was checked
    if report.stopped:
        assert report.stopped.startswith(f"the label budget is spent (max_labels={max_labels}")


def test_checks_that_do_not_fit_stop_the_run_before_any_label(calc, tmp_path):
    images = formaldehyde_band(5)
    CountingReference.calls = 0
    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e-6, max_rounds=1, steps=4,
                         conditioning=[], progress=False, max_labels=2)
    report = learner.run()
    assert report.rounds == [] and report.stopped.startswith("the label budget is spent (max_labels=2, 0 used)")
    assert "the checks of round 0" in report.stopped and CountingReference.calls == 0
    counts = learner.store.counts()
    assert counts["labelled"] == counts["verified"] == counts["flagged"] == 0 and counts["skipped"] > 0


def test_an_md_run_stops_when_its_budget_is_spent(tiny_model, calc, tmp_path):
    start = molecule("H2CO")
    CountedModelReference.calls = 0
    learner = OnTheFlyLearner(start, calc, lambda: CountedModelReference(tiny_model, start, 0.0), tmp_path / "run",
                              threshold=1e-6, steps=40, interval=2, labels_per_round=3, audit_interval=None,
                              conditioning=[], progress=False, max_labels=4,
                              finetune_options={"epochs": 2, "replay": None}, dynamics=seeded_langevin)
    report = learner.run()
    assert CountedModelReference.calls == learner.labels_used() <= 4
    assert report.stopped.startswith("the label budget is spent (max_labels=4") and report.steps < 40
    assert np.isfinite(start.positions).all()


def test_an_md_run_that_spends_its_budget_in_its_last_round_finishes_unstopped(tiny_model, calc, tmp_path):
    """Flags raised after the last round wait when the budget is spent: they are skipped, the run is not stopped."""
    start = molecule("H2CO")
    CountedModelReference.calls = 0
    learner = OnTheFlyLearner(start, calc, lambda: CountedModelReference(tiny_model, start, 0.0), tmp_path / "run",
                              threshold=1e-6, steps=20, interval=2, labels_per_round=3, max_rounds=1,
                              audit_interval=None, conditioning=[], progress=False, max_labels=3,
                              finetune_options={"epochs": 2, "replay": None}, dynamics=seeded_langevin)
    report = learner.run()
    assert report.stopped == "" and report.steps == 20 and len(report.rounds) == 1
    assert CountedModelReference.calls == learner.labels_used() == 3
    counts = learner.store.counts()
    assert counts["skipped"] > 0 and counts["flagged"] == 0


def test_a_guard_stop_with_no_labels_left_to_judge_it_names_both(tiny_model, calc, tmp_path):
    from .test_neb import OverlapsInRoundZero

    images = formaldehyde_band(5)
    guard = OverlapsInRoundZero([images[0], images[-1]])
    learner = NEBLearner(calc, CountingReference(), tmp_path / "run", images, threshold=1e3, max_rounds=1, steps=6,
                         interval=2, guard=guard, conditioning=[], progress=False, max_labels=2)
    report = learner.run()
    assert report.stopped.startswith("round 0, NEB step 3, image 2: atoms 0 (O) and 1 (C) are 0.20 A apart")
    assert "(the label budget is spent (max_labels=2" in report.stopped and learner.labels_used() == 0
    assert learner.store.counts()["unphysical"] == 1


def test_a_neb_run_keeps_labels_for_the_next_bands_checks(tiny_model, calc, tmp_path):
    """Flags everywhere and a budget the first band's flags could fill: they leave three labels (the next band's
    checks) and half of the rest, so the second band is checked; its own flags get no label (too few would be
    left for a third band's checks), no third band is run, and the label no check can use is not spent."""
    images = formaldehyde_band(5)
    CountedModelReference.calls = 0
    learner = NEBLearner(calc, lambda: CountedModelReference(tiny_model, images[0], 0.3), tmp_path / "run", images,
                         threshold=1e-6, max_rounds=3, steps=6, interval=2, conditioning=[], progress=False,
                         max_labels=11, finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    assert [r.round for r in report.rounds] == [0, 1] and all(r.check is not None for r in report.rounds)
    assert len(report.rounds[1].checks) == 3  # leaving fewer than the 2 labels a band's checks need
    assert learner.store.counts()["flagged"] == 0  # every flag labelled or skipped
    held = [row for row in learner.store.rows("skipped") if row.get("run_id") == "neb-round0"]
    assert held and all("share of the label budget" in row.error for row in held)  # the pacing bound
    checks = {c.store_id for r in report.rounds for c in r.checks}
    labelled = {row.id: row.get("run_id") for row in learner.store.rows() if row.status in ("labelled", "verified")
                and row.get("source") == "neb" and row.id not in checks}
    spare = 11 - 2 - len(report.rounds[0].checks) - 3  # after the endpoints, round 0's checks, the next band's
    assert len(labelled) == spare - spare // 2  # half the spare labels (rounded up) went to round 0's flags
    assert set(labelled.values()) == {"neb-round0"}
    used = 2 + len(labelled) + len(checks)
    assert CountedModelReference.calls == learner.labels_used() == used == 10
    assert report.stopped.startswith(f"the label budget is spent (max_labels=11, {used} used): not enough left for "
                                     "the checks of round 2")
    assert not [row for row in learner.store.rows() if row.get("run_id") == "neb-round2"]  # no band 2 was run


def test_the_last_band_keeps_no_labels_back(tiny_model, calc, tmp_path):
    """With max_rounds=0 no band follows the first: its flags may take every label its checks leave."""
    images = formaldehyde_band(5)
    CountedModelReference.calls = 0
    learner = NEBLearner(calc, lambda: CountedModelReference(tiny_model, images[0], 0.3), tmp_path / "run", images,
                         threshold=1e-6, max_rounds=0, steps=6, interval=2, conditioning=[], progress=False,
                         max_labels=11)
    report = learner.run()
    assert len(report.rounds) == 1 and learner.labels_used() == 11 == CountedModelReference.calls
    assert learner.store.counts()["flagged"] == 0


def test_the_band_before_the_last_keeps_back_only_the_last_bands_checks(tiny_model, calc, tmp_path):
    """With max_rounds=1 the only band after the first is the last, whose flags train no model: the first band's
    flags may take every label but that band's checks."""
    images = formaldehyde_band(5)
    learner = NEBLearner(calc, lambda: CountedModelReference(tiny_model, images[0], 0.3), tmp_path / "run", images,
                         threshold=1e-6, max_rounds=1, steps=6, interval=2, conditioning=[], progress=False,
                         max_labels=11, finetune_options={"epochs": 2, "replay": None})
    assert learner.label_reserve(20) == 3  # (before any band: state round 0)
    report = learner.run()
    first = report.rounds[0]
    checks = {c.store_id for c in first.checks}
    trained = [row for row in learner.store.rows() if row.status in ("labelled", "verified")
               and row.get("run_id") == "neb-round0" and row.get("source") == "neb" and row.id not in checks]
    assert len(trained) == min(11 - 2 - len(checks) - 3, first.n_flagged)
