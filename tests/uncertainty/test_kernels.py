"""Every kernel in the calculator: same physics, invariant uncertainties, and the NTK maths checked exactly."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from ase_mlipal import FEATURE_MAPS, MLIPALCalculator, build_mace, random_like
from ase_mlipal.models.graphs import BatchMaker
from ase_mlipal.uncertainty.ntk import ForceNTKFeatures
from ase_mlipal.uncertainty.posterior import FeaturePosterior
from .gradients import energy_gradients, force_gradients

from ..conftest import rattled

KERNELS = ["activation", "ntk", "force_ntk", "ef_ntk", "fixed", "committee", "cumulant"]


@pytest.fixture(scope="module")
def member():
    return build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8, radial_mlp=(16,),
                      atomic_energies=[-13.6, -1029.0, -1485.0, -2042.0], shift=0.1, scale=0.5, seed=2)


def make(tiny_model, member, kernel, **options):
    if kernel == "committee":
        options.setdefault("members", [member])
    if kernel in ("ntk", "force_ntk", "ef_ntk"):
        options.setdefault("dim", 128)
    return MLIPALCalculator(model=tiny_model, kernel=kernel, kernel_options=options)


def properties(calc, atoms, names):
    return {name: calc.get_property(name, atoms) for name in names}


def test_the_registry_names_every_kernel():
    assert sorted(FEATURE_MAPS) == sorted(KERNELS)


@pytest.mark.parametrize("kernel", KERNELS[1:5])
def test_energy_forces_and_stress_are_the_models(tiny_model, member, ethanol, kernel):
    reference = MLIPALCalculator(model=tiny_model)
    calc = make(tiny_model, member, kernel)
    cell = bulk("C", "diamond", a=3.57, cubic=True)
    cell.rattle(0.03, seed=1)
    for atoms in (ethanol, cell):
        expected = properties(reference, atoms, ["energy", "forces"] + (["stress"] if atoms.pbc.any() else []))
        got = properties(calc, atoms, list(expected))
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_committee_predicts_the_mean_and_reports_the_spread(tiny_model, member, ethanol):
    calc = make(tiny_model, member, "committee")
    energies = [MLIPALCalculator(model=m).get_potential_energy(ethanol) for m in (tiny_model, member)]
    forces = np.array([MLIPALCalculator(model=m).get_forces(ethanol) for m in (tiny_model, member)])
    assert calc.get_potential_energy(ethanol) == pytest.approx(np.mean(energies))
    assert calc.get_property("energy_uncertainty", ethanol) == pytest.approx(np.std(energies, ddof=1))
    per_component = forces.var(axis=0, ddof=1).mean(axis=1)
    np.testing.assert_allclose(calc.get_property("forces_uncertainty", ethanol), np.sqrt(per_component))
    before = calc.get_property("uncertainty", ethanol)
    calc.condition(rattled(ethanol, 3))  # a committee does not learn from unlabelled references
    assert calc.get_property("uncertainty", ethanol) == pytest.approx(before)
    with pytest.raises(ValueError, match="members"):
        MLIPALCalculator(model=tiny_model, kernel="committee")


@pytest.mark.parametrize("kernel", KERNELS)
def test_uncertainty_is_invariant_to_rotation_translation_and_atom_order(tiny_model, member, ethanol, kernel):
    calc = make(tiny_model, member, kernel)
    calc.condition(rattled(ethanol, 3, seed=5))
    moved = ethanol.copy()
    moved.rotate(73, (1, 2, 0.5), center="COM")
    moved.translate([3.0, -1.0, 2.0])
    order = np.random.default_rng(0).permutation(len(moved))
    moved = moved[order]
    first = properties(calc, ethanol, ["energy_uncertainty", "forces_uncertainty"])
    second = properties(calc, moved, ["energy_uncertainty", "forces_uncertainty"])
    assert second["energy_uncertainty"] == pytest.approx(first["energy_uncertainty"], rel=1e-8)
    np.testing.assert_allclose(second["forces_uncertainty"], first["forces_uncertainty"][order], rtol=1e-7)
    if kernel in ("activation", "ntk", "fixed"):  # deterministic structure features: invariant themselves
        a, b = calc.features([ethanol])[0], calc.features([moved])[0]
        np.testing.assert_allclose(b.structure, a.structure, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kernel", ["ntk", "force_ntk", "ef_ntk", "fixed", "cumulant"])
def test_uncertainty_drops_where_references_are_added(tiny_model, member, ethanol, kernel):
    calc = make(tiny_model, member, kernel)
    before = properties(calc, ethanol, ["energy_uncertainty", "uncertainty"])
    calc.condition(rattled(ethanol, 4, stdev=0.01))
    after = properties(calc, ethanol, ["energy_uncertainty", "uncertainty"])
    assert after["energy_uncertainty"] < 0.5 * before["energy_uncertainty"]
    assert after["uncertainty"] < 0.8 * before["uncertainty"]


def test_ntk_features_are_the_sketched_energy_gradient(tiny_model, ethanol):
    calc = MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"dim": 64, "seed": 3})
    features = calc.features([ethanol])[0]
    feature_map = calc.feature_map
    model = calc.model  # the calculator's own copy
    exact = energy_gradients(model, BatchMaker(model).batch([ethanol]), feature_map.parameters)
    np.testing.assert_allclose(features.structure, feature_map.sketch(exact).numpy(), rtol=1e-9, atol=1e-12)


def test_parameter_subset_and_bad_options(tiny_model):
    calc = MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"parameters": "readouts"})
    assert all("readouts" in name for name in calc.feature_map.parameter_names)
    with pytest.raises(ValueError, match="no model parameter"):
        MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"parameters": "nothing-like-this"})
    with pytest.raises(ValueError, match="bad options"):
        MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"size": 3})


def test_force_gradients_are_the_derivative_of_the_forces(tiny_model):
    atoms = molecule("H2O")
    calc = MLIPALCalculator(model=tiny_model)
    parameters = list(calc.model.parameters())
    rows = force_gradients(calc.model, BatchMaker(calc.model).batch([atoms]), parameters)
    direction = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(0), dtype=rows.dtype)
    with torch.no_grad():
        step = 1e-6
        sizes = [p.numel() for p in parameters]
        for p, d in zip(parameters, torch.split(direction, sizes)):
            p += step * d.view_as(p)
        calc.reset()
        up = calc.get_forces(atoms.copy()).ravel()
        for p, d in zip(parameters, torch.split(direction, sizes)):
            p -= 2 * step * d.view_as(p)
        calc.reset()
        down = calc.get_forces(atoms.copy()).ravel()
        for p, d in zip(parameters, torch.split(direction, sizes)):
            p += step * d.view_as(p)
    np.testing.assert_allclose((up - down) / (2 * step), (rows @ direction).numpy(), rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def exact_force_rows(tiny_model):
    """Sketched exact rows ``G`` (3N x p) of formaldehyde, and the kernel that sketches them."""
    feature_map = ForceNTKFeatures(tiny_model, dim=32, seed=1)
    batch = BatchMaker(tiny_model).batch([molecule("H2CO")])
    rows = force_gradients(tiny_model, batch, feature_map.parameters)
    return feature_map.sketch(rows).numpy(), batch


def test_force_probes_converge_to_the_exact_force_kernel(tiny_model, exact_force_rows):
    g, batch = exact_force_rows
    exact = g.T @ g
    errors = {}
    for probes in (2, 64):
        feature_map = ForceNTKFeatures(tiny_model, dim=32, seed=1, probes=probes)
        h = feature_map.evaluate(batch, compute_force=False)[1].probes[0]
        errors[probes] = np.linalg.norm(h.T @ h - exact) / np.linalg.norm(exact)
    assert errors[64] < errors[2]
    assert errors[64] < 0.35  # Hutchinson: relative error about sqrt(2/m) = 0.18


def test_sampled_force_variance_converges_to_the_exact_one(tiny_model, exact_force_rows):
    g, batch = exact_force_rows
    posterior = FeaturePosterior(32, regularization=1e-2).add(np.random.default_rng(0).normal(size=(20, 32)))
    exact = posterior.quadratic_form(g).reshape(-1, 3).mean(axis=1)  # per component, per atom
    errors = {}
    for samples in (4, 2000):
        feature_map = ForceNTKFeatures(tiny_model, dim=32, seed=1, samples=samples)
        estimate = feature_map.evaluate(batch, compute_force=True, force_posterior=posterior)[1].force_variance
        errors[samples] = np.abs(estimate / exact - 1).max()
    assert errors[2000] < errors[4]
    assert errors[2000] < 0.15  # 3 sigma of sqrt(2 / 2000) per component, averaged over 3


def test_force_variance_draws_are_the_exact_mixed_derivative_along_each_draw(tiny_model, exact_force_rows):
    """The forward difference in the parameters gives ``g_ia . z`` for each draw ``z`` to ~1e-7."""
    g, batch = exact_force_rows
    posterior = FeaturePosterior(32, regularization=1e-2).add(np.random.default_rng(0).normal(size=(20, 32)))
    feature_map = ForceNTKFeatures(tiny_model, dim=32, seed=1, samples=3)
    before = [p.clone() for p in tiny_model.parameters()]
    estimate = feature_map.evaluate(batch, compute_force=True, force_posterior=posterior, rows=False)[1]
    draws = posterior.samples(feature_map.noise)  # (3, p)
    exact = ((g @ draws.T) ** 2).mean(axis=1).reshape(-1, 3).mean(axis=1)
    np.testing.assert_allclose(estimate.force_variance, exact, rtol=1e-5)
    assert estimate.probes is None  # rows=False skips the probes
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))  # restored bit for bit


@pytest.mark.parametrize("kernel", ["force_ntk", "ef_ntk"])
def test_a_calculation_skips_the_probe_rows_and_says_how_to_condition(tiny_model, member, ethanol, kernel):
    calc = make(tiny_model, member, kernel)
    atoms = ethanol.copy()
    atoms.calc = calc
    before = calc.get_property("uncertainty", atoms)
    with pytest.raises(ValueError, match="condition"):
        calc.add_features(calc.last_features)
    calc.condition(atoms)
    assert calc.get_property("uncertainty", atoms) < before


def test_fixed_kernel_is_a_seeded_random_copy_of_the_architecture(tiny_model, ethanol):
    first, again, other = (random_like(tiny_model, seed) for seed in (0, 0, 1))
    assert type(first) is type(tiny_model)
    state, same, different = (m.state_dict() for m in (first, again, other))
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert any(not torch.equal(state[k], different[k]) for k in state if state[k].is_floating_point())
    pretrained = tiny_model.state_dict()
    assert any(not torch.equal(state[k], pretrained[k]) for k in state if k.endswith("weight"))
    fixed = MLIPALCalculator(model=tiny_model, kernel="fixed").features([ethanol])[0]
    activation = MLIPALCalculator(model=tiny_model).features([ethanol])[0]
    assert fixed.structure.shape == activation.structure.shape
    assert not np.allclose(fixed.structure, activation.structure)


def test_a_saved_ntk_posterior_needs_the_same_kernel_options(tiny_model, ethanol, tmp_path):
    calc = MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"dim": 64, "seed": 1})
    calc.condition([ethanol])
    calc.save_posterior(tmp_path / "p.npz")
    same = MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"dim": 64, "seed": 1}, posterior=tmp_path / "p.npz")
    assert same.get_property("energy_uncertainty", ethanol) == pytest.approx(calc.get_property("energy_uncertainty", ethanol))
    with pytest.raises(ValueError, match="kernel options"):
        MLIPALCalculator(model=tiny_model, kernel="ntk", kernel_options={"dim": 64, "seed": 2}, posterior=tmp_path / "p.npz")


def test_every_kernel_implements_the_feature_map_protocol():
    from ase_mlipal.uncertainty.features import FeatureMap
    from ase_mlipal.uncertainty.kernels import FEATURE_MAPS

    assert all(issubclass(cls, FeatureMap) for cls in FEATURE_MAPS.values())
    assert {name for name, cls in FEATURE_MAPS.items() if cls.selects_on == "forces"} == {"force_ntk", "ef_ntk"}

    class Incomplete(FeatureMap):
        name = "incomplete"

        def conditioning(self, features):
            return features.structure, features.atom

    with pytest.raises(TypeError, match="evaluate"):
        Incomplete()
