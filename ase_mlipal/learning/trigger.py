"""UncertaintyTrigger: an ASE observer that flags the frames the model is unsure of.

Attach it to any ASE MD integrator or optimiser::

    trigger = UncertaintyTrigger(calc, store, threshold=4.0, mode="relative", atoms=atoms)
    dyn.attach(trigger, interval=5)

What a threshold means: on the shipped default the force uncertainty is
the standard deviation of each force component, grown with each atom's
distance in feature space from the data (``distance_aware``) and
calibrated on 22 reactions so that, each left out of the fit in turn,
about 91-96% of force components lie within 2 sigma (87-92% in
transition-state regions, 94% on near-equilibrium molecules it never saw;
``benchmarks/calibration_wider.py``). Near equilibrium the largest per-atom
uncertainty of a frame is typically 0.15 eV/A (the median over the
validation split, ``calc.typical``; 0.40 eV/A with
``distance_aware=False``); bond breaking gives several times that, and an
atom far from anything the posterior holds many times more.
``mode="relative"`` takes the threshold as a multiple of that typical
value, so ``threshold=4.0`` flags frames four times less certain than the
training data; an absolute threshold (eV/A) near the typical value flags
ordinary thermal frames of the default.

At each call it reads the uncertainty the calculator computed for the
current step (no extra model call). It watches a nudged elastic band the
same way, through the band's optimiser::

    for image in images:
        image.calc = calc.share()  # same model and posterior, a result cache per image
    neb = NEB(images, climb=True, method="improvedtangent")
    trigger = UncertaintyTrigger(calc, store, threshold=0.15, atoms=neb, source="neb")
    FIRE(neb).attach(trigger, interval=5)

For a band it scores every interior image in one batched pass without
forces, from the highest energy down (so the climbing image, ASE's highest
interior image, first); each image flagged is seen before the next is
scored, so a flag on the saddle also covers the neighbours it explains.

Above the threshold the frame goes to
the :class:`~ase_mlipal.learning.store.FrameStore` as ``flagged`` and is
*seen*: its features enter the posterior the trigger compares with its
threshold (:meth:`UncertaintyModel.seen <ase_mlipal.UncertaintyModel.seen>`),
labels or not, so the same event is not flagged again and again. They do
not enter the posterior the calculator reports its uncertainties from: the
model has learned nothing there yet.

Why a flagged frame enters with a weight: the calibrated scale ``s^2``
treats each reference frame as one observation as noisy as the pretrained
model's residuals, so one more such observation barely lowers a frame's
variance (``q -> q / (1 + q)`` for its raw variance ``q``). A flagged frame
is about to get a reference label, a far more precise observation, so it
enters with the weight ``w`` that brings its own uncertainty down to
``settle`` times the threshold: ``q / (1 + w q) = q_target``, with ``q``
read through the inverse of the posterior's calibration. That is a
bookkeeping device against flagging one event again and again, not a
claim of accuracy, so it stays out of the reported uncertainty. After
fine-tuning, :meth:`UncertaintyTrigger.absorb` enters each labelled frame
the model trained on into the reported posterior, settling no lower than
the new model's error on it (its ``floors``; weights found by bisection on
trial posteriors, so a frame's atoms lowering each other's variance is
accounted for). Read as knowledge the flags misled: on two of the learning
benchmark's round-0 NEB bands they shrank the barrier sigma 3.9x and 3.8x
(``python benchmarks/settle_weight.py``), and on held-out methylamine's MD
learner the 41 flags since the last fine-tune cut an audit's energy sigma
from 0.40 to 0.08 eV where the model was 4.2 eV off.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.mep.neb import BaseNEB

from ..calculator import MLIPALCalculator
from ..frames import read_labels
from ..legacy import refuse_unknown, renamed_argument
from ..uncertainty.features import per_structure
from .store import FrameStore


class UncertaintyLimitExceeded(RuntimeError):
    """Raised by the trigger to stop the dynamics when the hard limit is passed."""


class UncertaintyTrigger:
    """Flag frames whose uncertainty passes a threshold.

    Args:
        calc: the :class:`MLIPALCalculator` driving the dynamics.
        store: where flagged frames are written.
        threshold: in calibrated units: eV/A for ``quantity="forces"`` (the
            largest per-atom force uncertainty, ``calc.results["uncertainty"]``)
            or eV/atom for ``quantity="energy"`` (energy uncertainty per atom).
        quantity: ``"forces"`` or ``"energy"``.
        mode: ``"absolute"`` (threshold as given) or ``"relative"`` (a
            multiple of the typical uncertainty: the median over
            ``typical_frames``, or, without them, the calculator's
            ``typical``, which the shipped default posterior carries).
        typical_frames: frames that define the typical uncertainty (relative mode;
            ``reference=`` before 0.2).
        hard_limit: above this (same units as the effective threshold) the
            frame is flagged and :class:`UncertaintyLimitExceeded` stops the
            dynamics.
        callback: called as ``callback(atoms, value)`` for each flagged frame.
        atoms: the structure the dynamics moves (ASE calls observers without
            arguments), or an ``ase.mep.NEB`` whose images all use ``calc``.
        source, run_id: provenance written with each flagged frame.
        settle: a flagged frame enters the posterior with the weight that
            brings its own uncertainty to ``settle * threshold``.
    """

    def __init__(
        self,
        calc: MLIPALCalculator,
        store: FrameStore,
        threshold: float,
        quantity: str = "forces",
        mode: str = "absolute",
        typical_frames: Optional[Sequence[Atoms]] = None,
        hard_limit: Optional[float] = None,
        callback: Optional[Callable[[Atoms, float], None]] = None,
        atoms: Optional[Atoms] = None,
        source: str = "md",
        run_id: Optional[str] = None,
        settle: float = 0.5,
        **deprecated,
    ):
        typical_frames = renamed_argument(typical_frames, deprecated, "reference", "typical_frames",
                                          "UncertaintyTrigger")
        refuse_unknown(deprecated, "UncertaintyTrigger")
        if quantity not in ("forces", "energy"):
            raise ValueError(f"quantity must be 'forces' or 'energy', not {quantity!r}")
        if mode not in ("absolute", "relative"):
            raise ValueError(f"mode must be 'absolute' or 'relative', not {mode!r}")
        unit = "eV/A" if quantity == "forces" else "eV/atom"
        if threshold is None or isinstance(threshold, (str, bytes, bool)) or np.ndim(threshold) != 0:
            raise TypeError(f"threshold must be a number ({unit} in "
                            f"absolute mode, a multiple of the typical value in relative mode), not {threshold!r}")
        threshold = float(threshold)  # a NumPy or torch scalar too
        if not threshold > 0:
            raise ValueError("threshold must be positive")
        if mode == "absolute" and not calc.calibrated:
            warnings.warn(f"the calculator's uncertainties are not calibrated: they are raw posterior variances, "
                          f"not {unit}, so an absolute threshold of "
                          f"{threshold:g} has no physical meaning (it may flag every frame or none). Calibrate "
                          "first (calc.calibrate(frames), see docs/calculator.rst) or use mode='relative'.",
                          UserWarning, stacklevel=2)
        self.calc, self.store, self.quantity = calc, store, quantity
        self.atoms, self.source, self.run_id = atoms, source, run_id
        self.callback = callback
        if not 0 < settle < 1:
            raise ValueError("settle must be between 0 and 1")
        self.settle = settle
        self.typical = 1.0
        if mode == "relative":
            self.typical = self._typical(typical_frames)
        self.threshold = threshold * self.typical
        self.hard_limit = None if hard_limit is None else hard_limit * self.typical
        self.nsteps = 0
        self.flagged: list[tuple[int, float]] = []  # (call number, value)
        self.band_values: Optional[np.ndarray] = None  # per interior image, at the last band check
        self.last_value: Optional[float] = None  # largest value of the last check

    def _typical(self, frames: Optional[Sequence[Atoms]]) -> float:
        """The typical value a relative threshold multiplies: from ``frames`` or the calculator."""
        if frames:
            return float(np.median([self.score(frame) for frame in frames]))
        if self.calc.typical is not None:
            return float(self.calc.typical[self.quantity])
        raise ValueError("mode='relative' needs reference frames to define the typical uncertainty: pass "
                         "typical_frames=[...] (frames like the training data), or run calc.fit_typical(frames) "
                         "once; the shipped default posterior carries its own")

    def value_of(self, uncertainties: dict, n_atoms: int) -> float:
        """The number compared with the threshold, from a calculator's uncertainty results."""
        return _value(uncertainties, n_atoms, self.quantity)

    def score(self, atoms: Atoms) -> float:
        """The uncertainty the trigger compares with its threshold: on the posterior with the frames seen."""
        return self.value_of(self._uncertainties_of(atoms), len(atoms))

    def _uncertainties_of(self, atoms: Atoms) -> dict:
        """The uncertainty results of ``atoms`` on the posterior with the frames seen (from the calculator's
        features of this step: no extra model call, but for the force kernels once a frame is seen)."""
        if atoms.calc is not self.calc:
            atoms = atoms.copy()
            atoms.calc = self.calc
        self.calc.get_property("uncertainty", atoms)
        if self.calc.uncertainty_model.seen() is self.calc.uncertainty_model:
            return self.calc.results
        return self._seen_uncertainties([atoms], [self.calc.last_features])[0]

    def _seen_uncertainties(self, images: Sequence[Atoms], features: Sequence) -> list[dict]:
        """The uncertainty results of each image's ``features`` on the posterior with the frames seen.

        The force kernels' per-atom variances come from posterior draws
        made with the features; they are drawn again on that posterior.
        """
        seen = self.calc.uncertainty_model.seen()
        if seen is not self.calc.uncertainty_model and features and features[0].force_variance is not None:
            batch = self.calc.batch_maker.batch(list(images))
            _, batch_features = self.calc.feature_map.evaluate(batch, compute_force=False,
                                                              force_posterior=seen.atom_posterior, rows=False)
            features = batch_features.split()
        return [seen.uncertainty_from(f) for f in features]

    def __call__(self, atoms: Union[Atoms, BaseNEB, None] = None, step: Optional[int] = None) -> bool:
        """Check the current frame (or band); returns True if anything was flagged.

        ``step`` is stored with a flagged frame (its row's ``step`` key);
        without it, the number of checks so far. An observer attached with
        ``dyn.attach(trigger, interval=k)`` is called without it, so it
        stores check numbers; ``dyn.attach(lambda: trigger(step=dyn.nsteps),
        interval=k)`` stores MD steps.
        """
        atoms = atoms if atoms is not None else self.atoms
        if atoms is None:
            raise ValueError("give the trigger the atoms: UncertaintyTrigger(..., atoms=atoms)")
        step = self.nsteps if step is None else step
        self.nsteps += 1
        if isinstance(atoms, BaseNEB):
            values = self._check_band(atoms, step)
        else:
            uncertainties = self._uncertainties_of(atoms)
            value = self.value_of(uncertainties, len(atoms))
            values = [value]
            if value > self.threshold:
                self._flag(atoms, value, step, uncertainties)
        self.last_value = max(values)
        flagged = self.last_value > self.threshold
        if self.hard_limit is not None and self.last_value > self.hard_limit:
            raise UncertaintyLimitExceeded(
                f"uncertainty {self.last_value:.3g} passed the hard limit {self.hard_limit:.3g} at step {step}; "
                f"the frame is stored in {self.store.path_or_url}")
        return flagged

    def _check_band(self, neb: BaseNEB, step: int) -> list[float]:
        """Score the interior images from the highest energy down (the climbing image first); flag as needed."""
        interior = neb.images[1:-1]
        energies, batches = self.calc.predict(interior, rows=False)
        features = per_structure(batches)
        values = np.zeros(len(interior))
        for k in np.argsort(-energies):  # ASE's climbing image is the highest interior image
            uncertainties = self._seen_uncertainties([interior[k]], [features[k]])[0]
            values[k] = self.value_of(uncertainties, len(interior[k]))
            if values[k] > self.threshold:
                self._flag(interior[k], values[k], step, uncertainties, image=k + 1)
        self.band_values = values
        return values.tolist()

    def absorb(self, images: Sequence[Atoms], floors: Optional[Sequence[Optional[dict]]] = None) -> None:
        """Enter frames into the posterior as if this trigger had flagged them.

        Frames above the threshold enter with the settling weight (see the
        module docstring), the others with weight 1. Use it to carry
        flagged and labelled frames over to a rebuilt posterior.

        A frame with ``floors`` (``{"forces": eV/A, "energy": eV/atom}`` as
        :meth:`residual_floors` gives) is one the model trained on: it
        enters the posterior the calculator reports from, settling no lower
        than the floors in either quantity (after fine-tuning, pass the new
        model's errors on it, so no frame ends less uncertain than the
        model's fit to it justifies). Its weight is the largest that keeps
        every bound (it may fall below 1, down to about zero for a frame
        already below its floor), found by bisection on trial posteriors.
        A frame without (``floors`` or its entry ``None``) is seen, not
        learned, as a flag is.
        """
        if not images:
            return
        if floors is not None and len(floors) != len(images):
            raise ValueError(f"got {len(floors)} floors for {len(images)} images")
        _, batches = self.calc.predict(images)
        for k, (atoms, features) in enumerate(zip(images, per_structure(batches))):
            bounds = None if floors is None else floors[k]
            if bounds:  # learned
                value = self.value_of(self.calc.uncertainty_from(features), len(atoms))
                self.calc.add_features(features, weight=self._bounded_weight(features, len(atoms), value, bounds))
            else:
                value = self.value_of(self._seen_uncertainties([atoms], [features])[0], len(atoms))
                weight = self._weight(value, len(atoms)) if value > self.threshold else 1.0
                self.calc.uncertainty_model.add_features(features, weight=weight, learned=False)

    def residual_floors(self, atoms: Atoms) -> dict[str, float]:
        """Half the calculator's errors on a labelled frame: ``{"forces": eV/A, "energy": eV/atom}``.

        Forces: half the largest force-component error; energy: half the
        energy error per atom. An uncertainty at or above them keeps the
        error inside two sigma.
        """
        energy, forces = read_labels(atoms)
        probe = atoms.copy()
        probe.calc = self.calc
        return {"forces": 0.5 * float(np.abs(probe.get_forces() - forces).max()),
                "energy": 0.5 * abs(probe.get_potential_energy() - energy) / len(atoms)}

    def _bounded_weight(self, features, n_atoms: int, value: float, bounds: dict) -> float:
        """The largest weight that settles the frame at the threshold's target and keeps every bound."""
        targets = {quantity: bound for quantity, bound in bounds.items() if bound}
        flagged = value > self.threshold
        if flagged:
            targets[self.quantity] = max(self.settle * self.threshold, targets.get(self.quantity, 0.0))
        weights = [] if flagged else [1.0]  # not flagged: weight 1 unless a bound says less
        for quantity, target in targets.items():
            if quantity == "forces" == self.quantity and features.force_variance is not None:
                weights.append(self._weight(value, n_atoms, target))  # force kernels: the closed form
            else:
                weights.append(self._bisect(features, n_atoms, quantity, target))
        return min(weights, default=1.0)

    def _bisect(self, features, n_atoms: int, quantity: str, target: float) -> float:
        """The weight after which the frame's ``quantity`` value is ``target`` (trial posteriors).

        The closed form of :meth:`_weight` treats the frame as one direction;
        its atoms' rows also lower each other's variance, so it overshoots.
        """
        low, high = -25.0, 25.0  # log weights
        if self._value_after(features, n_atoms, float(np.exp(high)), quantity) > target:
            return float(np.exp(high))
        for _ in range(40):
            middle = 0.5 * (low + high)
            if self._value_after(features, n_atoms, float(np.exp(middle)), quantity) > target:
                low = middle
            else:
                high = middle
        return float(np.exp(low))

    def _value_after(self, features, n_atoms: int, weight: float, quantity: str) -> float:
        """The frame's ``quantity`` value were it added with ``weight`` (to copies of the posteriors)."""
        trial = self.calc.uncertainty_model.conditioned(features, weight)
        return _value(trial.uncertainty_from(features), n_atoms, quantity)

    def _weight(self, value: float, n_atoms: int, target: Optional[float] = None) -> float:
        """Observation weight that settles a frame of uncertainty ``value`` at ``target``.

        ``target`` defaults to ``settle * threshold``; raw variances come
        from inverting the posterior's calibration, so the weight holds for
        a power law and a floor as for a plain scale.
        """
        target = self.settle * self.threshold if target is None else target
        state = self.calc.uncertainty_model
        if self.quantity == "forces":
            calibration, per, size = state.atom_posterior.calibration, 1.0, 1.0
        else:
            calibration, per, size = state.energy_posterior.calibration, float(n_atoms), float(n_atoms)
        q = calibration.raw_for((value * per) ** 2, size)
        q_target = calibration.raw_for((target * per) ** 2, size)
        if q <= 0:
            return 1.0
        q_target = max(q_target, 1e-3 * q)  # below the floor: settle as far as the floor allows
        return max(1.0, (q / q_target - 1.0) / q)

    def _flag(self, atoms: Atoms, value: float, step: int, uncertainties: dict, image: Optional[int] = None) -> None:
        """Store the frame and see it (a pass with conditioning rows: flags are rare)."""
        per_atom = {k: uncertainties[k] for k in ("forces_uncertainty", "energies_uncertainty") if k in uncertainties}
        self.store.add_flagged(atoms, source=self.source, uncertainty=value, step=step, image=image,
                               run_id=self.run_id, model_hash=self.calc.model_hash, per_atom=per_atom)
        weight = self._weight(value, len(atoms))
        for features in self.calc.features([atoms], progress=False):
            self.calc.uncertainty_model.add_features(features, weight=weight, learned=False)
        self.flagged.append((step, value))
        if self.callback is not None:
            self.callback(atoms, value)


def _value(uncertainties: dict, n_atoms: int, quantity: str) -> float:
    """Largest force uncertainty (eV/A) or energy uncertainty per atom (eV/atom)."""
    if quantity == "forces":
        return float(uncertainties["uncertainty"])
    return float(uncertainties["energy_uncertainty"]) / n_atoms
