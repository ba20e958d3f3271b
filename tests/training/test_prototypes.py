"""Prototype-guided latent alignment ("Prototype-Guided Latent Alignment for Data-Efficient Fine-Tuning of Molecular Foundation Models", arXiv:2605.29969) on the tiny model."""

import numpy as np
import pytest
import torch
from ase.build import molecule

import ase_mlipal
from ase_mlipal import PrototypeAlignment, finetune
from ase_mlipal.models.graphs import BatchMaker, forward

from ..conftest import rattled
from ..conftest import labelled_by


@pytest.fixture(scope="module")
def frames(tiny_model):
    teacher = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                    radial_mlp=(16,), seed=5, scale=0.3,
                                    atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0])
    source = labelled_by(tiny_model, rattled(molecule("CH3CH2OH"), 12, stdev=0.08, seed=1))
    target = labelled_by(teacher, rattled(molecule("CH3OH"), 12, stdev=0.08, seed=2))
    return source, target


def node_energy_gap(model, alignment, frames):
    batch = BatchMaker(model).batch(frames)
    with torch.enable_grad():
        out = forward(model, batch, compute_force=False)
    return float(torch.mean(torch.abs(out["node_energy"].detach() - alignment.targets(batch))))


def test_prototypes_are_per_element_centres_with_their_mean_atomic_energy(tiny_model, frames):
    source, _ = frames
    alignment = PrototypeAlignment(n_prototypes=3, seed=0).fit(tiny_model, source)
    assert sorted(alignment.centres) == [1, 6, 8]
    assert all(len(c) <= 3 for c in alignment.centres.values())
    assert len(alignment.centres[8]) >= 1
    # an atom of the source frames gets a prototype energy of its own element, near its own energy
    batch = BatchMaker(tiny_model).batch(source[:2])
    target = alignment.targets(batch).numpy()
    own = forward(tiny_model, batch, compute_force=False)["node_energy"].detach().numpy()
    assert np.all(np.abs(target - own) < np.abs(own).max() * 0.05)


def test_alignment_pulls_atomic_energies_toward_the_prototypes(tiny_model, frames):
    source, target = frames
    # energy weight 1: the balance between the energy fit and the alignment term this test was sized for
    options = dict(replay=None, valid_fraction=0.2, epochs=15, patience=15, lr=1e-2, energy_weight=1.0, seed=0, progress=False)
    plain = finetune(tiny_model, target, **options).model
    zero = PrototypeAlignment(weight=0.0).fit(tiny_model, source)
    unchanged = finetune(tiny_model, target, alignment=zero, **options).model
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), unchanged.state_dict().values()))
    strong = PrototypeAlignment(n_prototypes=3, weight=100.0).fit(tiny_model, source)
    aligned = finetune(tiny_model, target, alignment=strong, **options).model
    assert node_energy_gap(aligned, strong, target) < 0.7 * node_energy_gap(plain, strong, target)


def test_unfitted_or_unknown_elements_are_refused(tiny_model, frames):
    source, _ = frames
    batch = BatchMaker(tiny_model).batch([molecule("CH3OH")])
    with pytest.raises(RuntimeError, match="fit"):
        PrototypeAlignment().targets(batch)
    hydrocarbons = [a for a in rattled(molecule("CH4"), 3, seed=4)]
    only_ch = PrototypeAlignment(n_prototypes=2).fit(tiny_model, hydrocarbons)
    with pytest.raises(ValueError, match="no prototype"):
        only_ch.targets(batch)
    with pytest.raises(ValueError):
        PrototypeAlignment(n_prototypes=0)
