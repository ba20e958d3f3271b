"""Pool-based active learning on the reactive benchmark: labels needed, calibration, candidate-pool shift.

    python benchmarks/active_learning.py [--seeds 0 1 2] [--batches 20 30 45 65] [--workers 2]
                                         [--strategies random committee ...] [--out benchmarks/results]
    python benchmarks/active_learning.py --smoke --out /tmp/al   # tiny budget: checks the pipeline only
    # more seeds later, merged into one report:
    python benchmarks/active_learning.py --seeds 3 4 --no-calibration --out /tmp/more
    python benchmarks/active_learning.py --from-json benchmarks/results/active_learning.json \
        /tmp/more/active_learning.json

Protocol (one command gives the JSON, the PNGs and the README table):

* Data: the reactive set (``benchmarks/reactive.py``: GFN2-xTB labels,
  less the unphysical interpolated frames): candidate pool, test set (full
  reaction paths) and near-minimum frames (``split=initial``). Seed ``s``
  draws the initial labelled set (``--initial`` frames of the ``initial``
  split), the same for every strategy at that seed, and fine-tunes with
  seed ``s``.
* Round ``k`` picks ``--batches[k]`` structures from the unlabelled pool
  (growing batches: labels 40, 60, 90, 135, 200 spread the rounds evenly
  on the log scale on which learning curves are read), and the
  pretrained default model is fine-tuned **from its pretrained weights**
  on everything labelled so far (with the default replay sample). Starting
  from the same weights each round makes a round's error a function of its
  labelled set alone, so strategies differ only by what they picked.
  Continued fine-tuning (the previous round's model, a fresh optimiser at
  the same learning rate) was tried and is worse: over 4 rounds of 24
  random frames the force error did not fall (seed 0: 0.29 -> 0.31 eV/A)
  while restarting reaches 0.23 at 88 labels.
* Kernel strategies (fixed, activation, ntk, force_ntk, ef_ntk) use the
  kernel of the *pretrained* model (arXiv:2605.03964's latent space), computed once
  for the pool, and greedy MaxDet (posterior variance with rank-1 updates)
  given the labelled set; ``committee`` fine-tunes 3 more models each round
  (seeds ``s+1..s+3``) and takes the ``--batch`` structures whose largest
  per-atom force disagreement (sample std over the 4 models) is largest;
  ``random`` draws uniformly.
* Errors after every round on the test set: energy MAE (meV/atom), force
  MAE (eV/A).
* Converged: a strategy's curve counts as converged when the change of
  its mean error over the last round is within the spread over seeds of
  its final error (the last labels no longer buy a resolvable gain).
* All labelled: per seed and pool, the same fine-tune on the initial set
  and every candidate of the pool (2373 frames; the shifted pool's share
  of them), the error the curves would end at if the pool were exhausted.
  How far a strategy's last round is above it says how far from
  converged it is.
* Labels needed: the target is the error random acquisition reaches with
  its full budget (mean over seeds), as in the seeds; a strategy needs the
  labels at which its curve (linear between rounds) first reaches it.
* Calibration: for each kernel, the posterior of the pretrained model's
  features and of a random-initialised copy's, both conditioned on the
  labelled set of the seed-0 random run; std against the |error| of the
  model fine-tuned on it, on half of the test set after fitting the scale
  on the other half: Spearman rho, NLL, miscalibration area.
* Pool shift ("Force-Aware Neural Tangent Kernels for Scalable and Robust Active Learning of MLIPs", arXiv:2605.13788): the pool loses the transition-state frames of
  half the reactions (drawn per seed); the test set keeps the full paths.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
import torch
from reactive import reactive_splits

STRATEGIES = ["random", "committee", "fixed", "activation", "ntk", "force_ntk", "ef_ntk"]
KERNELS = ["fixed", "activation", "ntk", "force_ntk", "ef_ntk"]
CALIBRATED = ["activation", "ntk", "force_ntk", "ef_ntk"]
SCENARIOS = ["full", "shifted"]


# -- data ----------------------------------------------------------------------


def shifted(pool: list, seed: int) -> np.ndarray:
    """Pool indices kept when the transition-state frames of half the reactions (drawn by ``seed``) are removed."""
    reactions = sorted({a.info["reaction"] for a in pool})
    dropped = set(np.random.default_rng(seed).choice(reactions, len(reactions) // 2, replace=False))
    return np.array([i for i, a in enumerate(pool) if not (a.info["reaction"] in dropped and a.info["ts_region"])])


# -- kernels and acquisition -----------------------------------------------------


def kernel_rows(model, frames: list, kernels: list[str], options: dict) -> dict[str, np.ndarray]:
    """Candidate rows ``(n, k, p)`` of every frame under each kernel of the pretrained model.

    ``force_ntk`` and ``ef_ntk`` share one pass: both take their rows from
    the same energy row and force probes.
    """
    from ase_mlipal.uncertainty.features import per_structure
    from ase_mlipal.selection import pool_features

    rows = {}
    for kernel in kernels:
        if kernel == "ef_ntk" and "force_ntk" in rows:
            continue
        calc = ase_mlipal.MLIPALCalculator(model, kernel=kernel, kernel_options=options.get(kernel), posterior=None,
                                           distance_aware=False)
        if kernel not in ("force_ntk", "ef_ntk"):
            rows[kernel] = pool_features(calc, frames, progress=True)
            continue
        features = per_structure(calc.features(frames, progress=True))
        force = calc.feature_map
        joint = ase_mlipal.MLIPALCalculator(model, kernel="ef_ntk", kernel_options=options.get("ef_ntk"),
                                            posterior=None).feature_map
        rows["force_ntk"] = np.stack([force.conditioning(f)[1] for f in features])
        rows["ef_ntk"] = np.stack([joint.conditioning(f)[1] for f in features])
    return {k: rows[k] for k in kernels}


def maxdet(rows: np.ndarray, labelled: np.ndarray, candidates: np.ndarray, n: int, regularization: float) -> np.ndarray:
    """Greedy MaxDet picks among ``candidates`` given the ``labelled`` rows (indices into ``rows``)."""
    from ase_mlipal.selection import greedy_maxdet

    p = rows.shape[-1]
    known = rows[labelled].reshape(-1, p)
    precision = regularization * np.eye(p) + known.T @ known
    return candidates[greedy_maxdet(rows[candidates], precision, n)]


def committee_picks(models: list, pool: list, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the largest per-atom force disagreement of the committee."""
    from ase_mlipal.selection import score_pool

    calc = ase_mlipal.MLIPALCalculator(models[0], kernel="committee", kernel_options={"members": models[1:]},
                                       posterior=None)
    scores = np.array([row["uncertainty"] for row in score_pool(calc, [pool[i] for i in candidates], progress=False)])
    return candidates[np.argsort(-scores)[:n]]


# -- one active-learning run --------------------------------------------------------


def first_round(task: dict) -> dict:
    """Round 0 of a seed: fine-tuned on the initial set only, the same for every strategy and scenario."""
    torch.set_num_threads(1)
    model, point = _fine_tuned(task["config"], task["data"], [], task["seed"])
    return {"seed": task["seed"], "state_dict": model.state_dict(), "point": point}


def run(task: dict) -> dict:
    """One strategy, seed and scenario from round 0 on: the test errors after every round."""
    torch.set_num_threads(1)
    cfg, data = task["config"], task["data"]
    strategy, seed = task["strategy"], task["seed"]
    pretrained = ase_mlipal.load_model(cfg["model"])
    model = ase_mlipal.load_model(cfg["model"])
    model.load_state_dict(task["round0"]["state_dict"])
    rng = np.random.default_rng(1000 + seed)
    available = np.array(task["available"])
    picked: list[int] = []
    curve = [task["round0"]["point"]]
    start = time.perf_counter()
    for batch in cfg["batches"]:
        labelled = data["initial_frames"] + [data["pool"][i] for i in picked]
        new = acquire(strategy, batch, cfg, task, model, pretrained, labelled, np.setdiff1d(available, picked),
                      picked, rng)
        picked.extend(int(i) for i in new)
        labelled = data["initial_frames"] + [data["pool"][i] for i in picked]
        model = ase_mlipal.finetune(pretrained, labelled, seed=seed, progress=False, **cfg["finetune"]).model
        curve.append(_point(model, data, picked, start))
    result = {"strategy": strategy, "seed": seed, "scenario": task["scenario"], "curve": curve, "picked": picked}
    if task.get("keep_model"):
        result["state_dict"] = model.state_dict()
        result["labelled_initial"] = task["initial_index"]
    return result


def all_labelled(task: dict) -> dict:
    """The reference at the end of every curve: fine-tuned on the initial set and the whole available pool."""
    torch.set_num_threads(1)
    _, point = _fine_tuned(task["config"], task["data"], task["available"], task["seed"])
    return {"seed": task["seed"], "scenario": task["scenario"], **point}


def _fine_tuned(cfg: dict, data: dict, picked: list, seed: int):
    """The pretrained model fine-tuned on the initial set and the ``picked`` pool frames, and its test errors."""
    start = time.perf_counter()
    frames = data["initial_frames"] + [data["pool"][i] for i in picked]
    model = ase_mlipal.finetune(ase_mlipal.load_model(cfg["model"]), frames, seed=seed, progress=False,
                                **cfg["finetune"]).model
    return model, _point(model, data, picked, start)


def acquire(strategy: str, batch: int, cfg: dict, task: dict, model, pretrained, labelled: list,
            candidates: np.ndarray, picked: list, rng) -> np.ndarray:
    """Pool indices of the next ``batch`` structures."""
    if strategy == "random":
        return rng.choice(candidates, batch, replace=False)
    if strategy == "committee":
        members = [ase_mlipal.finetune(pretrained, labelled, seed=task["seed"] + k, progress=False,
                                       **cfg["finetune"]).model for k in range(1, cfg["committee"])]
        return committee_picks([model] + members, task["data"]["pool"], candidates, batch)
    pool_rows, initial_rows = task["rows"][strategy], task["initial_rows"][strategy]
    stacked = np.concatenate([initial_rows, pool_rows[picked], pool_rows]) if picked else \
        np.concatenate([initial_rows, pool_rows])
    offset = len(stacked) - len(pool_rows)
    return maxdet(stacked, np.arange(offset), candidates + offset, batch, cfg["regularization"]) - offset


def _point(model, data: dict, picked: list, start: float) -> dict:
    errors = ase_mlipal.evaluate(model, data["test"])
    return {"labels": len(data["initial_frames"]) + len(picked), "energy_mae": errors["energy_mae_per_atom"],
            "forces_mae": errors["forces_mae"], "seconds": time.perf_counter() - start}


# -- summaries ------------------------------------------------------------------------


def labels_to_reach(curve: list, key: str, target: float) -> float:
    """Labels at which ``curve`` first reaches ``target`` (linear between rounds); ``inf`` if it never does."""
    labels = [c["labels"] for c in curve]
    errors = [c[key] for c in curve]
    for k, error in enumerate(errors):
        if error <= target:
            if k == 0:
                return float(labels[0])
            fraction = (errors[k - 1] - target) / (errors[k - 1] - error)
            return float(labels[k - 1] + fraction * (labels[k] - labels[k - 1]))
    return float("inf")


def summarise(runs: list, strategies: list, seeds: list, references: list = ()) -> dict:
    """Per scenario: mean/std curves, targets, labels needed and reductions against random and committee.

    ``references`` are the all-labelled results (``all_labelled``), summarised as mean and std over seeds.
    """
    summary = {}
    for scenario in SCENARIOS:
        by = {(r["strategy"], r["seed"]): r["curve"] for r in runs if r["scenario"] == scenario}
        if not by:
            continue
        out = summary[scenario] = {"curves": {}, "converged": {}, "targets": {}, "labels_needed": {},
                                   "reduction": {}, "final_vs_random": {}}
        ends = [r for r in references if r["scenario"] == scenario]
        if ends:
            out["all_labelled"] = {"labels": [r["labels"] for r in ends], "seeds": [r["seed"] for r in ends],
                                   **{f"{key}_{stat}": float(getattr(np, stat)([r[key] for r in ends]))
                                      for key in ("energy_mae", "forces_mae") for stat in ("mean", "std")}}
        for strategy in strategies:
            curves = [by[(strategy, s)] for s in seeds if (strategy, s) in by]
            out["curves"][strategy] = {
                "labels": [c["labels"] for c in curves[0]],
                **{f"{key}_{stat}": getattr(np, stat)([[c[key] for c in curve] for curve in curves], axis=0).tolist()
                   for key in ("energy_mae", "forces_mae") for stat in ("mean", "std")}}
        for key in ("energy_mae", "forces_mae"):
            out["converged"][key] = {st: converged(c[f"{key}_mean"], c[f"{key}_std"])
                                     for st, c in out["curves"].items()}
            if "random" not in out["curves"]:
                continue
            out["final_vs_random"][key] = {st: _final_change(by, st, seeds, key) for st in strategies}
            target = out["curves"]["random"][f"{key}_mean"][-1]
            out["targets"][key] = target
            needed = {strategy: {s: labels_to_reach(by[(strategy, s)], key, target) for s in seeds
                                 if (strategy, s) in by} for strategy in strategies}
            out["labels_needed"][key] = {st: list(v.values()) for st, v in needed.items()}
            out["reduction"][key] = {}
            for baseline in ("random", "committee"):
                if baseline not in needed:
                    continue
                out["reduction"][key][baseline] = {
                    st: _reduction(needed[st], needed[baseline]) for st in strategies}
    return summary


def converged(mean: list, std: list) -> dict:
    """The last round's change of the mean error against the seed spread of the final error."""
    change = mean[-1] - mean[-2]
    return {"last_change": change, "spread": std[-1], "converged": bool(abs(change) <= std[-1])}


def _final_change(by: dict, strategy: str, seeds: list, key: str) -> dict:
    """Percentage change of the final error against random's at the same seed (equal budget): mean, std."""
    changes = [100.0 * (by[(strategy, s)][-1][key] / by[("random", s)][-1][key] - 1.0) for s in seeds
               if (strategy, s) in by and ("random", s) in by]
    return {"mean": float(np.mean(changes)), "std": float(np.std(changes)), "seeds": len(changes)}


def _reduction(ours: dict, baseline: dict) -> dict:
    """Percentage fewer labels in all (the initial set included) than ``baseline``, per seed: mean, std.

    Counting all labels keeps the ratio finite when the baseline reaches
    the target within its first round; unreached targets count as not met.
    """
    values = [100.0 * (1.0 - n / baseline[seed]) for seed, n in ours.items()
              if np.isfinite(n) and np.isfinite(baseline.get(seed, float("inf")))]
    reached = sum(np.isfinite(n) for n in ours.values())
    return {"mean": float(np.mean(values)) if values else None, "std": float(np.std(values)) if values else None,
            "seeds": len(values), "reached": int(reached)}


# -- calibration --------------------------------------------------------------------------


def calibration(cfg: dict, data: dict, state_dict: dict, labelled: list) -> dict:
    """Spearman, NLL and miscalibration area of each kernel's std, pretrained versus random-initialised features."""
    from ase_mlipal.uncertainty.calibration import calibration_report, fit_scale
    from ase_mlipal.uncertainty.features import per_structure

    pretrained = ase_mlipal.load_model(cfg["model"])
    tuned = ase_mlipal.load_model(cfg["model"])
    tuned.load_state_dict(state_dict)
    test = data["test"]
    half = len(test) // 2
    residual = _residuals(tuned, test)
    report = {}
    for kernel in CALIBRATED:
        for origin, model in (("pretrained", pretrained), ("random_init", ase_mlipal.random_like(pretrained, 0))):
            calc = ase_mlipal.MLIPALCalculator(model, kernel=kernel, kernel_options=cfg["kernel_options"].get(kernel),
                                               posterior=None, regularization=cfg["regularization"],
                                               distance_aware=False)
            calc.condition(labelled, progress=False)
            _, batches = calc.predict(test, progress=True, rows=False)
            features = per_structure(batches)
            variance = {"energy": np.array([calc.energy_posterior.quadratic_form(f.structure)[0] / len(a)
                                            for f, a in zip(features, test)]),
                        "forces": np.concatenate([np.repeat(calc.force_variance(f), 3) for f in features])}
            atom_split = sum(len(a) for a in test[:half]) * 3
            cut = {"energy": half, "forces": atom_split}
            for quantity in ("energy", "forces"):
                r, v, k = residual[quantity], variance[quantity], cut[quantity]
                scale = fit_scale(r[:k], v[:k])
                entry = calibration_report(r[k:], np.sqrt(scale * v[k:]), scale).as_dict()
                entry["coverage_curve"] = _coverage(r[k:] / np.sqrt(scale * v[k:]))
                report.setdefault(kernel, {}).setdefault(origin, {})[quantity] = entry
    return report


def _residuals(model, frames: list) -> dict:
    """Per-atom energy residual (eV/atom) of each frame and each force component (eV/A)."""
    calc = ase_mlipal.MLIPALCalculator(model, posterior=None, distance_aware=False)
    energy, forces = [], []
    for atoms in frames:
        e_ref, f_ref = ase_mlipal.read_labels(atoms)
        copy = atoms.copy()
        copy.calc = calc
        energy.append((copy.get_potential_energy() - e_ref) / len(atoms))
        forces.append((copy.get_forces() - f_ref).ravel())
    return {"energy": np.array(energy), "forces": np.concatenate(forces)}


def _coverage(z: np.ndarray, levels: int = 20) -> dict:
    from scipy import stats

    expected = np.linspace(0, 1, levels + 1)
    observed = [float(np.mean(np.abs(z) <= stats.norm.ppf(0.5 + e / 2))) for e in expected]
    return {"expected": expected.tolist(), "observed": observed}


# -- plots and table ------------------------------------------------------------------------


def plot_curves(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    scenarios = [s for s in SCENARIOS if s in summary]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(11, 4.2 * len(scenarios)), squeeze=False)
    for row, scenario in zip(axes, scenarios):
        for ax, key, unit in zip(row, ("energy_mae", "forces_mae"), ("meV/atom", "eV/A")):
            for strategy, c in summary[scenario]["curves"].items():
                mean, std = np.array(c[f"{key}_mean"]), np.array(c[f"{key}_std"])
                ax.plot(c["labels"], mean, marker="o", ms=3, label=strategy)
                ax.fill_between(c["labels"], mean - std, mean + std, alpha=0.15)
            if key in summary[scenario]["targets"]:
                ax.axhline(summary[scenario]["targets"][key], color="k", ls=":", lw=1, label="target (random's final)")
            if "all_labelled" in summary[scenario]:
                ax.axhline(summary[scenario]["all_labelled"][f"{key}_mean"], color="0.4", ls="--", lw=1,
                           label="whole pool labelled")
            ax.set(xlabel="labelled structures", ylabel=f"test {key.replace('_', ' ')} ({unit})",
                   title=f"{scenario} pool")
            ax.set_xscale("log")
            ax.set_yscale("log")
            labels = next(iter(summary[scenario]["curves"].values()))["labels"]  # the same rounds for all
            ax.set_xticks(labels, [str(n) for n in labels])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_calibration(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, quantity in zip(axes, ("energy", "forces")):
        ax.plot([0, 1], [0, 1], color="k", lw=1)
        for k, (kernel, origins) in enumerate(report.items()):
            for origin, style in (("pretrained", "-"), ("random_init", "--")):
                curve = origins[origin][quantity]["coverage_curve"]
                ax.plot(curve["expected"], curve["observed"], ls=style, color=f"C{k}", label=f"{kernel} ({origin})")
        ax.set(xlabel="expected coverage", ylabel="observed coverage", title=f"{quantity} calibration (test half)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(summary: dict, report: dict) -> str:
    """The README tables (markdown)."""
    lines = []
    for scenario, out in summary.items():
        lines += [f"**{scenario} pool.** Final test errors (mean ± std over seeds; in brackets the change of the "
                  "mean over the last round), their change against random's at the same seed, acquired labels "
                  "to reach the target (random's final error) with the reduction against random and committee, "
                  "and whether the curve has converged (last round's change within the seed spread):",
                  "",
                  "| strategy | E MAE (meV/atom) | F MAE (eV/A) | E, F vs random at equal budget "
                  "| E: labels / vs random / vs committee | F: labels / vs random / vs committee "
                  "| converged E / F |",
                  "|---|---|---|---|---|---|---|"]
        for strategy, c in out["curves"].items():
            last = {k: out["converged"][k][strategy]["last_change"] for k in ("energy_mae", "forces_mae")}
            cells = [strategy,
                     f"{c['energy_mae_mean'][-1]:.2f} ± {c['energy_mae_std'][-1]:.2f} ({last['energy_mae']:+.2f})",
                     f"{c['forces_mae_mean'][-1]:.3f} ± {c['forces_mae_std'][-1]:.3f} ({last['forces_mae']:+.3f})",
                     " / ".join(f"{f['mean']:+.0f}% ± {f['std']:.0f}" if f else "–" for f in  # no random: a part
                                (out["final_vs_random"].get(k, {}).get(strategy) for k in ("energy_mae", "forces_mae")))]
            for key in ("energy_mae", "forces_mae"):
                needed = out["labels_needed"].get(key, {}).get(strategy, [])
                finite = [n for n in needed if np.isfinite(n)]
                text = f"{np.mean(finite):.0f} ({len(finite)}/{len(needed)} seeds)" if finite else "not reached"
                for baseline in ("random", "committee"):
                    r = out["reduction"].get(key, {}).get(baseline, {}).get(strategy)
                    text += " / " + (f"{r['mean']:+.0f}% ± {r['std']:.0f}" if r and r["mean"] is not None else "–")
                cells.append(text)
            cells.append(" / ".join("yes" if out["converged"][k][strategy]["converged"] else "no"
                                    for k in ("energy_mae", "forces_mae")))
            lines.append("| " + " | ".join(cells) + " |")
        if "all_labelled" in out:
            end = out["all_labelled"]
            sizes = sorted(set(end["labels"]))
            frames = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            lines.append(f"| whole pool labelled ({frames} frames, {len(end['seeds'])} seeds) "
                         f"| {end['energy_mae_mean']:.2f} ± {end['energy_mae_std']:.2f} "
                         f"| {end['forces_mae_mean']:.3f} ± {end['forces_mae_std']:.3f} | | | | |")
        lines.append("")
    if report:
        lines += ["**Calibration** (test half, scale fitted on the other half; pretrained / random-initialised "
                  "features):", "", "| kernel | E Spearman | E NLL | E miscal. area | F Spearman | F NLL | "
                  "F miscal. area |", "|---|---|---|---|---|---|---|"]
        for kernel, origins in report.items():
            cells = [kernel]
            for quantity in ("energy", "forces"):
                for metric, fmt in (("spearman", ".2f"), ("nll", ".2f"), ("miscalibration_area", ".3f")):
                    a, b = (origins[o][quantity][metric] for o in ("pretrained", "random_init"))
                    cells.append(f"{a:{fmt}} / {b:{fmt}}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------


def config(args) -> dict:
    if args.smoke:
        return {"model": args.model, "batches": [2, 3], "initial": 6, "committee": 2, "regularization": 1e-2,
                "limit": {"pool": 24, "test": 12, "initial": 8},
                "finetune": {"epochs": 2, "patience": 2, "replay_ratio": 0.5, "valid_fraction": 0.2},
                "kernel_options": {"ntk": {"dim": 64}, "force_ntk": {"dim": 64, "probes": 2, "samples": 2},
                                   "ef_ntk": {"dim": 64, "probes": 2, "samples": 2}}}
    return {"model": args.model, "batches": args.batches, "initial": args.initial, "committee": 4,
            "regularization": 1e-2, "limit": None,
            "finetune": {"epochs": args.epochs, "patience": args.patience, "replay_ratio": 1.0,
                         "energy_weight": args.energy_weight, "valid_fraction": 0.2},  # as the committed results
            "kernel_options": {"ntk": {}, "force_ntk": {}, "ef_ntk": {}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES, choices=STRATEGIES,
                        help="none: only the whole-pool references (to merge with --from-json)")
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[20, 30, 45, 65],
                        help="structures acquired in each round (one round per number)")
    parser.add_argument("--initial", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--energy-weight", type=float, default=100.0, help="finetune's energy loss weight")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="default")
    parser.add_argument("--calibration", action=argparse.BooleanOptionalAction, default=True,
                        help="the calibration study on the first seed's random run (--no-calibration for runs "
                             "of extra seeds to merge with --from-json)")
    parser.add_argument("--all-labelled", action=argparse.BooleanOptionalAction, default=True,
                        help="the reference fine-tuned on the whole pool, per seed and pool")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: checks the pipeline, not the numbers")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--from-json", nargs="+", metavar="JSON",
                        help="redo the summary, plots and table of finished runs (several: runs of other seeds "
                             "with the same settings, merged)")
    args = parser.parse_args()
    cfg = config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        return report_again([Path(path) for path in args.from_json], out)
    started = time.perf_counter()

    splits = reactive_splits(cfg["limit"])
    print({name: len(part) for name, part in splits.items()}, flush=True)
    pretrained = ase_mlipal.load_model(cfg["model"])
    kernels = [s for s in args.strategies if s in KERNELS]
    rows = kernel_rows(pretrained, splits["pool"] + splits["initial"], kernels, cfg["kernel_options"])
    n_pool = len(splits["pool"])
    print(f"kernel rows: {time.perf_counter() - started:.0f} s", flush=True)

    tasks, firsts, references = [], [], []
    for seed in args.seeds:
        initial_index = np.sort(np.random.default_rng(seed).choice(len(splits["initial"]), cfg["initial"],
                                                                   replace=False))
        data = {"pool": splits["pool"], "test": splits["test"],
                "initial_frames": [splits["initial"][i] for i in initial_index]}
        firsts.append({"config": cfg, "data": data, "seed": seed})
        for scenario in args.scenarios:
            available = np.arange(n_pool) if scenario == "full" else shifted(splits["pool"], seed)
            if args.all_labelled:
                references.append({"config": cfg, "data": data, "seed": seed, "scenario": scenario,
                                   "available": available.tolist()})
            for strategy in args.strategies:
                tasks.append({
                    "config": cfg, "data": data, "strategy": strategy, "seed": seed, "scenario": scenario,
                    "available": available.tolist(), "initial_index": initial_index.tolist(),
                    "rows": {k: v[:n_pool] for k, v in rows.items() if k == strategy},
                    "initial_rows": {k: v[n_pool:][initial_index] for k, v in rows.items() if k == strategy},
                    "keep_model": args.calibration and strategy == "random" and scenario == "full"
                                  and seed == args.seeds[0]})
    tasks.sort(key=lambda task: task["strategy"] != "committee")  # the longest chains first: no idle tail
    runs, ends = [], []
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        ends_done = pool.map(all_labelled, references)  # the longest tasks: queued first
        round0 = {r["seed"]: r for r in _as_done(pool, first_round, firsts)}
        print(f"round 0: {time.perf_counter() - started:.0f} s elapsed", flush=True)
        for task in tasks:
            task["round0"] = round0[task["seed"]]
        for result in _as_done(pool, run, tasks):
            curve = result["curve"]
            print(f"{result['scenario']:<8} {result['strategy']:<10} seed {result['seed']}: "
                  f"E {curve[-1]['energy_mae']:.2f} meV/atom, F {curve[-1]['forces_mae']:.4f} eV/A "
                  f"({curve[-1]['seconds']:.0f} s; {time.perf_counter() - started:.0f} s elapsed)", flush=True)
            runs.append(result)
        for end in ends_done:
            print(f"{end['scenario']:<8} whole pool seed {end['seed']}: E {end['energy_mae']:.2f} meV/atom, "
                  f"F {end['forces_mae']:.4f} eV/A ({end['seconds']:.0f} s)", flush=True)
            ends.append(end)

    summary = summarise(runs, args.strategies, args.seeds, ends)
    report = {}
    kept = [r for r in runs if "state_dict" in r]
    if kept:
        k = kept[0]
        labelled = [splits["initial"][i] for i in k["labelled_initial"]] + [splits["pool"][i] for i in k["picked"]]
        report = calibration(cfg, {"test": splits["test"]}, k.pop("state_dict"), labelled)
    for r in runs:
        r.pop("state_dict", None)
    results = {"config": cfg, "seeds": args.seeds, "runs": runs, "all_labelled": ends, "summary": summary,
               "calibration": report, "seconds": time.perf_counter() - started}
    write_report(results, out)
    print(f"total {time.perf_counter() - started:.0f} s; results in {out}")


def report_again(paths: list[Path], out: Path) -> None:
    """Summary, plots and table of finished runs, from their JSONs (no training)."""
    results = merge([json.loads(path.read_text()) for path in paths])
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in results["runs"])]
    results["summary"] = summarise(results["runs"], strategies, results["seeds"], results["all_labelled"])
    write_report(results, out)


def merge(parts: list[dict]) -> dict:
    """One result from parts with the same settings that share no run (strategy, seed and pool) and no
    whole-pool reference (seed and pool); calibration from the first part that has one."""
    first = parts[0]
    for part in parts[1:]:
        if part["config"] != first["config"]:
            raise ValueError("runs with different settings cannot be merged: "
                             f"{part['config']} against {first['config']}")
    runs = [run for part in parts for run in part["runs"]]
    ends = [end for part in parts for end in part.get("all_labelled", [])]
    for name, items, fields in (("runs", runs, ("strategy", "seed", "scenario")),
                                ("whole-pool references", ends, ("seed", "scenario"))):
        keys = [tuple(item[f] for f in fields) for item in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the parts share {name} ({sorted(k for k in set(keys) if keys.count(k) > 1)}): "
                             "each may be counted once")
    seeds = sorted({seed for part in parts for seed in part["seeds"]})
    return {**first, "seeds": seeds, "runs": runs, "all_labelled": ends,
            "calibration": next((part["calibration"] for part in parts if part["calibration"]), {}),
            "seconds": sum(part["seconds"] for part in parts)}


def write_report(results: dict, out: Path) -> None:
    """The JSON, the PNGs and the markdown table of a run's ``results``; prints the table."""
    (out / "active_learning.json").write_text(json.dumps(results, indent=1, default=float))
    plot_curves(results["summary"], out / "active_learning_curves.png")
    if results["calibration"]:
        plot_calibration(results["calibration"], out / "active_learning_calibration.png")
    markdown = table(results["summary"], results["calibration"])
    (out / "active_learning.md").write_text(markdown)
    print(markdown)


def _as_done(pool, function, tasks):
    from concurrent.futures import as_completed

    futures = [pool.submit(function, task) for task in tasks]
    for future in as_completed(futures):
        yield future.result()


if __name__ == "__main__":
    main()
