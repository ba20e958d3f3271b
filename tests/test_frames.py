import numpy as np
import pytest
from ase.build import molecule
from ase.io import read, write

from ase_mlipal import read_labels, with_labels


def test_with_labels_is_a_labelled_copy_that_survives_a_file(tmp_path):
    atoms = molecule("H2O")
    forces = np.arange(9.0).reshape(3, 3)
    labelled = with_labels(atoms, -12.5, forces)
    assert atoms.calc is None and labelled is not atoms  # the original is untouched
    energy, got = read_labels(labelled)
    assert energy == -12.5 and np.array_equal(got, forces)
    labelled.positions[0, 0] += 1.0
    assert atoms.positions[0, 0] != labelled.positions[0, 0]
    write(tmp_path / "one.extxyz", labelled)
    energy, got = read_labels(read(tmp_path / "one.extxyz"))
    assert energy == pytest.approx(-12.5) and np.allclose(got, forces)


def test_a_frame_with_a_live_calculator_is_told_how_to_store_its_labels():
    from ase.calculators.emt import EMT

    atoms = molecule("CH4")
    atoms.calc = EMT()
    forces = atoms.get_forces()
    with pytest.raises(ValueError, match=r"atoms.calc is a live EMT, whose results are not read.*with_labels"):
        read_labels(atoms)
    energy, read_forces = read_labels(with_labels(atoms, atoms.get_potential_energy(), forces))
    np.testing.assert_array_equal(read_forces, forces)
