"""Distance-aware force uncertainty: the nearest-neighbour distance, its thinning, and the calculator's use of it."""

import numpy as np
import pytest
from ase.build import molecule

import ase_mlipal
from ase_mlipal.uncertainty.distance import NearestNeighbours
from ase_mlipal.frames import rattled


def blocked(rng, n, blocks=3, width=4):
    """``n`` rows, each holding random features in one random block and zeros elsewhere; and the blocks."""
    which = rng.integers(0, blocks, n)
    rows = np.zeros((n, blocks * width))
    for i, b in enumerate(which):
        rows[i, b * width:(b + 1) * width] = rng.normal(size=width)
    return rows, which


def brute_force(stored, stored_blocks, query, query_blocks):
    out = np.full(len(query), np.inf)
    for i, (row, b) in enumerate(zip(query, query_blocks)):
        same = stored[stored_blocks == b]
        if len(same):
            out[i] = np.min(np.linalg.norm(same - row, axis=1))
    return out


def test_distance_is_to_the_nearest_stored_row_of_the_same_block():
    rng = np.random.default_rng(0)
    stored, stored_blocks = blocked(rng, 300)
    query, query_blocks = blocked(rng, 40)
    neighbours = NearestNeighbours(block_width=4, chunk=7)
    neighbours.add(stored[:100])
    neighbours.add(stored[100:])
    kept = stored.astype(np.float32).astype(float)  # rows are kept in single precision, as a file holds them
    np.testing.assert_allclose(neighbours.distance(query), brute_force(kept, stored_blocks, query, query_blocks),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(neighbours.distance(query), brute_force(stored, stored_blocks, query, query_blocks),
                               rtol=1e-6)
    np.testing.assert_allclose(neighbours.distance(stored[:20]), 0.0, atol=1e-6)  # a stored row is its own neighbour
    lonely = NearestNeighbours(block_width=4)
    lonely.add(stored[stored_blocks == 0])
    assert np.all(np.isinf(lonely.distance(query[query_blocks == 1])))  # no row of that element stored


def test_thinning_keeps_farthest_points_and_sets_the_scale_to_the_spacing_of_the_rest():
    rng = np.random.default_rng(1)
    stored, stored_blocks = blocked(rng, 400, blocks=2)
    query, _ = blocked(rng, 30, blocks=2)
    exact = NearestNeighbours(block_width=4)
    exact.add(stored)
    thinned = NearestNeighbours(block_width=4)
    thinned.add(stored)
    thinned.thin(50)
    assert all(len(rows) == 50 for rows in thinned.rows.values())
    kept = np.concatenate([np.pad(r, ((0, 0), (4 * b, 4 * (1 - b)))) for b, r in thinned.rows.items()])
    assert np.all(exact.distance(kept) < 1e-6)  # kept rows are stored rows
    assert np.all(thinned.distance(query) >= exact.distance(query) - 1e-9)  # fewer rows: never nearer
    dropped = stored[thinned.distance(stored) > 1e-6]
    assert len(dropped) == 400 - 100
    assert thinned.scale == pytest.approx(np.median(thinned.distance(dropped)))


def test_inflation_is_one_plus_squared_distance_over_scale_and_round_trips():
    rng = np.random.default_rng(2)
    stored, _ = blocked(rng, 60)
    query, _ = blocked(rng, 10)
    neighbours = NearestNeighbours(block_width=4)
    neighbours.add(stored)
    assert neighbours.scale is None
    inflation = neighbours.inflation(query)  # the scale falls back on the stored rows' own spacing
    assert neighbours.scale == pytest.approx(neighbours.spacing())
    np.testing.assert_allclose(inflation, 1 + (neighbours.distance(query) / neighbours.scale) ** 2)
    again = NearestNeighbours.from_arrays(neighbours.arrays())
    np.testing.assert_array_equal(again.inflation(query), inflation)  # bit for bit: a resumed learner repeats
    assert NearestNeighbours.from_arrays({"other": np.zeros(1)}) is None
    with pytest.raises(ValueError, match="blocks of 4"):
        neighbours.distance(np.zeros((2, 7)))


@pytest.fixture()
def distance_calc(tiny_model):
    calc = ase_mlipal.MLIPALCalculator(model=tiny_model, distance_aware=True)
    calc.condition([rattled(molecule(name), 1, 0.05, seed)[0] for seed in range(6) for name in ("CH3CH2OH", "H2O")])
    return calc


def test_force_sigma_is_the_calibration_of_posterior_variance_times_inflation(distance_calc):
    atoms = rattled(molecule("CH3OH"), 1, 0.2, 11)[0]
    atoms.calc = distance_calc
    atoms.get_forces()
    features = distance_calc.last_features
    model = distance_calc.uncertainty_model
    raw = model.atom_posterior.quadratic_form(features.atom) * model.neighbours.inflation(features.atom)
    expected = np.sqrt(model.atom_posterior.calibration.variance(raw))
    np.testing.assert_allclose(distance_calc.results["forces_uncertainty"], expected, rtol=1e-10)
    assert np.all(model.neighbours.inflation(features.atom) > 1)  # none of these atoms is held


def test_a_conditioned_structure_has_no_distance_and_rotation_does_not_change_it(distance_calc):
    atoms = rattled(molecule("CH3CH2OH"), 1, 0.3, 42)[0]
    atoms.calc = distance_calc
    atoms.get_forces()
    far = distance_calc.uncertainty_model.neighbours.distance(distance_calc.last_features.atom)
    turned = atoms.copy()
    turned.rotate(73, (1, 2, 0.5), center="COM")
    turned.translate((3.0, -1.0, 2.0))
    turned.calc = distance_calc
    turned.get_forces()
    np.testing.assert_allclose(distance_calc.uncertainty_model.neighbours.distance(distance_calc.last_features.atom),
                               far, atol=1e-6)  # invariant features, invariant distance
    distance_calc.condition(atoms)
    atoms.calc = distance_calc
    atoms.get_forces()
    assert np.all(distance_calc.uncertainty_model.neighbours.distance(distance_calc.last_features.atom) < 1e-6)


def test_snapshot_conditioning_leaves_the_neighbours_alone(distance_calc):
    model = distance_calc.uncertainty_model
    before = len(model.neighbours)
    trial = model.snapshot()
    features = distance_calc.features([rattled(molecule("CH4"), 1, 0.1, 3)[0]])[0]
    trial.add_features(features)
    assert len(trial.neighbours) == before + 5 and len(model.neighbours) == before


def test_posterior_file_keeps_the_neighbours_and_refuses_a_plain_calculator(distance_calc, tiny_model, tmp_path):
    atoms = rattled(molecule("CH3OH"), 1, 0.2, 5)[0]
    atoms.calc = distance_calc
    sigma = atoms.get_forces() * 0 + distance_calc.results["forces_uncertainty"][:, None]
    path = tmp_path / "posterior.npz"
    distance_calc.save_posterior(path)
    loaded = ase_mlipal.MLIPALCalculator(model=tiny_model, posterior=path, distance_aware=True)
    atoms.calc = loaded
    atoms.get_forces()
    np.testing.assert_allclose(loaded.results["forces_uncertainty"], sigma[:, 0], rtol=1e-12)  # a resumed run repeats
    with pytest.raises(ValueError, match="distance_aware=True"):
        ase_mlipal.MLIPALCalculator(model=tiny_model, posterior=path, distance_aware=False)


def test_shipped_distance_aware_posterior_is_calibrated_and_thinned():
    calc = ase_mlipal.MLIPALCalculator(distance_aware=True)
    assert calc.calibrated and calc.typical is not None
    neighbours = calc.uncertainty_model.neighbours
    assert len(neighbours) <= 4 * 1024 and neighbours.scale > 0
    near, stretched = molecule("CH3CH2OH"), molecule("CH3CH2OH")
    stretched.positions[8] += 0.9 * (stretched.positions[8] - stretched.positions[2])  # pull the hydroxyl H off
    sigmas = []
    for atoms in (near, stretched):
        atoms.calc = calc
        atoms.get_forces()
        sigmas.append(calc.results["forces_uncertainty"].max())
    assert sigmas[1] > 2 * sigmas[0]


def test_later_frames_join_without_moving_the_scale_and_a_down_weighted_one_stays_out(distance_calc):
    model = distance_calc.uncertainty_model
    scale, before = model.neighbours.scale, len(model.neighbours)
    distance_calc.condition(rattled(molecule("CH4"), 1, 0.1, 8)[0])  # as a trigger's flag enters
    assert model.neighbours.scale == scale and len(model.neighbours) == before + 5
    features = distance_calc.features([rattled(molecule("NH3"), 1, 0.1, 9)[0]])[0]
    distance_calc.add_features(features, weight=0.3)  # the model errs there: not a known environment
    assert len(model.neighbours) == before + 5
    assert np.all(model.neighbours.distance(features.atom) > 0)


def test_set_model_rebuilds_the_neighbours_on_the_new_model(distance_calc, tiny_model):
    frames = [rattled(molecule(name), 1, 0.05, seed)[0] for seed in range(6) for name in ("CH3CH2OH", "H2O")]
    other = ase_mlipal.build_mace(["H", "C", "N", "O"], channels=8, max_ell=1, r_max=4.0, mlp_channels=8,
                                  radial_mlp=(16,), seed=5)
    distance_calc.set_model(other, frames)
    model = distance_calc.uncertainty_model
    assert len(model.neighbours) == sum(len(a) for a in frames) and model.neighbours.scale > 0
    features = distance_calc.features(frames[:1])[0]
    assert np.all(model.neighbours.distance(features.atom) < 1e-6)  # the new model's rows, not the old one's


def test_distance_aware_is_the_default_where_the_kernel_has_atom_rows(tiny_model):
    assert ase_mlipal.MLIPALCalculator(model=tiny_model, posterior=None).uncertainty_model.distance_aware is True
    ntk = ase_mlipal.MLIPALCalculator(model=tiny_model, kernel="ntk", posterior=None)
    assert ntk.uncertainty_model.distance_aware is False and ntk.uncertainty_model.neighbours is None
    with pytest.raises(ValueError, match="atom feature rows"):
        ase_mlipal.MLIPALCalculator(model=tiny_model, kernel="ntk", posterior=None, distance_aware=True)
    plain = ase_mlipal.MLIPALCalculator(model=tiny_model, posterior=None, distance_aware=False)
    assert plain.uncertainty_model.neighbours is None
