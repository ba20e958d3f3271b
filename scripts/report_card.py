"""Report card of the shipped default model: errors and calibration, in and out of distribution.

    python scripts/report_card.py [--model default]

Prints, for the pretraining test split (near-equilibrium molecules the model
never saw) and for the reactive test set (bond breaking, transition
states): energy MAE (meV/atom), force MAE (eV/A), and the activation-kernel
calibration report of the shipped posterior (calibrated on the pretraining
validation split, not refitted here): Spearman rho between predicted std
and |error|, miscalibration area, coverage. Then the same per reaction, and
the time of one energy-and-forces call on a 10-atom molecule.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from ase.build import molecule

import ase_mlipal
from ase_mlipal.frames import read_frames
from ase_mlipal.training.trainer import evaluate

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"


def row(name, calc, frames):
    errors = evaluate(calc.model, frames)
    report = calc.calibrate(frames, fit=False, progress=False)
    f, e = report["forces"], report["energy"]
    print(f"{name:<30} {len(frames):>5} {errors['energy_mae_per_atom']:>10.1f} {errors['forces_mae']:>9.3f} "
          f"{f.mean_std:>9.3f} {f.spearman:>8.2f} {f.miscalibration_area:>8.3f} {f.coverage_1sigma:>7.2f} "
          f"{e.spearman:>8.2f} {e.miscalibration_area:>8.3f}")
    return errors, report


def call_time(calc, repeats: int = 50) -> float:
    atoms = molecule("CH3CH2OH")  # 9 atoms
    atoms += molecule("H2")[:1]   # 10 atoms
    atoms.positions[-1] = [2.5, 1.5, 0.5]
    atoms.calc = calc
    atoms.get_forces()
    times = []
    for _ in range(repeats):
        atoms.positions += 1e-4
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    calc = ase_mlipal.MLIPALCalculator(model=args.model)
    pretrain = [f for f in read_frames(DATA / "pretrain.xyz.gz") if f.info["split"] == "test"]
    reactive = [f for f in read_frames(DATA / "reactive.xyz.gz") if f.info["split"] == "test"]

    print(f"{'':<30} {'':>5} {'energy':>10} {'force':>9} {'force':>9} {'---- forces ----':>25} "
          f"{'--- energy ---':>17}")
    print(f"{'set':<30} {'n':>5} {'meV/atom':>10} {'MAE eV/A':>9} {'mean std':>9} {'spearman':>8} "
          f"{'miscal':>8} {'cov1s':>7} {'spearman':>8} {'miscal':>8}")
    base, _ = row("pretraining test split", calc, pretrain)
    shifted, _ = row("reactive test set", calc, reactive)
    for reaction in sorted({f.info["reaction"] for f in reactive}):
        row(f"  {reaction}", calc, [f for f in reactive if f.info["reaction"] == reaction])
    ts = [f for f in reactive if f.info["ts_region"]]
    row("  transition-state region", calc, ts)
    print(f"\nreactive / in-distribution force MAE: {shifted['forces_mae'] / base['forces_mae']:.1f}x, "
          f"energy MAE: {shifted['energy_mae_per_atom'] / base['energy_mae_per_atom']:.1f}x")
    print(f"one energy-and-forces call on a 10-atom molecule: {1e3 * call_time(calc):.1f} ms")


if __name__ == "__main__":
    main()
