"""Generate the GFN2-xTB data sets: near-equilibrium pretraining set and reactive benchmark set.

    python scripts/make_data.py                       # writes benchmarks/data/*.xyz.gz
    python scripts/make_data.py --workers 2 --out DIR

Pretraining set (``pretrain.xyz.gz``): every closed-shell H/C/N/O molecule
of ASE's g2 collection, relaxed with xTB, then Langevin MD at 300, 550 and
800 K plus small random displacements. Frames whose bond graph differs from
the relaxed molecule are dropped (no reactive events). Split by molecule and
by trajectory (see ``assign_splits``): whole molecules and whole
trajectories go to test or valid, so no frame of a test trajectory is in
train. ``info``: ``molecule``, ``trajectory``, ``split``.

Reactive set (``reactive.xyz.gz``): six reactions with a climbing-image NEB
on xTB (a ring opening, four unimolecular decompositions, one
isomerisation; oxirane -> acetaldehyde and cyclobutene -> butadiene were
tried and dropped: their NEBs from IDPP paths did not converge in 2000 FIRE
steps; acetaldehyde -> CH4 + CO converges only with the rebuilt band of
``converged_band``, added after the stored set was made, so it has a band
in ``reactive_bands.xyz.gz`` and no frames) and two 3000 K MD runs where
bonds break. NEB frames are
points along the converged path with thermal noise. Splits: ``test``
covers each path uniformly; ``pool`` is drawn mostly away from the
transition state (TS-region frames kept with probability 0.1, as in real
candidate pools); ``initial`` is a few frames near the minima. ``info``:
``reaction``, ``kind``, ``image`` (nearest NEB image, or MD step),
``path_s`` (0..1 along the path), ``ts_region``, ``split``.

Every frame is labelled with energy and forces (eV, eV/A); frames whose SCF
failed at every electronic temperature are skipped and counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.collections import g2  # noqa: E402
from ase.io import write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.mep import NEB  # noqa: E402
from ase.neighborlist import natural_cutoffs, neighbor_list  # noqa: E402
from ase.optimize import BFGS, FIRE  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ase_mlipal.references.xtb import LabelStats, RobustXTB, xtb_label  # noqa: E402

ELEMENTS = set("HCNO")
MD_TEMPERATURES = (300.0, 550.0, 800.0)
MD_STEPS, MD_EVERY, MD_SKIP = 640, 12, 40          # 50 frames per trajectory
N_DISPLACED, DISPLACEMENT = 30, 0.04              # random displacements, A
HELD_OUT_MOLECULES = 0.1                          # fraction of molecules wholly in test
TEST_TRAJECTORIES, VALID_TRAJECTORIES = 0.1, 0.1  # fractions of the other trajectories

NEB_REACTIONS = {
    # name: (kind, reactant, [product fragments])
    "cyclobutane_to_2_ethylene": ("ring_opening", "cyclobutane", ["C2H4", "C2H4"]),
    "formic_acid_to_CO_H2O": ("decomposition", "HCOOH", ["CO", "H2O"]),
    "formic_acid_to_CO2_H2": ("decomposition", "HCOOH", ["CO2", "H2"]),
    "formaldehyde_to_CO_H2": ("decomposition", "H2CO", ["CO", "H2"]),
    "ethanol_to_ethylene_H2O": ("decomposition", "CH3CH2OH", ["C2H4", "H2O"]),
    "methanol_to_formaldehyde_H2": ("decomposition", "CH3OH", ["H2CO", "H2"]),
    "acetaldehyde_to_CH4_CO": ("decomposition", "CH3CHO", ["CH4", "CO"]),
}
HOT_MD = {"methyl_nitrite_3000K": "CH3ONO", "ethanol_3000K": "CH3CH2OH"}
N_TEST, N_POOL, N_INITIAL = 150, 330, 5            # frames per NEB reaction
HOT_MD_STEPS, HOT_MD_EVERY = 3000, 8               # 375 frames per hot MD (750 fs)
PATH_NOISE = 0.04                                  # A, thermal noise on path points
TS_HALF_WIDTH, TS_KEEP_IN_POOL = 0.15, 0.1


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


# -- pretraining set ----------------------------------------------------------


def closed_shell_hcno() -> list[str]:
    names = []
    for name in g2.names:
        atoms = molecule(name)
        if not set(atoms.get_chemical_symbols()) <= ELEMENTS:
            continue
        if abs(atoms.get_initial_magnetic_moments().sum()) > 1e-6 or atoms.numbers.sum() % 2:
            continue
        names.append(name)
    return sorted(names)


def bond_graph(atoms: Atoms) -> frozenset:
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    return frozenset((a, b) for a, b in zip(i, j) if a < b)


def relaxed(atoms: Atoms, fmax: float = 0.02, steps: int = 300) -> Atoms:
    """xTB minimum near ``atoms`` (BFGS to ``fmax`` eV/A, at most ``steps`` steps; the calculator stays attached)."""
    atoms = atoms.copy()
    atoms.calc = RobustXTB()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return atoms


def molecule_frames(name: str) -> tuple[list[Atoms], dict]:
    """MD and displaced frames of one molecule; (frames, counts)."""
    rng = np.random.default_rng(seed_of(name))
    start = relaxed(molecule(name))
    bonds = bond_graph(start)
    frames, dropped, stats = [], 0, LabelStats()

    def keep(frame: Atoms, trajectory: str, labelled: Atoms | None) -> None:
        nonlocal dropped
        if labelled is None:
            return
        if bond_graph(frame) != bonds:
            dropped += 1
            return
        labelled.info.update(molecule=name, trajectory=trajectory)
        frames.append(labelled)

    for temperature in MD_TEMPERATURES:
        atoms = start.copy()
        atoms.calc = driver = RobustXTB()
        atoms.set_momenta(np.zeros_like(atoms.positions))
        dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
        trajectory = f"{name}/md{temperature:.0f}K"

        def sample(atoms=atoms, trajectory=trajectory):
            if dyn.nsteps >= MD_SKIP:
                keep(atoms, trajectory, xtb_label(atoms, stats, calculators=driver.calculators))

        dyn.attach(sample, interval=MD_EVERY)
        try:
            dyn.run(MD_STEPS)
        except RuntimeError:  # xTB failed at every temperature: end this trajectory
            stats.errors.append(f"{trajectory} stopped at step {dyn.nsteps}")
    for _ in range(N_DISPLACED):
        frame = start.copy()
        frame.positions += rng.normal(scale=DISPLACEMENT, size=frame.positions.shape)
        keep(frame, f"{name}/displaced", xtb_label(frame, stats))
    return frames, {"dropped_bond_change": dropped, "skipped_scf": stats.skipped, "retried": stats.retried}


def assign_splits(frames: list[Atoms], seed: int = 0) -> None:
    """Set ``info["split"]`` by molecule and by trajectory, never by frame.

    A few whole molecules (of five or more atoms, so no single exotic
    species such as ozone decides the score) are test molecules; of the
    other molecules' trajectories, a tenth go to test and a tenth to valid.
    """
    rng = np.random.default_rng(seed)
    molecules = sorted({f.info["molecule"] for f in frames})
    sizes = {f.info["molecule"]: len(f) for f in frames}
    candidates = [m for m in molecules if sizes[m] >= 5]
    held_out = set(rng.choice(candidates, size=round(HELD_OUT_MOLECULES * len(molecules)), replace=False))
    split = {}
    for trajectory in sorted({f.info["trajectory"] for f in frames}):
        if trajectory.split("/")[0] in held_out:
            split[trajectory] = "test"
        else:
            u = rng.uniform()
            split[trajectory] = ("test" if u < TEST_TRAJECTORIES else
                                 "valid" if u < TEST_TRAJECTORIES + VALID_TRAJECTORIES else "train")
    for frame in frames:
        frame.info["split"] = split[frame.info["trajectory"]]


# -- reactive set -------------------------------------------------------------


def fragments(names: list[str], gap: float = 3.0) -> Atoms:
    """Product fragments side by side along x, ``gap`` A apart."""
    out = Atoms()
    for name in names:
        part = molecule(name)
        part.positions -= part.positions.mean(axis=0)
        if len(out):
            part.positions[:, 0] += out.positions[:, 0].max() - part.positions[:, 0].min() + gap
        out += part
    return out


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMSD after optimal rotation of each b[k] onto a (both centred); b is (K, N, 3)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=1, keepdims=True)
    h = np.einsum("kni,nj->kij", b, a)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("kij,kjl->kil", u, vt)))
    s[:, -1] *= d
    msd = (np.sum(a**2) + np.sum(b**2, axis=(1, 2)) - 2 * s.sum(axis=1)) / len(a)
    return np.sqrt(np.maximum(msd, 0.0))


def adjacency(atoms: Atoms) -> np.ndarray:
    matrix = np.zeros((len(atoms), len(atoms)), dtype=bool)
    for a, b in bond_graph(atoms):
        matrix[a, b] = matrix[b, a] = True
    return matrix


def map_product(reactant: Atoms, product: Atoms) -> Atoms:
    """Reorder ``product`` so atom i corresponds to reactant atom i.

    Among all permutations within each element, keep those that change the
    fewest bonds (the chemically shortest reaction), then the one of
    smallest RMSD after optimal superposition (least motion).
    """
    symbols = reactant.get_chemical_symbols()
    if sorted(symbols) != sorted(product.get_chemical_symbols()):
        raise ValueError("reactant and product have different atoms")
    groups = {s: [i for i, x in enumerate(symbols) if x == s] for s in dict.fromkeys(symbols)}
    sources = {s: [i for i, x in enumerate(product.get_chemical_symbols()) if x == s] for s in groups}
    candidates = []
    for choice in itertools.product(*(itertools.permutations(sources[s]) for s in groups)):
        order = np.empty(len(reactant), dtype=int)
        for s, perm in zip(groups, choice):
            order[groups[s]] = perm
        candidates.append(order)
    candidates = np.array(candidates)
    r_adj, p_adj = adjacency(reactant), adjacency(product)
    changed = np.array([np.sum(r_adj != p_adj[np.ix_(order, order)]) for order in candidates])
    candidates = candidates[changed == changed.min()]
    rmsd = kabsch_rmsd(reactant.positions, product.positions[candidates])
    return product[candidates[int(np.argmin(rmsd))]]


def neb_optimise(images: list[Atoms]) -> bool:
    """Climbing-image NEB on xTB, in place; True if converged to fmax 0.05 eV/A."""
    for image in images:
        image.calc = RobustXTB()
    rng = np.random.default_rng(0)
    for image in images[1:-1]:  # break symmetry (a linear HCN would pass H through C-N)
        image.positions += rng.normal(scale=0.05, size=image.positions.shape)
    neb = NEB(images, climb=True, method="improvedtangent")
    return bool(FIRE(neb, logfile=None).run(fmax=0.05, steps=1500))


def aligned_product(reactant: Atoms, product: Atoms, gap: float = 2.5) -> Atoms:
    """``product`` (in reactant order) with each fragment rotated onto the reactant's atoms, fragments >= ``gap`` A apart.

    Fragments laid side by side in an arbitrary orientation make IDPP paths
    that rotate whole fragments through each other; superposing each one on
    the atoms it came from gives the least-motion start.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.transform import Rotation

    n_fragments, labels = connected_components(adjacency(product))
    out = product.copy()
    for fragment in range(n_fragments):
        mine = labels == fragment
        source, target = product.positions[mine], reactant.positions[mine]
        with warnings.catch_warnings():  # a 1- or 2-atom fragment has no unique rotation: any will do
            warnings.simplefilter("ignore", UserWarning)
            rotation, _ = Rotation.align_vectors(target - target.mean(0), source - source.mean(0))
        out.positions[mine] = rotation.apply(source - source.mean(0)) + target.mean(0)
    centre = out.positions.mean(axis=0)
    apart = labels[:, None] != labels[None, :]
    for _ in range(400):  # push the fragments out from the centre, 0.05 A a step
        if n_fragments == 1 or out.get_all_distances()[apart].min() >= gap:
            break
        for fragment in range(n_fragments):
            mine = labels == fragment
            direction = out.positions[mine].mean(axis=0) - centre
            out.positions[mine] += 0.05 * direction / max(np.linalg.norm(direction), 1e-9)
    return out


def path_coordinates(images: list[Atoms]) -> np.ndarray:
    steps = [np.linalg.norm(b.positions - a.positions) for a, b in zip(images[:-1], images[1:])]
    s = np.concatenate([[0.0], np.cumsum(steps)])
    return s / s[-1]


def point_on_path(images: list[Atoms], s_images: np.ndarray, s: float) -> tuple[Atoms, int]:
    k = min(int(np.searchsorted(s_images, s, side="right")) - 1, len(images) - 2)
    t = (s - s_images[k]) / (s_images[k + 1] - s_images[k])
    frame = images[0].copy()
    frame.calc = None
    frame.positions = (1 - t) * images[k].positions + t * images[k + 1].positions
    return frame, int(round(k + t))


def converged_band(name: str) -> tuple[list[Atoms], str]:
    """The climbing-image NEB of reaction ``name`` on xTB, or ``([], why it was dropped)``.

    First 11 images from the product fragments as laid out by
    :func:`fragments`. If that band does not converge, or its images need
    different electronic temperatures (energies from two surfaces: ethanol's
    first band had a 14.5 eV "barrier" that way), again with 17 images from
    :func:`aligned_product` (more images resolve a steep top).
    """
    _, reactant_name, product_names = NEB_REACTIONS[name]
    reactant = relaxed(molecule(reactant_name))
    mapped = map_product(reactant, fragments(product_names))
    why = ""
    for product, n_images in ((mapped, 11), (aligned_product(reactant, mapped), 17)):
        images = [reactant] + [reactant.copy() for _ in range(n_images - 2)] + [relaxed(product)]
        NEB(images, method="improvedtangent").interpolate("idpp")
        try:
            converged = neb_optimise(images)
        except RuntimeError as error:  # xTB failed on an image at every temperature
            why = str(error)
            continue
        labels = [xtb_label(image, LabelStats()) for image in images]
        temperatures = {None if label is None else label.info["xtb_electronic_temperature"] for label in labels}
        if converged and len(temperatures) == 1:
            return images, ""
        why = ("NEB not converged to fmax 0.05 eV/A in 1500 FIRE steps" if not converged
               else f"band images need different electronic temperatures {sorted(temperatures, key=str)} K")
    return [], why


def neb_band(name: str) -> tuple[list[Atoms], dict]:
    """The converged band itself, each image labelled (``info``: ``reaction``, ``image``, ``path_s``)."""
    images, dropped = converged_band(name)
    if not images:
        return [], {"dropped": dropped}
    s_images = path_coordinates(images)
    frames = []
    for k, image in enumerate(images):
        labelled = xtb_label(image, LabelStats())
        labelled.info.update(reaction=name, image=k, path_s=float(s_images[k]))
        frames.append(labelled)
    return frames, {}


def path_frames(images: list[Atoms], rng: np.random.Generator, stats: LabelStats, initial: bool = True,
                **info) -> list[Atoms]:
    """Labelled frames along a converged band (labelled images) with ``PATH_NOISE`` thermal noise.

    ``N_TEST`` test frames uniform in the path coordinate, then ``N_POOL``
    pool frames (transition-state frames kept with probability
    ``TS_KEEP_IN_POOL``), then, with ``initial``, ``N_INITIAL`` near the
    minima; in that order, so the test frames do not depend on the rest.
    ``info`` (e.g. ``reaction``) goes into every frame's ``info`` with
    ``image``, ``path_s``, ``ts_region`` and ``split``.
    """
    energies = [image.get_potential_energy() for image in images]
    s_images = path_coordinates(images)
    s_ts = float(s_images[int(np.argmax(energies))])
    frames = []

    def add(s: float, split: str) -> None:
        frame, image = point_on_path(images, s_images, s)
        frame.positions += rng.normal(scale=PATH_NOISE, size=frame.positions.shape)
        labelled = xtb_label(frame, stats)
        if labelled is not None:
            labelled.info.update(info, image=image, path_s=float(s), ts_region=bool(abs(s - s_ts) < TS_HALF_WIDTH),
                                 split=split)
            frames.append(labelled)

    for s in rng.uniform(0, 1, N_TEST):
        add(s, "test")
    n_pool = 0
    while n_pool < N_POOL:
        s = rng.uniform(0, 1)
        if abs(s - s_ts) >= TS_HALF_WIDTH or rng.uniform() < TS_KEEP_IN_POOL:
            add(s, "pool")
            n_pool += 1
    if initial:
        for s in rng.uniform(0, 0.08, N_INITIAL // 2 + 1).tolist() + rng.uniform(0.92, 1, N_INITIAL // 2).tolist():
            add(s, "initial")
    return frames


def neb_reaction(name: str) -> tuple[list[Atoms], dict]:
    kind = NEB_REACTIONS[name][0]
    rng = np.random.default_rng(seed_of(name))
    images, dropped = converged_band(name)
    if not images:
        return [], {"dropped": dropped}
    energies = [image.get_potential_energy() for image in images]
    stats = LabelStats()
    frames = path_frames(images, rng, stats, reaction=name, kind=kind)
    s_ts = float(path_coordinates(images)[int(np.argmax(energies))])
    info = {"barrier_eV": float(max(energies) - energies[0]), "reaction_energy_eV": float(energies[-1] - energies[0]),
            "neb_converged": True, "s_ts": s_ts,
            "skipped_scf": stats.skipped, "retried": stats.retried}
    return frames, info


def hot_md(name: str) -> tuple[list[Atoms], dict]:
    rng = np.random.default_rng(seed_of(name))
    atoms = relaxed(molecule(HOT_MD[name]))
    bonds = bond_graph(atoms)
    atoms.calc = driver = RobustXTB()
    dyn = Langevin(atoms, 0.25 * units.fs, temperature_K=3000, friction=0.02, fixcm=False, rng=rng)
    stats, frames = LabelStats(), []

    def sample():
        labelled = xtb_label(atoms, stats, calculators=driver.calculators)
        if labelled is None:
            return
        broken = bond_graph(atoms) != bonds
        split = "test" if rng.uniform() < 0.3 else ("pool" if broken or rng.uniform() < 0.9 else "initial")
        labelled.info.update(reaction=name, kind="hot_md", image=int(dyn.nsteps), path_s=dyn.nsteps / HOT_MD_STEPS,
                             ts_region=bool(broken), split=split)
        frames.append(labelled)

    dyn.attach(sample, interval=HOT_MD_EVERY)
    try:
        dyn.run(HOT_MD_STEPS)
    except RuntimeError:
        stats.errors.append(f"{name} stopped at step {dyn.nsteps}")
    changed = sum(f.info["ts_region"] for f in frames)
    return frames, {"frames_with_changed_bonds": int(changed), "skipped_scf": stats.skipped}


def _run(task):
    kind, name = task
    fn = {"molecule": molecule_frames, "neb": neb_reaction, "hot": hot_md, "band": neb_band}[kind]
    return kind, name, fn(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "benchmarks" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=("pretrain", "reactive", "bands"),
                        help="make one of the sets (bands: the converged NEB bands alone)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    names = closed_shell_hcno()
    tasks = []
    if args.only in (None, "reactive"):
        tasks += [("neb", n) for n in NEB_REACTIONS] + [("hot", n) for n in HOT_MD]
    if args.only in (None, "bands"):
        tasks += [("band", n) for n in NEB_REACTIONS]
    if args.only in (None, "pretrain"):
        tasks += [("molecule", n) for n in names]
    results = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for kind, name, value in tqdm(pool.map(_run, tasks), total=len(tasks), desc="xTB data"):
            results[(kind, name)] = value

    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and args.only else {}
    if args.only in (None, "pretrain"):
        pretrain = []
        summary["molecules"] = {}
        for name in names:
            frames, counts = results[("molecule", name)]
            pretrain += frames
            summary["molecules"][name] = {"frames": len(frames), **counts}
        assign_splits(pretrain)
        write(args.out / "pretrain.xyz.gz", pretrain, format="extxyz")
        summary["pretrain_frames"] = {s: sum(f.info["split"] == s for f in pretrain) for s in ("train", "valid", "test")}
        summary["pretrain_seconds"] = round(time.perf_counter() - start, 1)
    if args.only in (None, "bands"):
        bands = [f for kind, name in tasks if kind == "band" for f in results[(kind, name)][0]]
        write(args.out / "reactive_bands.xyz.gz", bands, format="extxyz")
        summary["bands"] = sorted({f.info["reaction"] for f in bands})
    if args.only in (None, "reactive"):
        reactive = []
        summary["reactions"] = {}
        for kind, name in tasks:
            if kind in ("neb", "hot"):
                frames, info = results[(kind, name)]
                reactive += frames
                summary["reactions"][name] = {"frames": len(frames), **info}
        write(args.out / "reactive.xyz.gz", reactive, format="extxyz")
        summary["reactive_frames"] = {s: sum(f.info["split"] == s for f in reactive) for s in ("pool", "test", "initial")}
        summary["reactive_seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("molecules", "reactions")}, indent=1))
    for name, info in summary.get("reactions", {}).items():
        print(f"  {name:<28} {info}")


if __name__ == "__main__":
    main()
