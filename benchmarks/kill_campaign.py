"""kill -9 campaign: SIGKILLs at random moments into store writers, labelling, the MD and the NEB learner.

After each kill the work is restarted; at the end it must complete, with no
frame lost (every labelled row survives with the same energy), none stored
twice, no hang (every restart finishes within its bound), and reference
calculations repeated only for frames in flight at a kill.

    python benchmarks/kill_campaign.py [--store 10] [--label 8] [--md 3] [--neb 2] [--seed 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the learner scripts and LoggedXTB live in tests/
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

WRITER = r'''
import sys
import numpy as np
from ase.build import molecule
from ase_mlipal.frames import rattled
from ase_mlipal.learning.store import FrameStore
url, writer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = FrameStore(url)
frames = rattled(molecule("CH4"), n, stdev=0.05, seed=0)
print("ready", flush=True)
for step in np.random.default_rng(writer).permutation(n):
    row, _ = store.add_flagged(frames[step], source="md", step=int(step))
    if store.frame(row).info["status"] == "flagged":
        store.mark_labelled(row, -float(step), np.zeros((5, 3)))
'''

LABELLER = r'''
import sys
import ase_mlipal
from tests.conftest import LoggedXTB
LoggedXTB.log = sys.argv[2]
store = ase_mlipal.FrameStore(sys.argv[1])
print("ready", flush=True)
ase_mlipal.label(store, LoggedXTB, progress=False)
'''


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_ready(proc: subprocess.Popen, bound: float = 120.0) -> None:
    deadline = time.time() + bound
    for line in proc.stdout:
        if line.strip() == "ready" or time.time() > deadline:
            return


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` s; True if it was still running (a real kill)."""
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def finish(proc: subprocess.Popen, bound: float) -> str:
    out, _ = proc.communicate(timeout=bound)  # TimeoutExpired = a hang
    if proc.returncode != 0:
        raise RuntimeError(f"restart failed:\n{out[-3000:]}")
    return out


def labelled_energies(url: str) -> dict[int, float]:
    from ase_mlipal import FrameStore

    store = FrameStore(url)
    return {row.id: row.energy for status in ("labelled", "verified") for row in store.rows(status)}


def check_kept(before: dict, after: dict) -> int:
    """Labelled rows of ``before`` missing or changed in ``after`` (must be 0)."""
    return sum(after.get(i) != e for i, e in before.items())


def duplicates(url: str) -> int:
    from ase_mlipal import FrameStore

    prints = [row.fingerprint for row in FrameStore(url).rows()]
    return len(prints) - len(set(prints))


def store_campaign(kills: int, rng: np.random.Generator, work: Path, url: str, n: int = 60) -> dict:
    """Three writers of the same frames; a random one is killed and restarted, ``kills`` times."""
    writers = {w: start(["-c", WRITER, url, str(w), str(n)]) for w in range(3)}
    done, lost = 0, 0
    while done < kills:
        victim = int(rng.integers(3))
        if writers[victim].poll() is not None:  # it finished: start it again, so there is work to kill
            writers[victim] = start(["-c", WRITER, url, str(victim), str(n)])
        wait_ready(writers[victim])
        before = labelled_energies(url)
        done += kill_after(writers[victim], float(rng.uniform(0.0, 1.5)))
        lost += check_kept(before, labelled_energies(url))
        writers[victim] = start(["-c", WRITER, url, str(victim), str(n)])
    for proc in writers.values():
        finish(proc, 300)
    energies = labelled_energies(url)
    from ase_mlipal import FrameStore

    store = FrameStore(url)
    complete = len(store) == n and len(energies) == n and all(r.energy == -r.step for r in store.rows("labelled"))
    return {"kills": done, "frames": n, "rows": len(store), "lost": lost, "duplicates": duplicates(url),
            "complete": complete}


def label_campaign(kills: int, rng: np.random.Generator, work: Path, n: int = 400) -> dict:
    """``label`` (default executor) on ``n`` flagged frames, killed ``kills`` times, then run to the end."""
    from ase.build import molecule

    from ase_mlipal import FrameStore

    url, log = str(work / "label.db"), work / "label_calls.txt"
    store = FrameStore(url)
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=i)
        store.add_flagged(atoms, source="md")
    done, lost = 0, 0
    while done < kills:
        proc = start(["-c", LABELLER, url, str(log)])
        wait_ready(proc)
        before = labelled_energies(url)
        done += kill_after(proc, float(rng.uniform(0.2, 2.5)))
        lost += check_kept(before, labelled_energies(url))
    finish(start(["-c", LABELLER, url, str(log)]), 600)
    calls = log.read_text().split()
    energies = labelled_energies(url)
    return {"kills": done, "frames": n, "labelled": len(energies), "lost": lost, "duplicates": duplicates(url),
            "calculations": len(calls), "repeated_calculations": len(calls) - len(set(calls)),
            "complete": len(energies) == n}


def learner_campaign(kind: str, kills: int, rng: np.random.Generator, work: Path, model: Path) -> dict:
    """The MD (``tests/learning/test_learner.py``) or NEB (``tests/learning/test_neb.py``) learner script, killed and resumed."""
    if kind == "md":
        from tests.learning.test_learner import RUN as script_text
        extra = ["400"]
    else:
        from tests.learning.test_neb import NEB_RUN as script_text
        extra = []
    script, run, log = work / f"{kind}.py", work / kind, work / f"{kind}_calls.txt"
    script.write_text(script_text)
    args = [str(script), str(run), str(model), str(log), *extra]
    done, lost, attempts = 0, 0, 0
    while done < kills and attempts < 4 * kills:
        attempts += 1
        before = labelled_energies(str(run / "frames.db")) if (run / "frames.db").exists() else {}
        done += kill_after(start(args), float(rng.uniform(3.0, 12.0)))  # the runs take 10-20 s
        if (run / "frames.db").exists():
            lost += check_kept(before, labelled_energies(str(run / "frames.db")))
    out = finish(start(args), 600)
    url = str(run / "frames.db")
    calls = log.read_text().split() if log.exists() else []
    energies = labelled_energies(url)
    return {"kills": done, "labelled": len(energies), "lost": lost, "duplicates": duplicates(url),
            "calculations": len(calls), "repeated_calculations": len(calls) - len(set(calls)),
            "final_output": out.strip().splitlines()[-1] if out.strip() else "", "complete": True}


def tiny_model(path: Path) -> Path:
    import ase_mlipal

    model = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                  radial_mlp=(16,), atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0],
                                  shift=0.1, scale=0.5, seed=1)
    return ase_mlipal.save_model(model, path)


def run_campaign(store: int, label: int, md: int, neb: int, seed: int = 0, postgres: str = "") -> dict:
    rng = np.random.default_rng(seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if store:
            results["store_sqlite"] = store_campaign(store, rng, work, str(work / "writers.db"))
            if postgres:
                results["store_postgresql"] = store_campaign(store, rng, work, postgres)
        if label:
            results["labelling"] = label_campaign(label, rng, work)
        if md or neb:
            model = tiny_model(work / "tiny.pt")
            if md:
                results["md_learner"] = learner_campaign("md", md, rng, work, model)
            if neb:
                results["neb_learner"] = learner_campaign("neb", neb, rng, work, model)
    results["total_kills"] = sum(part["kills"] for part in results.values() if isinstance(part, dict))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=int, default=10, help="kills into the store writers")
    parser.add_argument("--label", type=int, default=8, help="kills into labelling")
    parser.add_argument("--md", type=int, default=3, help="kills into the MD learner")
    parser.add_argument("--neb", type=int, default=2, help="kills into the NEB learner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", default=os.environ.get("MLIPAL_TEST_POSTGRES", ""),
                        help="also kill writers of an (empty) PostgreSQL store at this URL")
    parser.add_argument("--out", default="benchmarks/results/kill_campaign.json")
    args = parser.parse_args()
    started = time.time()
    results = run_campaign(args.store, args.label, args.md, args.neb, args.seed, args.postgres)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
