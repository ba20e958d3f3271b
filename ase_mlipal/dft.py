"""PySCF as an ASE reference calculator (molecules, in-process DFT or Hartree-Fock)."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree


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

    Raises ``RuntimeError`` naming the formula when the SCF does not converge.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, xc: str = "b3lyp", basis: str = "def2-svp", charge: int = 0, spin: int = 0,
                 max_memory: int = 4000, conv_tol: float = 1e-9, **kwargs):
        super().__init__(**kwargs)
        try:
            import pyscf  # noqa: F401
        except ImportError as exc:
            raise ImportError("the PySCF reference needs PySCF: pip install pyscf") from exc
        self.xc, self.basis, self.charge, self.spin = xc.lower(), basis, int(charge), int(spin)
        self.max_memory, self.conv_tol = int(max_memory), float(conv_tol)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto, scf

        if self.atoms.pbc.any():
            raise ValueError("the PySCF reference is for molecules; this structure is periodic")
        mol = gto.M(atom=[(s, p) for s, p in zip(self.atoms.get_chemical_symbols(), self.atoms.positions)],
                    unit="Angstrom", basis=self.basis, charge=self.charge, spin=self.spin, verbose=0,
                    max_memory=self.max_memory)
        restricted = self.spin == 0
        if self.xc == "hf":
            method = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            method = dft.RKS(mol) if restricted else dft.UKS(mol)
            method.xc = self.xc
        method.conv_tol = self.conv_tol
        energy = method.kernel()
        if not method.converged:
            raise RuntimeError(f"PySCF's SCF did not converge for {self.atoms.get_chemical_formula()}")
        gradient = method.nuc_grad_method().kernel()
        energy_ev = float(energy) * Hartree
        self.results = {"energy": energy_ev, "free_energy": energy_ev,
                        "forces": -np.asarray(gradient) * Hartree / Bohr}

