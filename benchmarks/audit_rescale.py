"""How far a handful of audits should move sigma: the MD learner's prior weight, chosen with groups held out.

    python benchmarks/audit_rescale.py [--out benchmarks/results] [--smoke] [--later]

The MD learner checks unflagged frames (audits) against the reference one by
one, and after each rescales sigma (:meth:`ase_mlipal.MLIPALCalculator.rescale`):
``n`` audits move every calibrated variance ``n / (n + p)`` of the way to the
factor they justify (the mean of ``residual^2 / variance``), as if the
calibration in use had been fitted on ``p`` frames: the forces' in log
space, the energy's linearly (since 2026-12-07: with one residual a frame
log space shrinks a right sigma on average; the tables keep the energy's
scores in log space beside, the "log space" columns). A large ``p``
trusts the calibration; a small one the audits, and with it their noise.

This replays that sequence on labelled frames nothing was fitted on, with
the shipped default (distance-aware sigma, pretrained model, its own
calibration): in each group, 15 frames in a random order (100 orders), each
frame checked on the sigma the frames before it justify, for ``p`` in
:data:`PRIORS`. Groups:

* the test frames of the eight reactions outside the calibration's data (the
  five of ``scripts/make_heldout_data.py`` and the three fresh ones), 40 frames
  spread along each xTB path;
* the pretraining test split by molecule (up to 40 frames each): near
  equilibrium, where the calibration is about right and the audits' noise
  is all a small ``p`` adds.

Scores per checked frame, averaged over frames, orders and then groups: the
share of force components within 2 sigma, the Gaussian negative log
likelihood per force component, and the same for the energy. ``p`` is chosen
leave-one-group-out: for each group, the ``p`` with the lowest summed force and
energy likelihood over the *other* groups (reactions and molecules weighing
half each), scored on the group left out. :data:`ase_mlipal.learning.md_learner.AUDIT_PRIOR_FRAMES`
is the choice.

Writes ``audit_rescale.json``, ``audit_rescale.md`` and ``audit_rescale.png``
(coverage and likelihood against ``p``). About 2 minutes on 2 cores.

``--later`` scores ``p`` on the six reactions of the fresh sets built after
the choice (``benchmarks/data/later_reactions.xyz.gz``, ``python
scripts/make_heldout_data.py --later``: reactants in no earlier reactive
record, among them an elimination, an inversion and an electrocyclic ring
opening),
beside the ``p`` all the groups above choose, and writes
``audit_rescale_later.json`` and ``audit_rescale_later.md``: whether the
choice holds where nobody looked when making it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from ase import Atoms

from ase_mlipal.frames import read_frames
from ase_mlipal.learning.md_learner import AUDIT_PRIOR_FRAMES
from ase_mlipal.uncertainty.calibration import shrunk_factor

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
PRIORS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, np.inf)  # inf: the calibration alone (no rescale)
AUDITS, ORDERS, FRAMES_PER_GROUP = 15, 100, 40


def groups_of_frames(step: int = 1, later: bool = False) -> dict[str, list[Atoms]]:
    """Labelled frames by group: ``reaction:<name>`` (new and fresh reactions' test frames) and
    ``molecule:<name>`` (the pretraining test split); at most :data:`FRAMES_PER_GROUP`, evenly spread.
    ``later``: the later fresh sets' reactions alone (``later_reactions.xyz.gz``)."""
    from reactive import physical

    groups: dict[str, list[Atoms]] = {}
    for name in ("later_reactions",) if later else ("heldout_reactions", "fresh_reactions"):
        for atoms in read_frames(DATA / f"{name}.xyz.gz"):
            if atoms.info["split"] == "test" and physical(atoms):
                groups.setdefault("reaction:" + atoms.info["reaction"], []).append(atoms)
    for atoms in [] if later else read_frames(DATA / "pretrain.xyz.gz"):
        if atoms.info["split"] == "test":
            groups.setdefault("molecule:" + atoms.info["molecule"], []).append(atoms)
    limit = FRAMES_PER_GROUP // step
    return {g: frames[::max(1, len(frames) // limit)][:limit] for g, frames in groups.items()}


def calibrated_residuals(calc: ase_mlipal.MLIPALCalculator, frames: list[Atoms]) -> dict:
    """Per frame: the residuals of its force components and of its energy, and their calibrated variances."""
    res = calc.residuals(frames, progress=False)
    force_var = np.repeat(calc.atom_posterior.calibration.variance(res.forces_raw), 3)
    rows = np.concatenate([[0], np.cumsum(3 * res.n_atoms)])
    forces = res.forces.ravel()
    return {"energy": res.energy, "energy_var": calc.energy_posterior.calibration.variance(res.energy_raw, res.n_atoms),
            "forces": [forces[a:b] for a, b in zip(rows[:-1], rows[1:])],
            "force_var": [force_var[a:b] for a, b in zip(rows[:-1], rows[1:])]}


def replay(group: dict, prior: float, audits: int, orders: int, seed: int = 0) -> dict:
    """Mean scores of ``audits`` frames checked one by one, each on the variances the ones before rescale
    (:func:`~ase_mlipal.uncertainty.calibration.shrunk_factor` as the learner's rescale: forces in log space,
    the energy linearly; ``prior = inf``: none). The energy's scores in log space too (``..._log``: the
    rescale before 2026-12-07)."""
    rng = np.random.default_rng(seed)
    n_frames = len(group["energy"])
    scores = []
    for _ in range(orders):
        order = rng.permutation(n_frames)[:audits]
        per_frame = []
        for t, k in enumerate(order):
            before = order[:t]
            factors = (1.0, 1.0, 1.0) if t == 0 else (
                shrunk_factor(np.concatenate([group["forces"][j] for j in before]),
                              np.concatenate([group["force_var"][j] for j in before]), prior, t, "log"),
                shrunk_factor(group["energy"][before], group["energy_var"][before], prior, t, "linear"),
                shrunk_factor(group["energy"][before], group["energy_var"][before], prior, t, "log"))
            force_var = group["force_var"][k] * factors[0]
            z2 = group["forces"][k] ** 2 / force_var
            scored = [np.mean(z2 < 4.0), gaussian_nll(z2, force_var)]
            for factor in factors[1:]:
                energy_var = group["energy_var"][k] * factor
                energy_z2 = group["energy"][k] ** 2 / energy_var
                scored += [float(energy_z2 < 4.0), gaussian_nll(energy_z2, energy_var)]
            per_frame.append(scored)
        scores.append(np.mean(per_frame, axis=0))
    return dict(zip(("force_coverage_2sigma", "force_nll", "energy_coverage_2sigma", "energy_nll",
                     "energy_coverage_2sigma_log", "energy_nll_log"), map(float, np.mean(scores, axis=0))))


def gaussian_nll(z2: np.ndarray, variance: np.ndarray) -> float:
    """Mean negative log likelihood of residuals with squared z-scores ``z2`` under ``N(0, variance)``."""
    return float(np.mean(0.5 * (z2 + np.log(2 * np.pi * variance))))


def objective(scores: dict, groups: list[str], prior: float) -> float:
    """Force plus energy likelihood over ``groups``, reactions and molecules weighing half each."""
    halves = [[g for g in groups if g.startswith(kind)] for kind in ("reaction:", "molecule:")]
    return float(np.mean([np.mean([scores[g][str(prior)]["force_nll"] + scores[g][str(prior)]["energy_nll"]
                                   for g in half]) for half in halves if half]))


def leave_one_group_out(scores: dict) -> dict:
    """For each group: the prior chosen on the others, and the held-out group's scores with it."""
    chosen = {}
    for group in scores:
        others = [g for g in scores if g != group]
        best = min(PRIORS, key=lambda p: objective(scores, others, p))
        chosen[group] = {"prior": best, **scores[group][str(best)]}
    return chosen


def table(scores: dict, chosen: dict) -> list[str]:
    header = "| group | " + " | ".join(f"p = {p:g}" for p in PRIORS) + " | chosen on the others |"
    lines = [header, "|---|" + "---:|" * (len(PRIORS) + 1)]
    for group, by_prior in scores.items():
        cells = [f"{by_prior[str(p)]['force_coverage_2sigma']:.3f} / {by_prior[str(p)]['force_nll']:+.2f}"
                 for p in PRIORS]
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {chosen[group]['prior']:g} |")
    return lines


def summary(scores: dict, groups: list[str]) -> dict:
    """Per prior: mean and worst force coverage, and the mean of every other score of :func:`replay`."""
    def mean(p, key):
        return float(np.mean([scores[g][str(p)][key] for g in groups]))

    return {str(p): {"worst_force_coverage_2sigma": float(min(scores[g][str(p)]["force_coverage_2sigma"]
                                                              for g in groups)),
                     **{key: mean(p, key) for key in scores[groups[0]][str(p)]}}
            for p in PRIORS}


def summary_cells(row: dict) -> str:
    """One prior's :func:`summary` as table cells: force 2σ coverage (mean; worst group), force NLL, energy 2σ
    coverage, energy NLL, and the last two with the energy rescaled in log space."""
    return (f"{row['force_coverage_2sigma']:.3f}; {row['worst_force_coverage_2sigma']:.3f} | {row['force_nll']:+.2f} | "
            f"{row['energy_coverage_2sigma']:.3f} | {row['energy_nll']:+.2f} | "
            f"{row['energy_coverage_2sigma_log']:.3f} | {row['energy_nll_log']:+.2f}")


SUMMARY_HEADER = ("force 2σ coverage (mean; worst group) | force NLL | energy 2σ coverage | energy NLL | "
                  "energy 2σ coverage, log space | energy NLL, log space |")


def plot(summaries: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (cov, nll) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(PRIORS))
    for kind, style in (("reactions", "o-"), ("molecules", "s--")):
        s = summaries[kind]
        cov.plot(x, [s[str(p)]["force_coverage_2sigma"] for p in PRIORS], style, label=f"{kind}: mean")
        cov.plot(x, [s[str(p)]["worst_force_coverage_2sigma"] for p in PRIORS], style, alpha=0.5,
                 label=f"{kind}: worst group")
        nll.plot(x, [s[str(p)]["force_nll"] for p in PRIORS], style, label=f"{kind}: forces")
        nll.plot(x, [s[str(p)]["energy_nll"] for p in PRIORS], style, alpha=0.5, label=f"{kind}: energy")
    finite = [s[str(p)][key] for s in summaries.values() for p in PRIORS[1:] for key in ("force_nll", "energy_nll")]
    spread = max(finite) - min(finite)
    nll.set_ylim(min(finite) - 0.1 * spread, max(finite) + 0.1 * spread)  # p = 0 can lie far above: off the plot
    cov.axhline(0.95, color="k", lw=0.8, ls=":")
    for ax in (cov, nll):
        ax.set_xticks(x, [f"{p:g}" for p in PRIORS])
        ax.set_xlabel("prior weight p (frames)")
        ax.legend(fontsize=7)
    cov.set_ylabel("force 2σ coverage of the audits")
    nll.set_ylabel("negative log likelihood (mean)")
    fig.suptitle("15 audits, each checked on σ rescaled on the ones before")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_groups(calc: ase_mlipal.MLIPALCalculator, groups: dict[str, list[Atoms]], orders: int) -> dict:
    """Per group and prior: :func:`replay`'s scores of the group's frames."""
    scores = {}
    for name, frames in groups.items():
        group = calibrated_residuals(calc, frames)
        scores[name] = {str(p): replay(group, p, min(AUDITS, len(frames)), orders) for p in PRIORS}
    return scores


def later_choice(earlier: dict, new: dict) -> dict:
    """The prior all the ``earlier`` groups choose (force + energy likelihood, reactions and molecules weighing
    half each), the best on the ``new`` ones, and the ``new`` ones' scores and summary."""
    return {"chosen_on_earlier_groups": min(PRIORS, key=lambda p: objective(earlier, list(earlier), p)),
            "best_on_later": min(PRIORS, key=lambda p: objective(new, list(new), p)),
            "scores": new, "summary": summary(new, list(new))}


def later(calc: ase_mlipal.MLIPALCalculator, scores: dict, orders: int, step: int, out: Path) -> None:
    """Score every prior on the later fresh sets' reactions beside the one all the earlier groups choose;
    write ``audit_rescale_later.*``."""
    new = score_groups(calc, groups_of_frames(step, later=True), orders)
    result = {"priors": [str(p) for p in PRIORS], "audits": AUDITS, "orders": orders, **later_choice(scores, new)}
    chosen, best = result["chosen_on_earlier_groups"], result["best_on_later"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_rescale_later.json").write_text(json.dumps(result, indent=1))
    lines = ["# `python benchmarks/audit_rescale.py --later`", "",
             f"The later fresh sets' reactions (built after p was chosen), {AUDITS} audits per reaction, "
             f"{orders} random orders; the shipped default's σ. Cells: force 2σ coverage / force NLL "
             "(per component).", "", "| reaction | " + " | ".join(f"p = {p:g}" for p in PRIORS) + " |",
             "|---|" + "---:|" * len(PRIORS)]
    for group, by_prior in new.items():
        lines.append(f"| {group} | " + " | ".join(f"{by_prior[str(p)]['force_coverage_2sigma']:.3f} / "
                                                  f"{by_prior[str(p)]['force_nll']:+.2f}" for p in PRIORS) + " |")
    lines += ["", "| p | " + SUMMARY_HEADER, "|---:|" + "---:|" * 6]
    lines += [f"| {p:g} | {summary_cells(result['summary'][str(p)])} |" for p in PRIORS]
    lines += ["", f"Chosen on every earlier group: p = {chosen:g} (the learner's AUDIT_PRIOR_FRAMES: "
              f"{AUDIT_PRIOR_FRAMES:g}); the best on these reactions (force + energy NLL): p = {best:g}."]
    (out / "audit_rescale_later.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="a quarter of the frames, 5 orders (for the tests)")
    parser.add_argument("--later", action="store_true",
                        help="score p on the later fresh sets' reactions too (data/later_*); audit_rescale_later.*")
    args = parser.parse_args()
    start = time.perf_counter()
    step, orders = (4, 5) if args.smoke else (1, ORDERS)
    calc = ase_mlipal.MLIPALCalculator()
    groups = groups_of_frames(step)
    scores = score_groups(calc, groups, orders)
    if args.later:
        later(calc, scores, orders, step, args.out)
        print(f"{time.perf_counter() - start:.0f} s")
        return
    chosen = leave_one_group_out(scores)
    reactions = [g for g in scores if g.startswith("reaction:")]
    molecules = [g for g in scores if g.startswith("molecule:")]
    summaries = {"reactions": summary(scores, reactions), "molecules": summary(scores, molecules)}
    result = {"priors": [str(p) for p in PRIORS], "audits": AUDITS, "orders": orders,
              "frames": {g: len(f) for g, f in groups.items()}, "scores": scores, "chosen": chosen,
              "summary": summaries, "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audit_rescale.json").write_text(json.dumps(result, indent=1))
    counts = {p: sum(c["prior"] == p for c in chosen.values()) for p in PRIORS}
    lines = ["# `python benchmarks/audit_rescale.py`", "",
             f"{AUDITS} audits per group, each checked on σ rescaled on the ones before with prior weight p "
             f"(frames), {orders} random orders; the shipped default's σ. Cells: force 2σ coverage / force NLL "
             "(per component). Last column: p chosen with the group held out (force + energy NLL on the others, "
             "reactions and molecules weighing half each).", ""] + table(scores, chosen)
    lines += ["", "| groups | p | " + SUMMARY_HEADER, "|---|---:|" + "---:|" * 6]
    for kind, s in summaries.items():
        lines += [f"| {kind} | {p:g} | {summary_cells(s[str(p)])} |" for p in PRIORS]
    lines += ["", "Chosen with the group held out: " + ", ".join(f"p = {p:g} in {n}" for p, n in counts.items() if n)
              + f" of {len(chosen)} groups."]
    (args.out / "audit_rescale.md").write_text("\n".join(lines) + "\n")
    plot(summaries, args.out / "audit_rescale.png")
    print("\n".join(lines))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
