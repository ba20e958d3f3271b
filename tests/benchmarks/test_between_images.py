"""benchmarks/between_images.py: the label between images on a band whose pass is known."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from .conftest import load_benchmark


class Pass(Calculator):
    """A Gaussian pass of ``height`` eV at x = 0.5 A for atom 0 (width 0.15 A), nothing else."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, height=2.0):
        super().__init__()
        self.height = height

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions[0, 0] - 0.5
        energy = self.height * np.exp(-x ** 2 / (2 * 0.15 ** 2))
        forces = np.zeros((len(self.atoms), 3))
        forces[0, 0] = energy * x / 0.15 ** 2
        self.results = {"energy": energy, "forces": forces}


def labelled_band(n_images=5):
    images = []
    for x in np.linspace(0.0, 1.0, n_images):
        atoms = Atoms("H2", positions=[[x, 0.0, 0.0], [x, 3.0, 0.0]])
        atoms.calc = Pass()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        images.append(atoms)
    return images


def test_halves_keep_the_endpoints_and_every_other_image():
    bench = load_benchmark("between_images")
    for n in (9, 10):
        band = list(range(n))
        halves = bench.halves(band)
        assert halves["even"][0] == halves["odd"][0] == 0 and halves["even"][-1] == halves["odd"][-1] == n - 1
        assert set(halves["even"]) | set(halves["odd"]) == set(band)
        assert all(k % 2 == 0 for k in halves["even"][:-1]) and all(k % 2 for k in halves["odd"][1:-1])


def test_a_pass_the_images_miss_is_asked_for_and_shown_and_a_band_at_its_top_asks_nothing():
    """Images at x = 0.25 and 0.75 see a quarter of the 2 eV pass; their forces say it rises between them: the
    rule asks, and the reference at the implied peak shows the pass. The full band has an image on the top."""
    bench = load_benchmark("between_images")
    images = labelled_band(5)
    top, first = 2.0, images[0].get_potential_energy()
    half = bench.halves(images)["odd"]  # images 0, 1, 3, 4: the top image (2) dropped
    row = bench.judge(half, top, first, Pass())
    assert row["missed"] == pytest.approx(2.0 * (1 - np.exp(-0.25 ** 2 / (2 * 0.15 ** 2))), abs=1e-9)
    assert row["asks"] and 1.0 < row["between"] < 2.0
    assert row["still_missed"] == pytest.approx(0.0, abs=0.05)
    full = bench.judge(images, top, first, Pass())
    assert not full["asks"] and full["still_missed"] == pytest.approx(0.0, abs=1e-12)
    totals = bench.summary([{**row, "variant": "odd"}, {**full, "variant": "full"}])
    assert totals["full_bands_asking"] == 0 and totals["half_bands_missing"] == 1
    assert totals["shown_within_tolerance"] == 1
