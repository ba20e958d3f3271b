"""Hessian distillation ("Towards Fast, Specialized Machine Learning Force Fields: Distilling Foundation Models via Energy Hessians", arXiv:2501.09009) on the reactive benchmark: speed, errors and NVE stability, side by side.

    python benchmarks/distill.py [--teacher-frames 200] [--frames 1600] [--rows 1] [--epochs 60]
                                 [--out benchmarks/results/distill.json]

Teacher: the shipped default fine-tuned on ``--teacher-frames`` labelled
structures of the reactive pool (seed 0). Students (``distill``'s default
size: 32 channels, one interaction) are trained on the teacher's energies
and forces on ``--frames`` pool structures (``--student-epochs``), with
``--rows`` Hessian rows per structure (``hessian``) and without (``plain``:
energy-force distillation only). Printed, in one process:

* per-call time of an ASE calculator (MLIPALCalculator, activation kernel)
  on the test molecules and on a 576-atom cluster of 64 ethanols, and the
  ratio teacher / student (target >= 3);
* force and energy MAE against the GFN2-xTB references of the test split,
  and student / teacher force MAE (target <= 1.2);
* NVE MD (velocity Verlet, 0.5 fs, 300 K start) on a test molecule: energy
  drift of each model, in meV/atom/ps;
* GFRE/LFRE among the atom features of the pretrained default, the teacher
  and the students on the test atoms ("Comparing the latent features of universal machine-learning interatomic potentials", arXiv:2512.05717), with a heat map.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from reactive import reactive_splits


def per_call_seconds(models: dict, frames: list, repeats: int = 7) -> tuple[dict, dict]:
    """Mean time of one energy+forces call on each frame, per model, and each model's speed-up over the teacher.

    The models take turns within every round, so a slow spell of a shared
    machine hits all of them; the speed-up is the median over rounds of the
    per-round ratio, the time the median over rounds.
    """
    calcs = {name: ase_mlipal.MLIPALCalculator(model, posterior=None) for name, model in models.items()}
    rounds: dict[str, list] = {name: [] for name in models}
    for _ in range(repeats):
        for name, calc in calcs.items():
            start = time.perf_counter()
            for atoms in frames:
                atoms = atoms.copy()
                atoms.calc = calc
                calc.reset()  # an unchanged structure would come from the cache
                atoms.get_forces()
            rounds[name].append((time.perf_counter() - start) / len(frames))
    times = {name: statistics.median(t) for name, t in rounds.items()}
    speedups = {name: statistics.median(np.array(rounds["teacher"]) / np.array(t)) for name, t in rounds.items()}
    return times, speedups


def cluster(n: int = 4, spacing: float = 5.0):
    """``n^3`` ethanol molecules on a grid (a few hundred atoms), where the model, not the call, costs."""
    from ase import Atoms
    from ase.build import molecule

    base = molecule("CH3CH2OH")
    out = Atoms()
    for shift in np.ndindex(n, n, n):
        copy = base.copy()
        copy.positions += spacing * np.array(shift)
        out += copy
    return out


def nve_drift(model, atoms, steps: int, seed: int = 0) -> dict:
    """Total-energy drift (slope of a linear fit) and largest excursion over an NVE run."""
    atoms = atoms.copy()
    atoms.calc = ase_mlipal.MLIPALCalculator(model, posterior=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    dyn.run(steps)
    energies = np.array(energies)
    t_ps = np.arange(len(energies)) * 10 * 0.5e-3
    slope = np.polyfit(t_ps, energies, 1)[0]
    return {"drift_mev_per_atom_ps": 1e3 * float(slope) / len(atoms),
            "max_excursion_mev_per_atom": 1e3 * float(np.ptp(energies)) / len(atoms), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-frames", type=int, default=200)
    parser.add_argument("--frames", type=int, default=1600)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--hessian-weight", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--student-epochs", type=int, default=100)
    parser.add_argument("--md-steps", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    splits = reactive_splits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(splits["pool"]))
    labelled = [splits["pool"][i] for i in order[:args.teacher_frames]]
    unlabelled = [splits["pool"][i] for i in order[args.teacher_frames:args.teacher_frames + args.frames]]
    teacher = ase_mlipal.finetune("default", labelled, epochs=args.epochs, patience=15, progress=True).model
    print(f"teacher fine-tuned ({time.perf_counter() - started:.0f} s)", flush=True)
    models = {"teacher": teacher}
    for name, weight in (("plain", 0.0), ("hessian", args.hessian_weight)):
        result = ase_mlipal.distill(teacher, unlabelled, hessian_rows_per_structure=args.rows,
                                    hessian_weight=weight, epochs=args.student_epochs, progress=True)
        models[name] = result.model
        print(f"student {name}: {result.student_parameters} parameters (teacher {result.teacher_parameters}), "
              f"{result.training.seconds:.0f} s", flush=True)
    test = splits["test"]
    timing_frames = test[::10]
    md_start = next(a for a in test if a.info.get("image") == 0 and len(a) >= 9)
    results = {"config": vars(args), "models": {}}
    times, speedups = per_call_seconds(models, timing_frames)
    big = cluster()
    big_times, big_speedups = per_call_seconds(models, [big])
    print(f"{'model':<9} {'params':>7} {'ms/call':>8} {'speed-up':>8} {'cluster':>8} {'speed-up':>8} {'E MAE':>9} "
          f"{'F MAE':>8} {'F/teacher':>9} {'NVE drift':>10} {'excursion':>10}")
    for name, model in models.items():
        errors = ase_mlipal.evaluate(model, test)
        drift = nve_drift(model, md_start, args.md_steps)
        row = {"parameters": sum(p.numel() for p in model.parameters()), "seconds_per_call": times[name],
               "speedup": speedups[name], "cluster_seconds_per_call": big_times[name],
               "cluster_speedup": big_speedups[name], **errors, **drift}
        results["models"][name] = row
        ratio = row["forces_mae"] / results["models"]["teacher"]["forces_mae"]
        print(f"{name:<9} {row['parameters']:>7} {1e3 * times[name]:>8.2f} {row['speedup']:>8.2f} "
              f"{1e3 * big_times[name]:>8.1f} {row['cluster_speedup']:>8.2f} "
              f"{row['energy_mae_per_atom']:>9.2f} {row['forces_mae']:>8.4f} {ratio:>9.2f} "
              f"{row['drift_mev_per_atom_ps']:>10.3f} {row['max_excursion_mev_per_atom']:>10.3f}", flush=True)
    print(f"ms/call: mean over {len(timing_frames)} test molecules (~7 atoms: the ASE call, not the model, costs); "
          f"cluster: {len(big)} atoms (64 ethanols)")
    print("units: ms per ASE call; E MAE meV/atom; F MAE eV/A; drift meV/atom/ps; excursion meV/atom. "
          f"Targets: speed-up >= 3, F/teacher <= 1.2. Total {time.perf_counter() - started:.0f} s")
    from ase_mlipal.analysis.reconstruction import atom_latents, compare, plot_comparison

    latents = {"pretrained": atom_latents(ase_mlipal.load_model("default"), test),
               **{name: atom_latents(model, test) for name, model in models.items()}}
    comparison = compare(latents, n_local_points=50, max_atoms=1000)
    print(comparison)
    results["reconstruction"] = {"names": comparison.names, "gfre": comparison.gfre.tolist(),
                                 "lfre": comparison.lfre.tolist(), "n_atoms": comparison.n_atoms}
    plot_comparison(comparison, Path(args.out).with_name("distill_reconstruction.png"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
