"""Hessian distillation ("Towards Fast, Specialized Machine Learning Force Fields: Distilling Foundation Models via Energy Hessians", arXiv:2501.09009) on the tiny model."""

import numpy as np
import pytest
import torch
from ase.build import molecule

from ase_mlipal import MLIPALCalculator, distill
from ase_mlipal.training.distill import hessian_rows

from ..conftest import rattled


def test_hessian_rows_are_the_derivative_of_the_forces(tiny_model):
    frames = rattled(molecule("CH3OH"), 2, stdev=0.1, seed=0)
    rows = hessian_rows(tiny_model, frames, per_structure=2, seed=1)
    calc = MLIPALCalculator(model=tiny_model, posterior=None)
    h = 1e-4
    for atoms, coordinates, values in zip(frames, rows.rows, rows.values):
        assert len(set(coordinates)) == 2 and values.shape == (2, len(atoms), 3)
        for j, value in zip(coordinates, values):
            moved = []
            for sign in (1, -1):
                shifted = atoms.copy()
                shifted.positions[j // 3, j % 3] += sign * h
                moved.append(calc.get_forces(shifted))
            column = (moved[0] - moved[1]) / (2 * h)  # dF/dx_j, equal to the row dF_j/dx (symmetric Hessian)
            np.testing.assert_allclose(value.numpy(), column, atol=1e-5 * np.abs(column).max() + 1e-8)


def test_student_is_smaller_and_learns_the_teachers_hessian(tiny_model):
    frames = rattled(molecule("CH3OH"), 16, stdev=0.1, seed=2)
    options = dict(epochs=30, patience=30, lr=1e-2, batch_size=4, seed=0, progress=False, valid_fraction=0.2,
                   student_config={"channels": 4, "mlp_channels": 8, "radial_mlp": (16,)})
    result = distill(tiny_model, frames, hessian_rows_per_structure=2, hessian_weight=10.0, **options)
    student = result.model
    plain = distill(tiny_model, frames, hessian_weight=0.0, **options).model
    assert result.student_parameters < result.teacher_parameters
    assert result.training.history[-1]["train_loss"] < result.training.history[0]["train_loss"]
    # Hessian rows of held-out structures, student against teacher
    test = rattled(molecule("CH3OH"), 4, stdev=0.1, seed=9)
    reference = hessian_rows(tiny_model, test, per_structure=3, seed=5)

    def error(model):
        got = hessian_rows(model, test, per_structure=3, seed=5)
        return float(np.mean([torch.mean((a - b) ** 2) for a, b in zip(got.values, reference.values)]))

    assert error(student) < error(plain)
    with pytest.raises(ValueError, match="two frames"):
        distill(tiny_model, frames[:1])
