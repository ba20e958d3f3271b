"""Selection of 100 structures from pools of 2k, 20k and 200k: time and peak memory.

    python benchmarks/pool_scaling.py [--sizes 2000 20000 200000] [--kernels activation ntk]
                                      [--n 100] [--exact-at 20000] [--out benchmarks/results/pool_scaling.json]

The pool is the reactive benchmark's candidate pool (2467 structures)
replicated with thermal noise (Gaussian, 0.02 A per coordinate), generated
lazily so that nothing about the pool itself grows with its size.
``ase_mlipal.select`` (MaxDet, shortlist 5000, chunks of 256) runs on the
default model with an empty posterior. Each (kernel, size) runs in its own
process, so its peak resident memory is its own.

Printed: wall time and peak memory per size, the ratios time(200k)/time(20k)
(target at most 11: linear) and memory(200k)/memory(20k) (target at most
1.5: flat), and at ``--exact-at`` the same run against an exact-kernel
implementation that builds the N x N kernel matrix and runs greedy
posterior variance on all candidates (no shortlist), with the overlap of the
two selections and the MaxDet objective ``log det(lambda I + sum phi phi^T)``
each reaches. At 200k the N x N matrix would need 320 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "reactive.xyz.gz"
CACHE = Path(tempfile.gettempdir()) / "mlipal_reactive_pool.traj"
REGULARIZATION = 1e-2


def reactive_pool() -> list:
    """The candidate split of the reactive set (cached as .traj: parsing the extxyz takes ~40 s)."""
    from ase.io import read, write

    if not CACHE.exists():
        write(CACHE, [a for a in read(DATA, ":") if a.info.get("split") == "pool"])
    return read(CACHE, ":")


def replicas(base: list, size: int, noise: float = 0.02):
    """``base`` repeated with thermal noise, one structure at a time (seeded per index)."""
    for i in range(size):
        atoms = base[i % len(base)].copy()
        atoms.positions += np.random.default_rng(i).normal(scale=noise, size=atoms.positions.shape)
        yield atoms


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(kernel: str, size: int, n: int) -> dict:
    import ase_mlipal

    calc = ase_mlipal.MLIPALCalculator("default", kernel=kernel, posterior=None, regularization=REGULARIZATION)
    base = reactive_pool()  # not timed: the same for every size
    start = time.perf_counter()
    picks = ase_mlipal.select(replicas(base, size), n, calc, method="maxdet", shortlist=5000, chunk_size=256,
                              progress=False)
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb(), "picks": picks.tolist()}


def log_det(phi: np.ndarray, picks) -> float:
    """The MaxDet objective ``log det(lambda I + sum_picks phi phi^T)``."""
    rows = phi[list(picks)]
    return float(np.linalg.slogdet(REGULARIZATION * np.eye(phi.shape[1]) + rows.T @ rows)[1])


def run_exact(kernel: str, size: int, n: int, compare: list) -> dict:
    """Greedy posterior variance with the explicit N x N kernel matrix (what the feature form avoids).

    Also evaluates the MaxDet objective of its picks and of ``compare``
    (the shortlisted run's picks) on the full feature matrix.
    """
    import ase_mlipal
    from ase_mlipal.selection import pool_features

    calc = ase_mlipal.MLIPALCalculator("default", kernel=kernel, posterior=None, regularization=REGULARIZATION)
    base = reactive_pool()
    start = time.perf_counter()
    phi = pool_features(calc, replicas(base, size))[:, 0]
    kernel_matrix = phi @ phi.T  # N x N
    variance = np.diag(kernel_matrix).copy()  # lambda * sigma^2 of the empty-posterior GP
    columns = np.zeros((size, n))  # incremental Cholesky of K_SS + lambda I
    picks = []
    for j in range(n):
        variance[picks] = -np.inf
        k = int(np.argmax(variance))
        picks.append(k)
        column = (kernel_matrix[:, k] - columns[:, :j] @ columns[k, :j]) / np.sqrt(REGULARIZATION + variance[k])
        columns[:, j] = column
        variance -= column ** 2
    seconds = time.perf_counter() - start
    objective = {"exact": log_det(phi, picks), "shortlisted": log_det(phi, compare) if compare else None}
    return {"seconds": seconds, "peak_mb": peak_mb(), "picks": picks, "log_det": objective}


def in_subprocess(mode: str, kernel: str, size: int, n: int, compare: list = ()) -> dict:
    command = [sys.executable, __file__, "--one", mode, kernel, str(size), "--n", str(n),
               "--compare", json.dumps(list(compare))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        return {"failed": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000])
    parser.add_argument("--kernels", nargs="+", default=["activation", "ntk"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--exact-at", type=int, default=20000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pool_scaling.json"))
    parser.add_argument("--one", nargs=3, metavar=("MODE", "KERNEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--compare", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, kernel, size = args.one
        if mode == "ours":
            print(json.dumps(run_ours(kernel, int(size), args.n)))
        else:
            print(json.dumps(run_exact(kernel, int(size), args.n, json.loads(args.compare))))
        return

    results = {"n": args.n, "sizes": args.sizes, "runs": {}}
    print(f"{'kernel':<11} {'N':>7} {'ours s':>9} {'ours MB':>8} {'exact s':>9} {'exact MB':>9}")
    for kernel in args.kernels:
        runs = results["runs"][kernel] = {}
        for size in args.sizes:
            ours = in_subprocess("ours", kernel, size, args.n)
            exact = None
            if size == args.exact_at:
                exact = in_subprocess("exact", kernel, size, args.n, ours.get("picks", []))
            runs[str(size)] = {"ours": ours, "exact": exact}
            line = f"{kernel:<11} {size:>7} " + _cells(ours)
            if exact is not None:
                line += " " + _cells(exact)
                if "picks" in exact and "picks" in ours:
                    overlap = len(set(exact["picks"]) & set(ours["picks"])) / args.n
                    line += f"   same picks: {overlap:.0%}"
                    objective = exact["log_det"]
                    if objective["shortlisted"] is not None:
                        line += f", log det {objective['shortlisted']:.1f} (exact greedy {objective['exact']:.1f})"
            print(line, flush=True)
            _write(args.out, results)
        _ratios(kernel, runs, args.sizes, args.exact_at)
    print(f"results: {args.out}")


def _write(path: str, results: dict) -> None:
    """After every run, so that a long run interrupted late keeps what it measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1))


def _cells(run: dict) -> str:
    if "failed" in run:
        return f"{'failed':>9} {run['failed'][:40]}"
    return f"{run['seconds']:>9.1f} {run['peak_mb']:>8.0f}"


def _ratios(kernel: str, runs: dict, sizes: list[int], exact_at: int) -> None:
    ordered = [s for s in sorted(sizes) if "seconds" in runs[str(s)]["ours"]]
    for small, large in zip(ordered, ordered[1:]):
        a, b = runs[str(small)]["ours"], runs[str(large)]["ours"]
        factor = large / small
        print(f"  {kernel}: time({large})/time({small}) = {b['seconds'] / a['seconds']:.2f} "
              f"(linear: {factor:.0f}), memory ratio = {b['peak_mb'] / a['peak_mb']:.2f} (flat: 1)")
    at = runs.get(str(exact_at))
    if at and at["exact"] and "seconds" in at["exact"] and "seconds" in at["ours"]:
        print(f"  {kernel} at {exact_at}: exact / ours time = {at['exact']['seconds'] / at['ours']['seconds']:.2f}, "
              f"memory = {at['exact']['peak_mb'] / at['ours']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
