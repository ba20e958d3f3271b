"""Per-call cost of MLIPALCalculator, for each kernel, relative to mace's MACECalculator on the same model.

    python benchmarks/overhead.py [--model default] [--repeats 7] [--calls 20] [--kernels activation ntk ...]

Both calculators run in this process, interleaved round by round (these
machines are noisy), on a small molecule and on a periodic cell of a few
hundred atoms. Each round times ``--calls`` force calls with fresh
positions; the printed number is the median round. The ratio is
MLIPALCalculator / MACECalculator. Targets: activation at most 1.10, ntk
at most 1.6, force_ntk and ef_ntk at most 3; fixed (a second, random model)
and a 4-model committee (the model and 3 random-init copies, costing what
fine-tuned members would) are for reference.

Note: MACECalculator always computes the stress; MLIPALCalculator does so
only for periodic structures, as ASE expects.
"""

import argparse
import copy
import statistics
import time
import warnings

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
from ase.build import bulk, molecule
from mace.calculators import MACECalculator

warnings.filterwarnings("ignore")


def load(spec: str):
    try:
        return ase_mlipal.load_model(spec)
    except ase_mlipal.ModelLoadError:
        print(f"model {spec!r} not available; using a MACE built on the fly (32 channels, L=1)")
        return ase_mlipal.build_mace(["H", "C", "N", "O"], channels=32, r_max=5.0, seed=0)


def per_call_seconds(atoms, calc, calls: int, rng) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()  # warm-up and neighbour list
    start = time.perf_counter()
    for _ in range(calls):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        atoms.get_forces()
    return (time.perf_counter() - start) / calls


TARGETS = {"activation": 1.10, "ntk": 1.6, "force_ntk": 3.0, "ef_ntk": 3.0}


def calculator(model, kernel: str):
    options = {"members": [ase_mlipal.random_like(model, seed) for seed in (1, 2, 3)]} if kernel == "committee" else {}
    return ase_mlipal.MLIPALCalculator(model=model, kernel=kernel, kernel_options=options, posterior=None)


def compare(name, atoms, model, kernel, repeats, calls):
    mace_calc = MACECalculator(models=copy.deepcopy(model), default_dtype="float64")
    ours = calculator(model, kernel)
    ours.add_reference([atoms])
    rng = np.random.default_rng(0)
    t_mace, t_ours = [], []
    for _ in range(repeats):
        t_mace.append(per_call_seconds(atoms, mace_calc, calls, rng))
        t_ours.append(per_call_seconds(atoms, ours, calls, rng))
    m, o = statistics.median(t_mace), statistics.median(t_ours)
    target = f"<= {TARGETS[kernel]:.2f}" if kernel in TARGETS else "reference"
    print(f"{kernel:<11} {name:<26} {len(atoms):>6} {1e3 * m:>12.2f} {1e3 * o:>12.2f} {o / m:>7.2f}  {target}",
          flush=True)
    return o / m


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--kernels", nargs="+", default=["activation", "ntk", "force_ntk", "ef_ntk", "fixed", "committee"])
    args = parser.parse_args()
    model = load(args.model)

    ethanol = molecule("CH3CH2OH")
    diamond = bulk("C", "diamond", a=3.57, cubic=True).repeat(3)  # 216 atoms
    diamond.rattle(0.05, seed=0)
    print(f"{'kernel':<11} {'structure':<26} {'atoms':>6} {'MACECalc ms':>12} {'MLIPAL ms':>12} {'ratio':>7}  target")
    for kernel in args.kernels:
        compare("ethanol (molecule)", ethanol, model, kernel, args.repeats, args.calls)
        compare("diamond 3x3x3 (periodic)", diamond, model, kernel, args.repeats, max(3, args.calls // 4))


if __name__ == "__main__":
    main()
