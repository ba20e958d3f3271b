"""Reaction paths with uncertainty: the initial band and the energy profile of a band.

:func:`path_profile` gives the energy profile of a band with the
uncertainty of every energy *difference* to the first image, taken from
the structure-level posterior: for the linear model ``E = w . phi``,
``var(E_i - E_0) = s^2 (phi_i - phi_0)^T A^{-1} (phi_i - phi_0)``. Errors
the two ends share cancel, as they do in the barrier itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from ase import Atoms
from ase.mep import NEB, idpp_interpolate
from scipy.interpolate import CubicHermiteSpline
from ase.mep.neb import IDPP  # the IDPP objective idpp_interpolate minimises (ase >= 3.23)

from .calculator import MLIPALCalculator
from .frames import read_labels
from .guards import CHEMICAL_BOND_RATIO, PhysicalGuard, bonded_pairs
from .models.model import DEFAULT_DIR
from .uncertainty.calibration import CalibrationReport, calibration_report, fit_recalibration
from .uncertainty.features import per_structure

DEMO_REACTION_PATH = DEFAULT_DIR / "demo_reaction.xyz"


@dataclass
class PathProfile:
    """Energy profile of a band of images.

    Attributes:
        label: a name for plots and tables.
        s: reaction coordinate, cumulative distance between images (A).
        energy: predicted energy relative to the first image (eV).
        energy_std: 1-sigma uncertainty of each ``energy`` (eV; 0 at the first image).
        uncertainty: the trigger's quantity per image (largest force uncertainty, eV/A).
        barrier, barrier_std: ``max(energy)`` and its 1-sigma uncertainty (eV; the
            spread of the maximum over posterior draws of the profile).
        reference_energy: reference energies relative to the first image (eV), if known.
    """

    label: str
    s: np.ndarray
    energy: np.ndarray
    energy_std: np.ndarray
    uncertainty: np.ndarray
    barrier: float
    barrier_std: float
    reference_energy: Optional[np.ndarray] = None

    def as_dict(self) -> dict:
        """Plain lists and floats (JSON)."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}

    def summary(self) -> str:
        """The barrier in words: its value, 1 sigma and 2-sigma interval (eV), and what it is when the band's
        highest image is an endpoint (no pass between the endpoints on the model: the barrier is then the
        reaction energy, a lower bound of a real barrier, not an estimate of it)."""
        low, high = max(0.0, self.barrier - 2.0 * self.barrier_std), self.barrier + 2.0 * self.barrier_std
        text = f"barrier {self.barrier:.3f} ± {self.barrier_std:.3f} eV (2σ interval {low:.2f}-{high:.2f} eV)"
        top = int(np.argmax(self.energy))
        if 0 < top < len(self.energy) - 1:
            return text
        end = "first" if top == 0 else "last"
        return (f"{text}; the band's highest image is its {end} endpoint: the model finds no pass between the "
                "endpoints, so this is the reaction energy, a lower bound of the barrier, not an estimate of it; "
                "check the band with a reference (NEBLearner, mlipal learn)")

    @classmethod
    def from_dict(cls, data: dict) -> "PathProfile":
        arrays = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**arrays)


def check_band(images: Sequence[Atoms], at_least: int = 2) -> None:
    """Raise ``ValueError`` unless ``images`` are at least ``at_least`` frames of the same atoms in the same order.

    The message names the first image that differs from image 0 and how.
    """
    if len(images) < at_least:
        raise ValueError(f"a band needs at least {at_least} images, got {len(images)}")
    first = images[0]
    for k, image in enumerate(images[1:], start=1):
        if len(image) != len(first):
            raise ValueError(f"image {k} has {len(image)} atoms where image 0 has {len(first)}: every image of a "
                             "band must have the same atoms in the same order")
        differ = np.flatnonzero(image.numbers != first.numbers)
        if differ.size:
            i = int(differ[0])
            raise ValueError(f"image {k}'s atom {i} is {image.get_chemical_symbols()[i]} where image 0's is "
                             f"{first.get_chemical_symbols()[i]} ({differ.size} atom(s) differ): every image of a "
                             "band must have the same atoms in the same order (reorder the product's atoms to "
                             "match the reactant's)")


def reaction_coordinate(images: Sequence[Atoms]) -> np.ndarray:
    """Cumulative distance along the band (A), 0 at the first image."""
    steps = [np.linalg.norm(b.positions - a.positions) for a, b in zip(images[:-1], images[1:])]
    return np.concatenate([[0.0], np.cumsum(steps)])


ARC_FRACTIONS = (0.25, 0.5, 0.75)  # arc heights tried, as fractions of the largest atom displacement


def band(initial: Atoms, final: Atoms, n_images: int, seed: int = 0) -> list[Atoms]:
    """``n_images`` images from ``initial`` to ``final`` (included), IDPP-interpolated.

    IDPP starts from the straight line between the endpoints and cannot
    leave a line of symmetry: for a linear molecule (HCN -> HNC) the moving
    atom would pass through its neighbours, or push apart a bond both
    endpoints have. When an interior image of the straight-line band has
    overlapping atoms (:class:`~ase_mlipal.guards.PhysicalGuard`) or breaks
    a bond both endpoints share (beyond 1.25 covalent sums), IDPP also
    starts from arcs: the straight line bent, most at the middle image,
    along a seeded random direction perpendicular to the path in which each
    atom moves in proportion to how far it travels between the endpoints
    (the atoms that stay keep their bonds); the bend's norm over all atoms
    is 0.25, 0.5 and 0.75 times the largest atom displacement. Of the bands
    whose images pass the guard (the straight one among them), the one that
    meets IDPP's own target distances best (the lowest summed IDPP energy)
    is returned, one that keeps the shared bonds before any other; up to
    three directions are tried, and a band still overlapping raises
    ``ValueError``. On HCN -> HNC (5-11 images) the C-N bond then stays
    within 0.1 A of its length at the ends, where the straight line
    stretches it to 3 A and random 0.1 A displacements of every atom to
    2.3 A.

    IDPP also keeps a plane of symmetry the two endpoints share: a cis -> trans
    isomerisation of a planar molecule (methyl nitrite about its O-N bond) is
    interpolated in the plane, through an inversion, not round the torsion
    the chemistry takes, and a NEB from that band can converge there. Build
    such a band yourself (``Atoms.set_dihedral`` on copies of the reactant)
    and pass it to the learner as ``images``.
    """
    if n_images < 3:
        raise ValueError("a band needs at least 3 images (two endpoints and one to move)")
    check_band([initial, final])
    guard = PhysicalGuard([initial, final])
    straight = _idpp_band(initial, final, n_images)
    problems = _band_problems(guard, straight)
    if not problems and not _breaks_a_shared_bond(straight):
        return straight
    candidates = [] if problems else [straight]
    rng = np.random.default_rng(seed)
    motion = np.linalg.norm(final.positions - initial.positions, axis=1)
    for _ in range(3):
        direction = _arc_direction(straight, motion, rng)
        arcs = [_idpp_band(initial, final, n_images, fraction * motion.max() * direction)
                for fraction in ARC_FRACTIONS]
        candidates += [arc for arc in arcs if not _band_problems(guard, arc)]
        if candidates:  # one that keeps the shared bonds first, then the best IDPP fit
            return min(candidates, key=lambda images: (_breaks_a_shared_bond(images), _idpp_energy(images)))
        problems = _band_problems(guard, arcs[0])
    k, problem = problems[0]
    raise ValueError(f"IDPP interpolation gives an unphysical image {k} ({problem}) even with the symmetry broken; "
                     "pass a band of your own (e.g. with an intermediate image)")


def _idpp_band(initial: Atoms, final: Atoms, n_images: int, arc: Optional[np.ndarray] = None) -> list[Atoms]:
    """IDPP images from the straight line, or from it bent by ``arc`` (``(n_atoms, 3)``, A, at the middle)."""
    images = [initial.copy() for _ in range(n_images - 1)] + [final.copy()]
    for image in images:
        image.calc = None
    NEB(images, method="improvedtangent").interpolate()
    if arc is not None:
        for k, image in enumerate(images[1:-1], start=1):
            image.positions = image.positions + np.sin(np.pi * k / (n_images - 1)) * arc
    with warnings.catch_warnings():  # ASE's idpp_interpolate builds an NEB without a method: not ours to warn
        warnings.filterwarnings("ignore", message="The default method has changed", category=UserWarning)
        idpp_interpolate(images, traj=None, log=None)
    return images


def _band_problems(guard: PhysicalGuard, images: Sequence[Atoms]) -> list[tuple[int, str]]:
    problems = [(k, guard.problem(image)) for k, image in enumerate(images[1:-1], start=1)]
    return [(k, p) for k, p in problems if p]


def _breaks_a_shared_bond(images: Sequence[Atoms]) -> bool:
    """Does an interior image stretch a bond both endpoints have beyond a chemical bond?"""
    shared = bonded_pairs(images[0], CHEMICAL_BOND_RATIO) & bonded_pairs(images[-1], CHEMICAL_BOND_RATIO)
    return any(np.any(shared & ~bonded_pairs(image, CHEMICAL_BOND_RATIO)) for image in images[1:-1])


def _arc_direction(images: Sequence[Atoms], motion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit direction ``(n_atoms, 3)`` perpendicular to the path, each atom's part scaled by its ``motion``."""
    tangent = (images[-1].positions - images[0].positions).ravel()
    tangent /= max(np.linalg.norm(tangent), 1e-12)
    step = (rng.normal(size=(len(motion), 3)) * (motion / max(motion.max(), 1e-12))[:, None]).ravel()
    step -= (step @ tangent) * tangent
    return (step / max(np.linalg.norm(step), 1e-12)).reshape(-1, 3)


def _idpp_energy(images: Sequence[Atoms]) -> float:
    """IDPP's objective summed over the interior images (ASE's :class:`~ase.mep.neb.IDPP`, 1/A^2)."""
    first, last = images[0].get_all_distances(), images[-1].get_all_distances()
    total = 0.0
    for k, image in enumerate(images[1:-1], start=1):
        atoms = image.copy()
        atoms.calc = IDPP(first + (last - first) * k / (len(images) - 1), mic=False)
        total += float(atoms.get_potential_energy())
    return total


def path_profile(calc: MLIPALCalculator, images: Sequence[Atoms], label: str = "",
                 draws: int = 4096, seed: int = 0, relaxed_on_model: bool = True) -> PathProfile:
    """Predicted energies of ``images`` with the uncertainty of each difference to the first.

    ``energy_std`` is the calibrated posterior std of each ``E_i - E_0``.
    The barrier is the highest of those energies, so its uncertainty is
    that of a maximum: ``barrier_std`` is the spread of ``max_i`` over
    ``draws`` joint posterior draws of the whole profile (correlated through
    the features, each image's marginal std its ``energy_std``). An image
    just below the top but far less certain widens it, where the std of the
    top image alone would not.

    ``relaxed_on_model``: the band was relaxed on this calculator's model
    (a NEB on it, the usual case); its differences are then calibrated with
    ``calc.band_calibration`` where the posterior has one
    (:func:`fit_band_calibration`). Such a band bends into the model's own
    errors: on bands of reactions the model never saw, the shipped default's
    plain energy sigma held 46% of their errors within 2 sigma, the band
    calibration 96%, each reaction left out of its fit
    (``benchmarks/calibration_model_bands.py``). Pass ``False`` for a band
    from elsewhere (a reference NEB, an interpolation), and where a band's
    model has learned the reaction: the learners, which verify their bands
    against the reference, keep the posterior's calibration.
    """
    images = list(images)
    check_band(images)
    energies, batches = calc.predict(images)
    features = per_structure(batches)
    delta = np.concatenate([f.structure for f in features]) - features[0].structure
    posterior = calc.uncertainty_model.energy_posterior
    raw = posterior.quadratic_form(delta)
    calibration = (calc.band_calibration if relaxed_on_model and calc.band_calibration is not None
                   else posterior.calibration)
    energy_std = np.sqrt(calibration.variance(raw, len(images[0])))
    energy_std[0] = 0.0
    uncertainty = np.array([calc.uncertainty_from(f)["uncertainty"] for f in features])
    relative = energies - energies[0]
    top = int(np.argmax(relative))
    return PathProfile(label, reaction_coordinate(images), relative, energy_std, uncertainty,
                       barrier=float(relative[top]),
                       barrier_std=_std_of_maximum(posterior, delta, relative, raw, energy_std, draws, seed))


def band_residuals(calc: MLIPALCalculator, bands: Sequence[Sequence[Atoms]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The model's errors on the energy differences of labelled bands, beside their raw posterior variances.

    Args:
        bands: labelled bands (:func:`~ase_mlipal.frames.read_labels`), each a
            list whose first image is what the others' differences are
            measured from (a band's first endpoint).

    Returns:
        ``(residuals, raw, n_atoms, band)``, one entry per image but the
        first of each band: predicted minus reference ``E_i - E_0`` (eV),
        the raw variance of ``phi_i - phi_0`` (what the band calibration
        maps), the atoms, and the band's index.
    """
    out = []
    for number, images in enumerate(bands):
        images = list(images)
        check_band(images, at_least=2)
        energies, batches = calc.predict(images, progress=False)
        features = per_structure(batches)
        delta = np.concatenate([f.structure for f in features[1:]]) - features[0].structure
        reference = np.array([read_labels(atoms)[0] for atoms in images])
        residuals = (energies[1:] - energies[0]) - (reference[1:] - reference[0])
        raw = calc.uncertainty_model.energy_posterior.quadratic_form(delta)
        out.append((residuals, raw, np.full(len(raw), len(images[0])), np.full(len(raw), number)))
    if not out:
        raise ValueError("band_residuals needs at least one band")
    return tuple(np.concatenate(parts) for parts in zip(*out))


def fit_band_calibration(calc: MLIPALCalculator, bands: Sequence[Sequence[Atoms]],
                         groups: Optional[Sequence[str]] = None, method: str = "linear") -> CalibrationReport:
    """Fit ``calc.band_calibration`` to labelled bands relaxed on ``calc``'s model; report on the same images.

    A NEB on the model leaves the reference path where the model is wrong,
    and its images are where the model is most wrong in its favour: of the
    interior images of the shipped default's own bands on 24 reactions, 88%
    lie *below* the reference (``scripts/make_model_band_data.py``), and the
    errors of their differences to the first endpoint were several times
    what the posterior's calibration, fitted near reference paths, gives
    their raw variances. The band calibration is fitted by maximum
    likelihood on those differences (:func:`band_residuals`), each group
    (default: each band) weighing the same; ``"linear"``, a plain scale on
    the raw variance, held 96% of the errors of reactions left out of the
    fit within 2 sigma, 89% on four reactions outside it
    (``benchmarks/calibration_model_bands.py``). :func:`path_profile` then
    uses it for bands relaxed on the model; every other uncertainty keeps
    the posterior's calibration, and so do the learners, which check their
    bands against the reference (a map of an untrained model's errors stays
    as wide once labels lie near the band).

    Args:
        bands: labelled bands, each a list whose first image is the first
            endpoint and whose other images were relaxed on the model (a
            NEB on ``calc``, snapshots of it included).
        groups: a label per band (e.g. its reaction): bands of one label
            weigh as one.
        method: :func:`~ase_mlipal.uncertainty.calibration.fit_recalibration`'s.
    """
    bands = [list(images) for images in bands]
    if groups is not None and len(groups) != len(bands):
        raise ValueError(f"groups has {len(groups)} labels for {len(bands)} bands; give one per band")
    residuals, raw, n_atoms, band = band_residuals(calc, bands)
    labels = band if groups is None else np.asarray(groups, dtype=object)[band]
    calc.band_calibration = fit_recalibration(residuals, raw, n_atoms, labels, method)
    return calibration_report(residuals, np.sqrt(calc.band_calibration.variance(raw, n_atoms)))


def line_maximum(start: np.ndarray, end: np.ndarray, energies: tuple[float, float],
                 forces: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Highest energy on the straight line between two labelled structures, as their forces along it imply.

    The energy along the line is interpolated by the cubic that matches both
    ends' energies and their slopes ``-F . u`` (``u``: the unit vector from
    ``start`` to ``end``), exact for any cubic energy along the line.

    Args:
        start, end: positions (A), shape ``(n_atoms, 3)``.
        energies: the two ends' energies (eV).
        forces: the two ends' forces (eV/A), each of shape ``(n_atoms, 3)``.

    Returns:
        The cubic's maximum on the line (eV) and where: the fraction of the
        way from ``start`` to ``end`` (0 or 1 when an end is highest).
    """
    step = np.asarray(end, float) - np.asarray(start, float)
    length = float(np.linalg.norm(step))
    if length == 0.0:
        return float(max(energies)), 0.0
    slopes = [-float(np.sum(np.asarray(f) * step)) / length for f in forces]
    cubic = CubicHermiteSpline([0.0, length], list(energies), slopes)
    candidates = [(float(energies[0]), 0.0), (float(energies[1]), 1.0)]
    candidates += [(float(cubic(x)), float(x) / length) for x in cubic.derivative().roots() if 0.0 < x < length]
    return max(candidates)


def highest_between_images(positions: Sequence[np.ndarray],
                           labels: dict[int, tuple[float, np.ndarray]]) -> Optional[tuple[float, int, float]]:
    """The highest point between two neighbouring labelled images of a band, as their labels imply.

    Args:
        positions: the band's positions (A), one ``(n_atoms, 3)`` array per image.
        labels: ``{image: (energy (eV), forces (eV/A))}`` for the labelled images.

    Returns:
        ``(energy, k, fraction)``: the highest :func:`line_maximum` over the
        lines from image ``k`` to ``k + 1`` whose ends are both labelled,
        ``fraction`` of the way; ``None`` if no two neighbours are labelled.
    """
    peaks = [(*line_maximum(positions[k], positions[k + 1], (labels[k][0], labels[k + 1][0]),
                            (labels[k][1], labels[k + 1][1])), k)
             for k in range(len(positions) - 1) if k in labels and k + 1 in labels]
    if not peaks:
        return None
    energy, fraction, k = max(peaks)
    return energy, k, fraction


def point_between(positions: Sequence[np.ndarray], k: int, fraction: float) -> np.ndarray:
    """Positions (A) ``fraction`` of the way along the straight line from image ``k`` to image ``k + 1``
    (``positions``: one ``(n_atoms, 3)`` array per image), where :func:`highest_between_images` puts a peak."""
    return (1.0 - fraction) * np.asarray(positions[k], float) + fraction * np.asarray(positions[k + 1], float)


def _std_of_maximum(posterior, delta: np.ndarray, mean: np.ndarray, raw: np.ndarray, std: np.ndarray,
                    draws: int, seed: int) -> float:
    """Std of ``max_i E_i`` over joint draws ``E_i = mean_i + c_i delta_i . z``, ``z ~ N(0, A^-1)``.

    ``c_i = std_i / sqrt(raw_i)`` rescales each image's raw draw to its
    calibrated std; with the plain scale every ``c_i = s``.
    """
    noise = np.random.default_rng(seed).standard_normal((draws, posterior.dim))
    draws_raw = delta @ posterior.samples(noise).T  # (images, draws), variance raw_i
    factor = np.divide(std, np.sqrt(raw), out=np.zeros_like(std), where=raw > 0)
    return float(np.std(np.max(mean[:, None] + factor[:, None] * draws_raw, axis=0)))
