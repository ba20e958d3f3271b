import copy

import numpy as np
from mace.calculators import MACECalculator

from ase_mlipal import ActivationFeatures, MLIPALCalculator, get_feature_map


def test_activation_features_are_maces_invariant_descriptors(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model, kernel_options={"by_element": False})
    (features,) = calc.features([ethanol])
    mace_calc = MACECalculator(models=copy.deepcopy(tiny_model), default_dtype="float64")
    descriptors = mace_calc.get_descriptors(ethanol, invariants_only=True)
    np.testing.assert_allclose(features.atom, descriptors, atol=1e-12)
    np.testing.assert_allclose(features.structure[0], descriptors.sum(axis=0), atol=1e-12)


def test_element_blocks_hold_each_atoms_descriptor_in_its_elements_block(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model)
    (features,) = calc.features([ethanol])
    mace_calc = MACECalculator(models=copy.deepcopy(tiny_model), default_dtype="float64")
    descriptors = mace_calc.get_descriptors(ethanol, invariants_only=True)
    elements = [int(z) for z in tiny_model.atomic_numbers]
    width = descriptors.shape[1]
    assert calc.feature_map.dim == len(elements) * width
    blocks = features.atom.reshape(len(ethanol), len(elements), width)
    for i, z in enumerate(ethanol.numbers):
        k = elements.index(z)
        np.testing.assert_allclose(blocks[i, k], descriptors[i], atol=1e-12)
        assert not np.any(np.delete(blocks[i], k, axis=0))
    # atoms of different elements are orthogonal: the kernel is delta(z_i, z_j) psi_i . psi_j
    gram = features.atom @ features.atom.T
    same = ethanol.numbers[:, None] == ethanol.numbers[None, :]
    np.testing.assert_allclose(gram, np.where(same, descriptors @ descriptors.T, 0.0), atol=1e-10)


def test_structure_feature_is_the_sum_over_its_atoms_in_a_batch(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model, chunk_size=3)
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
