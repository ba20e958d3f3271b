"""PhysicalGuard: overlapping atoms, new fragments, runaway bands; band() off a line of symmetry."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from ase_mlipal import EnergyRunaway, PhysicalGuard, UnphysicalFrame, band


def test_overlapping_atoms_are_named():
    water = molecule("H2O")
    guard = PhysicalGuard([water])
    assert guard.problem(water) is None
    squashed = water.copy()
    squashed.positions[1] = squashed.positions[0] + [0.2, 0.0, 0.0]
    with pytest.raises(UnphysicalFrame, match=r"MD step 7: atoms 0 \(O\) and 1 \(H\) are 0.20 A apart"):
        guard.check(squashed, "MD step 7")


def test_a_fragment_the_endpoints_lack_stops_but_their_own_fragments_do_not():
    reactant = molecule("H2CO")
    product = reactant.copy()
    product.positions[2:] = [[0.0, 0.37, -3.5], [0.0, -0.37, -3.5]]  # CO + H2, well apart
    guard = PhysicalGuard([reactant, product])
    assert guard.max_fragments == 2
    assert guard.problem(product) is None
    lost = product.copy()
    lost.positions[2] += [0.0, 8.0, 0.0]  # one H flies off: three fragments
    assert "3 fragments" in guard.problem(lost) and "atom 2 (H)" in guard.problem(lost)
    stretched = reactant.copy()  # a C-H bond at 1.6x its covalent sum is still one molecule
    direction = stretched.positions[2] - stretched.positions[1]
    stretched.positions[2] = stretched.positions[1] + 1.6 * 1.07 * direction / np.linalg.norm(direction)
    assert PhysicalGuard([reactant]).problem(stretched) is None


def test_runaway_band_length_and_energy_stop_the_band():
    reactant = molecule("H2CO")
    product = reactant.copy()
    product.positions[2:] = [[0.0, 0.37, -3.5], [0.0, -0.37, -3.5]]
    images = band(reactant, product, 5)
    guard = PhysicalGuard([reactant, product])
    guard.check_band(images, "round 0", energies=np.array([0.0, 1.0, 11.0, 1.0, -0.5]))  # starts high: allowed
    guard.check_band(images, "round 0", energies=np.array([0.0, 1.0, 8.0, 1.0, -0.5]))
    with pytest.raises(EnergyRunaway, match="image 2 is 12.5 eV above the lower endpoint") as raised:
        guard.check_band(images, "round 1", energies=np.array([0.0, 1.0, 12.0, 1.0, -0.5]))
    assert raised.value.image == 2 and raised.value.energy == pytest.approx(12.5)
    assert raised.value.atoms is images[2] and isinstance(raised.value, UnphysicalFrame)
    zigzag = [image.copy() for image in images]
    for k, image in enumerate(zigzag[1:-1]):
        image.positions += (-1) ** k * 4.0 * np.eye(3)[0]
    loose = PhysicalGuard([reactant, product], min_distance_ratio=0.01, bond_ratio=100.0)  # length only
    loose.check_band(images, "round 0")  # the first band sets the reference length
    with pytest.raises(UnphysicalFrame, match=r"round 1: the band is .* long, more than 3.0x") as raised:
        loose.check_band(zigzag, "round 1")
    assert 0 < raised.value.image < len(images) - 1 and raised.value.atoms is zigzag[raised.value.image]
    stretched = [image.copy() for image in images]
    stretched[-2].positions += 12.0 * np.eye(3)[0]  # the longest step ends at the last endpoint
    with pytest.raises(UnphysicalFrame, match=r"between images 3 and 4") as raised:
        loose.check_band(stretched, "round 1")
    assert raised.value.image == 3 and "image 3" in raised.value.where  # the interior image of that step
    squashed = [image.copy() for image in images]
    squashed[3].positions[1] = squashed[3].positions[0] + [0.2, 0.0, 0.0]
    with pytest.raises(UnphysicalFrame, match=r"round 2, image 3: atoms 0 \(O\) and 1 \(C\)") as raised:
        guard.check_band(squashed, "round 2")
    assert raised.value.image == 3  # the image at fault, for the learner to go back to


@pytest.mark.parametrize("n_images", [5, 7, 9, 11])
def test_band_of_a_linear_molecule_leaves_the_axis(n_images):
    """HCN -> HNC: IDPP on the straight line would move H through C and N."""
    hcn = Atoms("HCN", positions=[[-1.07, 0, 0], [0, 0, 0], [1.16, 0, 0]])
    hnc = Atoms("HCN", positions=[[2.16, 0, 0], [0, 0, 0], [1.17, 0, 0]])
    guard = PhysicalGuard([hcn, hnc])
    straight = [hcn.copy() for _ in range(4)]
    for k, image in enumerate(straight):
        image.positions = hcn.positions + (k + 1) / 5 * (hnc.positions - hcn.positions)
    assert any(guard.problem(image) for image in straight)  # the naive path overlaps
    images = band(hcn, hnc, n_images)
    assert all(guard.problem(image) is None for image in images)
    assert max(np.abs(image.positions[0, 1:]).max() for image in images) > 0.3  # H went round, off the axis
    cn = np.array([image.get_distance(1, 2) for image in images])
    assert np.all(np.abs(cn - 1.165) < 0.1)  # the C-N bond both ends have holds along the way (not IDPP's 2.3 A)
    h_moved = [np.linalg.norm(b.positions[0] - a.positions[0]) for a, b in zip(images[:-1], images[1:])]
    assert max(h_moved) < 2 * np.mean(h_moved)  # H goes round in even steps, no jump between two images
