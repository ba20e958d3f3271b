"""Which executor should `label` use by default? Threads against processes, side by side.

Labels the same frames with GFN2-xTB (tblite) and with PySCF (PBE/def2-SVP)
through `label` on one thread, on a thread pool and on a process pool
(fork-server workers) of the machine's cores, and prints each wall time
and its ratio to the one-thread run. A ratio near 1/cores means the
reference computes outside Python's lock, so threads parallelise it.

    python benchmarks/labelling_executors.py [--xtb-frames 24] [--pyscf-frames 6] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from ase.build import molecule

from ase_mlipal import FrameStore, label, xtb_calculator
from ase_mlipal.references.pyscf import PySCF
from ase_mlipal.learning.labelling import process_pool


def frames(name: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def timed(workdir: str, tag: str, images, reference, executor) -> float:
    store = FrameStore(os.path.join(workdir, f"{tag}.db"))
    for atoms in images:
        store.add_flagged(atoms, source="benchmark")
    start = time.perf_counter()
    with executor as pool:
        report = label(store, reference, executor=pool, retries=0, progress=False)
    elapsed = time.perf_counter() - start
    assert report.labelled == len(images), report
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xtb-frames", type=int, default=24)
    parser.add_argument("--pyscf-frames", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/labelling_executors.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    import tempfile

    references = {"xtb": (xtb_calculator, frames("CH3CH2OH", args.xtb_frames)),
                  "pyscf": (partial(PySCF, xc="pbe", basis="def2-svp"), frames("CH3OH", args.pyscf_frames, 1))}
    results = {"cores": cores, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as workdir:
        for name, (reference, images) in references.items():
            timed(workdir, f"{name}-warm", images[:2], reference, ThreadPoolExecutor(1))  # imports, basis caches
            times = {"one thread": timed(workdir, f"{name}-serial", images, reference, ThreadPoolExecutor(1)),
                     f"{cores} threads": timed(workdir, f"{name}-threads", images, reference,
                                               ThreadPoolExecutor(cores)),
                     f"{cores} processes": timed(workdir, f"{name}-processes", images, reference,
                                                 process_pool(cores))}
            base = times["one thread"]
            results[name] = {"frames": len(images), "seconds": times,
                             "ratio_to_one_thread": {k: v / base for k, v in times.items()}}
            print(f"{name}: {len(images)} frames")
            for key, value in times.items():
                print(f"  {key:>12}: {value:6.2f} s  ratio {value / base:.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
