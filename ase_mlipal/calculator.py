"""MLIPALCalculator: MACE energies, forces and stress with latent-space uncertainty."""

from __future__ import annotations

import copy
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .frames import read_labels
from .legacy import refuse_unknown, renamed_argument
from .models.model import DEFAULT_DISTANCE_POSTERIOR_PATH, DEFAULT_POSTERIOR_PATH, ModelSpec, load_model
from .progress import progress_bar
from .storage import atomic_write
from .uncertainty.calibration import (
    CalibrationReport,
    Recalibration,
    calibration_report,
    fit_recalibration,
    forgetting_floor,
    shrunk_factor,
)
from .uncertainty.distance import NearestNeighbours
from .uncertainty.features import Features, per_structure
from .uncertainty.posterior import FeaturePosterior
from .uncertainty.uncertainty_model import UncertaintyModel


def _delegated(name: str, doc: str, settable: bool = False) -> property:
    """An attribute of the calculator's :class:`UncertaintyModel`, shared by all its shares."""
    def get(self):
        return getattr(self.uncertainty_model, name)

    def set_(self, value) -> None:
        setattr(self.uncertainty_model, name, value)
        self.uncertainty_model.changed()

    return property(get, set_ if settable else None, doc=doc)


class MLIPALCalculator(Calculator):
    """ASE calculator over a pretrained MACE that also reports its own uncertainty.

    Energies, forces and stress are those of the MACE model (identical to
    ``mace.calculators.MACECalculator`` on the same model). The uncertainty
    comes from the model's latent features of the same forward pass, through
    two feature-space posteriors (:class:`~ase_mlipal.FeaturePosterior`):

    * a structure-level posterior on ``phi(x) = sum_i psi_i``, the posterior
      of the energy as a linear function of the features. It gives
      ``energy_uncertainty`` (eV) and, for the per-atom energies
      ``w . psi_i`` of the same linear model, ``energies_uncertainty`` (eV);
    * an atom-level posterior on the atomic features ``psi_i`` of all atoms
      of the conditioning frames, which measures how new each atomic environment is.
      It gives ``forces_uncertainty`` (eV/A): the standard deviation of each
      Cartesian force component of each atom, shape ``(N,)``.

    ``uncertainty`` is the single number a trigger should watch: the largest
    per-atom force uncertainty, ``max(forces_uncertainty)`` (eV/A).

    Units: until :meth:`calibrate` has been run on labelled frames (or a
    calibrated posterior loaded), the uncertainties are raw posterior
    standard deviations without physical units; they rank structures but
    are not eV. ``calc.calibrated`` says which. Calibration maps a raw
    variance ``q`` to ``scale * q**exponent + floor * n`` (a
    :class:`~ase_mlipal.uncertainty.calibration.Recalibration` per posterior; ``n`` is
    the number of atoms for the total energy, 1 for a force component).

    ``typical`` holds the median uncertainty of in-distribution frames
    (``{"forces": eV/A, "energy": eV/atom}``, see :meth:`fit_typical`);
    the shipped posterior carries it, so a relative trigger threshold works
    out of the box.

    Args:
        model: anything :func:`~ase_mlipal.load_model` accepts; ``"default"``
            is the model shipped with the package.
        kernel: feature map name (:mod:`ase_mlipal.uncertainty.kernels`): ``"activation"``
            (default), ``"ntk"``, ``"force_ntk"``, ``"ef_ntk"``, ``"fixed"``
            or ``"committee"``. With ``ntk`` the per-atom force uncertainty
            comes from the activation rows and ``energies_uncertainty`` is
            not given; the force kernels estimate it from the force NTK.
        kernel_options: options of the feature map, e.g. ``{"dim": 1024}``
            for the NTKs, ``{"members": [...]}`` for ``committee``, or
            ``{"by_element": False}`` for activation features in one shared
            block instead of one block per element.
        regularization: ``lambda`` of both posteriors (prior precision).
        device, dtype, trust: passed to :func:`~ase_mlipal.load_model`.
        head: model head for multi-head models.
        posterior: ``"auto"`` starts from the shipped, calibrated posterior
            of the pretraining data when ``model="default"``,
            ``kernel="activation"`` and the default ``kernel_options`` and
            ``regularization`` (otherwise empty, with a warning where the
            model is the default); ``None`` always starts
            empty; a path loads a file written by :meth:`save_posterior`.
        chunk_size: structures per forward pass in :meth:`condition`
            and :meth:`calibrate`.
        distance_aware: multiply each atom's raw force variance by
            ``1 + (d / d0)^2``, ``d`` the distance of its features to the
            nearest atom of its element the posterior holds
            (:class:`~ase_mlipal.NearestNeighbours`),
            and, with ``posterior="auto"``, start from the shipped posterior
            calibrated for it. ``None`` (default): on for the kernels with
            atom feature rows (activation, fixed), off for the others.
            With reactions held out it ranks force errors better and covers
            saddles of reactions no calibration saw better (force 2-sigma
            coverage near their saddles 0.87 against 0.78;
            ``benchmarks/calibration.py``, rows ``distance``). ``False``:
            the plain posterior variance.

    Bad inputs get an error that names the problem and the atoms or file
    (each case is a row of ``tests/test_bad_inputs.py``):

    * structures (``calculate``, :meth:`condition`, :meth:`calibrate`):
      not an ``Atoms`` (``TypeError``); no atoms; NaN or infinite
      positions; a periodic cell with NaN entries or zero volume;
      overlapping atoms (closer than 0.1 A); an element the model does not
      know (``ValueError``);
    * ``model=``: a missing file, a directory, a file that is not a
      PyTorch file, a truncated or corrupt one, a pickled module without
      ``trust=True``, plain data such as a state dict, a compiled
      (TorchScript) model (:class:`~ase_mlipal.ModelLoadError`); an
      object that is neither a module nor a path (``TypeError``);
    * ``posterior=`` / :meth:`load_posterior`: a missing file
      (``FileNotFoundError``); a truncated, corrupt or foreign file; a
      posterior of another model, kernel or kernel options
      (``ValueError``);
    * :meth:`calibrate`: no frames, frames without reference labels, a
      ``groups`` of the wrong length (``ValueError``).
    """

    implemented_properties = [
        "energy", "free_energy", "energies", "forces", "stress",
        "energy_uncertainty", "energies_uncertainty", "forces_uncertainty", "uncertainty",
    ]

    model = _delegated("model", "The MACE model (``torch.nn.Module``, frozen); swap it with :meth:`set_model`.")
    kernel = _delegated("kernel", "Name of the feature map.")
    kernel_options = _delegated("kernel_options", "Options of the feature map.")
    regularization = _delegated("regularization", "``lambda`` of both posteriors.")
    feature_map = _delegated("feature_map", "The :class:`~ase_mlipal.uncertainty.features.FeatureMap` in use.")
    batch_maker = _delegated("batch_maker", "Atoms -> MACE batches (:class:`~ase_mlipal.models.graphs.BatchMaker`).")
    energy_posterior = _delegated("energy_posterior", "Posterior on structure features.", settable=True)
    atom_posterior = _delegated("atom_posterior", "Posterior on atomic features.", settable=True)
    calibrated = _delegated("calibrated", "Whether the uncertainties are calibrated (eV, eV/A).", settable=True)
    band_calibration = _delegated("band_calibration", "Energy calibration of bands relaxed on the model, or None "
                                  "(:func:`~ase_mlipal.fit_band_calibration`).", settable=True)
    typical = _delegated("typical", "Median uncertainties of in-distribution frames (see :meth:`fit_typical`).",
                         settable=True)
    n_conditioning = _delegated("n_conditioning",
                                "Frames conditioned on through :meth:`condition` (not absorbed ones).", settable=True)

    def __init__(
        self,
        model: ModelSpec = "default",
        kernel: str = "activation",
        kernel_options: Optional[dict] = None,
        regularization: float = 1e-2,
        device: str = "cpu",
        dtype: str = "float64",
        trust: bool = False,
        head: Optional[str] = None,
        posterior: Union[str, os.PathLike, None] = "auto",
        chunk_size: int = 16,
        distance_aware: Optional[bool] = None,
        **kwargs,
    ):
        chunk_size = renamed_argument(None, kwargs, "batch_size", "chunk_size", "MLIPALCalculator") or chunk_size
        super().__init__(**kwargs)
        self.chunk_size = int(chunk_size)
        self.uncertainty_model = UncertaintyModel(load_model(model, device=device, dtype=dtype, trust=trust),
                                                  kernel, kernel_options, regularization, head, distance_aware)
        self.reset()
        if posterior == "auto":
            default_model = isinstance(model, str) and model == "default"
            posterior = self._shipped_posterior(regularization) if default_model and kernel == "activation" else None
            if default_model and kernel != "activation":
                warnings.warn(f"the shipped calibrated posterior is an activation one: the {kernel} kernel starts "
                              "from an empty, uncalibrated posterior, its uncertainties raw variances, not eV. "
                              "Condition and calibrate it (calc.condition(frames), calc.calibrate(labelled_frames)); "
                              "posterior=None starts empty without this warning.", UserWarning, stacklevel=2)
        if posterior is not None:
            self.load_posterior(posterior)

    def _shipped_posterior(self, regularization: float) -> Optional[Path]:
        """The shipped posterior if it was built with this calculator's settings; else ``None`` and a warning."""
        path = DEFAULT_DISTANCE_POSTERIOR_PATH if self.uncertainty_model.distance_aware else DEFAULT_POSTERIOR_PATH
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            options, shipped_lambda = str(data["kernel_options"]), float(data["atom_regularization"])
        differs = []
        if options != self._scalar_options():
            differs.append(f"kernel_options {self._scalar_options()} (shipped: {options})")
        if not np.isclose(regularization, shipped_lambda):
            differs.append(f"regularization={regularization:g} (shipped: {shipped_lambda:g})")
        if not differs:
            return path
        warnings.warn(f"the shipped calibrated posterior was built with other settings than {', '.join(differs)}: "
                      "starting from an empty, uncalibrated posterior. Condition and calibrate it "
                      "(calc.condition(frames), calc.calibrate(labelled_frames)), or keep the default settings "
                      "to use the shipped one; posterior=None starts empty without this warning.",
                      UserWarning, stacklevel=3)
        return None

    @property
    def calibrations(self) -> tuple[Recalibration, Recalibration]:
        """The calibrations of the energy and the force posterior, in that order; set both at once."""
        return self.energy_posterior.calibration, self.atom_posterior.calibration

    @calibrations.setter
    def calibrations(self, pair: tuple[Recalibration, Recalibration]) -> None:
        self.energy_posterior.calibration, self.atom_posterior.calibration = pair

    @property
    def model_hash(self) -> str:
        """sha256 of the model's parameters and buffers (:attr:`UncertaintyModel.model_hash`).

        Follows in-place changes (e.g. :func:`~ase_mlipal.rereference_energies`),
        so a posterior saved afterwards carries the hash of the model it was
        built on.
        """
        return self.uncertainty_model.model_hash

    def _use_model(self, model: torch.nn.Module, head: Optional[str] = None) -> None:
        """Make ``model`` the model of this calculator and all its shares, with empty posteriors."""
        self.uncertainty_model.use(model, head)
        self.reset()

    def _chunk_size(self) -> int:
        return min(self.chunk_size, self.feature_map.max_batch or self.chunk_size)

    def set_model(
        self,
        model: ModelSpec,
        conditioning: Optional[Sequence[Atoms]] = None,
        calibration: Optional[Sequence[Atoms]] = None,
        prior_frames: float = 20.0,
        forgetting_frames: Optional[Sequence[Atoms]] = None,
        progress: Optional[bool] = None,
        **deprecated,
    ) -> Optional[dict[str, CalibrationReport]]:
        """Swap in another model (e.g. after fine-tuning) and rebuild the posterior.

        The features of the ``conditioning`` frames (``references=`` before
        0.2) are recomputed with the new model: pass the frames the old
        posterior was conditioned on (for the shipped default
        :func:`~ase_mlipal.default_conditioning`; far fewer warn, since the
        calibration would not fit the smaller posterior). The calibration
        stays (a swap without ``calibration`` frames used to leave raw,
        uncalibrated variances), with two corrections:

        * ``forgetting_frames``: labelled frames the old model trained on and
          the new one did not (:attr:`TrainedModel.replay_unseen`). The
          posterior is sure of them, so what the new model got worse on them
          is error no feature sees: the rise of the mean squared error (per
          force component; per atom for energies) moves the calibration's
          floor (:func:`~ase_mlipal.uncertainty.calibration.forgetting_floor`);
          ignored on an uncalibrated posterior, whose variances are not in eV.
          Fine-tuning on 8 reactive frames raised the force error on the
          pretraining validation frames from 0.056 to 0.09-0.27 eV/A, which a
          kept scale alone would have hidden (``benchmarks/forgetting.py``).
        * ``calibration``: labelled frames held out from the new model's
          training. One factor on every calibrated variance (scale and
          floor alike) is fitted to the new model's residuals on them and
          the report returned: the maximum-likelihood factor, the mean of
          ``residual^2 / variance``, shrunk as if the kept
          calibration had been fitted on ``prior_frames`` frames (``n``
          calibration frames move it ``n / (n + prior_frames)`` of the way;
          :func:`~ase_mlipal.uncertainty.calibration.shrunk_factor`): three
          held-out frames the new model happens to fit well must not make
          every uncertainty small. (The scale alone used to be refitted
          and shrunk; with residuals below the floor its fit ran to zero,
          and each swap cut the scale about 4x for one frame, more for
          several.)

        ``typical`` is cleared (it belonged to the old model).
        """
        conditioning = renamed_argument(conditioning, deprecated, "references", "conditioning", "set_model")
        refuse_unknown(deprecated, "set_model")
        if conditioning is None:
            raise TypeError("set_model needs the conditioning frames (an empty list for none)")
        device = next(self.model.parameters()).device
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        shapes = self.calibrations
        held, calibrated = self.n_conditioning, self.calibrated
        forgetting_frames = list(forgetting_frames or []) if calibrated else []  # a floor in eV needs eV variances
        before = self.residuals(forgetting_frames, progress=progress) if forgetting_frames else None
        self._use_model(load_model(model, device=str(device), dtype=dtype), self.batch_maker.head)
        self.condition(conditioning, progress=progress)
        if 0 < len(conditioning) < held / 2:
            warnings.warn(f"set_model conditioned the new posterior on {len(conditioning)} frames where the old one "
                          f"held {held}: every raw variance grows about {held / len(conditioning):.0f}x while the "
                          "calibration stays, so uncertainties come out too wide. Pass the frames the old posterior "
                          "was conditioned on (for the shipped default: ase_mlipal.default_conditioning()).",
                          stacklevel=2)
        if before is not None:
            after = self.residuals(forgetting_frames, progress=progress)
            shapes = (forgetting_floor(shapes[0], before.energy, after.energy, before.n_atoms),
                      forgetting_floor(shapes[1], before.forces, after.forces))
        self.calibrations = shapes
        self.calibrated = calibrated
        if not calibration:
            return None
        return self.rescale(calibration, prior_frames, progress)

    def rescale(self, images: Sequence[Atoms], prior_frames: float = 20.0,
                progress: Optional[bool] = None) -> dict[str, CalibrationReport]:
        """Multiply every calibrated variance by the factor labelled ``images`` justify, shrunk; return the reports.

        One factor per posterior (energy, forces), on scale and floor alike:
        the maximum-likelihood one, the mean of ``residual^2 / variance`` over
        ``images``, moved ``n / (n + prior_frames)`` of the way
        (:func:`~ase_mlipal.uncertainty.calibration.shrunk_factor`), as if the
        calibration in use had been fitted on ``prior_frames`` frames: in log
        space for the forces (3N residuals a frame), linearly for the energy
        (one a frame, where log space shrinks a right sigma on average;
        ``benchmarks/audit_rescale.py`` compares the two). Score
        frames that neither the model trained on nor the posterior holds, on
        the posterior the uncertainties will be read from: a posterior that
        later takes in frames near them reads their neighbours' variances
        smaller than the factor was fitted on.
        """
        images = list(images)
        if not images:
            raise ValueError("rescale needs at least one labelled frame")
        residuals = self.residuals(images, progress=progress)
        for posterior, errors, raw, size, space in (
                (self.energy_posterior, residuals.energy, residuals.energy_raw, residuals.n_atoms, "linear"),
                (self.atom_posterior, residuals.forces.ravel(), np.repeat(residuals.forces_raw, 3), 1.0, "log")):
            kept = posterior.calibration
            posterior.calibration = kept.times(shrunk_factor(errors, kept.variance(raw, size), prior_frames,
                                                             len(images), space))
        self.calibrated = True
        return self._calibration_reports(residuals)

    # -- ASE interface -------------------------------------------------------

    def calculate(self, atoms: Optional[Atoms] = None, properties=("energy",), system_changes=all_changes):
        """Run one forward pass and fill ``self.results``."""
        if atoms is not None and not isinstance(atoms, Atoms):
            raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
        super().calculate(atoms, properties, system_changes)
        self._results_version = self.uncertainty_model.version  # these results are of the model as it is now
        periodic = bool(self.atoms.pbc.any())
        batch = self.batch_maker.batch([self.atoms])
        out, features = self.feature_map.evaluate(batch, compute_force=True, compute_stress=periodic,
                                                  force_posterior=self.atom_posterior, rows=False)
        self.last_features = features
        energy = float(out["energy"][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["node_energy"].detach().cpu().numpy().copy(),
            "forces": out["forces"].detach().cpu().numpy().copy(),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().numpy())
        self.results.update(self.uncertainty_from(features))

    def share(self) -> "MLIPALCalculator":
        """A calculator on this one's model and posteriors with its own result cache.

        Give one to each image of an NEB: every image then keeps its own
        results (ASE evaluates an unchanged image only once) while flags
        and conditioning frames added through any of them reach all: every
        share holds this calculator's :class:`UncertaintyModel`, so a later
        :meth:`set_model`, :meth:`load_posterior` or :meth:`calibrate` on
        any of them reaches all, and results cached before it are
        recomputed.
        """
        view = copy.copy(self)
        view.reset()
        return view

    def reset(self) -> None:
        """Forget the last results (and the features they came from)."""
        super().reset()
        self.last_features: Optional[Features] = None
        state = self.__dict__.get("uncertainty_model")  # absent while ASE's constructor resets
        self._results_version = -1 if state is None else state.version

    def get_property(self, name: str, atoms: Optional[Atoms] = None, allow_calculation: bool = True):
        """ASE's, except that results of an earlier model or posterior are recomputed even without ``atoms``.

        Conditioning keeps ``self.results`` (the last frame's numbers stay
        readable, e.g. after a trigger flagged it); the next request
        recomputes them on the conditioned posterior.
        """
        stale = self.atoms is not None and self._stale()
        if stale and not allow_calculation:
            return None  # as ASE would, but the stale results stay readable
        if stale and atoms is None:
            atoms = self.atoms
        return super().get_property(name, atoms, allow_calculation)

    def _stale(self) -> bool:
        """Whether the results are of an earlier model, posterior or calibration."""
        return self._results_version != self.uncertainty_model.version

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last calculation, all of them when the uncertainty model changed since."""
        if self._stale():
            return list(all_changes)
        return super().check_state(atoms, tol)

    def uncertainty_from(self, features: Features) -> dict:
        """The uncertainty results (see the class docstring) of one structure's features."""
        return self.uncertainty_model.uncertainty_from(features)

    def force_variance(self, features: Features) -> np.ndarray:
        """Raw (unscaled) variance per force component of each atom, ``(n_atoms,)``."""
        return self.uncertainty_model.force_variance(features)

    # -- reference set -------------------------------------------------------

    def features(self, images: Iterable[Atoms], progress: Optional[bool] = None) -> list[Features]:
        """Features of ``images``, one :class:`Features` per batch (no forces computed).

        Enough to condition or select on; the force kernels' per-atom
        variance (posterior draws) is left out: use :meth:`predict` for
        :meth:`uncertainty_from`.
        """
        return self.predict(images, progress, force_variance=False)[1]

    def predict(self, images: Iterable[Atoms], progress: Optional[bool] = None,
                force_variance: bool = True, rows: bool = True) -> tuple[np.ndarray, list[Features]]:
        """Energies (eV) and features of ``images`` in batched passes without forces.

        Returns the energies, shape ``(n_images,)``, and one :class:`Features`
        per batch (:func:`~ase_mlipal.uncertainty.features.per_structure` gives one per image).
        ``force_variance=False`` skips the force kernels' posterior draws,
        ``rows=False`` their conditioning rows (probes): then the features
        serve :meth:`uncertainty_from` but not :meth:`add_features`.
        """
        images = list(images)
        energies, features = [], []
        with progress_bar(total=len(images), progress=progress, desc="features") as bar:
            for chunk, batch in self.batch_maker.batches(images, self._chunk_size()):
                out, batch_features = self.feature_map.evaluate(
                    batch, compute_force=False, force_posterior=self.atom_posterior if force_variance else None,
                    rows=rows)
                energies.append(out["energy"].detach().cpu().numpy())
                features.append(batch_features)
                bar.update(len(chunk))
        return np.concatenate(energies) if energies else np.zeros(0), features

    def condition(
        self, images: Union[Atoms, Sequence[Atoms]], weight: float = 1.0, progress: Optional[bool] = None,
    ) -> "MLIPALCalculator":
        """Condition both posteriors on ``images``, the conditioning frames (labels are not needed).

        After this, structures like these get low uncertainty. ``weight``
        counts each image as that many observations (see
        :meth:`FeaturePosterior.add`). Returns self.
        """
        if isinstance(images, Atoms):
            images = [images]
        for features in self.features(images, progress):
            self.add_features(features, weight)
        self.uncertainty_model.thin_neighbours()
        self.n_conditioning += len(images)
        return self

    def add_reference(self, images: Union[Atoms, Sequence[Atoms]], weight: float = 1.0,
                      progress: Optional[bool] = None) -> "MLIPALCalculator":
        """Deprecated name of :meth:`condition` (``reference`` now means the labelling calculator only)."""
        warnings.warn("MLIPALCalculator.add_reference is deprecated and will be removed in the next release; "
                      "use condition", DeprecationWarning, stacklevel=2)
        return self.condition(images, weight, progress)

    def add_features(self, features: Features, weight: float = 1.0) -> None:
        """Condition both posteriors on already computed features.

        ``calc.add_features(calc.last_features)`` adds the structure of the
        last calculation without running the model again, except for the
        force kernels, whose calculation skips the probe rows (they raise
        ``ValueError``; use :meth:`condition`). Each call is one more
        observation: the same features added twice weigh as one frame of
        ``2 * weight``.
        """
        self.uncertainty_model.add_features(features, weight)

    # -- calibration -------------------------------------------------------

    def calibrate(
        self,
        images: Sequence[Atoms],
        fit: bool = True,
        energy_key: str = "energy",
        forces_key: str = "forces",
        energy_method: str = "power",
        forces_method: str = "linear",
        groups: Optional[Sequence[Hashable]] = None,
        progress: Optional[bool] = None,
    ) -> dict[str, CalibrationReport]:
        """Fit the energy and force calibrations on labelled frames and report.

        Reference labels are read with :func:`ase_mlipal.frames.read_labels`.
        With ``fit=True`` a :class:`~ase_mlipal.uncertainty.calibration.Recalibration` is
        fitted to each posterior by maximum likelihood on the model's
        residuals (energy: per structure, floor per atom; forces: per
        Cartesian component) and the report is on the same frames; with
        ``fit=False`` the current calibration is only evaluated (use it on a
        held-out set).

        Args:
            energy_method, forces_method: ``"power"`` (scale, exponent and
                error floor), ``"linear"`` (a plain scale) or ``"scale"``
                (refit the scale, keep the current exponent and floor; it
                runs to zero where every residual lies below the floor).
                The defaults are what transferred best to
                reactions held out of the calibration
                (``benchmarks/calibration.py``): a power law with a floor per
                atom for the energy, a plain scale for the forces.
            groups: one label per image (e.g. its reaction or molecule);
                each group then weighs the same in the fit. Calibrate on
                frames like those you will predict, reactive ones included:
                a calibration fitted near equilibrium alone is overconfident
                on bond breaking.

        Returns:
            ``{"energy": CalibrationReport, "forces": CalibrationReport}``.
        """
        images = list(images)
        if not images:
            raise ValueError("calibrate needs at least one labelled frame")
        if groups is not None and len(groups) != len(images):
            raise ValueError(f"groups has {len(groups)} labels for {len(images)} images; give one per image")
        residuals = self.residuals(images, energy_key, forces_key, progress)
        if fit:
            self._fit_calibration(residuals, energy_method, forces_method, groups)
        return self._calibration_reports(residuals)

    def _fit_calibration(self, res: "Residuals", energy_method: str, forces_method: str,
                         groups: Optional[Sequence[Hashable]]) -> None:
        """Fit both posteriors' calibrations to ``res`` (energy per structure, forces per component)."""
        atom_groups = None if groups is None else np.repeat(np.asarray(groups, dtype=object), 3 * res.n_atoms)
        self.energy_posterior.calibration = fit_recalibration(
            res.energy, res.energy_raw, res.n_atoms, groups, energy_method, shape=self.energy_posterior.calibration)
        self.atom_posterior.calibration = fit_recalibration(
            res.forces.ravel(), np.repeat(res.forces_raw, 3), None, atom_groups, forces_method,
            shape=self.atom_posterior.calibration)
        self.calibrated = True

    def _calibration_reports(self, res: "Residuals") -> dict[str, CalibrationReport]:
        """The reports of the calibrations in use on ``res``."""
        e_std = np.sqrt(self.energy_posterior.calibration.variance(res.energy_raw, res.n_atoms))
        f_std = np.sqrt(self.atom_posterior.calibration.variance(np.repeat(res.forces_raw, 3)))
        return {
            "energy": calibration_report(res.energy, e_std, self.energy_posterior.scale),
            "forces": calibration_report(res.forces.ravel(), f_std, self.atom_posterior.scale),
        }

    def residuals(self, images: Sequence[Atoms], energy_key: str = "energy", forces_key: str = "forces",
                  progress: Optional[bool] = None) -> "Residuals":
        """The model's errors on labelled ``images`` beside the raw (uncalibrated) posterior variances.

        What :meth:`calibrate` fits; labels are read with
        :func:`ase_mlipal.frames.read_labels`.
        """
        labels = [read_labels(atoms, energy_key, forces_key) for atoms in images]
        e_res, e_var, f_res, f_var, n_atoms = [], [], [], [], []
        done = 0
        with progress_bar(total=len(images), progress=progress, desc="residuals") as bar:
            for chunk, batch in self.batch_maker.batches(images, self._chunk_size()):
                out, features = self.feature_map.evaluate(batch, compute_force=True,
                                                          force_posterior=self.atom_posterior, rows=False)
                ref = labels[done:done + len(chunk)]
                done += len(chunk)
                e_res.append(out["energy"].detach().cpu().numpy() - np.array([e for e, _ in ref]))
                e_var.append(self.energy_posterior.quadratic_form(features.structure))
                f_res.append(out["forces"].detach().cpu().numpy() - np.concatenate([f for _, f in ref]))
                f_var.append(self.force_variance(features))
                n_atoms.append(np.diff(features.ptr))
                bar.update(len(chunk))
        return Residuals(np.concatenate(e_res), np.concatenate(e_var), np.concatenate(f_res),
                         np.concatenate(f_var), np.concatenate(n_atoms).astype(int))

    def fit_typical(self, images: Sequence[Atoms], progress: Optional[bool] = None) -> dict[str, float]:
        """Set :attr:`typical` to the median uncertainty over ``images`` (labels not needed) and return it.

        ``"forces"``: the median of each frame's largest force uncertainty
        (eV/A, what a forces trigger watches); ``"energy"``: the median
        energy uncertainty per atom (eV/atom). Use frames like the training
        data; a relative trigger threshold is a multiple of these.
        """
        images = list(images)
        if not images:
            raise ValueError("fit_typical needs at least one frame")
        _, batches = self.predict(images, progress)
        forces, energy = [], []
        for atoms, features in zip(images, per_structure(batches)):
            values = self.uncertainty_from(features)
            forces.append(values["uncertainty"])
            energy.append(values["energy_uncertainty"] / len(atoms))
        self.typical = {"forces": float(np.median(forces)), "energy": float(np.median(energy))}
        return dict(self.typical)

    # -- persistence -------------------------------------------------------

    def save_posterior(self, path: Union[str, os.PathLike]) -> None:
        """Write both posteriors, their scales, the frames seen but not learned (a trigger's flags) and the model's
        identity to ``.npz`` (atomically)."""
        arrays = {"model_hash": np.array(self.model_hash), "kernel": np.array(self.kernel),
                  "kernel_options": np.array(self._scalar_options()), "calibrated": np.array(self.calibrated),
                  "n_conditioning": np.array(self.n_conditioning)}
        if self.typical is not None:
            arrays.update({f"typical_{key}": np.array(value) for key, value in self.typical.items()})
        for prefix, posterior in (("energy_", self.energy_posterior), ("atom_", self.atom_posterior)):
            arrays.update({prefix + key: value for key, value in posterior.state().items()})
        if self.uncertainty_model.neighbours is not None:
            arrays.update(self.uncertainty_model.neighbours.arrays())
        arrays.update(self.uncertainty_model.seen_arrays())
        if self.band_calibration is not None:
            arrays.update({f"band_{key}": np.array(value) for key, value in self.band_calibration.as_dict().items()})
        atomic_write(path, lambda tmp: _savez(tmp, arrays))

    def _scalar_options(self) -> str:
        """The kernel options that fix the features (numbers and strings), as JSON."""
        scalars = {k: v for k, v in self.kernel_options.items() if isinstance(v, (int, float, str, bool))}
        return json.dumps(scalars, sort_keys=True)

    def load_posterior(self, path: Union[str, os.PathLike]) -> "MLIPALCalculator":
        """Read a posterior written by :meth:`save_posterior` for this very model.

        Raises:
            FileNotFoundError: there is no such file.
            ValueError: the file is not a readable posterior file (truncated,
                corrupt, another format) or was built on another model or kernel.
        """
        arrays = _read_posterior_file(path)
        if str(arrays["model_hash"]) != self.model_hash:
            raise ValueError(
                f"{path} was built on model {str(arrays['model_hash'])[:12]}, but this calculator "
                f"runs model {self.model_hash[:12]}. Rebuild it with calc.condition(...)."
            )
        if str(arrays["kernel"]) != self.kernel:
            raise ValueError(f"{path} holds a {arrays['kernel']} posterior, this calculator uses {self.kernel}")
        stored = str(arrays.get("kernel_options", "{}"))
        if stored != self._scalar_options():
            raise ValueError(f"{path} was built with kernel options {stored}, this calculator has "
                             f"{self._scalar_options()}; use the same kernel_options or rebuild it")
        split = {prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                 for prefix in ("energy_", "atom_")}
        dims = (split["energy_"]["factor"].shape[0], split["atom_"]["factor"].shape[0])
        if dims != (self.feature_map.dim, self.feature_map.force_dim):
            raise ValueError(f"{path} holds {dims[0]}/{dims[1]}-dimensional posteriors, but this calculator's "
                             f"{self.kernel} features are {self.feature_map.dim}/{self.feature_map.force_dim}-"
                             "dimensional (an older file or other kernel options); rebuild it with "
                             "calc.condition(...) and calc.calibrate(...)")
        neighbours = NearestNeighbours.from_arrays(arrays)
        if (neighbours is not None) != self.uncertainty_model.distance_aware:
            raise ValueError(f"{path} holds a {'distance-aware' if neighbours is not None else 'plain'} posterior "
                             f"(calibrated for it), this calculator has distance_aware="
                             f"{self.uncertainty_model.distance_aware}; pass distance_aware="
                             f"{neighbours is not None} or rebuild it")
        self.energy_posterior = FeaturePosterior.from_state(split["energy_"])
        self.atom_posterior = FeaturePosterior.from_state(split["atom_"])
        self.uncertainty_model.neighbours = neighbours
        self.uncertainty_model.load_seen(arrays)
        self.calibrated = bool(arrays["calibrated"])
        # a file written before the count was stored: every structure row it holds counts
        self.n_conditioning = int(arrays.get("n_conditioning", self.energy_posterior.n_added))
        typical = {key[len("typical_"):]: float(value) for key, value in arrays.items() if key.startswith("typical_")}
        self.typical = typical or None
        band = {key[len("band_"):]: float(value) for key, value in arrays.items() if key.startswith("band_")}
        self.band_calibration = Recalibration(**band) if band else None  # a file written before it: None
        self.reset()
        return self


@dataclass
class Residuals:
    """Errors of a model on labelled frames and the raw posterior variances beside them.

    Attributes:
        energy: ``(n_frames,)`` predicted minus reference energy (eV).
        energy_raw: ``(n_frames,)`` raw variance of the energy posterior.
        forces: ``(n_atoms_total, 3)`` predicted minus reference forces (eV/A).
        forces_raw: ``(n_atoms_total,)`` raw variance per force component of each atom.
        n_atoms: ``(n_frames,)`` atoms per frame (frame ``k`` owns the next ``n_atoms[k]`` force rows).
    """

    energy: np.ndarray
    energy_raw: np.ndarray
    forces: np.ndarray
    forces_raw: np.ndarray
    n_atoms: np.ndarray


POSTERIOR_KEYS = ("model_hash", "kernel", "calibrated", "energy_factor", "atom_factor")


def _read_posterior_file(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """The arrays of a file written by :meth:`MLIPALCalculator.save_posterior`, or a ``ValueError`` naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"posterior file {path} does not exist (write one with calc.save_posterior)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with data:
            arrays = dict(data)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable posterior file ({type(error).__name__}: {error}). It may be "
                         "truncated or of another format: write it again with calc.save_posterior") from error
    if any(key not in arrays for key in POSTERIOR_KEYS):
        missing = [key for key in POSTERIOR_KEYS if key not in arrays]
        raise ValueError(f"{path} is an .npz file but not a posterior written by save_posterior (no {missing})")
    return arrays


def _savez(path: Path, arrays: dict) -> None:
    """``np.savez`` to exactly ``path`` (given a name, numpy would append ``.npz``)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)

