"""Langevin MD with MLIPALCalculator: energy, forces and their uncertainties as it runs.

    python examples/md_uncertainty.py                 # the shipped default model
    python examples/md_uncertainty.py --model my.pt   # any model load_model accepts

If the default model is not installed, a small MACE is built on the fly
(random weights: the dynamics is not chemistry, but the uncertainty
machinery is the real one). The posterior is conditioned on a few
near-equilibrium frames, so uncertainties grow as the molecule leaves them.
"""

import argparse
import warnings

import numpy as np
from ase.build import molecule

import ase_mlipal

warnings.filterwarnings("ignore", message=".*TorchScript.*")


def make_calculator(model_spec: str) -> ase_mlipal.MLIPALCalculator:
    try:
        return ase_mlipal.MLIPALCalculator(model=model_spec)
    except ase_mlipal.ModelLoadError as error:
        if model_spec != "default":
            raise
        print(f"[{error}]\nBuilding a small MACE on the fly instead.\n")
        model = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=16, r_max=4.5, scale=0.1, seed=0)
        return ase_mlipal.MLIPALCalculator(model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--molecule", default="CH3CH2OH", help="a name from ase.build.molecule")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=600.0, help="K")
    parser.add_argument("--every", type=int, default=20, help="print every this many steps")
    args = parser.parse_args()

    calc = make_calculator(args.model)
    atoms = molecule(args.molecule)
    rng = np.random.default_rng(0)
    references = []
    for _ in range(20):
        frame = atoms.copy()
        frame.positions += rng.normal(scale=0.03, size=frame.positions.shape)
        references.append(frame)
    if calc.energy_posterior.n_added == 0:
        calc.condition(references)
    units_note = "" if calc.calibrated else "  (raw units: not calibrated)"

    atoms.calc = calc
    dyn = ase_mlipal.langevin(atoms, temperature_K=args.temperature, timestep_fs=0.5, seed=0)  # starts at temperature

    def report() -> None:
        r = calc.results
        worst = int(np.argmax(r["forces_uncertainty"]))
        fmax = np.linalg.norm(r["forces"], axis=1).max()
        print(f"{dyn.nsteps:6d} {r['energy']:14.4f} {r['energy_uncertainty']:10.4f} {fmax:10.3f} "
              f"{r['uncertainty']:12.4f}   {atoms[worst].symbol}{worst}")

    print(f"Langevin MD of {args.molecule} at {args.temperature:.0f} K{units_note}")
    print(f"{'step':>6} {'E (eV)':>14} {'sigma_E':>10} {'max |F|':>10} {'max sigma_F':>12}   worst atom")
    dyn.attach(report, interval=args.every)
    dyn.run(args.steps)


if __name__ == "__main__":
    main()
