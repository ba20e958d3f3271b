"""``mlipal demo``: the whole loop on formic acid -> CO2 + H2 with GFN2-xTB as the reference.

Starts a climbing-image NEB on the shipped default model from the
xTB-relaxed endpoints, and lets :class:`~ase_mlipal.NEBLearner` flag,
label (xTB), fine-tune and rerun. Before and after, it scores the model
against the converged xTB band shipped with the package
(``scripts/make_demo.py``): the force MAE on that path and the error of
the NEB barrier.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from ase.io import read, write

from .calculator import MLIPALCalculator
from .frames import read_labels
from .learning.neb_learner import NEBLearner, NoBandError  # noqa: F401  (raised here; importable from here as before)
from .paths import DEMO_REACTION_PATH, PathProfile, band, reaction_coordinate
from .plots import plot_checks, plot_neb_profiles
from .references.xtb import RobustXTB, xtb_calculator
from .training.trainer import evaluate


@dataclass
class DemoScore:
    """Model against xTB on the reaction."""

    force_mae: float  # eV/A on the xTB path
    barrier: float  # eV, the model's own NEB
    barrier_std: float  # eV, the predicted 1 sigma (the uncertainty's own claim)
    barrier_error: float  # eV, model NEB barrier - xTB NEB barrier
    reaction_energy_error: float  # eV, model - xTB, on the endpoints
    reported_std: float = float("nan")  # eV, after learning: NEBReport.barrier's 1 sigma (the checks' error too)




def run_demo(workdir: Path, n_images: int = 9, threshold: float = 0.5, max_labels: Optional[int] = 40,
             max_rounds: Optional[int] = None, steps: int = 300, fmax: float = 0.1,
             finetune_options: Optional[dict] = None) -> dict:
    """Run the demo in ``workdir`` (its store replaced), print the before/after table; returns the scores.

    ``max_labels`` bounds the xTB labels, checks included (``None``: no
    bound); ``max_rounds`` (default ``max_labels // 3``, the bands whose
    three checks the budget pays for; 4 without a budget) the learning rounds.

    Raises:
        ImportError: tblite (GFN2-xTB, the reference) is not installed; checked
            first, so the run does not go on to mark every frame failed.
        NoBandError: the run stopped before its first band (e.g. xTB failed
            on the first endpoint); the message says why, the store and
            state stay in ``workdir / "run"``.
    """
    xtb_calculator()
    start = time.perf_counter()
    shutil.rmtree(workdir / "run", ignore_errors=True)  # a fresh run each time
    path = read(DEMO_REACTION_PATH, ":")
    xtb_energy = np.array([read_labels(a)[0] for a in path])
    xtb_barrier = float(xtb_energy.max() - xtb_energy[0])
    print(f"formic acid -> CO2 + H2: xTB NEB barrier {xtb_barrier:.3f} eV ({len(path)} images, GFN2-xTB)")
    calc = MLIPALCalculator()
    before_mae = evaluate(calc.model, path)["forces_mae"]
    images = band(path[0], path[-1], n_images)
    if max_rounds is None:
        max_rounds = 4 if max_labels is None else max_labels // 3
    learner = NEBLearner(calc, RobustXTB, workdir / "run", images, threshold, max_rounds=max_rounds, steps=steps,
                         fmax=fmax, finetune_options=finetune_options, max_labels=max_labels)
    report = learner.run()
    last = report.final.profile  # the best verified band; NoBandError if the run ran none
    first = report.rounds[0].profile
    xtb_reaction = float(xtb_energy[-1] - xtb_energy[0])
    scores = {
        "before": DemoScore(before_mae, first.barrier, first.barrier_std, first.barrier - xtb_barrier,
                            first.energy[-1] - xtb_reaction),
        "after": DemoScore(evaluate(calc.model, path)["forces_mae"], last.barrier, last.barrier_std,
                           last.barrier - xtb_barrier, last.energy[-1] - xtb_reaction, report.barrier[1]),
    }
    reference = PathProfile("xTB", reaction_coordinate(path), xtb_energy - xtb_energy[0], np.zeros(len(path)),
                            np.zeros(len(path)), xtb_barrier, 0.0)
    plot_neb_profiles([reference, first, last], workdir / "neb.png", title="formic acid -> CO2 + H2")
    checked = plot_checks(report.checks, workdir / "checks.png", title="the learner's xTB checks")
    write(workdir / "band.xyz", report.images)
    print(report.table())
    print(f"\n{'':8s}{'force MAE on xTB path':>24s}{'NEB barrier':>20s}{'barrier error':>16s}"
          f"{'reaction energy error':>24s}")
    for name, s in scores.items():
        print(f"{name:8s}{s.force_mae:20.3f} eV/A{s.barrier:9.2f} ± {s.barrier_std:4.2f} eV{s.barrier_error:+13.2f} eV"
              f"{s.reaction_energy_error:+21.2f} eV")
    low, high = report.barrier_interval
    print(f"(1 sigma predicted; the report's, with what the final band's checks found: "
          f"± {scores['after'].reported_std:.2f} eV; 2-sigma interval of the barrier [{low:.2f}, {high:.2f}] eV)")
    counts = learner.store.counts()
    print(f"\nlabelled frames: {counts['labelled'] + counts['verified']} ({counts['verified']} passed checks); "
          f"verified: {report.confident}; "
          f"plots {workdir / 'neb.png'}" + (f", {checked}" if checked else "") + f"; {time.perf_counter() - start:.0f} s")
    return scores
