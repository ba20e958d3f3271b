import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import ase_mlipal
from ase_mlipal.finetune import finetune
from ase_mlipal.training import evaluate

from .conftest import rattled


def labelled_by(model, frames):
    calc = ase_mlipal.MLIPALCalculator(model=model)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def test_finetuning_lowers_the_error_on_its_frames_and_keeps_the_original(tiny_model):
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])  # same E0s
    new = labelled_by(teacher, rattled(molecule("CH3OH"), 30, stdev=0.08, seed=7))
    replay = labelled_by(tiny_model, rattled(molecule("H2O"), 10, seed=8))
    hash_before = ase_mlipal.model_hash(tiny_model)
    before = evaluate(tiny_model, new)
    tuned, result, held_out = finetune(tiny_model, new, replay=replay, epochs=12, lr=5e-3, valid_fraction=0.2,
                                       progress=False)
    assert len(held_out) == 6  # replay_ratio 1: all 10 replay frames are replayed, none spare
    assert evaluate(tuned, held_out)["forces_mae"] < 0.6 * evaluate(tiny_model, held_out)["forces_mae"]
    assert evaluate(tuned, new)["forces_mae"] < before["forces_mae"]
    assert ase_mlipal.model_hash(tiny_model) == hash_before
    assert result.best_epoch >= 0


def test_default_replay_sample_is_shipped_and_needs_a_frame(tiny_model):
    from ase_mlipal.finetune import _replay

    assert len(_replay("default")) == 300
    with pytest.raises(ValueError, match="at least one labelled frame"):
        finetune(tiny_model, [])


def test_by_default_every_new_frame_trains_and_validation_is_spare_replay(tiny_model):
    from ase_mlipal.store import fingerprint

    new = labelled_by(tiny_model, rattled(molecule("CH3OH"), 3, stdev=0.05, seed=3))
    replay = labelled_by(tiny_model, rattled(molecule("H2O"), 20, seed=4))
    check = labelled_by(tiny_model, rattled(molecule("CH3OH"), 1, stdev=0.05, seed=9))
    _, _, valid = finetune(tiny_model, new, replay=replay, valid=check, epochs=1, progress=False)
    keys = {fingerprint(a) for a in valid}
    assert fingerprint(check[0]) in keys and not keys & {fingerprint(a) for a in new}
    assert len(valid) == 1 + 8  # the check and max(8, 3) spare replay frames
    assert finetune(tiny_model, new, replay=None, epochs=1, progress=False)[2] == []  # nothing spare


def test_loss_weights_steer_the_fit_between_energies_and_forces(tiny_model):
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])
    new = labelled_by(teacher, rattled(molecule("CH3OH"), 20, stdev=0.08, seed=7))
    errors = {}
    for name, weights in {"energy": (1000.0, 0.01), "forces": (0.0, 10.0)}.items():
        tuned, _, _ = finetune(tiny_model, new, replay=None, valid_fraction=0.2, epochs=10, lr=5e-3, energy_weight=weights[0],
                               forces_weight=weights[1], progress=False)
        errors[name] = evaluate(tuned, new)
    assert errors["energy"]["energy_mae_per_atom"] < errors["forces"]["energy_mae_per_atom"]
    assert errors["forces"]["forces_mae"] < errors["energy"]["forces_mae"]
