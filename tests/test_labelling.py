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
    assert store.counts() == {"flagged": 0, "labelled": 5, "failed": 0}
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
    assert store.counts() == {"flagged": 0, "labelled": 4, "failed": 1}
