"""Physical guards: stop a run whose frames have left chemistry, before a reference is asked to label them.

A learner that follows a wrong model can drive a molecule apart, push two
atoms onto each other or let a band run away; labelling such frames wastes
reference calls and teaches the model a region nobody will simulate. A
:class:`PhysicalGuard` is built from the structures that define the run
(the endpoints of a band, the first MD frame) and checks:

- **overlapping atoms**: a pair closer than ``min_distance_ratio`` times the
  sum of their covalent radii (ASE's ``covalent_radii``);
- **fragments** the defining structures do not have: the frame's molecule
  graph (bonds where a pair is within ``bond_ratio`` times the covalent sum)
  has more connected components than the most fragmented defining
  structure's, counted with ordinary chemical bonds (within 1.25 covalent
  sums): products such as CO + H2 count as two, and a band on its way to
  them may separate that far, but a frame counts as fragmented only once a
  piece is beyond ``bond_ratio`` of everything else;
- for a band, its **length** (sum of image-to-image distances) beyond
  ``max_length_ratio`` times the initial band's, and an image **energy**
  more than ``max_energy`` eV above the lower endpoint and above the highest
  image of the first band checked (an IDPP band can start high; it must
  not climb). ``NEBLearner`` calls :meth:`PhysicalGuard.new_relaxation` at
  each round: each model's relaxation is judged from its own start. This
  is the one check on the model's energies rather than on the geometry,
  so it raises :class:`EnergyRunaway`, and ``NEBLearner`` asks the
  reference about the image before it stops.

The defaults (0.5, 2.5, 3.0, 10 eV) are set wide of chemistry on purpose
(an H-transfer saddle has its H ~1.3-1.5 A from both partners, and an IDPP
band of the project's reactions has H up to 2.25 A, 2.1 covalent sums,
from everything; their barriers are below 5 eV): a guard that stops a
correct run costs more than one that waits.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from scipy.sparse.csgraph import connected_components

from .legacy import refuse_unknown, renamed_argument

CHEMICAL_BOND_RATIO = 1.25  # a chemical bond: within 1.25 covalent sums (fragments of the defining structures)
MAX_LENGTH_RATIO = 3.0  # the default band length allowed, relative to the first band checked (max_length_ratio)


class UnphysicalFrame(RuntimeError):
    """A frame or band left chemistry; ``atoms`` is the offending frame, ``where`` names it.

    ``image``: the band image at fault (:meth:`PhysicalGuard.check_band`;
    ``None`` for a single frame); ``step``: the optimiser or MD step, where
    the caller knows it; ``last_band``: the band positions (A) the caller
    last judged before the stop and their step, ``(step, positions)``, where
    the caller keeps them (:func:`~ase_mlipal.learning.neb_learner.relax_band`).
    """

    def __init__(self, message: str, atoms: Optional[Atoms] = None, where: str = "", image: Optional[int] = None):
        super().__init__(message)
        self.atoms, self.where, self.image = atoms, where, image
        self.step: Optional[int] = None
        self.last_band: Optional[tuple[int, list[np.ndarray]]] = None


class EnergyRunaway(UnphysicalFrame):
    """A band image the *model* puts too far above the lower endpoint (see :meth:`PhysicalGuard.check_band`).

    Unlike overlapping atoms or a lost fragment, the geometry may be
    ordinary chemistry that a wrong model prices high: :class:`NEBLearner`
    asks the reference about the image before it stops. ``image``: its index
    in the band; ``energy``: eV above the lower endpoint on the model.
    """

    def __init__(self, message: str, atoms: Atoms, where: str, image: int, energy: float):
        super().__init__(message, atoms=atoms, where=where, image=image)
        self.energy = energy


def pair_distances(atoms: Atoms) -> np.ndarray:
    """All interatomic distances (A), minimum image in periodic directions; shape (N, N)."""
    return atoms.get_all_distances(mic=bool(atoms.pbc.any()))


def bonded_pairs(atoms: Atoms, bond_ratio: float) -> np.ndarray:
    """The bond graph: pairs within ``bond_ratio`` x their covalent sum; shape (N, N), bool (diagonal True)."""
    radii = covalent_radii[atoms.numbers]
    return pair_distances(atoms) < bond_ratio * (radii[:, None] + radii[None, :])


def count_fragments(atoms: Atoms, bond_ratio: float = 2.0) -> int:
    """Connected components of the bond graph (a bond: distance < ``bond_ratio`` x covalent sum)."""
    if len(atoms) < 2:
        return len(atoms)
    return int(connected_components(bonded_pairs(atoms, bond_ratio), directed=False)[0])


class PhysicalGuard:
    """Checks that frames stay chemistry (see the module docstring).

    Args:
        structures: the structures that define the run (band endpoints, the
            first MD frame); a frame may have as many fragments as the most
            fragmented of them (``references=`` before 0.2).
        min_distance_ratio: overlap when a pair is closer than this times its covalent sum.
        bond_ratio: a bond when a pair is within this times its covalent sum.
        max_length_ratio: band length allowed, relative to the first band checked.
        max_energy: eV above the lower endpoint allowed for any band image.
    """

    def __init__(self, structures: Optional[Sequence[Atoms]] = None, min_distance_ratio: float = 0.5,
                 bond_ratio: float = 2.5, max_length_ratio: float = MAX_LENGTH_RATIO, max_energy: float = 10.0,
                 **deprecated):
        structures = renamed_argument(structures, deprecated, "references", "structures", "PhysicalGuard")
        refuse_unknown(deprecated, "PhysicalGuard")
        if not structures:
            raise ValueError("a PhysicalGuard needs at least one structure that defines the run (endpoints, first frame)")
        if not 0 < min_distance_ratio < bond_ratio:
            raise ValueError("need 0 < min_distance_ratio < bond_ratio")
        self.min_distance_ratio, self.bond_ratio = min_distance_ratio, bond_ratio
        self.max_length_ratio, self.max_energy = max_length_ratio, max_energy
        self.max_fragments = max(count_fragments(a, CHEMICAL_BOND_RATIO) for a in structures)
        self.initial_length: Optional[float] = None
        self.initial_top: Optional[float] = None

    def overlap(self, atoms: Atoms) -> Optional[str]:
        """Non-finite positions or the closest pair closer than ``min_distance_ratio``; else ``None``."""
        positions = atoms.positions
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            return f"non-finite positions of atoms {bad.tolist()}"
        distances, ratio = self._ratios(atoms)
        i, j = np.unravel_index(np.argmin(ratio), ratio.shape)
        if ratio[i, j] < self.min_distance_ratio:
            return (f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {distances[i, j]:.2f} A apart, "
                    f"less than {self.min_distance_ratio} of their covalent radii")
        return None

    def problem(self, atoms: Atoms) -> Optional[str]:
        """What is unphysical about ``atoms`` (naming the atoms), or ``None``."""
        overlap = self.overlap(atoms)
        if overlap:
            return overlap
        distances, ratio = self._ratios(atoms)
        fragments = count_fragments(atoms, self.bond_ratio)
        if fragments > self.max_fragments:
            far = _least_bonded_atom(atoms, ratio)
            return (f"{fragments} fragments where the defining structures have at most {self.max_fragments}; "
                    f"atom {far} ({atoms[far].symbol}) is {np.min(distances[far][np.arange(len(atoms)) != far]):.2f} A "
                    f"from its nearest neighbour")
        return None

    @staticmethod
    def _ratios(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
        """Distances (A) and distances over covalent sums (diagonal: inf)."""
        radii = covalent_radii[atoms.numbers]
        distances = pair_distances(atoms)
        ratio = distances / (radii[:, None] + radii[None, :])
        np.fill_diagonal(ratio, np.inf)
        return distances, ratio

    def new_relaxation(self) -> None:
        """Forget the first band's top energy: the next band checked is judged from its own start.

        The length bound keeps the learner's initial band.
        """
        self.initial_top = None

    def check(self, atoms: Atoms, where: str) -> None:
        """Raise :class:`UnphysicalFrame` naming ``where`` (e.g. "MD step 40") if ``atoms`` is unphysical."""
        problem = self.problem(atoms)
        if problem:
            raise UnphysicalFrame(f"{where}: {problem}; the run is stopped and the frame is stored as 'unphysical', "
                                  "not labelled", atoms=atoms, where=where)

    def check_band(self, images: Sequence[Atoms], where: str, energies: Optional[np.ndarray] = None) -> None:
        """Check every image of a band, its length and (given ``energies``, eV) its energy profile."""
        for k, image in enumerate(images):
            try:
                self.check(image, f"{where}, image {k}")
            except UnphysicalFrame as error:
                error.image = k
                raise
        steps = [np.linalg.norm(b.positions - a.positions) for a, b in zip(images[:-1], images[1:])]
        length = float(np.sum(steps))
        if self.initial_length is None:
            self.initial_length = length
        if length > self.max_length_ratio * self.initial_length:
            longest = int(np.argmax(steps))
            moved = longest + 1 if longest + 1 < len(images) - 1 else longest  # an interior image of the step
            raise UnphysicalFrame(
                f"{where}: the band is {length:.1f} A long, more than {self.max_length_ratio}x its initial "
                f"{self.initial_length:.1f} A (longest step between images {longest} and {longest + 1}); stopped",
                atoms=images[moved], where=f"{where}, image {moved}", image=moved)
        if energies is not None:
            relative = np.asarray(energies) - min(energies[0], energies[-1])
            top = int(np.argmax(relative))
            if self.initial_top is None:
                self.initial_top = float(relative[top])
            if relative[top] > max(self.max_energy, self.initial_top):
                raise EnergyRunaway(
                    f"{where}: image {top} is {relative[top]:.1f} eV above the lower endpoint, more than "
                    f"max_energy={self.max_energy} eV and than the first band's {self.initial_top:.1f} eV; stopped",
                    atoms=images[top], where=f"{where}, image {top}", image=top, energy=float(relative[top]))


def _least_bonded_atom(atoms: Atoms, ratio: np.ndarray) -> int:
    """The atom whose nearest neighbour is farthest, relative to covalent radii."""
    return int(np.argmax(ratio.min(axis=1))) if len(atoms) > 1 else 0
