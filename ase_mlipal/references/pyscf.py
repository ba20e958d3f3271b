"""PySCF as an ASE reference calculator (molecules, in-process DFT or Hartree-Fock).

:func:`pyscf_calculator` is the factory to pass wherever a reference is
taken (``label``, the learners, ``refine_ts``), like
:func:`~ase_mlipal.xtb_calculator`. Install with ``pip install "ase-mlipal[dft]"``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

#: SCF settings tried in turn when the plain SCF does not converge.
SCF_RESCUES = ("level_shift", "second_order")
#: The keyword arguments of ASE's ``Calculator`` itself.
CALCULATOR_ARGUMENTS = {"restart", "ignore_bad_restart_file", "label", "atoms", "directory"}


class PySCF(Calculator):
    """Energy (eV) and forces (eV/A) of a molecule from PySCF's SCF and analytic gradients.

    Args:
        xc: exchange-correlation functional (``"b3lyp"``, ``"pbe"``...), or
            ``"hf"`` for Hartree-Fock.
        basis: basis set name, e.g. ``"def2-svp"``.
        charge, spin: total charge and ``2S`` (unpaired electrons); an
            open shell runs unrestricted.
        max_memory: MB PySCF may use.
        conv_tol: SCF energy convergence (Hartree).
        rescue: when the SCF does not converge, retry with a level shift
            (0.3 Hartree), then with second-order (Newton) SCF from the last
            density, before giving up.

    Raises ``RuntimeError`` naming the formula and every attempt when no SCF converges.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, xc: str = "b3lyp", basis: str = "def2-svp", charge: int = 0, spin: int = 0,
                 max_memory: int = 4000, conv_tol: float = 1e-9, rescue: bool = True, **kwargs):
        unknown = sorted(set(kwargs) - CALCULATOR_ARGUMENTS)
        if unknown:  # ASE's Calculator would keep them as parameters without a word
            raise TypeError(f"PySCF got unknown options {unknown}")
        super().__init__(**kwargs)
        try:
            import pyscf  # noqa: F401
        except ImportError as exc:
            raise ImportError('the PySCF reference needs PySCF: pip install "ase-mlipal[dft]"') from exc
        self.xc, self.basis, self.charge, self.spin = xc.lower(), basis, int(charge), int(spin)
        self.max_memory, self.conv_tol, self.rescue = int(max_memory), float(conv_tol), bool(rescue)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("the PySCF reference is for molecules; this structure is periodic")
        method = self._converged_scf()
        gradient = method.nuc_grad_method().kernel()
        energy_ev = float(method.e_tot) * Hartree
        self.results = {"energy": energy_ev, "free_energy": energy_ev,
                        "forces": -np.asarray(gradient) * Hartree / Bohr}

    def _molecule(self):
        from pyscf import gto

        return gto.M(atom=[(s, p) for s, p in zip(self.atoms.get_chemical_symbols(), self.atoms.positions)],
                     unit="Angstrom", basis=self.basis, charge=self.charge, spin=self.spin, verbose=0,
                     max_memory=self.max_memory)

    def _method(self, mol):
        from pyscf import dft, scf

        restricted = self.spin == 0
        if self.xc == "hf":
            method = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            method = dft.RKS(mol) if restricted else dft.UKS(mol)
            method.xc = self.xc
        method.conv_tol = self.conv_tol
        return method

    def _converged_scf(self):
        """The SCF object after the first attempt that converged (plain, then the rescues)."""
        mol = self._molecule()
        method = self._method(mol)
        method.kernel()
        attempts = ["plain"]
        for rescue in SCF_RESCUES if self.rescue else ():
            if method.converged:
                break
            density = method.make_rdm1()
            method = self._method(mol)
            if rescue == "level_shift":
                method.level_shift = 0.3
                method.max_cycle = 200
            else:
                method = method.newton()
            method.kernel(dm0=density)
            attempts.append(rescue)
        if not method.converged:
            raise RuntimeError(f"PySCF's SCF did not converge for {self.atoms.get_chemical_formula()} "
                               f"(tried: {', '.join(attempts)}); check the geometry, charge and spin")
        return method


def pyscf_calculator(method: str = "b3lyp", basis: str = "def2-svp", charge: int = 0, spin: int = 0,
                     **options) -> Callable[[], PySCF]:
    """A factory of :class:`PySCF` references: DFT (``method`` a functional) or ``"hf"``.

    Pass the factory (not an instance) to :func:`~ase_mlipal.label`, the
    learners or :func:`~ase_mlipal.refine_ts`: each labelling task makes its
    own calculator. ``options`` go to :class:`PySCF` (``max_memory``,
    ``conv_tol``, ``rescue``). Energies in eV, forces in eV/A.
    """
    PySCF(method, basis, charge, spin, **options)  # fail now on a missing PySCF or a bad option
    return partial(PySCF, method, basis, charge, spin, **options)
