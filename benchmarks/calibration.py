"""Calibration that transfers: leave-one-reaction-out over the reactive set, and the pretraining test split.

    python benchmarks/calibration.py [--out benchmarks/results] [--smoke] [--fresh | --later]

The shipped default's posterior (conditioned on its training frames) gives
raw variances; this script compares ways of turning them into eV and eV/A,
judged only on data the calibration never saw:

* **held-out reactions**: for each of the 8 reactions of
  ``benchmarks/data/reactive.xyz.gz`` (6 NEB paths, 2 hot MD runs), fit on
  the pretraining validation split plus every frame of the *other* 7
  reactions, score on the test frames of the held-out one (whole path, and
  its transition-state region). The scores of all 8 held-out reactions are
  pooled (and listed per reaction in the JSON).
* **in distribution**: fit on the validation split plus all 8 reactions
  (the shipped recipe), score on the pretraining test split (6 molecules
  wholly held out, and held-out trajectories of the others).
* **barriers**: the 7 xTB climbing-image bands
  (``benchmarks/data/reactive_bands.xyz.gz``), scored by
  :func:`ase_mlipal.path_profile` with the calibration fitted without that
  reaction: is the xTB barrier inside the predicted barrier +- 2 sigma?
  Acetaldehyde -> CH4 + CO has a band but no frames in the reactive set,
  so it is scored with the shipped recipe's fit: nothing ever saw it.
* **new reactions**: the shipped recipe's fit (validation split plus all 8
  reactions) scored on five reactions no calibration, model or learner
  constant was fitted on (``benchmarks/data/heldout_reactions.xyz.gz``,
  ``scripts/make_heldout_data.py``: two 1,3-H shifts, a 1,2-H shift, HCN ->
  HNC, acetonitrile -> methyl isocyanide; frames along their xTB NEB paths
  with the reactive test split's recipe), and their barriers on their xTB
  bands. Three carry N, which the reactive set has in one hot MD run only:
  the test of a choice made on that one run.

Methods (energy per structure with the floor per atom; forces per
Cartesian component). Features: ``shared``, one activation block for all
elements (what shipped before); ``by element``, each atom's features in
its element's block (:class:`ase_mlipal.ActivationFeatures`, the default).
Maps: ``linear`` is a plain scale, ``power`` a power law with an error
floor. ``valid``: fitted on the validation split alone; otherwise on the
validation split plus the reactions, each group weighing the same.

``today``              shared, plain scales, validation split only (what shipped before)
``shared, linear``     shared, plain scales, + reactions
``shared, power``      shared, power laws, + reactions
``by element, valid``  by element, plain scales, validation split only (features alone)
``by element, power``  by element, power laws for both, + reactions
``by element, nbhd``   as ``plain`` with each atom's raw force variance replaced by the sum
                       over its neighbours within the cutoff (cosine-weighted): the force on
                       atom i is a sum over its neighbours' atomic energies
``plain``              by element, power law + floor for the energy, plain scale for the
                       forces, + reactions: the default of ``MLIPALCalculator.calibrate``
                       and the shipped posterior of ``distance_aware=False`` (the default
                       until the distance-aware σ replaced it)
``element scales``     as ``plain`` with a plain force scale per element: the one monotone
                       map of ``plain`` cannot reorder atoms inside a reaction, scales per
                       element can (the per-element feature blocks give raw variances on
                       each element's own footing); an element seen in no other reaction
                       (N when methyl nitrite is held out) gets a scale fitted near equilibrium
``element power laws`` as ``element scales`` with a power law and floor per element (12 force
                       parameters where ``plain`` has one)
``per-atom energy``    as ``plain`` with the energy's power law fitted per atom: the
                       energy error per atom against the raw variance per atom squared,
                       ``var = n^2 (a (q / n^2)^b + c / n)``; a structure repeated k times
                       then gets k times the σ (the shipped law of the total ``q`` gives
                       about ``k^1.52``: docs/calculator.rst, "Energy σ and system size").
                       Measured, not shipped: it changes every energy σ the learners use
``distance``           as ``plain`` on ``MLIPALCalculator(distance_aware=True)``: each atom's
                       raw force variance times ``1 + (d / d0)^2``, ``d`` the distance of its
                       features to the nearest of 1024 farthest-point samples of its element's
                       atoms in the shipped posterior's frames, ``d0`` the median distance of
                       the other atoms there to those samples (nothing fitted on reactions)
``distance, power``    the same with a power law for the forces: the shipped default
                       (``MLIPALCalculator()``, ``distance_aware`` on; its posterior:
                       ``scripts/build_posterior.py --distance-aware``)
``distance energy``    as ``distance, power`` with the energy's raw variance times the
                       largest factor ``1 + (d / d0)^2`` of the structure's atoms (the
                       one least like the data), the same power law fitted on it: the
                       distance in the energy σ too. Measured, not shipped; its barriers
                       scale ``path_profile``'s barrier σ by the ratio of the top image's
                       energy σ with and without the factor

``--fresh`` scores every method, fitted as above, on three reactions added
after every choice (the shipped method included) was made, in place of the
five new ones (``benchmarks/data/fresh_*``, ``scripts/make_heldout_data.py
--fresh``: acetone -> propen-2-ol, acetic acid -> ethene-1,1-diol, formic
acid -> dihydroxycarbene), and writes ``calibration_fresh.*``: whether the
choice made on the five holds on reactions nobody looked at when making it.
``--later`` does the same on the six reactions of the two fresh sets added
after that (``benchmarks/data/later_*``, ``scripts/make_heldout_data.py
--later``: reactants in no earlier reactive record, among them an
elimination, an inversion and an electrocyclic ring opening) and writes
``calibration_later.*``.

An isotonic map was not tried: it is flat beyond the largest raw variance
it was fitted on, which is where the held-out reactions' errors are.

Writes ``calibration.json`` (every number), ``calibration.md`` (the tables)
and ``calibration.png`` (observed against expected coverage).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Union

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from reactive import physical

from ase_mlipal.uncertainty.calibration import Recalibration, calibration_report, fit_recalibration
from ase_mlipal.frames import read_frames, read_labels
from ase_mlipal.uncertainty.features import per_structure

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
CUTOFF = 5.0  # A, the default model's r_max


class Method(NamedTuple):
    """A calibration candidate (see the module docstring)."""

    features: str  # "shared", "by element" or "by element, distance" (distance_aware=True)
    maps: tuple[str, str]  # fit_recalibration's method for the energy and for the forces
    with_reactions: bool  # fitted on the validation split plus the reactions (else the validation split alone)
    neighbourhood: bool = False  # each atom's raw force variance summed over its neighbourhood
    scale_per_element: bool = False  # one force map per element
    energy_per_atom: bool = False  # the energy's map fitted per atom (size-consistent)
    energy_distance: str = ""  # the energy's raw variance times the structure's "largest" or "mean" distance factor


METHODS = {
    "today": Method("shared", ("linear", "linear"), False),
    "shared, linear": Method("shared", ("linear", "linear"), True),
    "shared, power": Method("shared", ("power", "power"), True),
    "by element, valid": Method("by element", ("linear", "linear"), False),
    "by element, power": Method("by element", ("power", "power"), True),
    "by element, nbhd": Method("by element", ("power", "linear"), True, neighbourhood=True),
    "plain": Method("by element", ("power", "linear"), True),
    "element scales": Method("by element", ("power", "linear"), True, scale_per_element=True),
    "element power laws": Method("by element", ("power", "power"), True, scale_per_element=True),
    "per-atom energy": Method("by element", ("power", "linear"), True, energy_per_atom=True),
    "distance": Method("by element, distance", ("power", "linear"), True),
    "distance, power": Method("by element, distance", ("power", "power"), True),
    "distance energy": Method("by element, distance", ("power", "power"), True, energy_distance="largest"),
}
SHIPPED = "distance, power"  # the default's calibration (MLIPALCalculator(), distance-aware)
PAIRED = ("plain", "element scales", "element power laws", "per-atom energy", SHIPPED, "distance energy")  # compared with today's Spearman reaction by reaction


def smoke_parser(description: str) -> argparse.ArgumentParser:
    """The calibration benchmarks' command line: ``--out`` (the results folder) and ``--smoke`` (every 10th frame,
    for the tests)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="every 10th frame (for the tests)")
    return parser


def pretraining_splits(step: int = 1) -> dict[str, list]:
    """Every ``step``-th frame of the pretraining data, its validation and its test split."""
    pretrain = read_frames(DATA / "pretrain.xyz.gz", f"::{step}")
    return {split: [a for a in pretrain if a.info["split"] == split] for split in ("valid", "test")}


def write_results(out: Path, stem: str, results: dict, text: str) -> None:
    """``<stem>.json`` (every number of ``results``) and ``<stem>.md`` (``text``) in the folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(text)


def neighbourhood_variance(frames, forces_raw: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """``sum_j fc(r_ij) q_j`` per atom (``fc`` the cosine cutoff, ``fc(0) = 1``)."""
    out, start = np.empty_like(forces_raw), 0
    for atoms, n in zip(frames, n_atoms):
        q = forces_raw[start:start + n]
        r = atoms.get_all_distances()
        weights = np.where(r < CUTOFF, 0.5 * (np.cos(np.pi * r / CUTOFF) + 1.0), 0.0)
        out[start:start + n] = weights @ q
        start += n
    return out


def frame_inflations(calc, frames) -> dict[str, np.ndarray]:
    """Per frame, the ``"largest"`` and the ``"mean"`` distance factor ``1 + (d / d0)^2`` of its atoms (ones on a
    plain calculator)."""
    neighbours = calc.uncertainty_model.neighbours
    if neighbours is None:
        return {"largest": np.ones(len(frames)), "mean": np.ones(len(frames))}
    _, batches = calc.predict(frames, progress=False, force_variance=False)
    factors = [g[a:b] for f in batches for g in [neighbours.inflation(f.atom)] for a, b in zip(f.ptr[:-1], f.ptr[1:])]
    return {"largest": np.array([g.max() for g in factors]), "mean": np.array([g.mean() for g in factors])}


class Split:
    """Residuals and raw variances of a set of frames, with a group label and a TS flag per frame."""

    def __init__(self, calc, frames, groups):
        res = calc.residuals(frames, progress=False)
        self.frames, self.groups = frames, np.asarray(groups, dtype=str)
        self.ts = np.array([bool(a.info.get("ts_region", False)) for a in frames])
        self.test = np.array([a.info.get("split") == "test" for a in frames])
        self.e_res, self.e_raw, self.n = res.energy, res.energy_raw, res.n_atoms
        self.e_inflation = frame_inflations(calc, frames)
        self.f_res, self.f_raw = res.forces, res.forces_raw
        self.f_nbhd = neighbourhood_variance(frames, res.forces_raw, res.n_atoms)
        self.atom_frame = np.repeat(np.arange(len(frames)), res.n_atoms)
        self.elements = np.concatenate([atoms.numbers for atoms in frames])

    def energy(self, mask, distance: str = ""):
        """Energy residuals, raw variances (``distance``: times each structure's ``"largest"`` or ``"mean"``
        distance factor), atom counts and groups."""
        raw = self.e_raw * self.e_inflation[distance] if distance else self.e_raw
        return self.e_res[mask], raw[mask], self.n[mask], self.groups[mask]

    def forces(self, mask, neighbourhood: bool = False):
        """Force residuals per component, their raw variances (``neighbourhood``: summed over the neighbourhood),
        groups and elements."""
        atoms = mask[self.atom_frame]
        raw = (self.f_nbhd if neighbourhood else self.f_raw)[atoms]
        return (self.f_res[atoms].ravel(), np.repeat(raw, 3), np.repeat(self.groups[self.atom_frame][atoms], 3),
                np.repeat(self.elements[atoms], 3))


ForceFit = Union[Recalibration, dict[int, Recalibration]]  # one map, or one per atomic number


def fit_pair(parts, method: Method) -> tuple[Recalibration, ForceFit]:
    """Energy and force calibrations fitted on ``parts`` = [(Split, frame mask), ...].

    With ``method.scale_per_element`` each element's force components are
    fitted on their own (groups still weigh the same within it).
    """
    e = [split.energy(mask, method.energy_distance) for split, mask in parts]
    f = [split.forces(mask, method.neighbourhood) for split, mask in parts]
    res, raw, n = (np.concatenate([p[k] for p in e]) for k in range(3))
    if method.energy_per_atom:  # per atom: residual / n, raw / n^2, the floor c / n
        res, raw, n = res / n, raw / n**2, 1.0 / n
    energy = fit_recalibration(res, raw, n, groups=np.concatenate([p[3] for p in e]), method=method.maps[0])
    res, raw, groups, elements = (np.concatenate([p[k] for p in f]) for k in range(4))
    if not method.scale_per_element:
        return energy, fit_recalibration(res, raw, groups=groups, method=method.maps[1])
    return energy, {int(z): fit_recalibration(res[elements == z], raw[elements == z], groups=groups[elements == z],
                                              method=method.maps[1]) for z in np.unique(elements)}


def force_variance(forces: ForceFit, raw: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Calibrated variance per force component (an element no fit saw raises KeyError)."""
    if isinstance(forces, Recalibration):
        return forces.variance(raw)
    out = np.empty_like(raw)
    for z in np.unique(elements):
        out[elements == z] = forces[int(z)].variance(raw[elements == z])
    return out


def fit_dict(fit: ForceFit) -> dict:
    return fit.as_dict() if isinstance(fit, Recalibration) else {str(z): r.as_dict() for z, r in fit.items()}


def at_size(energy: Recalibration, n_atoms: int, method: Method) -> Recalibration:
    """The energy map of structures of ``n_atoms`` atoms as a map of their total raw variance.

    A per-atom fit ``n^2 (a (q / n^2)^b + c / n)`` is the total-variance law
    ``a n^(2 - 2b) q^b + c n``: at one size (a band), a scale.
    """
    if not method.energy_per_atom:
        return energy
    return Recalibration(energy.scale * n_atoms ** (2.0 - 2.0 * energy.exponent), energy.exponent, energy.floor)


def energy_variance(energy: Recalibration, raw: np.ndarray, n: np.ndarray, method: Method) -> np.ndarray:
    """Calibrated energy variance (eV^2) of structures of ``n`` atoms with total raw variance ``raw``."""
    if not method.energy_per_atom:
        return energy.variance(raw, n)
    return n**2 * energy.variance(raw / n**2, 1.0 / n)


def scored(split: Split, mask, energy: Recalibration, forces: ForceFit, method: Method) -> dict:
    """Residuals and calibrated stds of ``split[mask]`` (to pool before reporting)."""
    e_res, e_raw, n, _ = split.energy(mask, method.energy_distance)
    f_res, f_raw, _, elements = split.forces(mask, method.neighbourhood)
    return {"energy": (e_res, np.sqrt(energy_variance(energy, e_raw, n, method))),
            "forces": (f_res, np.sqrt(force_variance(forces, f_raw, elements)))}


def report(pieces: list[dict]) -> dict:
    """Calibration reports of pooled pieces (one per held-out reaction), for energy and forces.

    ``spearman_within`` is the mean of each piece's own Spearman: one
    calibration map is monotone in the raw variance, so it cannot change
    the ranking inside one reaction (scales per element can), while the
    pooled Spearman also mixes the separate fits of the pieces.
    """
    out = {}
    for quantity in ("energy", "forces"):
        res = np.concatenate([p[quantity][0] for p in pieces])
        std = np.concatenate([p[quantity][1] for p in pieces])
        out[quantity] = calibration_report(res, std).as_dict()
        within = [calibration_report(*p[quantity]).spearman for p in pieces]
        out[quantity]["spearman_within"] = float(np.nanmean(within))
    return out


def piece_spearman(piece: dict) -> dict:
    """Spearman(std, |residual|) of one held-out piece, for energy and forces."""
    return {quantity: calibration_report(*piece[quantity]).spearman for quantity in ("energy", "forces")}


def paired_spearman(results: dict, method: str, baseline: str = "today", draws: int = 10_000, seed: int = 0) -> dict:
    """``method``'s Spearman minus ``baseline``'s, paired by reaction, per split and quantity.

    The mean difference, a 90% bootstrap interval over reactions (the
    reactions are the unit that varies in held-out chemistry) and how many
    reactions rank better / worse.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("held_out_reactions", "held_out_ts_region", "new_reactions", "new_ts_region"):
        mine, base = (results["methods"][m]["spearman_per_reaction"][split] for m in (method, baseline))
        for quantity in ("forces", "energy"):
            diff = np.array([mine[r][quantity] - base[r][quantity] for r in sorted(mine)
                             if np.isfinite(mine[r][quantity]) and np.isfinite(base[r][quantity])])
            if not len(diff):
                continue
            means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
            out[(split, quantity)] = {"mean": float(diff.mean()), "low": float(np.quantile(means, 0.05)),
                                      "high": float(np.quantile(means, 0.95)), "better": int((diff > 0).sum()),
                                      "worse": int((diff < 0).sum()), "n": int(len(diff))}
    return out


def read_bands(path: Path) -> dict[str, list]:
    """Labelled band images by reaction."""
    bands: dict[str, list] = {}
    for atoms in read_frames(path):
        bands.setdefault(atoms.info["reaction"], []).append(atoms)
    return bands


def score_reaction(split: Split, mine, energy: Recalibration, forces: ForceFit, method: Method
                   ) -> tuple[dict, Optional[dict]]:
    """The pieces of one reaction's frames ``split[mine]``: its whole path and its TS region (``None`` with fewer
    than 3 TS frames)."""
    ts = mine & split.ts
    return (scored(split, mine, energy, forces, method),
            scored(split, ts, energy, forces, method) if ts.sum() > 2 else None)


def score_new_reactions(split: Split, energy: Recalibration, forces: ForceFit, method: Method
                        ) -> tuple[list, list, dict, dict]:
    """Pieces of the new reactions (whole paths, TS regions), each one's Spearman and report, scored with one
    fit."""
    whole, ts, spearman, per_reaction = [], [], {"new_reactions": {}, "new_ts_region": {}}, {}
    for reaction in sorted(set(split.groups)):
        path, region = score_reaction(split, split.groups == reaction, energy, forces, method)
        whole.append(path)
        spearman["new_reactions"][reaction] = piece_spearman(path)
        per_reaction[reaction] = report([path])
        if region is not None:
            ts.append(region)
            spearman["new_ts_region"][reaction] = piece_spearman(region)
            per_reaction[reaction + " (TS region)"] = report([region])
    return whole, ts, spearman, per_reaction


def barrier_check(calc, bands: dict, energy: Recalibration, reaction: str, method: Method) -> dict:
    """xTB barrier against ``path_profile``'s barrier +- 2 sigma on the xTB band of ``reaction``."""
    images = bands[reaction]
    calc.energy_posterior.calibration = at_size(energy, len(images[0]), method)
    profile = ase_mlipal.path_profile(calc, images, relaxed_on_model=False)  # an xTB band
    std = profile.barrier_std
    if method.energy_distance:  # the top image's energy sigma with its distance factor, over without it
        top = int(np.argmax(profile.energy))
        _, batches = calc.predict([images[0], images[top]], progress=False, force_variance=False)
        first, highest = per_structure(batches)
        delta = highest.structure - first.structure
        raw = float(calc.energy_posterior.quadratic_form(delta)[0])
        factor = frame_inflations(calc, [images[top]])[method.energy_distance][0]
        calibration = calc.energy_posterior.calibration
        std *= float(np.sqrt(calibration.variance(np.array([raw * factor]), len(images[0]))
                             / calibration.variance(np.array([raw]), len(images[0])))[0])
    reference = np.array([read_labels(a)[0] for a in images])
    ref_barrier = float(np.max(reference - reference[0]))
    error = profile.barrier - ref_barrier
    return {"reference": ref_barrier, "predicted": profile.barrier, "std": std,
            "error": error, "z": abs(error) / std, "covered_2sigma": bool(abs(error) < 2 * std)}


def coverage_curve(pieces: list[dict], quantity: str, levels: np.ndarray) -> np.ndarray:
    from scipy import stats

    res = np.concatenate([p[quantity][0] for p in pieces])
    std = np.concatenate([p[quantity][1] for p in pieces])
    z = np.abs(res) / std
    return np.array([np.mean(z <= stats.norm.ppf(0.5 + level / 2)) for level in levels])


def main():
    parser = smoke_parser(__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fresh", action="store_true",
                       help="the fresh reactions (data/fresh_*) as the new ones; writes calibration_fresh.*")
    which.add_argument("--later", action="store_true",
                       help="the second and third fresh sets (data/later_*) as the new ones; writes "
                            "calibration_later.*")
    args = parser.parse_args()
    new_data = "fresh" if args.fresh else "later" if args.later else "heldout"
    start = time.perf_counter()
    step = 10 if args.smoke else 1
    pretrain = read_frames(DATA / "pretrain.xyz.gz", f"::{step}")
    shared = ase_mlipal.MLIPALCalculator(kernel_options={"by_element": False}, posterior=None, distance_aware=False)
    shared.condition([a for a in pretrain if a.info["split"] == "train"], progress=False)
    distance = ase_mlipal.MLIPALCalculator(posterior=None, distance_aware=True)
    distance.condition(ase_mlipal.default_conditioning()[::step], progress=False)  # the shipped posterior's frames
    calcs = {"shared": shared, "by element": ase_mlipal.MLIPALCalculator(distance_aware=False),  # the shipped plain one
             "by element, distance": distance}
    reactive = [a for a in read_frames(DATA / "reactive.xyz.gz", f"::{step}") if physical(a)]
    bands, new_bands = read_bands(DATA / "reactive_bands.xyz.gz"), read_bands(DATA / f"{new_data}_bands.xyz.gz")
    new = [a for a in read_frames(DATA / f"{new_data}_reactions.xyz.gz", f"::{step}")
           if physical(a) and a.info["split"] == "test"]
    valid_frames = [a for a in pretrain if a.info["split"] == "valid"]
    test_frames = [a for a in pretrain if a.info["split"] == "test"]
    data = {name: (Split(c, valid_frames, ["pretraining valid"] * len(valid_frames)),
                   Split(c, test_frames, ["pretraining test"] * len(test_frames)),
                   Split(c, reactive, [a.info["reaction"] for a in reactive]),
                   Split(c, new, [a.info["reaction"] for a in new])) for name, c in calcs.items()}
    reactions = sorted({a.info["reaction"] for a in reactive})
    everything = np.ones(len(valid_frames), bool)
    print(f"frames: valid {len(valid_frames)}, test {len(test_frames)}, reactive {len(reactive)} "
          f"({len(reactions)} reactions), bands {len(bands)}, new reactions {len(new)} frames; "
          f"{time.perf_counter() - start:.0f} s")

    results = {"methods": {}, "shipped": SHIPPED, "reactions": reactions, "fresh": args.fresh, "later": args.later,
               "new_reactions": sorted({a.info["reaction"] for a in new})}
    for name, method in METHODS.items():
        calc, (valid, test, react, new_split) = calcs[method.features], data[method.features]
        held_out, held_out_ts, per_reaction, barriers, fits = [], [], {}, {}, {}
        spearman = {"held_out_reactions": {}, "held_out_ts_region": {}}  # per reaction: to compare methods paired
        for reaction in reactions:
            parts = [(valid, everything)] + ([(react, react.groups != reaction)] if method.with_reactions else [])
            energy, forces = fit_pair(parts, method)
            fits[reaction] = {"energy": energy.as_dict(), "forces": fit_dict(forces)}
            path, region = score_reaction(react, (react.groups == reaction) & react.test, energy, forces, method)
            held_out.append(path)
            spearman["held_out_reactions"][reaction] = piece_spearman(path)
            if region is not None:
                held_out_ts.append(region)
                spearman["held_out_ts_region"][reaction] = piece_spearman(region)
            per_reaction[reaction] = report([path])
            if reaction in bands:
                barriers[reaction] = barrier_check(calc, bands, energy, reaction, method)
        parts = [(valid, everything)] + ([(react, np.ones(len(react.groups), bool))] if method.with_reactions else [])
        energy, forces = fit_pair(parts, method)
        for reaction in sorted(set(bands) - set(reactions)):  # a band with no frames in the reactive set: never seen
            barriers[reaction] = barrier_check(calc, bands, energy, reaction, method)
        in_dist = [scored(test, np.ones(len(test.groups), bool), energy, forces, method)]
        new_whole, new_ts, new_spearman, new_per_reaction = score_new_reactions(new_split, energy, forces, method)
        spearman.update(new_spearman)
        new_barriers = {reaction: barrier_check(calc, new_bands, energy, reaction, method) for reaction in new_bands}
        results["methods"][name] = {
            "held_out_reactions": report(held_out), "held_out_ts_region": report(held_out_ts),
            "pretraining_test": report(in_dist), "new_reactions": report(new_whole),
            "new_ts_region": report(new_ts), "per_reaction": per_reaction, "barriers": barriers,
            "barriers_covered": sum(b["covered_2sigma"] for b in barriers.values()),
            "new_barriers": new_barriers, "new_per_reaction": new_per_reaction,
            "new_barriers_covered": sum(b["covered_2sigma"] for b in new_barriers.values()),
            "fit_all": {"energy": energy.as_dict(), "forces": fit_dict(forces)}, "fit_per_held_out_reaction": fits,
            "spearman_per_reaction": spearman,
            "_curves": {"held_out": held_out, "in_dist": in_dist, "new": new_whole},
        }
        print(f"{name:<14} done ({time.perf_counter() - start:.0f} s)")
    results["seconds"] = round(time.perf_counter() - start, 1)
    write(results, args.out, smoke=args.smoke)


TABLE_KEYS = [("coverage_1sigma", "cov 1s", ".2f"), ("coverage_2sigma", "cov 2s", ".2f"), ("nll", "NLL", ".2f"),
              ("spearman_within", "Spearman", ".2f"), ("miscalibration_area", "miscal", ".3f"), ("sharpness", "sharpness", ".2f")]
SPLITS = [("held_out_reactions", "held-out reactions"), ("held_out_ts_region", "  their TS region"),
          ("pretraining_test", "pretraining test"), ("new_reactions", "new reactions"),
          ("new_ts_region", "  new: their TS region")]


def barrier_table(results: dict, key: str) -> list[str]:
    """Markdown rows: each method's barrier error ± predicted sigma per band, and how many 2 sigma covers."""
    reactions = list(results["methods"][SHIPPED][key])
    lines = ["| method | " + " | ".join(reactions) + " | covered |", "|---|" + "---:|" * (len(reactions) + 1)]
    for name, entry in results["methods"].items():
        cells = [f"{entry[key][r]['error']:+.2f} ± {entry[key][r]['std']:.2f}" for r in reactions]
        covered = sum(b["covered_2sigma"] for b in entry[key].values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {covered}/{len(cells)} |")
    return lines


def worst_table(results: dict) -> list[str]:
    """Markdown rows: each method's lowest 2 sigma coverage of one reaction (the pooled tables can hide one)."""
    def worst(per_reaction: dict, quantity: str, ts: bool) -> str:
        cells = {r: v[quantity]["coverage_2sigma"] for r, v in per_reaction.items() if r.endswith("(TS region)") == ts}
        reaction = min(cells, key=cells.get)
        return f"{cells[reaction]:.2f} ({reaction.removesuffix(' (TS region)')})"

    lines = ["| method | forces: held-out reactions | new reactions | new: TS region | energy: held-out reactions "
             "| new reactions | new: TS region |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["methods"].items():
        cells = [worst(entry[key], quantity, ts) for quantity in ("forces", "energy")
                 for key, ts in (("per_reaction", False), ("new_per_reaction", False), ("new_per_reaction", True))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def tables(results: dict) -> str:
    new = results.get("new_reactions", [])
    which = (f"the {len(new)} fresh ones of `scripts/make_heldout_data.py --fresh` ({', '.join(new)}; added after "
             "every choice was made)" if results.get("fresh") else
             f"the {len(new)} of `scripts/make_heldout_data.py --later` ({', '.join(new)}; the two fresh sets added "
             "after those, reactants in no earlier reactive record)" if results.get("later") else
             f"the {len(new) or 5} of `scripts/make_heldout_data.py`")
    lines = ["Held-out reactions: pooled over the 8 reactions, each scored by the fit made without it. New "
             f"reactions: {which}, scored by each method's full fit (which never saw "
             "them). Spearman: the "
             "mean of each reaction's own (one calibration map cannot change the ranking inside one; scales per "
             "element can)."]
    for quantity, unit in (("forces", "per Cartesian component"), ("energy", "per structure")):
        lines += [f"\n{quantity.capitalize()} ({unit}):\n",
                  "| method | split | " + " | ".join(k[1] for k in TABLE_KEYS) + " |",
                  "|---|---|" + "---:|" * len(TABLE_KEYS)]
        for name, entry in results["methods"].items():
            for key, label in SPLITS:
                cells = [format(entry[key][quantity][k], fmt) for k, _, fmt in TABLE_KEYS]
                lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    lines += ["\nThe lowest 2 sigma coverage of any one reaction (held-out reactions: each scored by the fit made "
              "without it, whole path; new reactions: by the full fit):\n"] + worst_table(results)
    lines += ["\nBarriers on the xTB bands (calibration fitted without the reaction; a reaction with a band but no "
              "frames in the reactive set is scored with the method's full fit, which never saw it; covered: "
              "|error| < 2 sigma):\n"] + barrier_table(results, "barriers")
    lines += ["\nBarriers on the new reactions' xTB bands (each method's full fit, which never saw them):\n"]
    lines += barrier_table(results, "new_barriers")
    lines += ["\nSpearman minus `today`'s, paired by reaction (held-out reactions: each scored by the fit made "
              "without it; new reactions: by the full fit; mean, 90% bootstrap interval "
              "over reactions, reactions better / worse):\n",
              "| method | split | quantity | mean | 90% interval | better / worse |", "|---|---|---|---:|---:|---:|"]
    for method in PAIRED:
        for (split, quantity), d in paired_spearman(results, method).items():
            lines.append(f"| {method} | {dict(SPLITS)[split].strip()} | {quantity} | {d['mean']:+.3f} | "
                         f"[{d['low']:+.3f}, {d['high']:+.3f}] | {d['better']} / {d['worse']} of {d['n']} |")
    fit = results["methods"][SHIPPED]["fit_all"]
    lines.append(f"\nShipped fit (all reactions): energy {fit['energy']}, forces {fit['forces']}.")
    return "\n".join(lines)


def data_tail(results: dict, joint: str) -> str:
    """``joint`` + the new reactions' set (``fresh``, ``later``), or "" for the five of ``make_heldout_data.py``."""
    return next((joint + name for name in ("fresh", "later") if results.get(name)), "")


def write(results: dict, out: Path, smoke: bool = False) -> None:
    stem = "calibration" + data_tail(results, "_")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    levels = np.linspace(0, 1, 41)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, quantity in zip(axes, ("forces", "energy")):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        for name in ("today", "plain", SHIPPED):
            curves = results["methods"][name]["_curves"]
            ax.plot(levels, coverage_curve(curves["held_out"], quantity, levels), label=f"{name}: held-out reactions")
            ax.plot(levels, coverage_curve(curves["in_dist"], quantity, levels), ls="--", label=f"{name}: pretraining test")
            if name in ("today", SHIPPED):
                ax.plot(levels, coverage_curve(curves["new"], quantity, levels), ls=":", label=f"{name}: new reactions")
        ax.set(title=quantity, xlabel="expected coverage of central interval", ylabel="observed coverage")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    for entry in results["methods"].values():
        entry.pop("_curves")
    text = ("# Calibration benchmark\n\n`python benchmarks/calibration.py" + (" --smoke" if smoke else "")
            + data_tail(results, " --")
            + f"` ({results['seconds']:.0f} s)\n" + tables(results) + "\n")
    write_results(out, stem, results, text)
    print(text)


if __name__ == "__main__":
    main()
