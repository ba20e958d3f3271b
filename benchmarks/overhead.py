"""Per-call cost of MLIPALCalculator, for each kernel, relative to mace's MACECalculator on the same model.

    python benchmarks/overhead.py [--model default] [--repeats 7] [--calls 20] [--kernels activation ntk ...]

Both calculators run in this process, interleaved round by round (these
machines are noisy), on a small molecule and on a periodic cell of a few
hundred atoms. Each round times ``--calls`` force calls with fresh
positions; the printed number is the median round. The ratio is
MLIPALCalculator / MACECalculator. ``distance`` is the shipped default
(``MLIPALCalculator()``: the activation kernel, distance-aware, on the
shipped distance-aware posterior with its 4096 kept atom rows; with another
``--model``, rows of the timed structure alone); ``activation`` and
``fixed`` are those kernels' plain posterior variance
(``distance_aware=False``). Targets: activation and distance at most 1.10, ntk
at most 1.6, force_ntk and ef_ntk at most 3; fixed (a second, random model)
and a 4-model committee (the model and 3 random-init copies, costing what
fine-tuned members would) are for reference.

Note: MACECalculator always computes the stress; MLIPALCalculator does so
only for periodic structures, as ASE expects.

float32 against float64 (``--dtype-compare``)::

    python benchmarks/overhead.py --dtype-compare [--repeats 7] [--calls 20] [--md-steps 200] [--nve-steps 2000]

On the shipped model (``MLIPALCalculator(distance_aware=False)`` and
``MLIPALCalculator(dtype="float32", distance_aware=False)``, both with the
shipped plain posterior) and
the same two structures: the per-call time ratio float32 / float64 (both
calculators timed in the same rounds, on the same positions, order
alternating; MACECalculator in both dtypes beside them for reference); the
deviations of energy, forces, energy uncertainty and largest force
uncertainty over every timed call (independent 0.05 A rattles of the
structure) and over the frames of a 600 K Langevin run of ethanol; two
Langevin runs of ethanol at 600 K from the same velocities and the same
thermostat random numbers, one per dtype, stepped side by side (how fast
the trajectories part); and two NVE (velocity Verlet) runs from the same
velocities (total-energy drift of each dtype). Writes
``benchmarks/results/overhead_dtype.txt`` and ``overhead_dtype.json``.
"""

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import ase_mlipal  # first: imports mace before e3nn

import numpy as np
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from mace.calculators import MACECalculator

from ase_mlipal.models.model import DEFAULT_DISTANCE_POSTERIOR_PATH

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


TARGETS = {"activation": 1.10, "distance": 1.10, "ntk": 1.6, "force_ntk": 3.0, "ef_ntk": 3.0}


def calculator(model, kernel: str, shipped: bool = False):
    """The timed calculator; ``shipped``: ``distance`` starts from the shipped distance-aware posterior."""
    if kernel == "distance":
        posterior = DEFAULT_DISTANCE_POSTERIOR_PATH if shipped else None
        return ase_mlipal.MLIPALCalculator(model=model, distance_aware=True, posterior=posterior)
    options = {"members": [ase_mlipal.random_like(model, seed) for seed in (1, 2, 3)]} if kernel == "committee" else {}
    return ase_mlipal.MLIPALCalculator(model=model, kernel=kernel, kernel_options=options, posterior=None,
                                       distance_aware=False)  # the kernel's own posterior variance


def compare(name, atoms, model, kernel, repeats, calls, shipped: bool = False):
    mace_calc = MACECalculator(models=copy.deepcopy(model), default_dtype="float64")
    ours = calculator(model, kernel, shipped)
    ours.condition([atoms])
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


# -- float32 against float64 (--dtype-compare) --------------------------------

RESULTS = Path(__file__).parent / "results"
QUANTITIES = {  # name: (unit, how to read it from calc.results)
    "energy": ("eV", lambda r: np.array([r["energy"]])),
    "forces": ("eV/A", lambda r: np.asarray(r["forces"]).ravel()),
    "energy_uncertainty": ("eV", lambda r: np.array([r["energy_uncertainty"]])),
    "max_force_uncertainty": ("eV/A", lambda r: np.array([r["uncertainty"]])),
}


def snapshot(results: dict) -> dict:
    """The compared quantities of one call, copied out of ``calc.results``."""
    return {name: read(results).copy() for name, (_, read) in QUANTITIES.items()}


def deviations(reference: list, other: list) -> dict:
    """Max and mean absolute deviation of each quantity over paired snapshots (float32 minus float64)."""
    out = {}
    for name, (unit, _) in QUANTITIES.items():
        a = np.concatenate([r[name] for r in reference])
        b = np.concatenate([o[name] for o in other])
        diff = np.abs(b - a)
        out[name] = {"unit": unit, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "max_rel": float((diff / np.maximum(np.abs(a), 1e-12)).max()) if name != "forces" else None,
                     "reference_mean_abs": float(np.abs(a).mean())}
    return out


def timed_calls(atoms, calc, positions: list, record: bool):
    """Seconds per call of ``calc`` over ``positions`` (after a warm-up call), and the results of each call."""
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()  # warm-up and neighbour list
    seconds, out = 0.0, []
    for pos in positions:
        atoms.positions = pos
        start = time.perf_counter()
        atoms.get_forces()
        seconds += time.perf_counter() - start
        if record:
            out.append(snapshot(calc.results))
    return seconds / len(positions), out


def dtype_timing(name: str, atoms, calcs: dict, repeats: int, calls: int, seed: int = 0) -> dict:
    """Interleaved rounds over all ``calcs`` on the same rattled positions; deviations of the MLIPAL pair."""
    rng = np.random.default_rng(seed)
    times = {key: [] for key in calcs}
    results = {"f64": [], "f32": []}
    keys = list(calcs)
    warm = [atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape) for _ in range(2)]
    for key in keys:  # an untimed round first: the first calls of a process are slow
        timed_calls(atoms, calcs[key], warm, record=False)
    for round_ in range(repeats):
        positions = [atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape) for _ in range(calls)]
        for key in (keys if round_ % 2 == 0 else keys[::-1]):  # alternate who goes first
            seconds, out = timed_calls(atoms, calcs[key], positions, record=key in results)
            times[key].append(seconds)
            if key in results:
                results[key].extend(out)
    median = {key: statistics.median(t) for key, t in times.items()}
    row = {"structure": name, "atoms": len(atoms), "calls_per_round": calls, "rounds": repeats,
           "ms_per_call": {key: 1e3 * m for key, m in median.items()},
           "ms_per_call_rounds": {key: [1e3 * t for t in ts] for key, ts in times.items()},
           "ratio_f32_f64": median["f32"] / median["f64"],
           "deviations": deviations(results["f64"], results["f32"]), "n_frames": len(results["f64"])}
    if "mace_f64" in median:
        row["mace_ratio_f32_f64"] = median["mace_f32"] / median["mace_f64"]
    return row


def md_start(temperature_K: float, seed: int):
    atoms = molecule("CH3CH2OH")
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    return atoms


def side_by_side(dynamics: dict, steps: int) -> tuple[dict, dict]:
    """Step several dynamics one step each in turn; per step the positions, energies and results of each."""
    runs = {key: dyn.irun(steps) for key, dyn in dynamics.items()}
    trace = {key: [] for key in dynamics}
    seconds = {key: 0.0 for key in dynamics}
    for _ in range(steps + 1):  # irun yields once before the first step
        for key, run in runs.items():
            start = time.perf_counter()
            next(run)
            seconds[key] += time.perf_counter() - start
            atoms = dynamics[key].atoms
            calc = atoms.calc
            trace[key].append({"positions": atoms.get_positions(), "epot": atoms.get_potential_energy(),
                               "ekin": atoms.get_kinetic_energy(), **snapshot(calc.results)})
    return trace, {key: 1e3 * s / steps for key, s in seconds.items()}


def md_compare(calcs: dict, steps: int, nve_steps: int, temperature_K: float = 600.0, timestep_fs: float = 0.5,
               seed: int = 0) -> dict:
    """Langevin side by side (divergence, deviations on the float64 frames) and NVE side by side (drift)."""
    dynamics = {}
    for key, calc in calcs.items():
        atoms = md_start(temperature_K, seed)
        atoms.calc = calc
        # the parameters of ase_mlipal.learning.md_learner.langevin, plus a seeded thermostat (same numbers for both)
        dynamics[key] = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.01,
                                 fixcm=False, rng=np.random.default_rng(seed + 1))
    trace, ms = side_by_side(dynamics, steps)
    rmsd = np.array([np.sqrt(np.mean(np.sum((a["positions"] - b["positions"]) ** 2, axis=1)))
                     for a, b in zip(trace["f64"], trace["f32"])])
    epot_diff = np.array([abs(a["epot"] - b["epot"]) for a, b in zip(trace["f64"], trace["f32"])])

    def first_step(limit):
        over = np.nonzero(rmsd > limit)[0]
        return int(over[0]) if len(over) else None

    # float32 on the very frames of the float64 run: deviations where the dynamics go
    replay_atoms = md_start(temperature_K, seed)
    replay_atoms.calc = calcs["f32"]
    replay = []
    for frame in trace["f64"]:
        replay_atoms.positions = frame["positions"]
        replay_atoms.get_forces()
        replay.append(snapshot(calcs["f32"].results))
    langevin = {
        "steps": steps, "temperature_K": temperature_K, "timestep_fs": timestep_fs, "friction": 0.01,
        "ms_per_step": ms, "ratio_f32_f64": ms["f32"] / ms["f64"],
        "rmsd_A": {str(s): float(rmsd[s]) for s in (10, 50, 100, 150, 200) if s <= steps},
        "rmsd_A_final": float(rmsd[-1]),
        "first_step_rmsd_over": {"0.001": first_step(1e-3), "0.01": first_step(1e-2), "0.1": first_step(0.1)},
        "epot_abs_diff_eV": {"max": float(epot_diff.max()), "final": float(epot_diff[-1])},
        "mean_max_force_uncertainty": {key: float(np.mean([t["max_force_uncertainty"][0] for t in trace[key]]))
                                       for key in trace},
        "mean_epot_eV": {key: float(np.mean([t["epot"] for t in trace[key]])) for key in trace},
        "deviations_on_f64_frames": deviations(trace["f64"], replay),
    }

    nve = {}
    dynamics = {}
    for key, calc in calcs.items():
        atoms = md_start(temperature_K, seed)
        atoms.calc = calc
        dynamics[key] = VelocityVerlet(atoms, timestep_fs * units.fs)
    trace, ms = side_by_side(dynamics, nve_steps)
    time_ps = np.arange(nve_steps + 1) * timestep_fs / 1000
    n_atoms = len(dynamics["f64"].atoms)
    for key in trace:
        etot = np.array([t["epot"] + t["ekin"] for t in trace[key]])
        slope = np.polyfit(time_ps, etot, 1)[0]
        nve[key] = {"drift_meV_per_atom_per_ps": 1e3 * slope / n_atoms,
                    "etot_change_meV": 1e3 * float(etot[-1] - etot[0]),
                    "etot_std_meV": 1e3 * float(etot.std()),
                    "ms_per_step": ms[key]}
    nve["steps"], nve["timestep_fs"], nve["ratio_f32_f64"] = nve_steps, timestep_fs, ms["f32"] / ms["f64"]
    return {"langevin": langevin, "nve": nve}


def dtype_report(rows: list, md: dict, header: str) -> str:
    lines = [header, "",
             "Per-call time (median round; MLIPALCalculator() activation kernel with the shipped posterior; "
             "MACECalculator on the same model for reference)",
             f"{'structure':<26} {'atoms':>5} {'f64 ms':>8} {'f32 ms':>8} {'f32/f64':>8}   "
             f"{'MACE f64':>8} {'MACE f32':>8} {'f32/f64':>8}"]
    for r in rows:
        ms = r["ms_per_call"]
        lines.append(f"{r['structure']:<26} {r['atoms']:>5} {ms['f64']:>8.2f} {ms['f32']:>8.2f} "
                     f"{r['ratio_f32_f64']:>8.2f}   {ms.get('mace_f64', float('nan')):>8.2f} "
                     f"{ms.get('mace_f32', float('nan')):>8.2f} {r.get('mace_ratio_f32_f64', float('nan')):>8.2f}")
    lines += ["", "|float32 - float64| over the timed calls (independent 0.05 A rattles) and over the 600 K Langevin "
              "frames of the float64 run (float32 evaluated on the same frames)",
              f"{'structure':<26} {'frames':>6} {'quantity':<22} {'unit':<5} {'max':>10} {'mean':>10} "
              f"{'max rel':>9} {'mean|f64|':>10}"]
    blocks = [(r["structure"], r["n_frames"], r["deviations"]) for r in rows]
    lv = md["langevin"]
    blocks.append((f"ethanol MD {lv['temperature_K']:.0f} K", lv["steps"] + 1, lv["deviations_on_f64_frames"]))
    for name, n, dev in blocks:
        for q, d in dev.items():
            rel = "" if d["max_rel"] is None else f"{d['max_rel']:.1e}"
            lines.append(f"{name:<26} {n:>6} {q:<22} {d['unit']:<5} {d['max_abs']:>10.2e} {d['mean_abs']:>10.2e} "
                         f"{rel:>9} {d['reference_mean_abs']:>10.3g}")
            name, n = "", ""
    nve = md["nve"]
    lines += ["", f"Langevin, ethanol, {lv['temperature_K']:.0f} K, {lv['timestep_fs']} fs, {lv['steps']} steps, "
              "same start and thermostat random numbers for both dtypes, stepped side by side",
              f"  ms per step: f64 {lv['ms_per_step']['f64']:.2f}, f32 {lv['ms_per_step']['f32']:.2f} "
              f"(ratio {lv['ratio_f32_f64']:.2f})",
              "  position RMSD between the two trajectories (A): "
              + ", ".join(f"step {s}: {v:.1e}" for s, v in lv["rmsd_A"].items()),
              "  first step with RMSD > 0.001 / 0.01 / 0.1 A: "
              + " / ".join(str(v) for v in lv["first_step_rmsd_over"].values()),
              f"  |Epot f32 - Epot f64| along the runs: max {lv['epot_abs_diff_eV']['max']:.2e} eV, "
              f"final {lv['epot_abs_diff_eV']['final']:.2e} eV",
              f"  mean Epot: f64 {lv['mean_epot_eV']['f64']:.4f} eV, f32 {lv['mean_epot_eV']['f32']:.4f} eV; "
              f"mean max force uncertainty: f64 {lv['mean_max_force_uncertainty']['f64']:.4f}, "
              f"f32 {lv['mean_max_force_uncertainty']['f32']:.4f} eV/A",
              "", f"NVE (velocity Verlet), ethanol from {lv['temperature_K']:.0f} K velocities, {nve['timestep_fs']} fs, "
              f"{nve['steps']} steps ({nve['steps'] * nve['timestep_fs'] / 1000:.2f} ps)"]
    for key in ("f64", "f32"):
        n = nve[key]
        lines.append(f"  {key}: drift {n['drift_meV_per_atom_per_ps']:+.3f} meV/atom/ps (linear fit), "
                     f"Etot end - start {n['etot_change_meV']:+.3f} meV, Etot std {n['etot_std_meV']:.3f} meV, "
                     f"{n['ms_per_step']:.2f} ms/step")
    return "\n".join(lines) + "\n"


def dtype_compare(args) -> None:
    started = time.perf_counter()
    calcs = {"f64": ase_mlipal.MLIPALCalculator(distance_aware=False),  # the plain posterior it measured
             "f32": ase_mlipal.MLIPALCalculator(dtype="float32", distance_aware=False)}
    assert calcs["f32"].calibrated and calcs["f32"].model_hash == calcs["f64"].model_hash
    timed = dict(calcs)
    if not args.no_mace:
        timed["mace_f64"] = MACECalculator(models=copy.deepcopy(calcs["f64"].model), default_dtype="float64")
        timed["mace_f32"] = MACECalculator(models=copy.deepcopy(calcs["f64"].model), default_dtype="float32")
    ethanol = molecule("CH3CH2OH")
    diamond = bulk("C", "diamond", a=3.57, cubic=True).repeat(3)  # 216 atoms
    diamond.rattle(0.05, seed=0)
    rows = []
    for name, atoms, calls in (("ethanol (molecule)", ethanol, args.calls),
                               ("diamond 3x3x3 (periodic)", diamond, max(3, args.calls // 4))):
        rows.append(dtype_timing(name, atoms, timed, args.repeats, calls))
        r = rows[-1]
        print(f"{name}: f32/f64 {r['ratio_f32_f64']:.2f} ({r['ms_per_call']['f64']:.2f} -> "
              f"{r['ms_per_call']['f32']:.2f} ms)", flush=True)
    md = md_compare(calcs, args.md_steps, args.nve_steps)
    header = (f"# python benchmarks/overhead.py --dtype-compare --repeats {args.repeats} --calls {args.calls} "
              f"--md-steps {args.md_steps} --nve-steps {args.nve_steps}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; "
              f"{time.perf_counter() - started:.0f} s")
    text = dtype_report(rows, md, header)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead_dtype.txt").write_text(text)
    record = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": "default (shipped)", "kernel": "activation", "posterior": "shipped",
              "seconds": time.perf_counter() - started, "structures": rows, "md": md}
    (out / "overhead_dtype.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'overhead_dtype.txt'} and {out / 'overhead_dtype.json'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--kernels", nargs="+", default=["activation", "distance", "ntk", "force_ntk", "ef_ntk", "fixed", "committee"])
    parser.add_argument("--dtype-compare", action="store_true",
                        help="float32 against float64 on the shipped default (ignores --model and --kernels)")
    parser.add_argument("--md-steps", type=int, default=200, help="--dtype-compare: Langevin steps per dtype")
    parser.add_argument("--nve-steps", type=int, default=2000, help="--dtype-compare: NVE steps per dtype")
    parser.add_argument("--no-mace", action="store_true", help="--dtype-compare: leave MACECalculator out")
    parser.add_argument("--out", default=str(RESULTS), help="--dtype-compare: folder of the result files")
    args = parser.parse_args()
    if args.dtype_compare:
        dtype_compare(args)
        return
    model = load(args.model)

    ethanol = molecule("CH3CH2OH")
    diamond = bulk("C", "diamond", a=3.57, cubic=True).repeat(3)  # 216 atoms
    diamond.rattle(0.05, seed=0)
    print(f"{'kernel':<11} {'structure':<26} {'atoms':>6} {'MACECalc ms':>12} {'MLIPAL ms':>12} {'ratio':>7}  target")
    shipped = args.model == "default"
    for kernel in args.kernels:
        compare("ethanol (molecule)", ethanol, model, kernel, args.repeats, args.calls, shipped)
        compare("diamond 3x3x3 (periodic)", diamond, model, kernel, args.repeats, max(3, args.calls // 4), shipped)


if __name__ == "__main__":
    main()
