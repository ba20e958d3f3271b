"""scripts/make_data.py: the least-motion product a band is rebuilt from."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def make_data():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("make_data", SCRIPTS / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def centred(x):
    return x - x.mean(axis=0)


def test_aligned_product_superposes_each_fragment_rigidly_and_keeps_them_apart(make_data):
    from scipy.sparse.csgraph import connected_components

    reactant = molecule("CH3CH2OH")
    product = make_data.map_product(reactant, make_data.fragments(["C2H4", "H2O"]))
    aligned = make_data.aligned_product(reactant, product, gap=2.5)
    n_fragments, labels = connected_components(make_data.adjacency(product))
    assert n_fragments == 2
    for fragment in range(n_fragments):
        mine = labels == fragment
        # rigid: every distance inside the fragment is kept
        np.testing.assert_allclose(aligned[mine].get_all_distances(), product[mine].get_all_distances(), atol=1e-9)
        # superposed: closer to the reactant's atoms than the fragment as laid out
        before = np.linalg.norm(centred(product.positions[mine]) - centred(reactant.positions[mine]))
        after = np.linalg.norm(centred(aligned.positions[mine]) - centred(reactant.positions[mine]))
        assert after < before
    apart = labels[:, None] != labels[None, :]
    assert aligned.get_all_distances()[apart].min() >= 2.5
    assert aligned.get_chemical_symbols() == reactant.get_chemical_symbols()
