"""OnTheFlyLearner: the MD loop pauses, learns and resumes, also after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from ase_mlipal import FrameStore, OnTheFlyLearner, PhysicalGuard, save_model
from ase_mlipal.models.graphs import OverlappingAtoms

from ..conftest import assert_no_label_repeated
from .test_md_report import ForcesOffReference
from .test_neb import formaldehyde_calc

pytest.importorskip("tblite")

RUN = r'''
import sys
from concurrent.futures import ThreadPoolExecutor
from ase.build import molecule
import ase_mlipal
from ase_mlipal.learning.md_learner import OnTheFlyLearner, langevin
from tests.conftest import LoggedXTB, rattled

workdir, model, log = sys.argv[1:4]
LoggedXTB.log = log

start = molecule("CH3OH")
calc = ase_mlipal.MLIPALCalculator(model=model)
known = rattled(start, 10, stdev=0.02, seed=0)
calc.condition(known)
learner = OnTheFlyLearner(
    start, calc, LoggedXTB, workdir, threshold=1.3, mode="relative", typical_frames=known,
    steps=int(sys.argv[4]), interval=2, labels_per_round=3, conditioning=known,
    dynamics=lambda atoms: langevin(atoms, temperature_K=800, timestep_fs=0.5, friction=0.05, seed=0),
    executor=ThreadPoolExecutor(1), audit_interval=40, max_rounds=4, max_rewinds=0,  # rewinds: test_rewind.py
    guard=ase_mlipal.PhysicalGuard([start], min_distance_ratio=0.05, bond_ratio=20.0),
    finetune_options={"epochs": 4, "replay": None, "patience": 10},
    progress=False)
report = learner.run()
print("ROUNDS", len(report.rounds), "STEPS", report.steps, "RESUMED", report.resumed_from, "STOPPED", report.stopped)
'''


def _start(tmp_path, model, steps):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [sys.executable, str(script), str(tmp_path / "work"), str(model), str(tmp_path / "log.txt"), str(steps)]
    return subprocess.Popen(args, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _labelled(store):
    """Row id -> reference energy of every labelled row (passed audits included)."""
    return {row.id: row.energy for status in ("labelled", "verified") for row in store.rows(status)}


def test_killed_learner_resumes_without_repeating_a_label(tiny_model, tmp_path):
    model = save_model(tiny_model, tmp_path / "tiny.pt")
    first = _start(tmp_path, model, steps=400)
    db = tmp_path / "work" / "frames.db"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if db.exists() and FrameStore(db).counts()["labelled"] >= 3:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before it could be killed:\n" + first.stdout.read()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _labelled(FrameStore(db))
    step_at_kill = json.loads((tmp_path / "work" / "state.json").read_text())["step"]
    assert len(before) >= 3

    second = _start(tmp_path, model, steps=400)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert "STEPS 400" in out and f"RESUMED {step_at_kill}" in out

    store = FrameStore(db)
    after = _labelled(store)
    assert all(after.get(i) == e for i, e in before.items())  # nothing labelled was lost or changed
    assert_no_label_repeated(tmp_path / "log.txt", store, before)  # one worker: at most one frame in flight
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["round"] >= 1 and (tmp_path / "work" / state["posterior"]).exists()
    audits = [c for c in state["checks"] if c["kind"] == "audit"]
    assert audits  # unflagged frames were audited; each checked, or failed for want of a label
    assert all(np.isfinite(c["force_mae"]) or c["reason"].startswith("no reference label") for c in audits)
    assert {row.id for row in store.rows("verified")} <= {c["store_id"] for c in audits}


class Collapse(VelocityVerlet):
    """MD that moves atom 1 a third of the way onto atom 0 each step (an MD blowing up between two checks)."""

    def step(self, forces=None):
        positions = self.atoms.get_positions()
        positions[1] += (positions[0] - positions[1]) / 3
        self.atoms.set_positions(positions)
        return self.atoms.get_forces()


def test_an_md_run_onto_overlapping_atoms_stops_cleanly(tiny_model, tmp_path):
    """Atoms driven within 0.1 A between the guard's checks at steps 5 and 10: the frame is stored unphysical,
    the run stops, nothing raises. The frame checked before (step 5) is labelled to judge the stop: the model
    (the reference here) is right there, so the stop stands."""
    start, calc = molecule("H2CO"), formaldehyde_calc(tiny_model)
    learner = OnTheFlyLearner(start, calc, lambda: ForcesOffReference(tiny_model, offset=0.0), tmp_path / "run",
                              threshold=1e9, steps=40, interval=5, audit_interval=None, conditioning=[],
                              guard=PhysicalGuard([start], min_distance_ratio=0.01),  # passes step 5's 0.16 A
                              dynamics=lambda atoms: Collapse(atoms, 0.5 * units.fs), progress=False)
    report = learner.run()
    first = start.get_distance(0, 1)
    collapsed_at = next(n for n in range(1, 40) if first * (2 / 3) ** n < 0.1)  # the step that overlapped: 7
    assert report.stopped.startswith(f"MD step {collapsed_at}: the structure has atoms 0 (O) and 1 (C)")
    assert report.steps == 5 and "md.traj" in report.stopped and "(step 5)" in report.stopped
    assert "(at MD step 5, the last frame checked before it, the model is off by +0.00 eV" in report.stopped
    assert learner.labels_used() == 1 and [c.kind for c in learner.checks] == ["guard"]
    (row,) = learner.store.rows("unphysical")
    assert row.get("step") == collapsed_at and row.toatoms().get_distance(0, 1) < 0.1
    resumed = OnTheFlyLearner(start, calc, lambda: pytest.fail("nothing may be labelled"), tmp_path / "run",
                              threshold=1e9, steps=40, interval=5, audit_interval=None, conditioning=[],
                              progress=False).run()
    assert resumed.stopped == report.stopped and resumed.steps == 5  # a stopped run stays stopped
    squashed = start.copy()
    squashed.positions[1] = squashed.positions[0] + [0.05, 0, 0]
    with pytest.raises(OverlappingAtoms,
                       match=r"the start structure has atoms 0 \(O\) and 1 \(C\) 0.050 A apart .*Fix the start structure before the MD"):
        OnTheFlyLearner(squashed, calc, lambda: None, tmp_path / "bad", threshold=1.0, conditioning=[])
    chlorinated = start.copy()
    chlorinated.numbers[2] = 17  # an element the model lacks: refused before the run writes anything
    with pytest.raises(ValueError, match=r"does not know element\(s\) \['Cl'\] \(atoms \[2\]\)"):
        OnTheFlyLearner(chlorinated, calc, lambda: None, tmp_path / "chlorine", threshold=1.0, conditioning=[])
    assert not (tmp_path / "chlorine").exists()



def test_langevin_starts_atoms_at_rest_at_its_temperature():
    from ase_mlipal.learning.md_learner import langevin

    rng = np.random.default_rng(0)
    atoms = Atoms("C400", positions=rng.uniform(0, 30, size=(400, 3)))
    langevin(atoms, temperature_K=1000, seed=0)
    assert atoms.get_temperature() == pytest.approx(1000, rel=0.1)  # 1200 dof: a 4% spread
    np.testing.assert_allclose(atoms.get_momenta().sum(0), 0, atol=1e-10)
    moving = atoms.get_momenta().copy()
    langevin(atoms, temperature_K=300, seed=1)  # a resumed run keeps its momenta
    np.testing.assert_array_equal(atoms.get_momenta(), moving)
    again = Atoms("C400", positions=atoms.positions)
    langevin(again, temperature_K=1000, seed=0)
    np.testing.assert_array_equal(again.get_momenta(), moving)  # the seed fixes the draw


@pytest.mark.parametrize("atoms", [Atoms("Ar"), molecule("CO2"), molecule("HCN")], ids=["atom", "CO2", "HCN"])
def test_langevin_start_is_finite_for_an_atom_and_linear_molecules(atoms):
    from ase_mlipal.learning.md_learner import langevin

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        langevin(atoms, temperature_K=600, seed=0)
    assert np.isfinite(atoms.get_momenta()).all() and np.any(atoms.get_momenta())
