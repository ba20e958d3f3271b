import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import ase_mlipal
from ase_mlipal.training.trainer import dataset_statistics, evaluate, train

from ..conftest import rattled


@pytest.fixture(scope="module")
def teacher_frames():
    """Frames labelled by a 'teacher' MACE: a known function the student can learn."""
    teacher = ase_mlipal.MLIPALCalculator(
        model=ase_mlipal.build_mace(["H", "C", "O"], channels=8, r_max=4.0, seed=11, scale=0.3))
    frames = []
    for atoms in rattled(molecule("CH3OH"), 40, stdev=0.08, seed=5):
        atoms.calc = teacher
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(labelled)
    return frames


def test_training_lowers_the_error_and_keeps_the_best_epoch(teacher_frames, tmp_path):
    student = ase_mlipal.build_mace(["H", "C", "O"], channels=8, r_max=4.0, seed=3)
    train_set, valid_set = teacher_frames[:32], teacher_frames[32:]
    before = evaluate(student, valid_set)
    result = train(student, train_set, valid_set, epochs=15, batch_size=8, lr=5e-3,
                   checkpoint=tmp_path / "ckpt.pt", progress=False)
    after = evaluate(student, valid_set)
    assert after["forces_mae"] < 0.5 * before["forces_mae"]
    best = min(result.history, key=lambda row: row["valid_loss"])
    assert result.best_epoch == best["epoch"]
    assert (tmp_path / "ckpt.pt").exists() and not list(tmp_path.glob("*.tmp"))
    assert not any(p.requires_grad for p in student.parameters())


def test_dataset_statistics_recover_atomic_energies(teacher_frames):
    """Frames whose energy is exactly a sum of E0s give those E0s back."""
    frames = []
    e0 = {1: -13.0, 6: -1030.0, 8: -2040.0}
    for atoms in teacher_frames[:5] + [molecule("H2O"), molecule("CO"), molecule("CH4")]:
        atoms = atoms.copy()
        energy = sum(e0[z] for z in atoms.numbers)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    stats = dataset_statistics(frames, [1, 6, 8], r_max=4.0)
    np.testing.assert_allclose(stats["atomic_energies"], [-13.0, -1030.0, -2040.0], atol=1e-6)
    assert stats["avg_num_neighbors"] > 0


def test_train_and_evaluate_move_every_batch_to_the_models_device(teacher_frames, monkeypatch):
    """Each batch goes through ``Batch.to(device)`` with the device of the model's parameters."""
    from mace.tools import torch_geometric

    moved = []
    original = torch_geometric.Batch.to

    def spy(batch, device, *args, **kwargs):
        moved.append((torch.device(device), batch.num_graphs))
        return original(batch, device, *args, **kwargs)

    monkeypatch.setattr(torch_geometric.Batch, "to", spy)
    student = ase_mlipal.build_mace(["H", "C", "O"], channels=8, r_max=4.0, seed=3)
    device = next(student.parameters()).device
    train_set, valid_set = teacher_frames[:6], teacher_frames[6:9]
    train(student, train_set, valid_set, epochs=2, batch_size=4, patience=5, progress=False)
    assert [n for _, n in moved] == [4, 2, 3] * 2  # per epoch: two training batches, one validation batch
    evaluate(student, teacher_frames[:5], batch_size=4)
    assert [n for _, n in moved[6:]] == [4, 1]
    assert {d for d, _ in moved} == {device}
