import copy

import numpy as np
from mace.calculators import MACECalculator

from ase_mlipal import ActivationFeatures, MLIPALCalculator, get_feature_map


def test_activation_features_are_maces_invariant_descriptors(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model)
    (features,) = calc.features([ethanol])
    mace_calc = MACECalculator(models=copy.deepcopy(tiny_model), default_dtype="float64")
    descriptors = mace_calc.get_descriptors(ethanol, invariants_only=True)
    np.testing.assert_allclose(features.atom, descriptors, atol=1e-12)
    np.testing.assert_allclose(features.structure[0], descriptors.sum(axis=0), atol=1e-12)


def test_structure_feature_is_the_sum_over_its_atoms_in_a_batch(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model, batch_size=3)
    images = [ethanol, ethanol[:5], ethanol[2:]]
    (features,) = calc.features(images)
    assert isinstance(calc.feature_map, ActivationFeatures)
    assert features.structure.shape == (3, calc.feature_map.dim)
    for atoms, block, phi in zip(images, features.split_atoms(), features.structure):
        assert len(block) == len(atoms)
        np.testing.assert_allclose(block.sum(axis=0), phi, atol=1e-12)


def test_unknown_kernel_is_refused(tiny_model):
    import pytest

    with pytest.raises(ValueError, match="activation"):
        get_feature_map("nonsense", tiny_model)
