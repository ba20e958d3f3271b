"""Selection of 100 structures from pools of 2k, 20k and 200k: time and peak memory.

    python benchmarks/pool_scaling.py [--sizes 2000 20000 200000] [--kernels activation ntk]
                                      [--n 100] [--exact-at 20000] [--out benchmarks/results/pool_scaling.json]

The pool is the reactive benchmark's candidate pool (2467 structures)
replicated with thermal noise (Gaussian, 0.02 A per coordinate), generated
lazily so that nothing about the pool itself grows with its size.
``ase_mlipal.select`` (MaxDet, shortlist 5000, chunks of 256: the
diversity-aware screen of ``selection.DiverseScreen``) runs on the default
model with an empty posterior. Each (kernel, size) runs in its own process,
so its peak resident memory is its own; its CPU time is recorded next to
the wall time (the ratio of CPU times is the one to trust on a shared core).

Printed: wall time and peak memory per size, the ratios time(200k)/time(20k)
(target at most 11: linear) and memory(200k)/memory(20k) (target at most
1.5: flat), and at ``--exact-at`` the same run against an exact-kernel
implementation that builds the N x N kernel matrix and runs greedy
posterior variance on all candidates (no shortlist), with the overlap of the
two selections and the MaxDet objective ``log det(lambda I + sum phi phi^T)``
each reaches, next to the mean over 10 draws of 100 random picks and to
the old variance-only shortlist (the 5000 of largest variance, then greedy
MaxDet). ``gap_closed = (ours - random) / (exact - random)`` per kernel
(target at least 0.95) goes into the JSON's ``gap_closed``. At 200k the
N x N matrix would need 320 GB.

    python benchmarks/pool_scaling.py --kernels ntk --sizes 200000 --merge
        adds runs to the existing JSON (same --out) instead of replacing it;
    python benchmarks/pool_scaling.py --report
        prints the table of everything in the JSON (the .txt is this output).
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
SHORTLIST = 5000
RANDOM_DRAWS = 10


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

    calc = ase_mlipal.MLIPALCalculator("default", kernel=kernel, posterior=None, regularization=REGULARIZATION,
                                       distance_aware=False)
    base = reactive_pool()  # not timed: the same for every size
    start, cpu = time.perf_counter(), time.process_time()
    picks = ase_mlipal.select(calc, replicas(base, size), n, method="maxdet", shortlist=SHORTLIST, chunk_size=256,
                              progress=False)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "peak_mb": peak_mb(), "picks": picks.tolist()}


def log_det(phi: np.ndarray, picks) -> float:
    """The MaxDet objective ``log det(lambda I + sum_picks phi phi^T)``."""
    rows = phi[list(picks)]
    return float(np.linalg.slogdet(REGULARIZATION * np.eye(phi.shape[1]) + rows.T @ rows)[1])


def run_exact(kernel: str, size: int, n: int, compare: list) -> dict:
    """Greedy posterior variance with the explicit N x N kernel matrix (what the feature form avoids).

    Also evaluates the MaxDet objective of its picks, of ``compare`` (the
    screened run's picks), of random picks (mean of ``RANDOM_DRAWS``) and of
    the old variance-only shortlist on the full feature matrix.
    """
    import ase_mlipal
    from ase_mlipal.selection import greedy_maxdet, pool_features

    calc = ase_mlipal.MLIPALCalculator("default", kernel=kernel, posterior=None, regularization=REGULARIZATION,
                                       distance_aware=False)
    base = reactive_pool()
    start, cpu = time.perf_counter(), time.process_time()
    phi = pool_features(calc, replicas(base, size), progress=False)[:, 0]
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
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    del kernel_matrix, columns
    rng = np.random.default_rng(0)
    random_draws = [log_det(phi, rng.choice(size, n, replace=False)) for _ in range(RANDOM_DRAWS)]
    variance = np.einsum("ij,ij->i", phi, phi)  # the old screen: largest prior variance, then greedy
    shortlist = np.argsort(-variance)[:SHORTLIST]
    old = shortlist[greedy_maxdet(phi[shortlist], REGULARIZATION * np.eye(phi.shape[1]), n)]
    objective = {"exact": log_det(phi, picks), "shortlisted": log_det(phi, compare) if compare else None,
                 "random": float(np.mean(random_draws)), "random_std": float(np.std(random_draws)),
                 "variance_shortlist": log_det(phi, old)}
    if compare:
        span = objective["exact"] - objective["random"]
        objective["gap_closed"] = (objective["shortlisted"] - objective["random"]) / span
        objective["gap_closed_variance_shortlist"] = (objective["variance_shortlist"] - objective["random"]) / span
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb(), "picks": picks, "log_det": objective}


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
    parser.add_argument("--merge", action="store_true", help="add to the runs already in --out")
    parser.add_argument("--report", action="store_true", help="print the table of the runs in --out")
    args = parser.parse_args()
    if args.one:
        mode, kernel, size = args.one
        if mode == "ours":
            print(json.dumps(run_ours(kernel, int(size), args.n)))
        else:
            print(json.dumps(run_exact(kernel, int(size), args.n, json.loads(args.compare))))
        return

    if args.report:
        report(json.loads(Path(args.out).read_text()))
        return
    results = {"n": args.n, "sizes": args.sizes, "runs": {}, "gap_closed": {}}
    if args.merge and Path(args.out).exists():
        results = json.loads(Path(args.out).read_text())
        if results.get("n") != args.n:
            raise SystemExit(f"{args.out} has n={results.get('n')}, not {args.n}")
        results["sizes"] = sorted(set(results.get("sizes", [])) | set(args.sizes))
        results.setdefault("gap_closed", {})
    print(HEADER)
    for kernel in args.kernels:
        runs = results["runs"].setdefault(kernel, {})
        for size in args.sizes:
            ours = in_subprocess("ours", kernel, size, args.n)
            exact = None
            if size == args.exact_at:
                exact = in_subprocess("exact", kernel, size, args.n, ours.get("picks", []))
            runs[str(size)] = {"ours": ours, "exact": exact}
            if exact is not None and "gap_closed" in exact.get("log_det", {}):
                results["gap_closed"][kernel] = exact["log_det"]["gap_closed"]
            print(_line(kernel, size, runs[str(size)], args.n), flush=True)
            _write(args.out, results)
        _ratios(kernel, runs, sorted(int(s) for s in runs), args.exact_at)
    print(f"results: {args.out}")


HEADER = (f"{'kernel':<11} {'N':>7} {'ours s':>9} {'cpu s':>8} {'ours MB':>8} {'exact s':>9} {'cpu s':>8} "
          f"{'exact MB':>9}")


def _line(kernel: str, size: int, run: dict, n: int) -> str:
    ours, exact = run["ours"], run["exact"]
    line = f"{kernel:<11} {size:>7} " + _cells(ours)
    if exact is not None:
        line += " " + _cells(exact)
        if "picks" in exact and "picks" in ours:
            overlap = len(set(exact["picks"]) & set(ours["picks"])) / n
            line += f"   same picks: {overlap:.0%}"
            objective = exact["log_det"]
            if objective["shortlisted"] is not None:
                line += f", log det {objective['shortlisted']:.1f} (exact greedy {objective['exact']:.1f}"
                if "random" in objective:
                    line += (f", random {objective['random']:.1f}, variance shortlist "
                             f"{objective['variance_shortlist']:.1f}); gap closed {objective['gap_closed']:.3f} "
                             f"(variance shortlist {objective['gap_closed_variance_shortlist']:.3f})")
                else:
                    line += ")"
    return line


def report(results: dict) -> None:
    """The table and ratios of every run in ``results`` (a merged JSON)."""
    print(HEADER)
    for kernel, runs in results["runs"].items():
        sizes = sorted(int(s) for s in runs)
        exact_at = next((s for s in sizes if runs[str(s)]["exact"]), None)
        for size in sizes:
            print(_line(kernel, size, runs[str(size)], results["n"]))
        _ratios(kernel, runs, sizes, exact_at)
    for kernel, fraction in results.get("gap_closed", {}).items():
        print(f"  gap_closed[{kernel}] = {fraction:.3f} (target >= 0.95)")


def _write(path: str, results: dict) -> None:
    """After every run, so that a long run interrupted late keeps what it measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1))


def _cells(run: dict) -> str:
    if "failed" in run:
        return f"{'failed':>9} {run['failed'][:40]}"
    cpu = f"{run['cpu_seconds']:>8.1f}" if "cpu_seconds" in run else f"{'-':>8}"
    return f"{run['seconds']:>9.1f} {cpu} {run['peak_mb']:>8.0f}"


def _ratios(kernel: str, runs: dict, sizes: list[int], exact_at: int) -> None:
    ordered = [s for s in sorted(sizes) if "seconds" in runs[str(s)]["ours"]]
    for small, large in zip(ordered, ordered[1:]):
        a, b = runs[str(small)]["ours"], runs[str(large)]["ours"]
        factor = large / small
        cpu = (f", cpu time ratio = {b['cpu_seconds'] / a['cpu_seconds']:.2f}"
               if "cpu_seconds" in a and "cpu_seconds" in b else "")
        print(f"  {kernel}: time({large})/time({small}) = {b['seconds'] / a['seconds']:.2f} "
              f"(linear: {factor:.0f}){cpu}, memory ratio = {b['peak_mb'] / a['peak_mb']:.2f} (flat: 1)")
    at = runs.get(str(exact_at))
    if at and at["exact"] and "seconds" in at["exact"] and "seconds" in at["ours"]:
        print(f"  {kernel} at {exact_at}: exact / ours time = {at['exact']['seconds'] / at['ours']['seconds']:.2f}, "
              f"memory = {at['exact']['peak_mb'] / at['ours']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
