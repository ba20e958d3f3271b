"""The ``mlipal`` command line: MD and NEB with uncertainty, on-the-fly learning, the demo.

    mlipal md ethanol.xyz --steps 2000 --threshold 0.5 --plot md.png
    mlipal neb initial.xyz final.xyz --images 9 --plot neb.png
    mlipal ts band.xyz --reference xtb -o saddle.xyz    (Sella from the band's top image, needs .[ts])
    mlipal learn run.toml
    mlipal select pool.xyz -n 50 --labelled train.xyz --kernel ntk --method lcmd -o picked.xyz
    mlipal score pool.db --kernel activation            (or -o scores.csv)
    mlipal compare default finetuned.pt frames.xyz --plot frfe.png
    mlipal demo
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from ase import Atoms
from ase.io import Trajectory, read, write

REFERENCES = {"xtb": ("ase_mlipal.references.xtb", "RobustXTB"), "emt": ("ase.calculators.emt", "EMT"),
              "pyscf": ("ase_mlipal.references.pyscf", "PySCF")}


def reference_factory(name: str) -> Callable:
    """A reference calculator factory: ``xtb``, ``emt`` or ``package.module:Callable``."""
    module, _, attribute = name.partition(":")
    if name in REFERENCES:
        module, attribute = REFERENCES[name]
    elif not attribute:
        raise SystemExit(f"reference {name!r}: use one of {sorted(REFERENCES)} or 'package.module:Callable'")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"reference {name!r} cannot be imported: {error}") from None


def _calculator(model: str, trust: bool = False, kernel: str = "activation", options: Optional[dict] = None,
                distance_aware: Optional[bool] = None):
    from .calculator import MLIPALCalculator
    from .models.model import ModelLoadError

    try:
        return MLIPALCalculator(model=model, trust=trust, kernel=kernel, kernel_options=options,
                                distance_aware=distance_aware,  # another kernel: score says "raw (uncalibrated)"
                                posterior="auto" if kernel == "activation" else None)
    except (ModelLoadError, FileNotFoundError) as error:
        raise SystemExit(f"cannot load model {model!r}: {error}") from None


def _read(path: str, index=-1):
    try:
        return read(path, index)
    except FileNotFoundError:
        raise SystemExit(f"no such file: {path}") from None
    except Exception as error:  # ASE raises many kinds for unreadable files
        raise SystemExit(f"cannot read a structure from {path}: {error}") from None


RULES = {"positive": lambda v: v > 0, "at least 1": lambda v: v >= 1, "0 or more": lambda v: v >= 0,
         "at least 3": lambda v: v >= 3}


def _check_arguments(command: str, args: argparse.Namespace, outputs: Sequence[str] = (), **rules: str) -> None:
    """Exit naming every numeric option that breaks its rule and every output whose folder is missing.

    Runs before anything is created (a store, a file), so a bad argument
    leaves nothing behind.
    """
    bad = [f"{_option(name)} must be {rule}, not {getattr(args, name)}" for name, rule in rules.items()
           if getattr(args, name) is not None and not RULES[rule](getattr(args, name))]
    bad += [f"the folder of {_option(name)} {getattr(args, name)} does not exist; create it first" for name in outputs
            if getattr(args, name) and getattr(args, name) != "-" and not Path(getattr(args, name)).resolve().parent.is_dir()]
    if bad:
        raise SystemExit(f"mlipal {command}: {'; '.join(bad)}")


def _option(dest: str) -> str:
    """The option as typed: ``n`` -> ``-n``, ``chunk_size`` -> ``--chunk-size``."""
    return f"-{dest}" if len(dest) == 1 else "--" + dest.replace("_", "-")


def run_md(atoms: Atoms, calc, store, threshold: float, steps: int, interval: int, temperature: float,
           timestep: float, trajectory: Optional[str] = None, run_id: str = "md", seed: Optional[int] = None):
    """Langevin MD watched by a trigger (``seed``: reproducible); returns ``(trigger, [(step, value)])``."""
    from .learning.md_learner import langevin
    from .learning.trigger import UncertaintyTrigger
    from .progress import progress_bar

    atoms.calc = calc
    trigger = UncertaintyTrigger(calc, store, threshold, atoms=atoms, source="md", run_id=run_id)
    dyn = langevin(atoms, temperature, timestep, seed=seed)
    if trajectory:
        dyn.attach(Trajectory(trajectory, "w", atoms))
    trace = []
    with progress_bar(total=steps, desc="MD") as bar:
        while dyn.nsteps < steps:
            advance = min(interval, steps - dyn.nsteps)
            dyn.run(advance)
            bar.update(advance)
            trigger(atoms, step=dyn.nsteps)
            trace.append((dyn.nsteps, trigger.last_value))
    return trigger, trace


def _check_structures(command: str, calc, structures: dict) -> None:
    """Exit naming the file if a structure (``{path: atoms or [atoms]}``) has an element ``calc``'s model
    lacks or atoms on top of each other: before any store or output is made."""
    from .models.graphs import check_atoms

    for path, frames in structures.items():
        frames = frames if isinstance(frames, list) else [frames]
        for number, atoms in enumerate(frames):
            try:
                check_atoms(atoms, calc.batch_maker.elements)
            except ValueError as error:
                where = f"{path}, frame {number}" if len(frames) > 1 else str(path)
                raise SystemExit(f"mlipal {command}: {where}: {error}") from None


def cmd_md(args: argparse.Namespace) -> None:
    from .learning.store import FrameStore
    from .plots import plot_uncertainty_trace

    _check_arguments("md", args, threshold="positive", steps="at least 1", interval="at least 1",
                     timestep="positive", temperature="0 or more", outputs=("trajectory", "plot"))
    atoms = _read(args.structure)
    calc = _calculator(args.model, args.trust, distance_aware=args.distance_aware)
    _check_structures("md", calc, {args.structure: atoms})
    store = FrameStore(args.db)  # last: a bad argument leaves no new, empty store behind
    trigger, trace = run_md(atoms, calc, store, args.threshold,
                            args.steps, args.interval, args.temperature, args.timestep, args.trajectory,
                            seed=args.seed)
    print(f"{len(trigger.flagged)} frames flagged above {args.threshold} eV/A; {args.db}: {store.counts()}")
    if args.plot:
        steps, values = zip(*trace)
        plot_uncertainty_trace(steps, values, args.threshold, args.plot, flagged_steps=trigger.flagged)
        print(f"plot: {args.plot}")


def cmd_neb(args: argparse.Namespace) -> None:
    from .learning.neb_learner import path_profile, relax_band
    from .learning.store import FrameStore
    from .learning.trigger import UncertaintyTrigger
    from .paths import band
    from .plots import plot_neb_profiles

    _check_arguments("neb", args, threshold="positive", steps="at least 1", interval="at least 1",
                     images="at least 3", fmax="positive", outputs=("output", "plot"))
    initial, final = _read(args.initial), _read(args.final)
    calc = _calculator(args.model, args.trust, distance_aware=args.distance_aware)
    _check_structures("neb", calc, {args.initial: initial, args.final: final})
    images = band(initial, final, args.images)
    trigger = UncertaintyTrigger(calc, FrameStore(args.db), args.threshold, source="neb")  # the store last
    converged, steps = relax_band(images, calc, trigger, fmax=args.fmax, steps=args.steps, interval=args.interval,
                                  logfile="-" if args.verbose else None)
    profile = path_profile(calc, images, label="NEB")
    print(f"NEB {'converged' if converged else 'NOT converged'} after {steps} steps; "
          f"{profile.summary()}; {len(trigger.flagged)} images flagged into {args.db}")
    if args.output:
        write(args.output, images)
    if args.plot:
        plot_neb_profiles([profile], args.plot)
        print(f"plot: {args.plot}")


def cmd_ts(args: argparse.Namespace) -> None:
    from .learning.store import FrameStore
    from .learning.transition_state import refine_ts

    _check_arguments("ts", args, steps="at least 1", fmax="positive", tolerance="positive",
                     outputs=("output", "trajectory"))
    images = _read(args.structure, ":")
    start = images if len(images) > 1 else images[0]
    reference = reference_factory(args.reference) if args.reference else None
    calc = _calculator(args.model, args.trust, distance_aware=args.distance_aware)
    _check_structures("ts", calc, {args.structure: images})
    store = FrameStore(args.db) if args.db and reference is not None else None  # last: nothing left on an error
    ts = refine_ts(calc, start, reference=reference, fmax=args.fmax, steps=args.steps,
                   vibrations=not args.no_vibrations, tolerance=args.tolerance, store=store, trajectory=args.trajectory)
    print(ts.summary())
    if ts.store_id is not None:
        print(f"the labelled saddle is row {ts.store_id} of {args.db}: a learner trains on it next")
    if args.output:
        write(args.output, ts.atoms)
        print(f"saddle: {args.output}")


def cmd_learn(args: argparse.Namespace) -> None:
    """Run an on-the-fly learner described by a TOML file (see ``learn --help``)."""
    from .learning.md_learner import (AUDIT_PRIOR_FRAMES, MAX_REWINDS, REWIND_TOLERANCE, OnTheFlyLearner,
                                      langevin)
    from .learning.neb_learner import NEBLearner, NoBandError
    from .learning.verification import SADDLE_FMAX
    from .paths import band
    from .plots import plot_checks, plot_neb_profiles, plot_uncertainty_trace

    config = learn_config(args.config)
    kind = config.get("kind", "md")
    workdir = Path(config["workdir"])
    calc = _calculator(config.get("model", "default"), config.get("trust", False),
                       distance_aware=config.get("distance_aware"))
    reference = reference_factory(config.get("reference", "xtb"))
    finetune_options = config.get("finetune", {})
    if kind == "md":
        md = config.get("md", {})
        learner = OnTheFlyLearner(
            _read(config["structure"]), calc, reference, workdir, config["threshold"],
            steps=md.get("steps", 1000), interval=md.get("interval", 5), labels_per_round=config.get("labels_per_round", config.get("batch_size", 8)),
            max_rounds=config.get("max_rounds"), finetune_options=finetune_options,
            max_labels=config.get("max_labels"),
            audit_interval=md.get("audit_interval", 200), force_tolerance=md.get("force_tolerance"),
            recalibrate=md.get("recalibrate", True), prior_frames=md.get("prior_frames", AUDIT_PRIOR_FRAMES),
            rewind_tolerance=md.get("rewind_tolerance", REWIND_TOLERANCE),
            max_rewinds=md.get("max_rewinds", MAX_REWINDS),
            dynamics=lambda atoms: langevin(atoms, md.get("temperature", 300.0), md.get("timestep", 0.5)))
        report = learner.run()
        audits = [c for c in report.checks if c.kind == "audit"]
        rounds = len(report.rounds)
        print(f"{report.steps} MD steps, {rounds} learning round{'' if rounds == 1 else 's'}; store: {report.counts}")
        print(f"{len(audits)} audits, {sum(c.passed for c in audits)} passed; verified: {report.confident}"
              + "".join(f"; hole at step {r['hole_step']} ({r['energy_error']:+.2f} eV"
                        + (f", before the guard stopped step {r['from_step']}" if r.get("guard_stop") else "")
                        + f"): back to step {r['to_step']}" for r in report.rewinds)
              + (f"; stopped: {report.stopped}" if report.stopped else "")
              + (f"; ended: {report.ended}" if report.ended else ""))
        steps, values = zip(*report.trace) if report.trace else ((), ())
        if steps:
            plot_uncertainty_trace(steps, values, learner.trigger.threshold, workdir / "uncertainty.png",
                                   flagged_steps=report.flagged_steps)
    elif kind == "neb":
        neb = config.get("neb", {})
        images = band(_read(config["initial"]), _read(config["final"]), neb.get("images", 7))
        learner = NEBLearner(calc, reference, workdir, images, config["threshold"],
                             max_rounds=config.get("max_rounds", 4), fmax=neb.get("fmax", 0.05),
                             max_labels=config.get("max_labels"),
                             barrier_tolerance=neb.get("barrier_tolerance", 0.1),
                             saddle_fmax=neb.get("saddle_fmax", SADDLE_FMAX),
                             steps=neb.get("steps", 300), band_start=neb.get("band_start", "initial"),
                             finetune_options=finetune_options)
        report = learner.run()
        try:
            low, high = report.barrier_interval
        except NoBandError as error:  # says why, without a traceback
            raise SystemExit(f"{error}\nthe store and state are in {workdir}/") from None
        print(report.table())
        print(f"verified: {report.confident} (barrier {report.barrier[0]:.3f} ± {report.barrier[1]:.3f} eV, "
              f"2-sigma interval [{low:.3f}, {high:.3f}] eV, "
              f"climbing-image check error {report.verified_barrier_error}; its checks show it off by "
              f"{report.final.verified_error:.3f} eV)")
        plot_neb_profiles([r.profile for r in report.rounds], workdir / "neb.png")
        write(workdir / "band.xyz", report.images)
    plot_checks(report.checks, workdir / "checks.png")
    print(f"results in {workdir}/")


#: The keys of a ``mlipal learn`` config: of each kind (top level), and of its tables.
LEARN_KEYS = {
    "md": {"kind", "model", "trust", "distance_aware", "reference", "threshold", "workdir", "max_rounds",
           "max_labels", "finetune", "structure", "labels_per_round", "batch_size", "md"},
    "neb": {"kind", "model", "trust", "distance_aware", "reference", "threshold", "workdir", "max_rounds",
            "max_labels", "finetune", "initial", "final", "neb"},
}
LEARN_REQUIRED = {"md": ("threshold", "structure"), "neb": ("threshold", "initial", "final")}
LEARN_TABLE_KEYS = {"md": {"steps", "interval", "audit_interval", "force_tolerance", "recalibrate", "prior_frames",
                           "rewind_tolerance", "max_rewinds", "temperature", "timestep"},
                    "neb": {"images", "fmax", "barrier_tolerance", "saddle_fmax", "steps", "band_start"}}


def _finetune_keys() -> set[str]:
    """The ``[finetune]`` keys: :func:`~ase_mlipal.finetune`'s and ``train``'s options the learners do not set."""
    import inspect

    from .training.finetune import finetune
    from .training.trainer import train

    return ({*inspect.signature(finetune).parameters, *inspect.signature(train).parameters}
            - {"model", "frames", "train_kwargs", "train_frames", "valid_frames", "valid", "progress", "extra_loss"})


def learn_config(path: str) -> dict:
    """The ``mlipal learn`` TOML file at ``path``, checked, its relative paths made relative to its folder.

    Raises ``ValueError`` naming the file and the key: a missing required
    key, an unknown one (a typo must not fall back to a default), a
    threshold that is not a number. ``workdir`` defaults to the file's name
    without ``.toml``, beside it.
    """
    from .models.model import is_foundation_name

    file = Path(path)
    try:
        config = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no such config file: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    kind = config.get("kind", "md")
    if not isinstance(kind, str) or kind not in LEARN_KEYS:
        raise ValueError(f"{path}: kind must be 'md' or 'neb', not {kind!r}")
    for table, allowed in [(None, LEARN_KEYS[kind]), (kind, LEARN_TABLE_KEYS[kind]), ("finetune", _finetune_keys())]:
        values = config if table is None else config.get(table, {})
        where = path if table is None else f"{path} [{table}]"
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {table} must be a table ([{table}] followed by key = value lines)")
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                             f"{f' for kind = {kind!r}' if table is None else ''}; "
                             f"allowed: {', '.join(sorted(allowed))} (see mlipal learn --help)")
    missing = [key for key in LEARN_REQUIRED[kind] if key not in config]
    if missing:
        raise ValueError(f"{path}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(kind = {kind!r} needs {', '.join(LEARN_REQUIRED[kind])}; see mlipal learn --help)")
    threshold = config["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"{path}: threshold must be a number (eV/A), not {threshold!r}; write it without quotes, "
                         "e.g. threshold = 0.5")
    base = file.resolve().parent
    config["workdir"] = config.get("workdir", file.stem)
    for key in ("structure", "initial", "final", "workdir", "model"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: {key} must be a string, not {value!r}")
    for key in ("structure", "initial", "final", "workdir"):
        if key in config:
            config[key] = str(base / config[key])
    model = config.get("model", "default")
    if model != "default" and ((base / model).exists() or not is_foundation_name(model)):
        config["model"] = str(base / model)  # a model file; a foundation name stays a name
    finetune = config.get("finetune", {})
    for key in ("replay", "checkpoint"):
        if isinstance(finetune.get(key), str) and finetune[key] != "default":
            finetune[key] = str(base / finetune[key])
    return config


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    from .learning.neb_learner import NoBandError

    _check_arguments("demo", args, images="at least 3", threshold="positive", max_labels="at least 1",
                     rounds="at least 1")
    try:
        run_demo(Path(args.workdir), n_images=args.images, threshold=args.threshold, max_labels=args.max_labels,
                 max_rounds=args.rounds)
    except NoBandError as error:  # a run that ran no band says why, without a traceback
        raise SystemExit(f"the demo: {error}\nthe store and state are in {Path(args.workdir) / 'run'}/") from None


DISTANCE_HELP = ("force uncertainty that also grows with each atom's distance in feature space from the data "
                 "(MLIPALCalculator(distance_aware=...); default: on, --no-distance-aware: the plain posterior "
                 "variance)")

LEARN_HELP = """TOML file, e.g. for MD:

    kind = "md"
    model = "default"
    distance_aware = true  # false: the plain posterior variance, without the distance in feature space
    reference = "xtb"      # xtb, emt or package.module:Factory
    threshold = 0.5        # eV/A, largest per-atom force uncertainty (the default model: about 0.15 near equilibrium)
    structure = "ethanol.xyz"
    workdir = "run1"       # default: the file's name without .toml, beside it
    labels_per_round = 8   # md: frames waiting for a label that make a round
    max_rounds = 5         # md: a hole an audit finds later still makes a round (at most max_rewinds more)
    max_labels = 40        # reference labels at most, checks included (leave out: no bound)
    [md]
    steps = 2000
    temperature = 600
    audit_interval = 200   # one unflagged frame per ~200 steps checked against the reference
    force_tolerance = 0.15 # eV/A: an audit's mean force error must stay below (leave out: the 2-sigma test alone)
    recalibrate = true     # each audit rescales sigma (false: sigma moves only when a round swaps a model in)
    prior_frames = 1       # how many audits the calibration weighs as when they rescale sigma
    rewind_tolerance = 1.0 # eV: an audit off by more fails (however wide its sigma): a hole; the MD goes back
    max_rewinds = 3        # the most times it goes back (0: never)
    [finetune]             # on top of the learners' own (ase_mlipal.learning.learning_run.LEARNER_FINETUNE)
    epochs = 150

for a band (the same top-level keys but structure and labels_per_round):

    kind = "neb"
    threshold = 0.5
    initial = "reactant.xyz"
    final = "product.xyz"
    [neb]
    images = 7
    barrier_tolerance = 0.1   # eV: the climbing-image check must agree this well
    band_start = "initial"    # each round's band starts from the initial band ("previous": where the last ended)

threshold and structure (md) or initial and final (neb) are required; an
unknown key, or one of the other kind, is an error. Relative paths (structure, initial, final, workdir,
a model file, [finetune] replay and checkpoint) are relative to the folder
of this file.
"""


def _kernel_options(pairs: Sequence[str]) -> dict:
    """``["dim=1024", "members=[\"a.model\"]"]`` -> options (values read as JSON where they parse)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--kernel-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _pool_calculator(args: argparse.Namespace):
    """The calculator of ``select``/``score``, conditioned on ``--labelled`` frames."""
    calc = _calculator(args.model, args.trust, args.kernel, _kernel_options(args.kernel_option))
    if getattr(args, "labelled", None) and args.command == "score":
        calc.condition(_read(args.labelled, ":"))  # progress bars here: on a terminal only (their default)
    return calc


def cmd_select(args: argparse.Namespace) -> None:
    from .learning.labelling import process_pool
    from .selection import pick, select

    _check_arguments("select", args, n="at least 1", shortlist="0 or more", workers="at least 1",
                     chunk_size="at least 1", outputs=("output",))
    calc = _pool_calculator(args)
    labelled = _read(args.labelled, ":") if args.labelled else None
    options = dict(method=args.method, labelled=labelled, shortlist=args.shortlist or None,
                   chunk_size=args.chunk_size, seed=args.seed)
    if args.workers > 1:
        with process_pool(args.workers) as executor:
            picks = select(calc, args.pool, args.n, executor=executor, **options)
    else:
        picks = select(calc, args.pool, args.n, **options)
    chosen = pick(args.pool, picks)
    for atoms, index in zip(chosen, picks):
        atoms.info["pool_index"] = int(index)
    write(args.output, chosen)
    print(f"picked {len(chosen)} of the pool by {args.method} on the {args.kernel} kernel -> {args.output}")
    print("pool indices:", " ".join(str(int(i)) for i in picks))


def _write_csv(rows, handle) -> None:
    """Write dict ``rows`` as CSV to ``handle``, the first row's keys as the header."""
    writer = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
        writer.writerow(row)


def cmd_score(args: argparse.Namespace) -> None:
    from .selection import is_database, score_pool

    _check_arguments("score", args, chunk_size="at least 1", outputs=("output",))
    if not args.output and not is_database(args.pool):
        raise SystemExit("mlipal score: give -o scores.csv (-o - for the terminal), or a pool that is an ase.db "
                         "to write into")
    calc = _pool_calculator(args)
    rows = score_pool(calc, args.pool, args.chunk_size)
    units = "energy_uncertainty in eV, uncertainty in eV/A" if calc.calibrated else "raw (uncalibrated)"
    if args.output == "-":  # the table on stdout, the note on stderr: `mlipal score pool.xyz -o - | sort ...`
        _write_csv(rows, sys.stdout)
        print(f"per-structure uncertainties: {units}", file=sys.stderr)
    elif args.output:
        with open(args.output, "w", newline="") as handle:
            _write_csv(rows, handle)
        print(f"wrote per-structure uncertainties ({units}) to {args.output}")
    else:  # an ase.db pool (checked above)
        import ase.db

        results = list(rows)
        with ase.db.connect(args.pool) as db:
            ids = [row.id for row in db.select()]
            for row_id, result in zip(ids, results):
                db.update(row_id, energy_uncertainty=result["energy_uncertainty"],
                          uncertainty=result["uncertainty"])
        print(f"wrote energy_uncertainty and uncertainty ({units}) into {len(results)} rows of {args.pool}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .analysis.reconstruction import (
        atom_latents,
        compare,
        layer_latents,
        plot_comparison,
    )
    from .models.model import ModelLoadError, load_model

    _check_arguments("compare", args, n_local="at least 1", max_atoms="at least 1", outputs=("plot",))
    frames = _read(args.data, ":")
    latents = {}
    for label, spec in (("A", args.model_a), ("B", args.model_b)):
        try:
            model = load_model(spec, trust=args.trust)
        except (ModelLoadError, FileNotFoundError) as error:
            raise SystemExit(f"cannot load model {spec!r}: {error}") from None
        features = atom_latents(model, frames)
        if args.layers:
            latents.update({f"{label} {name}": x for name, x in layer_latents(features, model).items()})
        else:
            latents[label] = features
    comparison = compare(latents, n_local_points=args.n_local, max_atoms=args.max_atoms, seed=args.seed)
    print(f"A = {args.model_a}\nB = {args.model_b}\n{comparison}")
    print(f"heat maps -> {plot_comparison(comparison, args.plot)}")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="mlipal", description=__doc__.splitlines()[0])
    sub = main.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="default", help="model file, foundation name or 'default'")
        p.add_argument("--trust", action="store_true", help="allow loading pickled model files")
        p.add_argument("--distance-aware", action=argparse.BooleanOptionalAction, default=None, help=DISTANCE_HELP)
        p.add_argument("--threshold", type=float, default=0.5,
                       help="trigger threshold, eV/A (default 0.5: the default model is about 0.15 near equilibrium)")
        p.add_argument("--db", default="frames.db", help="frame store (.db file or postgresql:// URL)")
        p.add_argument("--interval", type=int, default=5, help="trigger every N steps")
        p.add_argument("--steps", type=int, default=1000)
        p.add_argument("--plot", help="write a PNG here")

    md = sub.add_parser("md", help="Langevin MD with uncertainty; flags frames for labelling")
    md.add_argument("structure")
    md.add_argument("--temperature", type=float, default=300.0, help="K")
    md.add_argument("--timestep", type=float, default=0.5, help="fs")
    md.add_argument("--trajectory", help="ASE .traj to write")
    md.add_argument("--seed", type=int, help="the thermostat's and the start velocities' seed: a rerun repeats "
                                             "the run (default: a new trajectory each time)")
    common(md)
    md.set_defaults(func=cmd_md)

    neb = sub.add_parser("neb", help="climbing-image NEB with per-image uncertainty")
    neb.add_argument("initial")
    neb.add_argument("final")
    neb.add_argument("--images", type=int, default=7, help="images including the endpoints")
    neb.add_argument("--fmax", type=float, default=0.05, help="eV/A")
    neb.add_argument("-o", "--output", help="write the final band here")
    neb.add_argument("-v", "--verbose", action="store_true", help="log the optimiser")
    common(neb)
    neb.set_defaults(func=cmd_neb, steps=300)

    ts = sub.add_parser("ts", help="refine a transition state with Sella from a band or an image; verify it")
    ts.add_argument("structure", help="a band (several frames: starts from its highest interior image) or one image")
    ts.add_argument("--model", default="default", help="model file, foundation name or 'default'")
    ts.add_argument("--trust", action="store_true", help="allow loading pickled model files")
    ts.add_argument("--distance-aware", action=argparse.BooleanOptionalAction, default=None, help=DISTANCE_HELP)
    ts.add_argument("--reference", help="label and check the saddle: xtb, pyscf, emt or package.module:Callable")
    ts.add_argument("--fmax", type=float, default=0.01, help="eV/A")
    ts.add_argument("--steps", type=int, default=500, help="Sella steps at most")
    ts.add_argument("--tolerance", type=float, help="largest accepted energy (barrier) error, eV")
    ts.add_argument("--no-vibrations", action="store_true", help="skip the frequencies (6N model calls)")
    ts.add_argument("--db", default="frames.db", help="frame store for a saddle that fails its check")
    ts.add_argument("--trajectory", help="Sella's trajectory file")
    ts.add_argument("-o", "--output", help="write the saddle here")
    ts.set_defaults(func=cmd_ts)

    learn = sub.add_parser("learn", help="on-the-fly learning from a config file",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=LEARN_HELP)
    learn.add_argument("config")
    learn.set_defaults(func=cmd_learn)

    def pool_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("pool", help="candidates: extxyz (any ASE format) or an ase.db")
        p.add_argument("--model", default="default", help="model file, foundation name or 'default'")
        p.add_argument("--trust", action="store_true", help="allow loading pickled model files")
        p.add_argument("--kernel", default="activation",
                       choices=["activation", "ntk", "force_ntk", "ef_ntk", "fixed", "committee", "cumulant"])
        p.add_argument("--kernel-option", action="append", default=[], metavar="KEY=VALUE",
                       help="feature-map option, e.g. dim=1024 (repeatable)")
        p.add_argument("--labelled", help="structures already labelled (any ASE format)")
        p.add_argument("--chunk-size", type=int, default=256, help="structures featurised at once")

    select_ = sub.add_parser("select", help="pick informative structures from a candidate pool")
    pool_options(select_)
    select_.add_argument("-n", type=int, required=True, help="how many to pick")
    select_.add_argument("--method", default="maxdet", choices=["maxdet", "lcmd", "maxdist", "random"])
    select_.add_argument("--shortlist", type=int, default=5000,
                         help="candidates kept for the greedy step, chosen diversity-aware as the pool streams (0: all)")
    select_.add_argument("--workers", type=int, default=1, help="processes computing features")
    select_.add_argument("--seed", type=int, default=0, help="for --method random")
    select_.add_argument("-o", "--output", default="picked.xyz")
    select_.set_defaults(func=cmd_select)

    score = sub.add_parser("score", help="per-structure uncertainties of a pool (CSV, or into an ase.db)")
    pool_options(score)
    score.add_argument("-o", "--output", help="CSV file (- for stdout); without it an ase.db pool is updated in place")
    score.set_defaults(func=cmd_score)

    compare_ = sub.add_parser("compare", help="GFRE/LFRE between the latent features of two models, both ways")
    compare_.add_argument("model_a", help="model file, foundation name or 'default'")
    compare_.add_argument("model_b")
    compare_.add_argument("data", help="structures whose atoms are compared (any ASE format)")
    compare_.add_argument("--layers", action="store_true", help="compare each interaction layer separately")
    compare_.add_argument("--n-local", type=int, default=50, help="neighbours per local fit (LFRE)")
    compare_.add_argument("--max-atoms", type=int, default=1000,
                          help="atoms subsampled for the fits (the LFRE costs a ridge fit per atom)")
    compare_.add_argument("--seed", type=int, default=0)
    compare_.add_argument("--trust", action="store_true", help="allow loading pickled model files")
    compare_.add_argument("--plot", default="reconstruction.png", help="heat map PNG")
    compare_.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo", help="the whole loop on a reaction with GFN2-xTB (about 20 min on one core)")
    demo.add_argument("--workdir", default="mlipal-demo")
    demo.add_argument("--images", type=int, default=9)
    demo.add_argument("--threshold", type=float, default=0.5, help="eV/A (default 0.5)")
    demo.add_argument("--max-labels", type=int, default=40, help="xTB labels at most, checks included (default 40)")
    demo.add_argument("--rounds", type=int, default=None,
                      help="learning rounds at most (bands: one more; default max-labels // 3)")
    demo.set_defaults(func=cmd_demo)
    return main


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``mlipal`` console script."""
    args = parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
        warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
        try:
            args.func(args)
        except (ValueError, ImportError, FileNotFoundError) as error:  # bad input or a missing extra or file
            raise SystemExit(f"mlipal {args.command}: {error}") from None


if __name__ == "__main__":
    main()
