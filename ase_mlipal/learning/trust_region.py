"""Where a band may move on a model it cannot yet trust: near structures it started from or has labels for.

A surrogate is right near its data and extrapolates further out. A band
relaxed on it without a bound can follow a hole in the model far from every
label: on held-out ethylamine -> ethylene + NH3 the pretrained model pulled its
band to 3x its length into images 3-5 eV below the reference. Surrogate-driven
NEB stops the relaxation where an image leaves the data, labels it and relaxes
again on the improved model (Koistinen et al., "Nudged elastic band
calculations accelerated with Gaussian process regression", arXiv:1706.04606;
the trust regions of Goswami, "A Tutorial Review of Bayesian Optimization with
Gaussian Processes to Accelerate Stationary Point Searches", arXiv:2603.10992). :class:`TrustRegion` is that
bound for :func:`~ase_mlipal.learning.neb_learner.relax_band`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from ase import Atoms


class LeftTrustRegion(Exception):
    """An image of a band moved farther than the trust radius from every known structure.

    Attributes:
        image: index of the first image found outside (in the band).
        distance: its distance to the nearest known structure (A, as the band's length measures it).
        radius: the trust radius (A).
        step: the optimiser step it was found at (set by ``relax_band``).
    """

    def __init__(self, image: int, distance: float, radius: float, step: Optional[int] = None):
        self.image, self.distance, self.radius, self.step = image, distance, radius, step
        super().__init__(image, distance, radius, step)

    def __str__(self) -> str:
        where = f"NEB step {self.step}, " if self.step is not None else ""
        return (f"{where}image {self.image} is {self.distance:.2f} A from the band the round started from and "
                f"from every labelled frame, more than the trust radius {self.radius:.2f} A")


class TrustRegion:
    """The structures within ``radius`` of which a band may move: each image is checked by the norm of its
    displacement from the nearest known structure (all atoms, A; the measure of the band's length,
    :func:`~ase_mlipal.paths.reaction_coordinate`).

    Args:
        radius: the trust radius (A), positive.
        known: positions (``(n_atoms, 3)`` arrays, A) of the known structures.
    """

    def __init__(self, radius: float, known: Sequence[np.ndarray] = ()):
        if not radius > 0:
            raise ValueError(f"the trust radius must be positive (A), not {radius!r}")
        self.radius = float(radius)
        self.known = [np.asarray(p, dtype=float) for p in known]
        self.left: Optional[LeftTrustRegion] = None  # the last exit found by check()

    def distance(self, positions: np.ndarray) -> float:
        """Distance (A) of ``positions`` from the nearest known structure of the same shape (inf if none)."""
        positions = np.asarray(positions, dtype=float)
        norms = [np.linalg.norm(positions - p) for p in self.known if p.shape == positions.shape]
        return float(min(norms, default=np.inf))

    def check(self, images: Sequence[Atoms]) -> None:
        """Raise :class:`LeftTrustRegion` (and keep it as :attr:`left`) for the first interior image of
        ``images`` farther than the radius from every known structure."""
        for k, image in enumerate(images[1:-1], start=1):
            distance = self.distance(image.positions)
            if distance > self.radius:
                self.left = LeftTrustRegion(k, distance, self.radius)
                raise self.left
