from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from ase_mlipal.frames import read_labels
from ase_mlipal.labelling import label
from ase_mlipal.store import FrameStore

from .conftest import rattled


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
    report = label(store, EMT, progress=False)  # a factory, in the default process pool
    assert report.labelled == 5 and report.failed == 0
    assert store.counts() == {"flagged": 0, "labelled": 5, "verified": 0, "failed": 0, "unphysical": 0}
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
    assert store.counts() == {"flagged": 0, "labelled": 4, "verified": 0, "failed": 1, "unphysical": 0}


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
    assert store.counts() == {"flagged": 0, "labelled": 2, "verified": 0, "failed": 0, "unphysical": 0}
    for atoms in store.frames("labelled"):
        energy, forces = read_labels(atoms)
        direct = atoms.copy()
        direct.calc = ase_mlipal.xtb_calculator()
        assert energy == pytest.approx(direct.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, direct.get_forces(), atol=1e-6)

    assert failed_report.labelled == 1 and failed_report.failed == 1
    assert failing.counts() == {"flagged": 0, "labelled": 1, "verified": 0, "failed": 1, "unphysical": 0}
    (failed,) = failing.rows("failed")
    assert "SCF not converged" in failed.error and failed.formula == "H3N"
    (labelled,) = failing.rows("labelled")
    assert labelled.formula == "H2O"


def test_default_pool_runs_an_openmp_reference_after_torch_has_run(tmp_path, calc):
    """Forked workers can hang in OpenMP once torch has started its threads; the default pool does not fork."""
    pytest.importorskip("tblite")
    import ase_mlipal

    busy = molecule("CH3CH2OH")
    busy.calc = calc
    busy.get_forces()  # torch's thread pool is up now
    store = filled_store(tmp_path, n=2)
    with ThreadPoolExecutor(1) as watchdog:
        report = watchdog.submit(label, store, ase_mlipal.xtb_calculator, retries=0, progress=False).result(timeout=120)
    assert report.labelled == 3 and report.failed == 0 and store.counts()["flagged"] == 0
