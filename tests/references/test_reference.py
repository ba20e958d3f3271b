import numpy as np
import pytest
from ase.build import molecule

from ase_mlipal.references import xtb as reference
from ase_mlipal.frames import read_labels
from ase_mlipal.references.xtb import LabelStats, RobustXTB, xtb_label

pytest.importorskip("tblite")


def test_xtb_label_stores_energy_and_forces_that_match_finite_differences():
    water = molecule("H2O")
    labelled = xtb_label(water)
    energy, forces = read_labels(labelled)
    assert labelled.info["xtb_electronic_temperature"] == 300.0
    assert water.calc is None  # the input is not touched
    h = 1e-4
    for i, axis in [(0, 2), (1, 0)]:
        shifted = []
        for sign in (1, -1):
            moved = water.copy()
            moved.positions[i, axis] += sign * h
            shifted.append(read_labels(xtb_label(moved))[0])
        assert forces[i, axis] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), abs=1e-3)


def test_scf_failure_retries_hotter_then_skips(monkeypatch):
    calls = []

    def fail_below_1000(atoms, temperature, calc=None):
        calls.append(temperature)
        return "SCF not converged" if temperature < 1000 else (1.0, np.zeros((len(atoms), 3)))

    monkeypatch.setattr(reference, "_try_xtb", fail_below_1000)
    stats = LabelStats()
    labelled = xtb_label(molecule("H2O"), stats)
    assert labelled.info["xtb_electronic_temperature"] == 1000.0
    assert calls == [300.0, 1000.0] and stats.retried == 1 and stats.skipped == 0

    monkeypatch.setattr(reference, "_try_xtb", lambda atoms, temperature, calc=None: "SCF not converged")
    assert xtb_label(molecule("H2O"), stats) is None
    assert stats.skipped == 1 and stats.labelled == 1 and "SCF" in stats.errors[-1]

    driver = RobustXTB()
    atoms = molecule("H2O")
    atoms.calc = driver
    with pytest.raises(RuntimeError, match="every electronic temperature"):
        atoms.get_potential_energy()
