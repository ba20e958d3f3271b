"""From a band to a verified transition state: Sella on the model, ``ase.vibrations``, a reference check.

A climbing-image NEB puts an image near the saddle, converged only as far
as the band's ``fmax`` and resolution allow. :func:`refine_ts` runs Sella's
saddle-point optimiser (order 1) on the model from that image, reports the
saddle with its uncertainty and its vibrational modes (a first-order
saddle has exactly one imaginary mode), and, given a reference calculator,
labels the saddle and checks the model there (energy, or barrier when a
band gives the first endpoint, within 2 sigma and the tolerance; forces;
the reference's own force along the imaginary mode). A failed check can be
stored labelled, so a learner trains on it next.

Sella: E. D. Hermes, K. Sargsyan, H. N. Najm, J. Zádor, "Sella, an
open-source automation-friendly molecular saddle point optimizer",
J. Chem. Theory Comput. 18, 6974 (2022).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.units import invcm
from ase.vibrations import Vibrations

from ..calculator import MLIPALCalculator
from ..frames import read_labels, with_labels
from ..paths import check_band, path_profile
from .labelling import Reference, _name, reference_label
from .store import FrameStore
from .verification import SADDLE_FMAX, Check, check_frame

#: Imaginary frequencies below this (cm^-1) are numerical noise of the
#: finite-difference Hessian (translations, rotations, soft torsions), not modes.
IMAGINARY_NOISE = 50.0


@dataclass
class TransitionState:
    """A saddle point of the model, with its uncertainty and, if checked, the reference's verdict.

    Attributes:
        atoms: the saddle geometry (no calculator attached).
        energy: model energy (eV); ``energy_std`` its 1-sigma (eV).
        forces_std: per-atom 1-sigma force uncertainty at the saddle (eV/A), shape (N,).
        max_force: largest per-atom model force norm at the end (eV/A).
        converged: Sella reached ``fmax`` within ``steps``.
        steps: Sella steps taken.
        frequencies: vibrational frequencies (cm^-1), imaginary ones as
            negative numbers, sorted; ``None`` without ``vibrations``.
        mode: the unit displacement of the lowest (imaginary) mode, shape (N, 3).
        barrier, barrier_std: model energy minus that of the band's first
            image, and its 1-sigma (eV); ``None`` without a band.
        check: the reference check at the saddle (``None`` without a reference).
        store_id: the row of the labelled saddle in ``store`` when the check
            failed and a store was given, else ``None``.
    """

    atoms: Atoms
    energy: float
    energy_std: float
    forces_std: np.ndarray
    max_force: float
    converged: bool
    steps: int
    frequencies: Optional[np.ndarray] = None
    mode: Optional[np.ndarray] = None
    barrier: Optional[float] = None
    barrier_std: Optional[float] = None
    check: Optional[Check] = None
    store_id: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_imaginary(self) -> Optional[int]:
        """Imaginary modes beyond :data:`IMAGINARY_NOISE` (a first-order saddle has 1)."""
        if self.frequencies is None:
            return None
        return int(np.sum(self.frequencies < -IMAGINARY_NOISE))

    @property
    def is_first_order_saddle(self) -> Optional[bool]:
        return None if self.frequencies is None else self.n_imaginary == 1

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [f"saddle: E = {self.energy:.4f} eV ± {self.energy_std:.3f}, max |F| {self.max_force:.3f} eV/A, "
                 f"{'converged' if self.converged else 'NOT converged'} in {self.steps} Sella steps"]
        if self.barrier is not None:
            lines.append(f"barrier (to the band's first image): {self.barrier:.3f} eV ± {self.barrier_std:.3f}")
        if self.frequencies is not None:
            imaginary = self.frequencies[self.frequencies < -IMAGINARY_NOISE]
            lines.append(f"imaginary modes: {len(imaginary)} "
                         f"({', '.join(f'{-f:.0f}i' for f in imaginary) or 'none'} cm^-1)"
                         + ("" if len(imaginary) == 1 else ": not a first-order saddle"))
        if self.check is not None:
            verdict = "verified" if self.check.passed else f"FAILED: {self.check.reason}"
            lines.append(f"reference check: {verdict} (energy error {self.check.energy_error:+.3f} eV, "
                         f"predicted 1 sigma {self.check.energy_std:.3f} eV, force MAE {self.check.force_mae:.3f} eV/A)")
        lines += self.notes
        return "\n".join(lines)


def refine_ts(
    calc: MLIPALCalculator,
    start: Union[Atoms, Sequence[Atoms]],
    reference: Optional[Reference] = None,
    fmax: float = 0.01,
    steps: int = 500,
    vibrations: bool = True,
    tolerance: Optional[float] = None,
    store: Optional[FrameStore] = None,
    number: int = 0,
    trajectory: Optional[str] = None,
    saddle_fmax: float = SADDLE_FMAX,
) -> TransitionState:
    """Refine a saddle point of the model with Sella and check it against a reference.

    Args:
        calc: the model; Sella runs on it.
        start: one image near the saddle, or a band (a sequence of images): then
            the highest-energy interior image starts the search (it must be a
            maximum along the band) and the barrier is measured from the band's
            first image.
        reference: an ASE calculator or a factory (as for :func:`~ase_mlipal.label`);
            when given, the saddle (and the band's first image, if unlabelled) is
            labelled and checked (:func:`~ase_mlipal.learning.verification.check_frame`); the
            band's first image is labelled too, so the barrier compares like with like.
        fmax: Sella's convergence on the largest per-atom force (eV/A).
        steps: bound on Sella steps; a search that does not converge is reported,
            not raised.
        vibrations: compute frequencies and the imaginary mode by finite
            differences (``ase.vibrations``, 6N model calls).
        tolerance: the largest energy (or barrier) error in eV the check accepts,
            on top of its 2-sigma test.
        store: where a saddle whose check failed is stored, labelled, for training.
        number: the learning round recorded in the check (0: pretrained model).
        trajectory: a file for Sella's trajectory.
        saddle_fmax: the largest per-atom force (eV/A) of the reference, with the
            component along the imaginary mode reversed, at a saddle it confirms
            (:data:`~ase_mlipal.learning.verification.SADDLE_FMAX`).

    Raises:
        ImportError: Sella is not installed (``pip install "ase-mlipal[ts]"``).
        ValueError: a band too short, whose images differ in atoms, or with no
            interior energy maximum.
    """
    try:
        from sella import Sella
    except ImportError as exc:
        raise ImportError('transition-state refinement needs Sella: pip install "ase-mlipal[ts]"') from exc
    first, image = _starting_image(calc, start)
    atoms = image.copy()
    atoms.calc = calc
    optimizer = Sella(atoms, order=1, trajectory=trajectory, logfile=None)
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    forces = atoms.get_forces()
    result = TransitionState(_plain(atoms), float(atoms.get_potential_energy()),
                             float(calc.results["energy_uncertainty"]), np.array(calc.results["forces_uncertainty"]),
                             float(np.linalg.norm(forces, axis=1).max()), converged, int(optimizer.nsteps))
    if not converged:
        result.notes.append(f"Sella did not reach fmax {fmax} eV/A in {steps} steps: raise steps or start "
                            "from a better image")
    if first is not None:
        profile = path_profile(calc, [first, result.atoms])
        result.barrier, result.barrier_std = float(profile.energy[1]), float(profile.energy_std[1])
    if vibrations:
        result.frequencies, result.mode = _modes(calc, result.atoms)
    if reference is not None:
        _verify(calc, result, first, reference, saddle_fmax, tolerance, store, number)
    return result


def _starting_image(calc: MLIPALCalculator, start) -> tuple[Optional[Atoms], Atoms]:
    """``(first image of the band or None, the image to start from)``."""
    if isinstance(start, Atoms):
        return None, start
    images = list(start)
    check_band(images, at_least=3)
    energies, _ = calc.predict(images, progress=False, force_variance=False, rows=False)
    top = 1 + int(np.argmax(energies[1:-1]))
    if not energies[top] > max(energies[top - 1], energies[top + 1]):
        raise ValueError(f"the band has no interior energy maximum on this model (its highest interior image {top} "
                         f"is not above both neighbours; energies relative to the first image: "
                         f"{np.round(energies - energies[0], 3).tolist()} eV), so there is no saddle to refine: "
                         "converge the band first, or pass the image to start from")
    return images[0], images[top]


def _plain(atoms: Atoms) -> Atoms:
    copy = atoms.copy()
    copy.calc = None
    return copy


def _modes(calc: MLIPALCalculator, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cm^-1, imaginary as negative, sorted) and the lowest mode's unit displacement (N, 3)."""
    work = atoms.copy()
    work.calc = calc
    with tempfile.TemporaryDirectory(prefix="mlipal_vib_") as directory:
        vib = Vibrations(work, name=f"{directory}/vib")
        vib.run()
        data = vib.get_vibrations()
        energies, modes = data.get_energies_and_modes(all_atoms=True)
    # ASE gives imaginary frequencies as imaginary numbers: signed real values instead
    signed = np.where(np.abs(energies.imag) > np.abs(energies.real), -np.abs(energies.imag), energies.real)
    frequencies = signed / invcm
    order = np.argsort(frequencies)
    mode = np.asarray(modes[order[0]], dtype=float)
    return frequencies[order], mode / max(np.linalg.norm(mode), 1e-12)


def _verify(calc: MLIPALCalculator, result: TransitionState, first: Optional[Atoms], reference: Reference,
            saddle_fmax: float, tolerance: Optional[float], store: Optional[FrameStore], number: int) -> None:
    """Label the saddle (and the band's first image if needed) and check the model there."""
    saddle = _labelled(result.atoms, reference)
    anchor = None if first is None else _labelled(first, reference)  # same reference as the saddle
    result.check = check_frame(calc, saddle, number, "saddle", anchor=anchor, tolerance=tolerance,
                               tangent=result.mode, saddle_fmax=saddle_fmax)
    if not result.check.passed and store is not None:
        energy, forces = read_labels(saddle)
        row_id, _ = store.add_flagged(result.atoms, source="refine_ts", uncertainty=float(result.forces_std.max()))
        store.mark_labelled(row_id, energy, forces, reference=_name(reference))
        result.store_id = row_id
        result.check.store_id = row_id


def _labelled(atoms: Atoms, reference: Reference) -> Atoms:
    energy, forces = reference_label(atoms, reference)
    return with_labels(_plain(atoms), energy, forces)

