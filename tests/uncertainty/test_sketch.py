"""CountSketch of real MACE parameter gradients: inner products, seeds, memory, invariance."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from ase_mlipal.models.graphs import BatchMaker, forward
from ase_mlipal.uncertainty.sketch import CountSketch

from .gradients import energy_gradients

from ..conftest import rattled


@pytest.fixture()
def gradients(tiny_model):
    frames = [molecule(name) for name in ("CH3OH", "C2H6", "H2O", "NH3", "HCOOH")]
    parameters = list(tiny_model.parameters())
    return energy_gradients(tiny_model, BatchMaker(tiny_model).batch(frames), parameters), parameters


def test_gradients_are_the_derivative_of_the_energy(tiny_model, gradients):
    grads, parameters = gradients
    assert grads.shape == (5, sum(p.numel() for p in parameters))
    maker = BatchMaker(tiny_model)
    batch = maker.batch([molecule("H2O")])
    with torch.no_grad():
        base = float(forward(tiny_model, batch, compute_force=False)["energy"][0])
        index = int(torch.argmax(grads[2].abs()))  # the parameter H2O's energy depends on most
        flat = torch.cat([p.reshape(-1) for p in parameters])
        owner = int(np.searchsorted(np.cumsum([p.numel() for p in parameters]), index, side="right"))
        offset = index - sum(p.numel() for p in parameters[:owner])
        parameters[owner].view(-1)[offset] += 1e-6
        shifted = float(forward(tiny_model, batch, compute_force=False)["energy"][0])
        parameters[owner].view(-1)[offset] -= 1e-6
        assert torch.equal(flat, torch.cat([p.reshape(-1) for p in parameters]))
    assert (shifted - base) / 1e-6 == pytest.approx(float(grads[2, index]), rel=1e-4)


def test_sketch_keeps_inner_products_within_the_jl_tolerance(gradients):
    grads, _ = gradients
    exact = grads @ grads.T
    norms = torch.sqrt(torch.diag(exact))
    errors = []
    for seed in range(20):
        sketch = CountSketch(grads.shape[1], 256, seed=seed)
        s = sketch(grads)
        errors.append(((s @ s.T - exact) / torch.outer(norms, norms)).abs().max().item())
    # variance of each normalised entry is at most 2/p: 3 standard deviations of the worst of 15 entries
    assert np.median(errors) < 3 * np.sqrt(2 / 256)
    assert max(errors) < 6 * np.sqrt(2 / 256)


def test_sketch_is_reproducible_and_as_small_as_the_parameters(gradients):
    grads, parameters = gradients
    n = grads.shape[1]
    a, b, c = CountSketch(n, 64, seed=3), CountSketch(n, 64, seed=3), CountSketch(n, 64, seed=4)
    assert torch.equal(a(grads), b(grads)) and not torch.equal(a(grads), c(grads))
    assert torch.equal(a(grads[1]), a(grads)[1])
    parameter_bytes = sum(p.numel() * p.element_size() for p in parameters)  # float64 here
    assert a.nbytes() <= parameter_bytes  # 5 bytes per parameter, whatever the sketch dimension
    with pytest.raises(ValueError):
        a(grads[:, :10])


def test_energy_gradient_is_invariant_to_rotation_translation_and_atom_order(tiny_model):
    atoms = rattled(molecule("CH3CH2OH"), 1, seed=5)[0]
    moved = atoms.copy()
    moved.rotate(37, (1, 2, 3), center="COM")
    moved.translate((0.3, -1.0, 2.0))
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    parameters = list(tiny_model.parameters())
    grads = energy_gradients(tiny_model, BatchMaker(tiny_model).batch([atoms, moved]), parameters)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-7)
