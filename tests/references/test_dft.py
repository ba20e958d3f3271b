"""The PySCF reference: agreement with PySCF run directly, forces = -dE/dr, SCF rescue and failure."""

import numpy as np
import pytest
from ase.build import molecule
from ase.units import Bohr, Hartree

from ase_mlipal import label
from ase_mlipal.references.pyscf import PySCF, pyscf_calculator
from ase_mlipal.learning.store import FrameStore

pyscf = pytest.importorskip("pyscf")


@pytest.fixture()
def water():
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(0).normal(scale=0.03, size=atoms.positions.shape)
    return atoms


def direct(atoms, xc="pbe", basis="sto-3g"):
    """PySCF's own energy (Hartree) and gradient (Hartree/Bohr), no ASE in between."""
    from pyscf import dft, gto

    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                unit="Angstrom", basis=basis, verbose=0)
    ks = dft.RKS(mol)
    ks.xc = xc
    ks.conv_tol = 1e-10
    energy = ks.kernel()
    return energy, ks.nuc_grad_method().kernel()


def test_energy_and_forces_agree_with_pyscf_in_ev_and_ev_per_angstrom(water):
    water.calc = pyscf_calculator("pbe", "sto-3g", conv_tol=1e-10)()
    energy, gradient = direct(water)
    assert water.get_potential_energy() == pytest.approx(energy * Hartree, abs=1e-6)
    assert np.allclose(water.get_forces(), -gradient * Hartree / Bohr, atol=1e-5)


def test_forces_are_minus_the_energy_gradient(water):
    water.calc = PySCF("pbe", "sto-3g", conv_tol=1e-11)
    forces = water.get_forces()
    h = 1e-3
    for atom, axis in ((0, 2), (1, 0), (2, 1)):
        energies = []
        for sign in (1, -1):
            moved = water.copy()
            moved.positions[atom, axis] += sign * h
            moved.calc = PySCF("pbe", "sto-3g", conv_tol=1e-11)
            energies.append(moved.get_potential_energy())
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[atom, axis], abs=2e-3)


def _starved(monkeypatch):
    """Every first SCF gets a single cycle (so it does not converge); rescues set their own."""
    original = PySCF._method

    def method(self, mol):
        scf = original(self, mol)
        scf.max_cycle = 1
        return scf

    monkeypatch.setattr(PySCF, "_method", method)


def test_an_unconverged_scf_is_rescued_to_the_same_answer(water, monkeypatch):
    energy, _ = direct(water)
    _starved(monkeypatch)
    water.calc = PySCF("pbe", "sto-3g", conv_tol=1e-10)
    assert water.get_potential_energy() == pytest.approx(energy * Hartree, abs=1e-5)


def test_scf_failure_is_reported_with_the_formula_and_a_failed_frame(water, monkeypatch, tmp_path):
    _starved(monkeypatch)
    water.calc = PySCF("pbe", "sto-3g", rescue=False)
    with pytest.raises(RuntimeError, match=r"H2O .*tried: plain"):
        water.get_potential_energy()
    store = FrameStore(tmp_path / "frames.db")
    store.add_flagged(water, source="test")
    report = label(store, pyscf_calculator("pbe", "sto-3g", rescue=False), progress=False)
    assert report.failed == 1 and report.labelled == 0
    assert store.counts().get("failed") == 1


def test_the_factory_checks_its_options_at_once():
    with pytest.raises(TypeError):
        pyscf_calculator("pbe", "sto-3g", no_such_option=1)
    assert isinstance(pyscf_calculator("hf", "sto-3g")(), PySCF)
