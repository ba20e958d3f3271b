"""GPU check: the calculator, fine-tuning, selection and the on-the-fly learner on CUDA against CPU.

    python benchmarks/gpu_check.py [--dtype float64] [--epochs 3] [--md-steps 40] [--out FILE]

Each part runs twice in this process, once on the CPU and once on CUDA,
from the same inputs and seeds, and the results are compared (largest
absolute difference, and relative to the largest CPU value); wall times
are given side by side. Parts:

* ``calculator/<kernel>``: energy, forces, stress, energy and force
  uncertainty of a few molecules and a periodic cell, plus the batched
  ``predict`` path, for the activation kernel (shipped posterior), ``ntk``,
  ``force_ntk`` and ``committee`` (the latter three conditioned on a few
  rattled frames);
* ``training.trainer`` with the model on the device (what a device-aware
  fine-tune would run) and ``training.evaluate`` of a model on the device;
* ``finetune``: a few epochs on labelled reactive frames
  (``benchmarks/data/reactive.xyz.gz``) with the default replay, given a
  model on the device (and ``device=``/``dtype=`` where its signature has
  them); a fine-tuned model not on the device, or not in the dtype, is a WARN;
* ``select``: MaxDet and LCMD picks from a pool of reactive frames, and
  the pool's uncertainties (``score_pool``);
* ``learner``: a short :class:`~ase_mlipal.OnTheFlyLearner` run (methanol,
  800 K, seeded Langevin, one learning round, audits on) labelled by
  GFN2-xTB (EMT where tblite is missing).

Status per row: ``ok``; ``WARN`` (ran, but not on the device); ``DIFF``
(results differ beyond the tolerance of the dtype); ``ERROR`` (raised; the
error is printed and recorded). Exit status 1 if any row is DIFF or ERROR.
Writes ``benchmarks/results/gpu_check.json``.

Without CUDA (``torch.cuda.is_available()`` false) it prints a skip
message and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).parent / "data"
SKIP_MESSAGE = ("SKIP gpu_check: CUDA is not available (torch.cuda.is_available() is False); "
                "nothing was run or written. Run this on a machine with an NVIDIA GPU and a CUDA build of torch.")

# relative tolerance (max |device - cpu| / max |cpu|) per dtype; uncertainties of the force kernels come from
# forward differences in the parameters, which amplify rounding
TOLERANCE = {"float64": {"default": 1e-6, "uncertainty": 1e-4, "training": 1e-4},
             "float32": {"default": 1e-3, "uncertainty": 1e-2, "training": 1e-1}}


# -- helpers -------------------------------------------------------------------


def supports(function, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name``."""
    return name in inspect.signature(function).parameters


def model_device(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).device)


def same_device(actual: str, wanted: str) -> bool:
    return torch.device(actual).type == torch.device(wanted).type


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(device: str, function, *args, **kwargs):
    """``(function(*args, **kwargs), seconds)``, the device synchronised before the clock stops."""
    sync(device)
    start = time.perf_counter()
    out = function(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def compare(cpu, dev) -> dict:
    """Largest absolute difference and that relative to the largest CPU magnitude."""
    a = np.asarray(cpu, dtype=float).ravel()
    b = np.asarray(dev, dtype=float).ravel()
    if a.shape != b.shape:
        return {"max_abs": float("inf"), "rel": float("inf"), "note": f"shapes {a.shape} vs {b.shape}"}
    if a.size == 0:
        return {"max_abs": 0.0, "rel": 0.0}
    diff = float(np.max(np.abs(a - b)))
    return {"max_abs": diff, "rel": diff / max(float(np.max(np.abs(a))), 1e-300)}


def merge(into: dict, name: str, result: dict) -> None:
    """Keep the worst of ``result`` and what ``into[name]`` holds."""
    old = into.get(name)
    if old is None or result["rel"] > old["rel"]:
        into[name] = result


class Check:
    """One row of the table."""

    def __init__(self, section: str, item: str):
        self.section, self.item = section, item
        self.diffs: dict = {}
        self.seconds = {"cpu": None, "device": None}
        self.status, self.note, self.error = "ok", "", ""
        self.extra: dict = {}

    def judge(self, tolerance: dict) -> None:
        if self.status != "ok":
            return
        for name, d in self.diffs.items():
            kind = "uncertainty" if "uncertainty" in name else "training" if name.startswith("train") else "default"
            limit = tolerance[kind]
            if not d["rel"] <= limit:
                self.status = "DIFF"
                self.note = (self.note + "; " if self.note else "") + f"{name} rel {d['rel']:.1e} > {limit:.0e}"

    def warn(self, note: str) -> None:
        if self.status == "ok":
            self.status = "WARN"
        self.note = (self.note + "; " if self.note else "") + note

    def fail(self, error: BaseException) -> None:
        self.status = "ERROR"
        self.error = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.note = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"

    def as_dict(self) -> dict:
        return {"section": self.section, "item": self.item, "status": self.status, "note": self.note,
                "seconds": self.seconds, "diffs": self.diffs, "error": self.error, **self.extra}


def run_check(checks: list, section: str, item: str, body, tolerance: dict) -> Check:
    check = Check(section, item)
    checks.append(check)
    print(f"... {section} {item}", flush=True)
    try:
        body(check)
    except Exception as error:  # one failing part must not hide the others
        check.fail(error)
    check.judge(tolerance)
    print(f"    {check.status} {check.note}", flush=True)
    return check


# -- inputs --------------------------------------------------------------------


def molecules(seed: int = 0) -> list:
    from ase.build import bulk, molecule

    rng = np.random.default_rng(seed)
    out = []
    for name in ("CH3CH2OH", "CH3OH", "C6H6", "CH3CONH2"):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    cell = bulk("C", "diamond", a=3.57, cubic=True).repeat(2)  # 64 atoms, periodic: the stress path
    cell.positions += rng.normal(scale=0.05, size=cell.positions.shape)
    out.append(cell)
    return out


@functools.lru_cache(maxsize=1)
def _reactive() -> tuple:
    from ase_mlipal import read_frames

    return tuple(read_frames(DATA / "reactive.xyz.gz"))


def reactive_frames(start: int, count: int) -> list:
    """``count`` labelled frames spread evenly over the reactive set (all reactions), from offset ``start``."""
    frames = _reactive()
    step = len(frames) // count
    return [frames[i] for i in range(start, start + step * count, step)][:count]


def reference_factory():
    """GFN2-xTB where tblite is installed, else ASE's EMT (deterministic labels either way)."""
    try:
        import tblite.ase  # noqa: F401

        from ase_mlipal import xtb_calculator
        return xtb_calculator, "GFN2-xTB"
    except ImportError:
        from ase.calculators.emt import EMT
        return EMT, "EMT (tblite missing)"


# -- parts ---------------------------------------------------------------------

QUANTITIES = ("energy", "energies", "forces", "stress", "energy_uncertainty", "energies_uncertainty",
              "forces_uncertainty", "uncertainty")


def calculator_part(kernel: str, device: str, dtype: str, repeats: int):
    import ase_mlipal
    from ase_mlipal.frames import rattled
    from ase_mlipal.uncertainty.features import per_structure

    structures = molecules()
    from ase.build import molecule
    references = rattled(molecule("CH3CH2OH"), 3, 0.05, 1) + rattled(molecule("CH3OH"), 3, 0.05, 2)

    def make(where: str):
        options = {}
        if kernel == "committee":
            base = ase_mlipal.load_model("default", dtype=dtype)
            options = {"members": [ase_mlipal.random_like(base, seed) for seed in (1, 2)]}
        calc = ase_mlipal.MLIPALCalculator(kernel=kernel, kernel_options=options, device=where, dtype=dtype,
                                           posterior="auto" if kernel == "activation" else None)
        if kernel != "activation":
            calc.condition(references, progress=False)
        return calc

    def body(check: Check) -> None:
        calcs = {"cpu": make("cpu"), "device": make(device)}
        ran_on = model_device(calcs["device"].model)
        check.extra["ran_on"] = ran_on
        results = {side: [] for side in calcs}
        for side, calc in calcs.items():
            total = 0.0
            for atoms in structures:
                atoms = atoms.copy()
                atoms.calc = calc
                atoms.get_forces()  # warm-up (first CUDA calls compile and allocate)
                for _ in range(repeats):
                    calc.reset()
                    _, seconds = timed("cpu" if side == "cpu" else device, atoms.get_forces)
                    total += seconds
                results[side].append({k: copy.deepcopy(v) for k, v in calc.results.items()})
            energies, batches = calc.predict(structures[:-1], progress=False)  # batched, molecules only
            results[side].append({"predict_energy": energies,
                                  "predict_uncertainty": [calc.uncertainty_from(f)["uncertainty"]
                                                          for f in per_structure(batches)]})
            check.seconds[side] = total / (repeats * len(structures))
        for cpu, dev in zip(results["cpu"], results["device"]):
            for name in cpu:
                if name in QUANTITIES or name.startswith("predict"):
                    merge(check.diffs, name, compare(cpu[name], dev[name]))
        if not same_device(ran_on, device):
            check.warn(f"calculator model on {ran_on}")

    return body


def train_part(device: str, dtype: str, epochs: int):
    import ase_mlipal
    from ase_mlipal.training.trainer import train

    frames = reactive_frames(0, 16)
    train_frames, valid_frames = frames[:12], frames[12:]

    def body(check: Check) -> None:
        out = {}
        for side, where in (("cpu", "cpu"), ("device", device)):
            model = ase_mlipal.load_model("default", device=where, dtype=dtype)
            result, seconds = timed(where, train, model, train_frames, valid_frames, epochs=epochs, batch_size=4,
                                    lr=1e-2, patience=epochs, seed=0, progress=False)
            out[side] = (model, result)
            check.seconds[side] = seconds
        (m_cpu, r_cpu), (m_dev, r_dev) = out["cpu"], out["device"]
        check.extra["ran_on"] = model_device(m_dev)
        check.diffs["train_loss"] = compare([h["train_loss"] for h in r_cpu.history],
                                            [h["train_loss"] for h in r_dev.history])
        check.diffs["train_weights"] = compare(
            torch.cat([p.detach().cpu().ravel() for p in m_cpu.parameters()]).numpy(),
            torch.cat([p.detach().cpu().ravel() for p in m_dev.parameters()]).numpy())

    return body


def evaluate_part(device: str, dtype: str):
    import ase_mlipal

    frames = reactive_frames(1, 8)

    def body(check: Check) -> None:
        out = {}
        for side, where in (("cpu", "cpu"), ("device", device)):
            model = ase_mlipal.load_model("default", device=where, dtype=dtype)
            out[side], check.seconds[side] = timed(where, ase_mlipal.evaluate, model, frames)
        for key in out["cpu"]:
            check.diffs[key] = compare(out["cpu"][key], out["device"][key])

    return body


def finetune_part(device: str, dtype: str, epochs: int):
    import ase_mlipal

    frames = reactive_frames(2, 8)  # 8 labelled frames across the reactions
    held_out = reactive_frames(3, 8)
    device_arg = supports(ase_mlipal.finetune, "device")

    def body(check: Check) -> None:
        out = {}
        for side, where in (("cpu", "cpu"), ("device", device)):
            model = ase_mlipal.load_model("default", device=where, dtype=dtype)
            kwargs = dict(replay="default", epochs=epochs, batch_size=4, patience=epochs, seed=0, progress=False)
            if device_arg:
                kwargs["device"] = where
            if supports(ase_mlipal.finetune, "dtype"):
                kwargs["dtype"] = dtype
            tuned, seconds = timed(where, ase_mlipal.finetune, model, frames, **kwargs)
            out[side] = (tuned.model, tuned.training)
            check.seconds[side] = seconds
        (t_cpu, r_cpu), (t_dev, r_dev) = out["cpu"], out["device"]
        ran_on, ran_as = model_device(t_dev), str(next(t_dev.parameters()).dtype).removeprefix("torch.")
        check.extra.update(ran_on=ran_on, ran_as=ran_as, device_argument=device_arg,
                           best_epoch={"cpu": r_cpu.best_epoch, "device": r_dev.best_epoch})
        check.diffs["train_valid_loss"] = compare([h["valid_loss"] for h in r_cpu.history],
                                                  [h["valid_loss"] for h in r_dev.history])
        check.diffs["train_weights"] = compare(
            torch.cat([p.detach().cpu().ravel() for p in t_cpu.parameters()]).numpy(),
            torch.cat([p.detach().cpu().ravel() for p in t_dev.parameters()]).numpy())
        cpu_copy = ase_mlipal.load_model(t_dev, device="cpu", dtype=dtype)  # evaluated on the CPU: the model's result
        e_cpu, e_dev = ase_mlipal.evaluate(t_cpu, held_out), ase_mlipal.evaluate(cpu_copy, held_out)
        check.diffs["train_held_out_forces_mae"] = compare(e_cpu["forces_mae"], e_dev["forces_mae"])
        if not same_device(ran_on, device):
            check.warn(f"fine-tuned on {ran_on}, not {device}: finetune did not keep the device of the model "
                       "it was given" + ("" if device_arg else " (and has no device argument)"))
        if ran_as != dtype:
            check.warn(f"fine-tuned in {ran_as}, not {dtype}")

    return body


def select_part(device: str, dtype: str):
    import ase_mlipal
    from ase_mlipal.selection import pool_features, score_pool

    pool = reactive_frames(4, 40)  # 40 candidates
    labelled = reactive_frames(5, 4)  # 4 known frames

    def body(check: Check) -> None:
        calcs = {"cpu": ase_mlipal.MLIPALCalculator(device="cpu", dtype=dtype),
                 "device": ase_mlipal.MLIPALCalculator(device=device, dtype=dtype)}
        out = {}
        for side, calc in calcs.items():
            where = "cpu" if side == "cpu" else device
            picks, seconds = {}, 0.0
            for method in ("maxdet", "lcmd"):
                picks[method], s = timed(where, ase_mlipal.select, calc, pool, 5, method=method, labelled=labelled,
                                         chunk_size=16)
                seconds += s
            rows = pool_features(calc, pool, chunk_size=16)
            scores = [r["uncertainty"] for r in score_pool(calc, pool, chunk_size=16)]
            out[side] = (picks, rows, scores)
            check.seconds[side] = seconds
        (p_cpu, rows_cpu, s_cpu), (p_dev, rows_dev, s_dev) = out["cpu"], out["device"]
        check.extra["picks"] = {side: {m: [int(i) for i in p] for m, p in out[side][0].items()} for side in out}
        check.diffs["pool_rows"] = compare(rows_cpu, rows_dev)
        check.diffs["pool_uncertainty"] = compare(s_cpu, s_dev)
        for method in p_cpu:
            if list(p_cpu[method]) != list(p_dev[method]):
                check.status = "DIFF"
                check.note = f"{method} picks differ: cpu {list(p_cpu[method])} vs device {list(p_dev[method])}"

    return body


def learner_part(device: str, dtype: str, steps: int, epochs: int, threshold: float, audits: bool):
    import ase_mlipal
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase_mlipal.training.finetune import DEFAULT_REPLAY_PATH

    reference, reference_name = reference_factory()
    replay = ase_mlipal.read_frames(DEFAULT_REPLAY_PATH)[:8]

    def dynamics(atoms):
        return Langevin(atoms, 0.5 * units.fs, temperature_K=800, friction=0.01, fixcm=False,
                        rng=np.random.default_rng(1))

    def run(where: str, workdir: str):
        calc = ase_mlipal.MLIPALCalculator(device=where, dtype=dtype)
        start = molecule("CH3OH")
        MaxwellBoltzmannDistribution(start, temperature_K=800, rng=np.random.default_rng(0))
        options = {"epochs": epochs, "replay": replay, "patience": epochs, "batch_size": 4}
        if supports(ase_mlipal.finetune, "device"):
            options["device"] = where
        learner = ase_mlipal.OnTheFlyLearner(
            start, calc, reference, workdir, threshold=threshold, mode="relative", steps=steps, interval=2,
            labels_per_round=3, max_rounds=1, audit_interval=10 if audits else None, conditioning=replay,
            dynamics=dynamics, executor=ThreadPoolExecutor(1), finetune_options=options, progress=False, seed=0)
        report = learner.run()
        pretrained = next(learner.pretrained.parameters())
        return report, learner.atoms.get_positions(), calc, (str(pretrained.device),
                                                             str(pretrained.dtype).removeprefix("torch."))

    def body(check: Check) -> None:
        out = {}
        for side, where in (("cpu", "cpu"), ("device", device)):
            with tempfile.TemporaryDirectory() as workdir:
                (report, positions, calc, pretrained), check.seconds[side] = timed(where, run, where, workdir)
            out[side] = (report, positions, calc, pretrained)
        (r_cpu, x_cpu, _, _), (r_dev, x_dev, _, _) = out["cpu"], out["device"]
        summary = {side: {"steps": r.steps, "rounds": len(r.rounds),
                          "accepted": [rr.accepted for rr in r.rounds], "reasons": [rr.reason for rr in r.rounds],
                          "flagged_steps": [s for s, _ in r.flagged_steps], "audits": len(r.checks),
                          "counts": r.counts, "model_device": model_device(c.model), "model_hash": c.model_hash,
                          "pretrained_device": pre[0], "pretrained_dtype": pre[1]}
                   for side, (r, _, c, pre) in out.items()}
        check.extra.update(summary=summary, reference=reference_name)
        n = min(len(r_cpu.trace), len(r_dev.trace))
        check.diffs["trace_uncertainty"] = compare([v for _, v in r_cpu.trace[:n]], [v for _, v in r_dev.trace[:n]])
        check.diffs["final_positions"] = compare(x_cpu, x_dev)
        if summary["cpu"]["flagged_steps"] != summary["device"]["flagged_steps"]:
            check.status = "DIFF"
            check.note = "flagged steps differ"
        if not r_cpu.rounds:
            check.warn("no learning round happened (lower --threshold or more --md-steps)")
        if audits and not any(r.checks for r in (r_cpu, r_dev)):
            check.warn("no audit was drawn before the round (ModelChoice with checks not exercised)")
        if not audits and r_cpu.rounds and not r_cpu.rounds[0].accepted:
            check.warn("the round's model was not swapped in (set_model on the device not exercised)")
        if not same_device(summary["device"]["model_device"], device):
            check.warn(f"learner's model ended on {summary['device']['model_device']}")
        if not same_device(summary["device"]["pretrained_device"], device):
            check.warn(f"the learner keeps its pretrained model (what each round fine-tunes) on "
                       f"{summary['device']['pretrained_device']}")
        if summary["device"]["pretrained_dtype"] != dtype:
            check.warn(f"the learner's pretrained model (fine-tuned each round) is {summary['device']['pretrained_dtype']}")

    return body


# -- main ----------------------------------------------------------------------


def table(checks: list, device: str) -> str:
    lines = [f"{'section':<11} {'item':<24} {'cpu s':>9} {device[:8] + ' s':>9} {'speedup':>8}  {'status':<6} "
             f"largest relative difference / note"]
    for c in checks:
        cpu, dev = c.seconds["cpu"], c.seconds["device"]
        speed = f"{cpu / dev:8.2f}" if cpu and dev else f"{'':>8}"
        worst = max(c.diffs.items(), key=lambda kv: kv[1]["rel"], default=None)
        text = f"{worst[0]} {worst[1]['rel']:.1e} (abs {worst[1]['max_abs']:.1e})" if worst else ""
        if c.note:
            text = f"{text}; {c.note}" if text else c.note
        fmt = lambda s: f"{s:9.3f}" if s is not None else f"{'-':>9}"  # noqa: E731
        lines.append(f"{c.section:<11} {c.item:<24} {fmt(cpu)} {fmt(dev)} {speed}  {c.status:<6} {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of train/finetune/learner rounds")
    parser.add_argument("--md-steps", type=int, default=40, help="MD steps of the learner run")
    parser.add_argument("--threshold", type=float, default=1.3, help="learner trigger, relative to typical")
    parser.add_argument("--repeats", type=int, default=3, help="timed calculator calls per structure")
    parser.add_argument("--parts", nargs="+", default=["calculator", "train", "finetune", "select", "learner"])
    parser.add_argument("--kernels", nargs="+", default=["activation", "ntk", "force_ntk", "committee"])
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/gpu_check.json)")
    # hidden: run the "device" side on another device (e.g. cpu) to dry-run the script without a GPU
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = args.device

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    dry_run = torch.device(device).type != "cuda"
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "gpu_check_dryrun.json" if dry_run else RESULTS / "gpu_check.json")

    import ase_mlipal  # noqa: F401  (first: imports mace before e3nn)

    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    info = {"device": device, "dry_run": dry_run, "dtype": args.dtype, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "device_name": torch.cuda.get_device_name(device) if not dry_run else platform.machine(),
            "finetune_device_argument": supports(ase_mlipal.finetune, "device"),
            "select_device_argument": supports(ase_mlipal.select, "device")}
    print(f"gpu_check: cpu against {device} ({info['device_name']}), {args.dtype}"
          + (" -- DRY RUN, both sides on the CPU" if dry_run else ""), flush=True)
    tolerance = TOLERANCE[args.dtype]
    checks: list = []
    if "calculator" in args.parts:
        for kernel in args.kernels:
            run_check(checks, "calculator", kernel, calculator_part(kernel, device, args.dtype, args.repeats),
                      tolerance)
    if "train" in args.parts:
        run_check(checks, "training", "train (model on dev)", train_part(device, args.dtype, args.epochs), tolerance)
        run_check(checks, "training", "evaluate (model on dev)", evaluate_part(device, args.dtype), tolerance)
    if "finetune" in args.parts:
        run_check(checks, "finetune", "finetune", finetune_part(device, args.dtype, args.epochs), tolerance)
    if "select" in args.parts:
        run_check(checks, "select", "maxdet+lcmd, score", select_part(device, args.dtype), tolerance)
    if "learner" in args.parts:
        for audits in (True, False):
            run_check(checks, "learner", "OnTheFly, " + ("audits" if audits else "no audits"),
                      learner_part(device, args.dtype, args.md_steps, args.epochs, args.threshold, audits), tolerance)
    if not dry_run:
        info["max_memory_allocated_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    info["seconds"] = time.perf_counter() - started

    text = table(checks, device)
    print()
    print(text)
    for c in checks:
        if c.status == "ERROR":
            print(f"\n{c.section} {c.item} raised:\n{c.error}")
    failed = [c for c in checks if c.status in ("DIFF", "ERROR")]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**info, "table": text, "checks": [c.as_dict() for c in checks]}, indent=1,
                                   default=str))
    print(f"\n{len(checks) - len(failed)}/{len(checks)} rows without DIFF/ERROR; wrote {out_path} "
          f"({info['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
