"""Models users bring: a MACE trained by mace's own ``mace_run_train``, and multi-head models."""

import copy
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.verlet import VelocityVerlet
from mace import modules
from mace.calculators import MACECalculator
from mace.tools.scripts_utils import extract_config_mace_model
from mace.tools.torch_tools import default_dtype

import ase_mlipal
from ase_mlipal import MLIPALCalculator, ModelLoadError, load_model, model_hash, save_model
from ase_mlipal.environment import torch_load_override
from ase_mlipal.training.finetune import finetune
from ase_mlipal.learning.store import FrameStore
from ase_mlipal.training.trainer import evaluate, frame_errors
from ase_mlipal.learning.trigger import UncertaintyTrigger

from ..conftest import labelled_by, rattled


def emt_frames(names, per_molecule: int, seed: int, stdev: float = 0.05) -> list:
    """Rattled small molecules labelled by EMT: a SinglePointCalculator and mace's ``REF_`` keys."""
    frames = []
    for k, name in enumerate(names):
        for atoms in rattled(molecule(name), per_molecule, stdev=stdev, seed=seed + k):
            atoms.calc = EMT()
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            atoms.info["REF_energy"], atoms.arrays["REF_forces"] = energy, forces
            frames.append(atoms)
    return frames


def predictions(calc, frames):
    """Energies (eV) and forces (eV/A, concatenated) of ``frames`` under ``calc``."""
    energies, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return np.array(energies), np.concatenate(forces)


# -- a model from mace_run_train ---------------------------------------------


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """``(path of NAME.model, its 12 training frames)``: a tiny MACE trained for 2 epochs by ``mace_run_train``."""
    work = tmp_path_factory.mktemp("mace_run_train")
    frames = emt_frames(["CH4", "H2O", "NH3", "CH3OH"], 3, seed=0)
    write(work / "train.xyz", frames, format="extxyz")
    args = ["--name", "tiny", "--train_file", "train.xyz", "--valid_fraction", "0.25",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--model", "MACE",
            "--num_channels", "8", "--max_L", "0", "--r_max", "4.0", "--num_interactions", "2",
            "--max_num_epochs", "2", "--batch_size", "4", "--valid_batch_size", "4", "--E0s", "average",
            "--device", "cpu", "--default_dtype", "float64", "--seed", "1", "--work_dir", str(work)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "mace.cli.run_train", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "tiny.model", frames


def test_mace_trained_model_predicts_as_in_mace(user_model):
    path, frames = user_model
    with pytest.raises(ModelLoadError, match="trust=True"):
        load_model(path)  # a pickled module: only with trust
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(path.with_name("tiny_compiled.model"), trust=True)
    calc = MLIPALCalculator(model=path, trust=True)
    with torch_load_override(unpickle=True):
        reference = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    images = frames[::4] + [molecule("CH3CH2OH")]  # one of each training molecule and an unseen one
    energy, forces = predictions(calc, images)
    mace_energy, mace_forces = predictions(reference, images)
    np.testing.assert_allclose(energy, mace_energy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(forces, mace_forces, rtol=0, atol=1e-6)
    assert calc.batch_maker.head == "Default"


def test_trigger_on_a_mace_trained_model_flags_what_it_does_not_know(user_model, tmp_path):
    path, frames = user_model
    calc = MLIPALCalculator(model=path, trust=True)
    calc.condition(frames)
    novel = molecule("HCN")  # no C-N bond among the training molecules
    novel.calc = calc
    unknown = calc.get_property("uncertainty", novel)
    known = max(calc.get_property("uncertainty", atoms.copy()) for atoms in frames)
    assert known < unknown
    threshold = 0.5 * (known + unknown)
    store = FrameStore(tmp_path / "frames.db")
    novel.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(novel), 3)))
    trigger = UncertaintyTrigger(calc, store, threshold=threshold, atoms=novel, run_id="user")
    dyn = VelocityVerlet(novel, 0.5 * units.fs)
    dyn.attach(trigger, interval=1)
    dyn.run(4)
    assert trigger.nsteps == 5 and trigger.flagged[0][0] == 0  # flagged at the first step
    rows = list(store.rows("flagged"))
    assert len(rows) == len(trigger.flagged) and {row.formula for row in rows} == {"CHN"}
    assert all(row.model_hash == calc.model_hash for row in rows)


def test_finetuning_a_mace_trained_model(user_model):
    path, frames = user_model
    calc = MLIPALCalculator(model=path, trust=True)
    new = emt_frames(["CH3OH"], 10, seed=7, stdev=0.08)
    before = evaluate(calc.model, new)
    result = finetune(calc.model, new, replay=frames, epochs=8, lr=5e-3, progress=False)
    tuned = result.model
    after = evaluate(tuned, new)
    assert after["forces_mae"] < before["forces_mae"] and result.training.best_epoch >= 0
    assert len(result.valid) == 2  # replay_ratio 1: 10 of the 12 replay frames replayed, 2 spare
    calc.set_model(tuned, conditioning=frames)
    residuals = calc.residuals(new)  # the calculator runs the fine-tuned model evaluate scored
    assert np.mean(np.abs(residuals.forces)) == pytest.approx(after["forces_mae"], rel=1e-9)
    with pytest.raises(ModelLoadError, match="trust=True"):  # the file itself: pickled code needs trust
        finetune(path, new, replay=frames, epochs=1, progress=False)
    from_file = finetune(path, new, replay=frames, epochs=8, lr=5e-3, progress=False, trust=True).model
    assert model_hash(from_file) == model_hash(tuned)  # same start, same seed: the same fine-tune


def test_mace_trained_model_round_trips_through_the_safe_format(user_model, tmp_path):
    path, frames = user_model
    model = load_model(path, trust=True)
    safe = save_model(model, tmp_path / "safe.pt")
    assert torch.load(safe, weights_only=True)["format"] == "ase-mlipal-model"
    loaded = load_model(safe)  # no trust needed
    assert model_hash(loaded) == model_hash(model)
    images = frames[::3] + [molecule("CH3CH2OH")]
    energy, forces = predictions(MLIPALCalculator(model=loaded), images)
    trusted_energy, trusted_forces = predictions(MLIPALCalculator(model=path, trust=True), images)
    np.testing.assert_array_equal(energy, trusted_energy)
    np.testing.assert_array_equal(forces, trusted_forces)


# -- multi-head models ---------------------------------------------------------

HEADS = ["pt_head", "Default"]  # the default head second: heads[0] is not the calculator's


def with_heads(model, heads=HEADS, seed: int = 2):
    """``model``'s architecture with several heads, as mace's multi-head fine-tuning lays them out.

    Per head: a readout column (random, from ``seed``), E0s (0.2 eV apart per
    element), scale and shift.
    """
    config = extract_config_mace_model(model)
    e0 = np.asarray(config["atomic_energies"], dtype=float).reshape(1, -1)
    n = len(heads)
    config.update(heads=list(heads), atomic_energies=np.concatenate([e0 + 0.2 * k for k in range(n)]),
                  atomic_inter_scale=np.linspace(0.5, 0.3, n), atomic_inter_shift=np.linspace(0.1, -0.2, n))
    with torch.random.fork_rng(devices=[]), default_dtype("float64"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        torch.manual_seed(seed)
        return modules.ScaleShiftMACE(**config).eval()


@pytest.fixture(scope="module")
def two_heads(tiny_model):
    return with_heads(tiny_model)


@pytest.fixture(scope="module")
def teacher_frames():
    """Methanol frames labelled by a single-head 'teacher' MACE with the same E0s as ``tiny_model``."""
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])
    return labelled_by(teacher, rattled(molecule("CH3OH"), 12, stdev=0.08, seed=7))


def test_calculator_predicts_the_chosen_head(two_heads, ethanol):
    assert MLIPALCalculator(model=two_heads).batch_maker.head == "Default"  # by name, not heads[0]
    with pytest.raises(ValueError, match="not in the model's heads"):
        MLIPALCalculator(model=two_heads, head="nope")
    energies = {}
    for head in HEADS:
        energy, forces = predictions(MLIPALCalculator(model=two_heads, head=head), [ethanol])
        mace_energy, mace_forces = predictions(
            MACECalculator(models=copy.deepcopy(two_heads), head=head, default_dtype="float64"), [ethanol])
        np.testing.assert_allclose(energy, mace_energy, rtol=0, atol=1e-8)
        np.testing.assert_allclose(forces, mace_forces, rtol=0, atol=1e-8)
        energies[head] = energy[0]
    assert abs(energies["pt_head"] - energies["Default"]) > 0.1


def test_evaluate_scores_the_chosen_head(two_heads, teacher_frames):
    labels = np.array([atoms.get_potential_energy() for atoms in teacher_frames])
    for head in HEADS:
        mace = MACECalculator(models=copy.deepcopy(two_heads), head=head, default_dtype="float64")
        mace_energy, mace_forces = predictions(mace, teacher_frames)
        energy_error, force_errors = frame_errors(two_heads, teacher_frames, head=head)
        np.testing.assert_allclose(energy_error, mace_energy - labels, rtol=0, atol=1e-8)
        reference_forces = np.concatenate([atoms.get_forces() for atoms in teacher_frames])
        np.testing.assert_allclose(np.concatenate(force_errors), mace_forces - reference_forces, rtol=0, atol=1e-8)
    assert evaluate(two_heads, teacher_frames) == evaluate(two_heads, teacher_frames, head="Default")
    assert evaluate(two_heads, teacher_frames) != evaluate(two_heads, teacher_frames, head="pt_head")


def test_finetune_fits_the_chosen_head(two_heads, teacher_frames):
    """Fitting one head halves its force error; the other head's readout did not learn."""
    options = dict(replay=None, epochs=8, lr=5e-3, energy_weight=1.0, forces_weight=100.0, progress=False)
    tuned = {head: finetune(two_heads, teacher_frames, head=head, **options).model for head in HEADS}
    for head, other in (HEADS, HEADS[::-1]):
        before = evaluate(two_heads, teacher_frames, head=head)
        fitted = evaluate(tuned[head], teacher_frames, head=head)
        assert fitted["forces_mae"] < 0.6 * before["forces_mae"]
        assert fitted["energy_mae_per_atom"] < before["energy_mae_per_atom"]
        assert fitted["forces_mae"] < 0.6 * evaluate(tuned[head], teacher_frames, head=other)["forces_mae"]
    by_default = finetune(two_heads, teacher_frames, **options).model  # the calculator's head, "Default"
    assert model_hash(by_default) == model_hash(tuned["Default"])


def test_a_learning_round_finetunes_the_calculators_head(two_heads, tmp_path, monkeypatch):
    from ase_mlipal.learning import learning_run as retrain

    calc = MLIPALCalculator(model=two_heads, head="pt_head")
    known = rattled(molecule("CH3OH"), 3, stdev=0.05, seed=4)
    with pytest.raises(ValueError, match="head the calculator predicts"):
        retrain.LearningRun(calc, EMT(), tmp_path / "other", conditioning=known, finetune_options={"head": "Default"})
    heads = []

    def spy(*args, **kwargs):
        heads.append(kwargs.get("head"))
        return finetune(*args, **kwargs)

    monkeypatch.setattr(retrain, "finetune", spy)
    run = retrain.LearningRun(calc, EMT(), tmp_path / "run", conditioning=known, executor=ThreadPoolExecutor(1),
                              finetune_options={"epochs": 2, "replay": None}, progress=False)
    for atoms in known:
        run.store.add_flagged(atoms, "md")
    trigger = UncertaintyTrigger(calc, run.store, threshold=1.0)
    record = run.learn(1, trigger)
    assert heads == ["pt_head"] and record.accepted
    assert calc.batch_maker.head == "pt_head" and calc.model_hash != model_hash(two_heads)
