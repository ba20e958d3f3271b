"""The held-out reactions' endpoints: the product is the reaction's, in the reactant's atom order."""

import pytest

from ase_mlipal.guards import CHEMICAL_BOND_RATIO, bonded_pairs

from .conftest import load_benchmark

pytest.importorskip("tblite")


def bonded(atoms, i, j) -> bool:
    """A chemical bond, as the guard counts one (within 1.25 covalent sums)."""
    return bool(bonded_pairs(atoms, CHEMICAL_BOND_RATIO)[i, j])


@pytest.mark.parametrize("name, broken, formed", [
    ("HCN_to_HNC", (0, 2), (1, 2)),  # H leaves C for N
    ("acetonitrile_to_methyl_isocyanide", (0, 1), (0, 2)),  # the methyl C leaves the nitrile C for N
    ("nitromethane_to_aci_nitromethane", None, None),  # a methyl H onto the O (indices found below)
    ("acetone_to_propen_2_ol", (2, 4), (0, 4)),  # a methyl H onto the O
    ("acetic_acid_to_ethenediol", (4, 5), (1, 5)),  # a methyl H onto the carbonyl O
    ("formic_acid_to_dihydroxycarbene", (1, 4), (2, 4)),  # the H on C onto the carbonyl O
])
def test_product_differs_from_the_reactant_by_the_reaction_bonds_only(name, broken, formed):
    module = load_benchmark("learning_loop_heldout")
    reactant, product = module.endpoints(name)
    assert list(reactant.numbers) == list(product.numbers)
    if broken is None:
        o = 5
        h = next(k for k in range(len(product)) if product.numbers[k] == 1 and bonded(product, k, o))
        broken, formed = (0, h), (o, h)
    assert bonded(reactant, *broken) and not bonded(product, *broken)
    assert bonded(product, *formed) and not bonded(reactant, *formed)
    changed = [(i, j) for i in range(len(product)) for j in range(i + 1, len(product))
               if bonded(reactant, i, j) != bonded(product, i, j)]
    assert sorted(changed) == sorted([tuple(sorted(broken)), tuple(sorted(formed))])
