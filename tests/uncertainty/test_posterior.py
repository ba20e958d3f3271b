import numpy as np
import pytest

from ase_mlipal import FeaturePosterior


def explicit_gp_variance(train, test, lam, scale):
    """(s^2/lambda) [k(x,x) - k_xR (K_RR + lambda I)^-1 k_Rx] with the linear kernel."""
    K = train @ train.T
    k_x = test @ train.T
    k_xx = np.sum(test * test, axis=1)
    reduction = np.einsum("ij,ij->i", k_x, np.linalg.solve(K + lam * np.eye(len(train)), k_x.T).T)
    return scale / lam * (k_xx - reduction)


def test_feature_space_variance_equals_explicit_kernel_gp():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    post = FeaturePosterior(5, regularization=0.3, scale=2.0).add(train)
    np.testing.assert_allclose(post.variance(test), explicit_gp_variance(train, test, 0.3, 2.0), rtol=1e-10)


def test_rank_k_updates_in_chunks_equal_one_batch_and_direct_precision():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(50, 6))
    one = FeaturePosterior(6, 0.1).add(data)
    chunked = FeaturePosterior(6, 0.1, chunk_size=7)
    for part in np.array_split(data, 5):
        chunked.add(part)
    direct = 0.1 * np.eye(6) + data.T @ data
    np.testing.assert_allclose(one.precision(), direct, rtol=1e-10)
    np.testing.assert_allclose(chunked.precision(), direct, rtol=1e-10)
    assert np.all(np.diag(chunked.factor) > 0)
    assert chunked.n_added == 50
    test = rng.normal(size=(9, 6))
    expected = np.einsum("ij,ij->i", test, np.linalg.solve(direct, test.T).T)
    np.testing.assert_allclose(chunked.quadratic_form(test), expected, rtol=1e-10)


def test_variance_drops_where_data_was_added_and_not_elsewhere():
    post = FeaturePosterior(4, 1e-2)
    near, far = np.array([[1.0, 0.5, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0, 0.0]])
    before_near, before_far = post.variance(near)[0], post.variance(far)[0]
    post.add(near)
    assert post.variance(near)[0] < 0.01 * before_near
    assert post.variance(far)[0] == pytest.approx(before_far)


def test_chunked_variance_equals_unchunked():
    rng = np.random.default_rng(2)
    post = FeaturePosterior(3, 0.5).add(rng.normal(size=(10, 3)))
    test = rng.normal(size=(25, 3))
    small = FeaturePosterior.from_state({**post.state(), "chunk_size": np.array(4)})
    np.testing.assert_allclose(small.variance(test), post.variance(test), rtol=1e-12)


def test_state_round_trip_through_an_npz_file(tmp_path):
    rng = np.random.default_rng(3)
    post = FeaturePosterior(3, 0.5, scale=1.7).add(rng.normal(size=(10, 3)))
    np.savez(tmp_path / "p.npz", **post.state())  # what MLIPALCalculator.save_posterior stores per posterior
    back = FeaturePosterior.from_state(dict(np.load(tmp_path / "p.npz")))
    test = rng.normal(size=(5, 3))
    np.testing.assert_allclose(back.variance(test), post.variance(test))
    assert back.n_added == 10 and back.scale == 1.7


@pytest.mark.parametrize("bad", [np.ones((2, 4)), np.array([[np.nan, 1.0, 1.0]])])
def test_bad_features_raise(bad):
    with pytest.raises(ValueError):
        FeaturePosterior(3).add(bad)


def test_bad_construction_raises():
    with pytest.raises(ValueError):
        FeaturePosterior(3, regularization=0.0)
    with pytest.raises(ValueError):
        FeaturePosterior(0)


def test_weighted_add_equals_repeated_add():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(3, 4))
    weighted = FeaturePosterior(4, 0.2).add(data, weight=3.0)
    repeated = FeaturePosterior(4, 0.2).add(np.vstack([data, data, data]))
    np.testing.assert_allclose(weighted.precision(), repeated.precision(), rtol=1e-10)
    with pytest.raises(ValueError):
        weighted.add(data, weight=0.0)
