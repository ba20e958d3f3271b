"""The one object a calculator predicts with: model, feature map, batch maker and both posteriors."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch

from ..models.graphs import BatchMaker
from ..models.model import model_hash
from .calibration import Recalibration
from .distance import NearestNeighbours
from .features import Features
from .kernels import get_feature_map
from .posterior import FeaturePosterior

#: Atom feature rows kept per element block for the distance of a distance-aware
#: uncertainty (farthest-point samples; ``benchmarks/calibration.py``, rows
#: ``distance``: 1024 kept the exact distance's gains, at ~0.1 ms a call).
NEIGHBOUR_ROWS = 1024


class UncertaintyModel:
    """A MACE model with its feature map and the energy and atom posteriors built on it.

    :class:`~ase_mlipal.MLIPALCalculator` holds one, and every
    :meth:`~ase_mlipal.MLIPALCalculator.share` of it holds the same one, so
    a model swap, a loaded posterior or a conditioning frame reaches all of
    them. :attr:`version` follows those changes; a calculator whose cached
    results are of another version recomputes them. It sees a posterior
    conditioned or recalibrated directly (each posterior counts its own
    changes), a posterior or model replaced, and the model's weights changed
    in place (their autograd version counters); :meth:`changed` records
    anything else.

    Args:
        model: the MACE model (a ``torch.nn.Module``; its parameters are frozen).
        kernel, kernel_options: the feature map (:func:`~ase_mlipal.uncertainty.kernels.get_feature_map`).
        regularization: ``lambda`` of both posteriors, unless the feature
            map fixes its own prior precision.
        head: the head of a multi-head model (:class:`~ase_mlipal.models.graphs.BatchMaker`).
        distance_aware: multiply each atom's raw force variance by
            ``1 + (d / d0)^2``, ``d`` the distance of its feature row to the
            nearest one the posterior holds
            (:class:`~ase_mlipal.NearestNeighbours`);
            for kernels with atom feature rows (activation, fixed).
            ``None`` (default): on for those kernels, off for the others.

    Frames can be *seen* without being *learned*
    (``add_features(..., learned=False)``): an
    :class:`~ase_mlipal.UncertaintyTrigger` records its flags so, which the
    model has no label for, or was not trained on, yet. They leave the
    uncertainties this model reports unchanged (a frame the model has not
    learned is no less uncertain for having been seen) and enter
    :meth:`seen`, the copy a trigger compares with its threshold so that one
    event is flagged once. Read as knowledge they misled: on held-out
    methylamine's MD learner (``benchmarks/learning_loop_heldout.py``) 41
    flags since the last fine-tune cut the energy sigma of an audit 4.9x and
    its mean force sigma 6.9x, and the audit was 4.2 eV off.

    Attributes:
        energy_posterior: posterior on structure features (``energy_uncertainty``).
        atom_posterior: posterior on atomic features (``forces_uncertainty``).
        calibrated: whether the posteriors' calibrations are fitted (eV) or raw.
        typical: median uncertainties of in-distribution frames, or ``None``.
        n_conditioning: frames the posteriors were conditioned on through
            :meth:`MLIPALCalculator.condition` (not those a trigger absorbed).
        neighbours: the atom rows the distance is measured to (``None``
            unless ``distance_aware``).
        band_calibration: the calibration of the energy differences along a
            band relaxed on the model itself (a NEB run on it), or ``None``
            (use the energy posterior's own): such a band bends into the
            model's errors, which are then several times those of frames near
            a reference path with the same raw variance
            (:func:`~ase_mlipal.fit_band_calibration`). A map of the raw
            variance like the posterior's; a model swap keeps it.
    """

    def __init__(self, model: torch.nn.Module, kernel: str = "activation", kernel_options: Optional[dict] = None,
                 regularization: float = 1e-2, head: Optional[str] = None, distance_aware: Optional[bool] = None):
        self.kernel = kernel
        self._distance_aware = distance_aware
        self.kernel_options = dict(kernel_options or {})
        self.regularization = regularization
        self._changes = 0
        self.band_calibration: Optional[Recalibration] = None
        self.use(model, head)

    def use(self, model: torch.nn.Module, head: Optional[str] = None) -> None:
        """Make ``model`` the model, with empty, uncalibrated posteriors."""
        self.model = model
        self._parameters = list(self.model.parameters())  # listed once: walking the modules costs ~0.1 ms
        for parameter in self._parameters:
            parameter.requires_grad_(False)
        self._hash, self._hash_version = "", -1
        self.feature_map = get_feature_map(self.kernel, self.model, self.kernel_options)
        self.distance_aware = (self.feature_map.atoms_in_energy_space if self._distance_aware is None
                               else bool(self._distance_aware))
        self.batch_maker = BatchMaker(self.model, head=head)
        regularization = self.feature_map.prior_precision or self.regularization
        self.energy_posterior = FeaturePosterior(self.feature_map.dim, regularization)
        self.atom_posterior = FeaturePosterior(self.feature_map.force_dim, regularization)
        self.neighbours = self._new_neighbours()
        self.calibrated = False
        self.typical: Optional[dict[str, float]] = None
        self.n_conditioning = 0
        self._seen: list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = []  # weighted rows, atom rows
        self._seen_model: Optional[UncertaintyModel] = None  # the copy seen() gives, holding _seen[:_seen_applied]
        self._seen_key: tuple = ()
        self._seen_applied = 0
        self.changed()

    def _new_neighbours(self) -> Optional[NearestNeighbours]:
        if not self.distance_aware:
            return None
        if not self.feature_map.atoms_in_energy_space:
            raise ValueError(f"distance_aware needs a kernel with atom feature rows (activation, fixed), not "
                             f"{self.kernel!r}")
        by_element = getattr(self.feature_map, "by_element", False)
        width = self.feature_map.num_invariant * self.feature_map.num_layers if by_element else None
        return NearestNeighbours(block_width=width)

    def changed(self) -> None:
        """Record a change the :attr:`version` cannot see (cached results built before it are stale)."""
        self._changes += 1

    @property
    def version(self) -> tuple:
        """A key that differs whenever the model, its weights or either posterior changed.

        Compare versions with ``==``/``!=`` only (they are tuples, not counters).
        """
        weights = sum(t._version for t in self._parameters)
        return (self._changes, weights, id(self.energy_posterior), self.energy_posterior.version,
                id(self.atom_posterior), self.atom_posterior.version)

    @property
    def model_hash(self) -> str:
        """sha256 of the model's parameters and buffers (:func:`~ase_mlipal.model_hash`).

        Recomputed when any of them changed in place since the last call (their
        autograd version counters moved), e.g. after
        :func:`~ase_mlipal.rereference_energies`.
        """
        version = sum(t._version for t in self.model.parameters()) + sum(t._version for t in self.model.buffers())
        if version != self._hash_version:
            self._hash, self._hash_version = model_hash(self.model), version
        return self._hash

    def add_features(self, features: Features, weight: float = 1.0, learned: bool = True) -> None:
        """Condition both posteriors on computed features (``weight`` observations each).

        Distance-aware, the atom rows join :attr:`neighbours` when ``weight >= 1``.
        ``learned=False``: the frames are seen, not learned; they enter
        :meth:`seen` only, and the reported uncertainties stay as they were.
        """
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        energy_rows, force_rows = self.feature_map.conditioning(features)
        atom_rows = features.atom if self.neighbours is not None and weight >= 1.0 else None
        # a frame weighed down (the model errs there) is not near the data
        rows = (np.sqrt(weight) * energy_rows, np.sqrt(weight) * force_rows, atom_rows)
        if learned:
            self._add_rows(*rows)
        else:
            self._seen.append(rows)

    def _add_rows(self, energy_rows: np.ndarray, force_rows: np.ndarray, atom_rows: Optional[np.ndarray]) -> None:
        """Add rows already multiplied by the square root of their weight."""
        self.energy_posterior.add(energy_rows)
        self.atom_posterior.add(force_rows)
        if atom_rows is not None:
            self.neighbours.add(atom_rows)

    def seen(self) -> "UncertaintyModel":
        """This model with the frames seen but not learned added, as if learned (itself when there are none).

        What a trigger compares with its threshold. A copy, rebuilt when
        this model changes (a new calibration or posterior) and grown as
        frames are seen; do not condition it. :meth:`use` (a new model)
        forgets the frames seen: their features were the old model's (a
        learner's swap sees its stored frames again).
        """
        if not self._seen:
            return self
        if self._seen_model is None or self._seen_key != self.version:
            self._seen_model, self._seen_key, self._seen_applied = self.snapshot(), self.version, 0
            self._seen_model._seen = []
        for rows in self._seen[self._seen_applied:]:
            self._seen_model._add_rows(*rows)
        self._seen_applied = len(self._seen)
        return self._seen_model

    def seen_arrays(self) -> dict[str, np.ndarray]:
        """The rows of the frames seen but not learned, for a posterior file (:meth:`load_seen`)."""
        if not self._seen:
            return {}
        out = {"seen_energy": np.concatenate([r[0] for r in self._seen]),
               "seen_force": np.concatenate([r[1] for r in self._seen])}
        atoms = [r[2] for r in self._seen if r[2] is not None]
        if atoms:
            out["seen_atom"] = np.concatenate(atoms)
        return out

    def load_seen(self, arrays: dict) -> None:
        """The frames seen but not learned that :meth:`seen_arrays` wrote (none if ``arrays`` hold none)."""
        self._seen, self._seen_model = [], None
        if "seen_energy" in arrays:
            atoms = arrays.get("seen_atom")
            self._seen.append((np.asarray(arrays["seen_energy"], dtype=float),
                               np.asarray(arrays["seen_force"], dtype=float),
                               None if atoms is None or self.neighbours is None else np.asarray(atoms, dtype=float)))

    def thin_neighbours(self) -> None:
        """Keep :data:`NEIGHBOUR_ROWS` farthest-point samples per element block after bulk conditioning.

        Thins the first conditioning (which sets the distance scale ``d0``)
        and any block grown past twice the limit; frames conditioned on
        one by one (a trigger's flags) stay as they are, and ``d0`` stays.
        """
        rows = self.neighbours.rows if self.neighbours is not None else {}
        if rows and (self.neighbours.scale is None or max(map(len, rows.values())) > 2 * NEIGHBOUR_ROWS):
            self.neighbours.thin(NEIGHBOUR_ROWS)
            self.changed()

    def snapshot(self) -> "UncertaintyModel":
        """A copy whose posteriors later conditioning of this one does not change (the model is shared)."""
        copied = copy.copy(self)
        copied.energy_posterior = copy.deepcopy(self.energy_posterior)
        copied.atom_posterior = copy.deepcopy(self.atom_posterior)
        copied.neighbours = copy.deepcopy(self.neighbours)
        copied._seen, copied._seen_model = list(self._seen), None
        return copied

    @contextmanager
    def posteriors_of(self, state: "UncertaintyModel") -> Iterator[None]:
        """Within the block, predict with the posteriors of ``state`` (a :meth:`snapshot` of this model).

        What the block conditions on goes into ``state``'s posteriors; this
        model's own are back, unchanged, after it (also after an error; a
        posterior loaded or a model set inside the block is undone: do
        neither there).
        """
        if state.model is not self.model or state.feature_map is not self.feature_map:
            raise ValueError("posteriors_of needs a snapshot of this model: the features would not match")
        saved = self.energy_posterior, self.atom_posterior, self.neighbours, self._seen
        self.energy_posterior, self.atom_posterior, self.neighbours, self._seen = (
            state.energy_posterior, state.atom_posterior, state.neighbours, state._seen)
        self.changed()
        try:
            yield
        finally:
            self.energy_posterior, self.atom_posterior, self.neighbours, self._seen = saved
            self.changed()

    def conditioned(self, features: Features, weight: float = 1.0) -> "UncertaintyModel":
        """A copy conditioned on ``features``, this one unchanged (the model itself is not copied)."""
        trial = self.snapshot()
        trial.add_features(features, weight)
        return trial

    def force_variance(self, features: Features) -> np.ndarray:
        """Raw (unscaled) variance per force component of each atom, ``(n_atoms,)``.

        Distance-aware: the posterior's times ``1 + (d / d0)^2`` (:attr:`neighbours`).
        """
        if features.force_variance is not None:
            return features.force_variance
        raw = self.atom_posterior.quadratic_form(features.atom)
        if self.neighbours is None or not len(self.neighbours):
            return raw
        return raw * self.neighbours.inflation(features.atom)

    def uncertainty_from(self, features: Features) -> dict:
        """The uncertainty results of one structure's features.

        ``energy_uncertainty`` (eV), ``forces_uncertainty`` (eV/A, ``(n_atoms,)``),
        ``uncertainty`` (their largest, eV/A) and, where the kernel's atom
        rows live in the energy's feature space, ``energies_uncertainty`` (eV,
        ``(n_atoms,)``).
        """
        forces_std = np.sqrt(self.atom_posterior.calibration.variance(self.force_variance(features)))
        n_atoms = int(features.ptr[1] - features.ptr[0])
        results = {
            "energy_uncertainty": float(self.energy_posterior.std(features.structure, n_atoms)[0]),
            "forces_uncertainty": forces_std,
            "uncertainty": float(forces_std.max()),
        }
        if self.feature_map.atoms_in_energy_space:
            results["energies_uncertainty"] = self.energy_posterior.std(features.atom)
        return results
