import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, FileIOCalculator, all_changes
from ase.calculators.emt import EMT

from ase_mlipal.frames import read_labels
from ase_mlipal.learning.labelling import ReferenceSetupError, label, process_pool
from ase_mlipal.learning.store import FrameStore

from ..conftest import rattled


class FailsOnNitrogen(Calculator):
    """A reference that raises for any frame containing N (an SCF failure stand-in)."""

    implemented_properties = ["energy", "forces"]
    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        FailsOnNitrogen.calls += 1
        if 7 in self.atoms.numbers:
            raise RuntimeError("SCF not converged")
        self.results = {"energy": 1.0, "forces": np.zeros((len(self.atoms), 3))}


def filled_store(tmp_path, n=4):
    store = FrameStore(tmp_path / "frames.db")
    for atoms in rattled(molecule("CH3OH"), n, seed=1) + [molecule("NH3")]:
        store.add_flagged(atoms, source="md")
    return store


def test_label_in_a_process_pool_matches_the_reference(tmp_path):
    store = filled_store(tmp_path)
    with process_pool(2) as pool:
        report = label(store, EMT, executor=pool, progress=False)  # a factory, in a fork-server process pool
    assert report.labelled == 5 and report.failed == 0
    assert store.counts() == {"flagged": 0, "labelled": 5, "verified": 0, "failed": 0, "unphysical": 0, "skipped": 0}
    for atoms in store.frames("labelled"):
        energy, forces = read_labels(atoms)
        direct = atoms.copy()
        direct.calc = EMT()
        assert energy == pytest.approx(direct.get_potential_energy())
        np.testing.assert_allclose(forces, direct.get_forces())


def test_failing_reference_is_recorded_and_the_rest_goes_on(tmp_path):
    store = filled_store(tmp_path)
    FailsOnNitrogen.calls = 0
    with ThreadPoolExecutor(2) as pool:
        report = label(store, FailsOnNitrogen, executor=pool, retries=2, progress=False)
    assert report.labelled == 4 and report.failed == 1
    (failed,) = store.rows("failed")
    assert "SCF not converged" in failed.error and failed.formula == "H3N"
    assert FailsOnNitrogen.calls == 4 + 3  # the failing frame was tried 1 + 2 times


def test_labelled_frames_are_never_computed_again(tmp_path):
    store = filled_store(tmp_path)
    FailsOnNitrogen.calls = 0
    with ThreadPoolExecutor(1) as pool:
        label(store, FailsOnNitrogen, executor=pool, retries=0, max_frames=2, progress=False)
        assert store.counts()["labelled"] == 2 and FailsOnNitrogen.calls == 2
        label(store, FailsOnNitrogen, executor=pool, retries=0, progress=False)
    assert FailsOnNitrogen.calls == 5  # 2 + the 3 still flagged, none repeated
    assert store.counts() == {"flagged": 0, "labelled": 4, "verified": 0, "failed": 1, "unphysical": 0, "skipped": 0}


def test_label_through_a_dask_cluster_matches_xtb_and_records_failures(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    pytest.importorskip("tblite")
    import ase_mlipal

    frames = rattled(molecule("H2O"), 1, seed=2) + rattled(molecule("CH4"), 1, seed=3)
    store = FrameStore(tmp_path / "frames.db")
    for atoms in frames:
        store.add_flagged(atoms, source="md")
    failing = FrameStore(tmp_path / "failing.db")
    for atoms in rattled(molecule("H2O"), 1, seed=4) + rattled(molecule("NH3"), 1, seed=5):
        failing.add_flagged(atoms, source="md")

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        executor = client.get_executor()
        report = label(store, ase_mlipal.xtb_calculator, executor=executor, progress=False)
        failed_report = label(failing, FailsOnNitrogen, executor=executor, retries=0, progress=False)

    assert report.labelled == 2 and report.failed == 0
    assert store.counts() == {"flagged": 0, "labelled": 2, "verified": 0, "failed": 0, "unphysical": 0, "skipped": 0}
    for atoms in store.frames("labelled"):
        energy, forces = read_labels(atoms)
        direct = atoms.copy()
        direct.calc = ase_mlipal.xtb_calculator()
        assert energy == pytest.approx(direct.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, direct.get_forces(), atol=1e-6)

    assert failed_report.labelled == 1 and failed_report.failed == 1
    assert failing.counts() == {"flagged": 0, "labelled": 1, "verified": 0, "failed": 1, "unphysical": 0, "skipped": 0}
    (failed,) = failing.rows("failed")
    assert "SCF not converged" in failed.error and failed.formula == "H3N"
    (labelled,) = failing.rows("labelled")
    assert labelled.formula == "H2O"


def test_default_executor_runs_an_openmp_reference_after_torch_has_run(tmp_path, calc):
    """Forked workers can hang in OpenMP once torch has started its threads; the default (threads) does not fork."""
    pytest.importorskip("tblite")
    import ase_mlipal

    busy = molecule("CH3CH2OH")
    busy.calc = calc
    busy.get_forces()  # torch's thread pool is up now
    store = filled_store(tmp_path, n=2)
    with ThreadPoolExecutor(1) as watchdog:
        report = watchdog.submit(label, store, ase_mlipal.xtb_calculator, retries=0, progress=False).result(timeout=120)
    assert report.labelled == 3 and report.failed == 0 and store.counts()["flagged"] == 0


SCRIPT = """
import ase_mlipal
from ase.build import molecule
store = ase_mlipal.FrameStore({path!r})
for seed in range(3):
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=seed)
    store.add_flagged(atoms, source="md")
report = ase_mlipal.label(store, ase_mlipal.xtb_calculator, progress=False)
print("LABELLED", report.labelled, store.counts()["labelled"])
"""


@pytest.mark.parametrize("how", ["plain script", "notebook", "guarded script"])
def test_default_labelling_works_wherever_a_user_runs_it(tmp_path, how):
    """No `if __name__ == "__main__":` needed: a plain script, code fed to the interpreter as a notebook
    kernel runs it (no file to re-import), and a guarded script, all with the default arguments."""
    pytest.importorskip("tblite")
    import os
    import subprocess
    import sys
    import textwrap

    code = SCRIPT.format(path=str(tmp_path / "frames.db"))
    if how == "guarded script":
        code = "def main():\n" + textwrap.indent(code, "    ") + "\nif __name__ == '__main__':\n    main()\n"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if how == "notebook":
        run = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, env=env, timeout=300)
    else:
        script = tmp_path / "label_frames.py"
        script.write_text(code)
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "LABELLED 3 3" in run.stdout


def missing_package():
    import xtb_that_is_not_installed  # noqa: F401  (the typo a user makes)


def test_a_setup_error_of_the_reference_is_raised_once_and_leaves_the_frames_flagged(tmp_path):
    store = filled_store(tmp_path)
    with pytest.raises(ReferenceSetupError, match=r"raised ModuleNotFoundError: No module named "
                                                  r"'xtb_that_is_not_installed' .*none was marked failed, 5 stay flagged"):
        label(store, missing_package, retries=3, progress=False)
    assert store.counts()["flagged"] == 5 and store.counts()["failed"] == 0


class Recording(Calculator):
    """Records which instance computed (the instance itself: kept alive, its ``id`` cannot be reused by a later
    copy); a calculator that is not safe to share."""

    implemented_properties = ["energy", "forces"]
    used = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        Recording.used.append(self)
        self.results = {"energy": float(self.atoms.positions.sum()), "forces": np.zeros((len(self.atoms), 3))}


def test_a_calculator_instance_is_copied_for_each_task(tmp_path):
    store = filled_store(tmp_path)
    shared = Recording()
    Recording.used = []
    with ThreadPoolExecutor(2) as pool:
        report = label(store, shared, executor=pool, progress=False)
    used = {id(calc) for calc in Recording.used}
    assert report.labelled == 5 and len(used) == 5 and id(shared) not in used
    for atoms in store.frames("labelled"):
        assert read_labels(atoms)[0] == pytest.approx(atoms.positions.sum())


class Sleepy(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import time

        time.sleep(3)
        raise RuntimeError("never finishes in time")


def test_a_hung_reference_ends_in_a_timeout_with_the_frames_flagged(tmp_path):
    import time

    store = filled_store(tmp_path)
    started = time.time()
    with pytest.raises(TimeoutError, match="no reference calculation finished in 0.5 s; the 5 frames"):
        label(store, Sleepy, timeout=0.5, progress=False)
    assert time.time() - started < 2.5 and store.counts()["flagged"] == 5


class ShellSum(FileIOCalculator):
    """A file-based calculator: writes positions to in.txt, a shell command copies them to out.txt."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, **kwargs):
        super().__init__(command="cat in.txt > out.txt", **kwargs)

    def write_input(self, atoms, properties=None, system_changes=None):
        super().write_input(atoms, properties, system_changes)
        np.savetxt(os.path.join(self.directory, "in.txt"), atoms.positions)

    def read_results(self):
        positions = np.loadtxt(os.path.join(self.directory, "out.txt"))
        self.results = {"energy": float(positions.sum()), "forces": np.zeros_like(positions)}


def test_file_based_references_run_each_frame_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = filled_store(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        report = label(store, ShellSum, executor=pool, progress=False)
    assert report.labelled == 5
    for atoms in store.frames("labelled"):
        own = tmp_path / f"frame{atoms.info['store_id']}" / "in.txt"
        np.testing.assert_allclose(np.loadtxt(own), atoms.positions)
        assert read_labels(atoms)[0] == pytest.approx(atoms.positions.sum())
