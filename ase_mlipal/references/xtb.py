"""GFN2-xTB reference labels through tblite, with SCF-failure handling.

xTB is the offline reference of the examples, tests and benchmarks. Its SCF
can fail to converge on distorted geometries; :func:`xtb_label` retries with
a higher electronic temperature (Fermi smearing) and gives up cleanly,
returning ``None``, so an unlabelled frame is never written as labelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..frames import with_labels
from ..learning.labelling import reference_label

DEFAULT_ELECTRONIC_TEMPERATURES = (300.0, 1000.0, 3000.0)


def xtb_calculator(electronic_temperature: float = 300.0, method: str = "GFN2-xTB") -> Calculator:
    """tblite's ASE calculator (energies in eV, forces in eV/A), quiet."""
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise ImportError("GFN2-xTB needs tblite: pip install 'ase-mlipal[xtb]'") from exc
    return TBLite(method=method, electronic_temperature=electronic_temperature, verbosity=0)


@dataclass
class LabelStats:
    """Counts of a labelling run: how many frames needed a retry or were skipped."""

    labelled: int = 0
    retried: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def xtb_label(
    atoms: Atoms,
    stats: Optional[LabelStats] = None,
    electronic_temperatures: Sequence[float] = DEFAULT_ELECTRONIC_TEMPERATURES,
    calculators: Optional[dict[float, Calculator]] = None,
) -> Optional[Atoms]:
    """A copy of ``atoms`` labelled with GFN2-xTB energy and forces, or ``None``.

    Tries each electronic temperature in turn until the SCF converges to
    finite results. The label is stored as a ``SinglePointCalculator`` and
    the temperature used in ``info["xtb_electronic_temperature"]``.
    ``calculators`` maps temperatures to tblite calculators to reuse (a
    warm start along a trajectory); fresh ones are made otherwise.
    """
    stats = stats if stats is not None else LabelStats()
    calculators = calculators or {}
    for attempt, temperature in enumerate(electronic_temperatures):
        result = _try_xtb(atoms, temperature, calculators.get(temperature))
        if isinstance(result, str):
            if temperature in calculators:  # a failed SCF can leave tblite's state broken
                calculators[temperature] = xtb_calculator(temperature)
            if attempt == len(electronic_temperatures) - 1:
                stats.skipped += 1
                stats.errors.append(result)
            continue
        energy, forces = result
        labelled = with_labels(atoms, energy, forces)
        labelled.info["xtb_electronic_temperature"] = temperature
        stats.labelled += 1
        stats.retried += attempt > 0
        return labelled
    return None


def _try_xtb(atoms: Atoms, temperature: float, calc: Optional[Calculator] = None):
    """(energy, forces) or an error message; ``calc`` may be reused between calls."""
    calc = calc if calc is not None else xtb_calculator(temperature)
    try:
        # no contextlib.redirect_stdout: it swaps sys.stdout for the whole process, so under
        # threaded labelling it swallowed the user's own prints (tblite is quiet at verbosity 0)
        return reference_label(atoms, calc, retries=0)
    except Exception as exc:  # tblite raises several types on SCF failure
        return f"{type(exc).__name__}: {exc}"


class RobustXTB(Calculator):
    """An xTB calculator for driving dynamics that falls back to hotter smearing.

    Raises ``RuntimeError`` only when every electronic temperature fails, so
    a trajectory driver can stop cleanly there.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, electronic_temperatures: Sequence[float] = DEFAULT_ELECTRONIC_TEMPERATURES, **kwargs):
        super().__init__(**kwargs)
        self.electronic_temperatures = tuple(electronic_temperatures)
        self.stats = LabelStats()
        self.calculators = {t: xtb_calculator(t) for t in self.electronic_temperatures}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        labelled = xtb_label(self.atoms, self.stats, self.electronic_temperatures, self.calculators)
        if labelled is None:
            raise RuntimeError(f"xTB failed at every electronic temperature: {self.stats.errors[-1]}")
        energy = labelled.calc.results["energy"]
        self.results = {"energy": energy, "free_energy": energy, "forces": labelled.calc.results["forces"]}
