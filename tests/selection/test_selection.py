"""Pool selection: MaxDet against brute force, distances, streaming from files."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from ase_mlipal import MLIPALCalculator
from ase_mlipal.selection import (DiverseScreen, greedy_distance, greedy_maxdet, pick, pool_features, screen,
                                  select)

from ..conftest import rattled


def test_maxdet_picks_what_brute_force_determinants_pick():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(30, 5))
    precision = 0.1 * np.eye(5) + phi[:3].T @ phi[:3]
    picks = greedy_maxdet(phi, precision, 6)
    chosen = []
    for _ in range(6):  # the same greedy rule, by explicit determinants
        def logdet(k):
            rows = phi[chosen + [k]]
            return np.linalg.slogdet(precision + rows.T @ rows)[1]
        best = max((k for k in range(30) if k not in chosen), key=logdet)
        chosen.append(best)
    assert picks.tolist() == chosen


def test_farthest_point_and_lcmd_follow_their_definitions():
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(40, 3))
    known = phi[:2]
    picks = greedy_distance(phi, known, 4, by_cluster=False)
    centres = list(known)
    for k in picks:  # each pick is the farthest from all centres so far
        d = np.min([np.sum((phi - c) ** 2, axis=1) for c in centres], axis=0)
        assert d[k] == pytest.approx(d.max())
        centres.append(phi[k])
    lcmd = greedy_distance(phi, known, 5, by_cluster=True)
    assert len(set(lcmd.tolist())) == 5 and not {0, 1} & set(lcmd.tolist())


@pytest.fixture()
def setup(tiny_model, tmp_path):
    calc = MLIPALCalculator(model=tiny_model)
    pool = rattled(molecule("CH3OH"), 12, stdev=0.05, seed=0) + rattled(molecule("C2H6"), 4, stdev=0.05, seed=1)
    return calc, pool


def test_selection_from_a_file_stream_equals_selection_in_memory(setup, tmp_path):
    calc, pool = setup
    write(tmp_path / "pool.xyz", pool)
    for method in ("maxdet", "lcmd", "maxdist", "random"):
        in_memory = select(calc, pool, 5, method=method, labelled=pool[:2], progress=False)
        streamed = select(calc, tmp_path / "pool.xyz", 5, method=method, labelled=pool[:2], chunk_size=3,
                          progress=False)
        assert in_memory.tolist() == streamed.tolist()
        assert len(set(in_memory.tolist())) == 5
    np.testing.assert_allclose(pool_features(calc, tmp_path / "pool.xyz", chunk_size=5),
                               pool_features(calc, pool, chunk_size=16), atol=1e-6)  # xyz rounds positions


def test_maxdet_covers_the_unknown_molecule_first(setup):
    calc, pool = setup
    calc.condition(pool[:12])  # methanol is known
    picks = select(calc, pool, 2, method="maxdet", progress=False)
    assert set(picks.tolist()) <= set(range(12, 16))  # ethane is new
    assert select(calc, pool, 2, method="maxdet", shortlist=4, progress=False).tolist() == picks.tolist()


def test_bad_requests_are_refused(setup):
    calc, pool = setup
    with pytest.raises(ValueError, match="method"):
        select(calc, pool, 2, method="best")
    with pytest.raises(ValueError, match="cannot pick"):
        select(calc, pool, 100)
    with pytest.raises(ValueError, match="empty"):
        select(calc, [], 1)


def test_grouped_maxdet_follows_the_summed_variance_rule():
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(12, 3, 4))  # 12 candidates with 3 rows each
    precision = 0.5 * np.eye(4)
    picks = greedy_maxdet(rows, precision, 4)
    a = precision.copy()
    for k in picks:  # each pick has the largest trace(H A^-1 H^T) given the earlier picks
        score = np.einsum("mkp,pq,mkq->m", rows, np.linalg.inv(a), rows)
        score[[j for j in picks if j != k and list(picks).index(j) < list(picks).index(k)]] = -np.inf
        assert score[k] == pytest.approx(score.max())
        a += rows[k].T @ rows[k]


def test_screen_keeps_the_whole_pool_while_it_fits(setup):
    calc, pool = setup
    calc.condition(pool[:3])
    precision = calc.energy_posterior.precision()
    rows = pool_features(calc, pool)
    for chunk_size in (3, 7, 16):
        index, kept = screen(calc, pool, precision, shortlist=len(pool), chunk_size=chunk_size, n=4)
        assert index.tolist() == list(range(len(pool)))
        np.testing.assert_allclose(kept, rows)
        assert select(calc, pool, 4, shortlist=len(pool), chunk_size=chunk_size, progress=False).tolist() == \
            greedy_maxdet(rows, precision, 4).tolist()  # exact greedy on the whole pool


def clustered_pool(seed=0, dim=24, copies_large=300, copies_small=8):
    """Near-duplicate feature vectors: a few clusters of large norm with many copies, many small ones with few."""
    rng = np.random.default_rng(seed)
    large = 6.0 * rng.normal(size=(4, dim))
    small = rng.normal(size=(60, dim))
    centres = np.concatenate([np.repeat(large, copies_large, axis=0), np.repeat(small, copies_small, axis=0)])
    phi = centres + 0.01 * rng.normal(size=centres.shape)
    return phi[rng.permutation(len(phi))]


def logdet(phi, precision, picks):
    return np.linalg.slogdet(precision + phi[picks].T @ phi[picks])[1]


def test_diverse_screen_reaches_exact_greedy_where_the_variance_shortlist_does_not():
    phi = clustered_pool()
    precision = 1e-2 * np.eye(phi.shape[1])
    n, capacity = 20, 150
    exact = logdet(phi, precision, greedy_maxdet(phi, precision, n))
    rng = np.random.default_rng(1)
    random = np.mean([logdet(phi, precision, rng.choice(len(phi), n, replace=False)) for _ in range(20)])

    kept = DiverseScreen(precision, capacity, n)
    largest = 0
    for start in range(0, len(phi), 64):
        kept.add(phi[start:start + 64])
        largest = max(largest, len(kept.index))
    index, rows = kept.result()
    assert kept.reductions > 0 and largest <= capacity  # bounded: the pool (1680) never sits in memory
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(rows[:, 0], phi[index])  # rows travel with their pool indices
    ours = logdet(phi, precision, index[greedy_maxdet(rows, precision, n)])

    shortlist = np.argsort(-np.einsum("ij,ij->i", phi, phi))[:capacity]  # the old screen: largest variance
    old = logdet(phi, precision, shortlist[greedy_maxdet(phi[shortlist], precision, n)])

    assert (ours - random) / (exact - random) > 0.97
    assert abs(ours - exact) < 0.03 * abs(exact)
    assert (old - random) / (exact - random) < 0.8  # copies of the large clusters crowd the shortlist


def test_diverse_screen_does_not_keep_copies_of_what_it_kept():
    rng = np.random.default_rng(3)
    precision = 1e-2 * np.eye(8)
    strong, weak, new = rng.normal(size=(4, 8)), 1e-2 * rng.normal(size=(4, 8)), rng.normal(size=(2, 8))
    kept = DiverseScreen(precision, capacity=7, n=4, per_chunk=2)
    kept.add(np.concatenate([strong, weak]))  # pool 0..7: 8 > 7, reduced to the 4 greedy picks
    assert kept.reductions == 1 and kept.result()[0].tolist() == [0, 1, 2, 3]
    copies = strong + 1e-4 * rng.normal(size=strong.shape)
    kept.add(np.concatenate([copies[:2], new[:1], copies[2:], new[1:]]))  # pool 8..13: new rows are 10 and 13
    index, rows = kept.result()
    assert index.tolist() == [0, 1, 2, 3, 10, 13]  # the 2 winners of the chunk; the copies have no variance left
    np.testing.assert_array_equal(rows[4:, 0], new)
    assert kept.reductions == 1 and kept.seen == 14


def test_diverse_screen_of_multi_row_candidates_keeps_rows_with_their_indices():
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(300, 3, 6)) * rng.uniform(0.1, 3.0, size=(300, 1, 1))
    kept = DiverseScreen(0.1 * np.eye(6), capacity=40, n=5)
    for start in range(0, 300, 32):
        kept.add(rows[start:start + 32])
        assert len(kept.index) <= 40
    index, kept_rows = kept.result()
    assert kept.reductions > 0 and kept.seen == 300 and kept_rows.shape[1:] == (3, 6)
    np.testing.assert_array_equal(kept_rows, rows[index])


@pytest.mark.parametrize("kernel", ["ntk", "force_ntk", "ef_ntk", "fixed"])
def test_every_kernel_selects_in_chunks_as_in_one_go(tiny_model, setup, kernel):
    _, pool = setup
    options = {"dim": 64} if "ntk" in kernel else {}
    picks = select(tiny_model, pool, 3, kernel=kernel, kernel_options=options, labelled=pool[:2],
                   chunk_size=len(pool), progress=False)
    streamed = select(tiny_model, iter(pool), 3, kernel=kernel, kernel_options=options, labelled=pool[:2],
                      chunk_size=5, progress=False)
    assert len(set(picks.tolist())) == 3
    assert streamed.tolist() == picks.tolist()
    screened = select(tiny_model, iter(pool), 3, kernel=kernel, kernel_options=options, labelled=pool[:2],
                      shortlist=4, chunk_size=5, progress=False)  # kept set full after one chunk: screened
    assert len(set(screened.tolist())) == 3 and set(screened.tolist()) <= set(range(len(pool)))


def test_pools_from_an_ase_db_and_on_executors(setup, tmp_path):
    import ase.db
    from concurrent.futures import ThreadPoolExecutor

    from ase_mlipal.learning.labelling import process_pool

    calc, pool = setup
    with ase.db.connect(tmp_path / "pool.db") as db:
        for atoms in pool:
            db.write(atoms)
    serial = select(calc, pool, 4, method="lcmd", progress=False)
    assert select(calc, tmp_path / "pool.db", 4, method="lcmd", progress=False).tolist() == serial.tolist()
    with ThreadPoolExecutor(2) as threads:
        assert select(calc, pool, 4, method="lcmd", chunk_size=3, executor=threads).tolist() == serial.tolist()
    with process_pool(1) as processes:  # the calculator travels to the worker by pickle
        assert select(calc, pool, 4, method="lcmd", chunk_size=5, executor=processes).tolist() == serial.tolist()
    assert [a.positions.tolist() for a in pick(tmp_path / "pool.db", serial)] == \
        [pool[i].positions.tolist() for i in serial]
    with pytest.raises(FileNotFoundError):
        select(calc, tmp_path / "missing.xyz", 1)


def test_graphs_built_on_threads_keep_the_model_dtype(tiny_model):
    from concurrent.futures import ThreadPoolExecutor

    from ase_mlipal.models.graphs import BatchMaker

    maker = BatchMaker(tiny_model)
    before = torch.get_default_dtype()
    assert maker.dtype != before  # otherwise a lost dtype would go unnoticed
    with ThreadPoolExecutor(4) as threads:
        graphs = list(threads.map(maker.graph, [molecule("CH3OH")] * 400))
    assert all(g.positions.dtype == maker.dtype for g in graphs)
    assert torch.get_default_dtype() == before


def test_a_kernel_given_with_a_calculator_is_refused_not_ignored(tiny_model):
    pool = rattled(molecule("CH3OH"), 6, seed=4)
    calc = MLIPALCalculator(model=tiny_model)
    with pytest.raises(ValueError, match="already uses kernel 'activation'"):
        select(calc, pool, 2, kernel="ntk")
    assert len(select(calc, pool, 2, progress=False)) == 2
