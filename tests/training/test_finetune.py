import pytest
from ase.build import molecule

import ase_mlipal
from ase_mlipal.training.finetune import finetune
from ase_mlipal.training.trainer import evaluate

from ..conftest import labelled_by, rattled


def test_finetuning_lowers_the_error_on_its_frames_and_keeps_the_original(tiny_model):
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])  # same E0s
    new = labelled_by(teacher, rattled(molecule("CH3OH"), 30, stdev=0.08, seed=7))
    replay = labelled_by(tiny_model, rattled(molecule("H2O"), 10, seed=8))
    hash_before = ase_mlipal.model_hash(tiny_model)
    before = evaluate(tiny_model, new)
    result = finetune(tiny_model, new, replay=replay, epochs=12, lr=5e-3, valid_fraction=0.2, progress=False)
    tuned, held_out = result.model, result.valid
    assert len(held_out) == 6  # replay_ratio 1: all 10 replay frames are replayed, none spare
    assert evaluate(tuned, held_out)["forces_mae"] < 0.6 * evaluate(tiny_model, held_out)["forces_mae"]
    assert evaluate(tuned, new)["forces_mae"] < before["forces_mae"]
    assert ase_mlipal.model_hash(tiny_model) == hash_before
    assert result.training.best_epoch >= 0


def test_default_replay_sample_is_shipped_and_needs_a_frame(tiny_model):
    from ase_mlipal.training.finetune import _replay

    assert len(_replay("default")) == 300
    with pytest.raises(ValueError, match="at least one labelled frame"):
        finetune(tiny_model, [])


def test_by_default_every_new_frame_trains_and_validation_is_spare_replay(tiny_model):
    from ase_mlipal.learning.store import fingerprint

    new = labelled_by(tiny_model, rattled(molecule("CH3OH"), 3, stdev=0.05, seed=3))
    replay = labelled_by(tiny_model, rattled(molecule("H2O"), 20, seed=4))
    check = labelled_by(tiny_model, rattled(molecule("CH3OH"), 1, stdev=0.05, seed=9))
    valid = finetune(tiny_model, new, replay=replay, valid=check, epochs=1, progress=False).valid
    keys = {fingerprint(a) for a in valid}
    assert fingerprint(check[0]) in keys and not keys & {fingerprint(a) for a in new}
    assert len(valid) == 1 + 8  # the check and max(8, 3) spare replay frames
    assert finetune(tiny_model, new, replay=None, epochs=1, progress=False).valid == []  # nothing spare


def test_loss_weights_steer_the_fit_between_energies_and_forces(tiny_model):
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])
    new = labelled_by(teacher, rattled(molecule("CH3OH"), 20, stdev=0.08, seed=7))
    errors = {}
    for name, weights in {"energy": (1000.0, 0.01), "forces": (0.0, 10.0)}.items():
        tuned = finetune(tiny_model, new, replay=None, valid_fraction=0.2, epochs=10, lr=5e-3,
                         energy_weight=weights[0], forces_weight=weights[1], progress=False).model
        errors[name] = evaluate(tuned, new)
    assert errors["energy"]["energy_mae_per_atom"] < errors["forces"]["energy_mae_per_atom"]
    assert errors["forces"]["forces_mae"] < errors["energy"]["forces_mae"]


def test_rereference_recovers_per_element_offsets_and_keeps_forces(tiny_model):
    import copy

    import numpy as np

    from ase_mlipal import read_labels, rereference_energies, shift_energies

    offsets = {1: -2.5, 6: -950.0, 7: 40.0, 8: -1900.0}  # another level of theory, per element
    frames = [f for name in ("CH4", "H2O", "CO2", "NH3", "CH3OH", "HCN")
              for f in labelled_by(tiny_model, rattled(molecule(name), 2, seed=1))]
    shifted = shift_energies(frames, offsets)
    for before, after in zip(frames, shifted):
        e0, f0 = read_labels(before)
        e1, f1 = read_labels(after)
        assert e1 - e0 == pytest.approx(sum(offsets[int(z)] for z in before.numbers))
        assert np.array_equal(f0, f1)
    model = copy.deepcopy(tiny_model)
    found = rereference_energies(model, shifted)
    assert found == pytest.approx(offsets, abs=1e-6)
    after = evaluate(model, shifted)
    assert after["energy_mae_per_atom"] < 1e-6 and after["forces_mae"] == pytest.approx(evaluate(tiny_model, frames)["forces_mae"])
    silicon = shifted[0].copy()
    silicon.numbers[0] = 14
    with pytest.raises(ValueError, match=r"elements \[14\]"):
        rereference_energies(model, [silicon])
