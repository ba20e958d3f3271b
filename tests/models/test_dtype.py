"""float32 models: the same random model as float64 (rounded), and float32 results close to float64."""

import numpy as np
import torch

import ase_mlipal
from ase_mlipal import MLIPALCalculator, random_like

from ..conftest import rattled


def test_random_like_draws_the_same_weights_in_float32(tiny_model):
    f64 = random_like(tiny_model, seed=3)
    f32 = random_like(ase_mlipal.load_model(tiny_model, dtype="float32"), seed=3)
    assert next(f32.parameters()).dtype == torch.float32
    for (name, a), (_, b) in zip(f64.state_dict().items(), f32.state_dict().items()):
        if a.is_floating_point():
            assert torch.allclose(a.to(torch.float32), b, rtol=1e-6, atol=1e-7), name


def test_fixed_kernel_features_do_not_depend_on_the_dtype(tiny_model, ethanol):
    refs = rattled(ethanol, 3, seed=1)
    results = {}
    for dtype in ("float64", "float32"):
        calc = MLIPALCalculator(model=tiny_model, kernel="fixed", dtype=dtype).condition(refs)
        atoms = ethanol.copy()
        atoms.calc = calc
        atoms.get_forces()
        results[dtype] = dict(calc.results)
    for key in ("energy_uncertainty", "uncertainty"):
        assert np.isclose(results["float32"][key], results["float64"][key], rtol=1e-3), key
