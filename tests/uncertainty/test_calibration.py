import numpy as np
import pytest

from ase_mlipal import calibration_report, fit_scale


def test_fit_scale_recovers_known_scale():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.1, 5.0, size=20000)
    residuals = rng.normal(scale=np.sqrt(3.0 * raw))
    assert fit_scale(residuals, raw) == pytest.approx(3.0, rel=0.03)


def test_report_of_a_calibrated_model_has_nominal_coverage():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 2.0, size=20000)
    report = calibration_report(rng.normal(scale=std), std)
    assert report.coverage_1sigma == pytest.approx(0.683, abs=0.02)
    assert report.coverage_2sigma == pytest.approx(0.954, abs=0.01)
    assert report.miscalibration_area < 0.02
    assert report.spearman > 0.3  # larger std, larger errors


def test_overconfident_model_is_flagged():
    rng = np.random.default_rng(2)
    std = rng.uniform(0.1, 2.0, size=5000)
    good = calibration_report(rng.normal(scale=std), std)
    bad = calibration_report(rng.normal(scale=std), std / 4)
    assert bad.coverage_1sigma < 0.3
    assert bad.miscalibration_area > 0.3
    assert bad.nll > good.nll


def test_uninformative_std_has_no_rank_correlation():
    rng = np.random.default_rng(3)
    report = calibration_report(rng.normal(size=5000), rng.uniform(0.5, 1.5, size=5000))
    assert abs(report.spearman) < 0.05


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        fit_scale(np.ones(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        calibration_report(np.ones(3), np.ones(4))


from ase_mlipal.uncertainty.calibration import Recalibration, fit_recalibration  # noqa: E402


def _power_law_data(rng, n, scale=0.3, exponent=1.7, floor=0.02, group_shift=0.0):
    raw = np.exp(rng.uniform(-5.0, 1.0, size=n) + group_shift)
    sizes = rng.integers(3, 13, size=n).astype(float)
    true = Recalibration(scale, exponent, floor)
    return rng.normal(scale=np.sqrt(true.variance(raw, sizes))), raw, sizes


@pytest.mark.parametrize("method", ["power", "linear", "scale"])
def test_residuals_all_exactly_zero_raise_a_clear_error(method):
    """Labels a model computed itself give zero residuals: no scale exists (it used to fail inside scipy)."""
    with pytest.raises(ValueError, match="all 4 residuals are exactly 0.*labels computed by this model"):
        fit_recalibration(np.zeros(4), np.ones(4), method=method, shape=Recalibration(1.0, 1.0, 0.01))


def test_power_law_and_floor_are_recovered_from_synthetic_residuals():
    rng = np.random.default_rng(4)
    residuals, raw, sizes = _power_law_data(rng, 60000)
    fit = fit_recalibration(residuals, raw, sizes, method="power")
    assert fit.exponent == pytest.approx(1.7, abs=0.05)
    assert fit.scale == pytest.approx(0.3, rel=0.15)
    assert fit.floor == pytest.approx(0.02, rel=0.15)
    linear = fit_recalibration(residuals, raw, sizes, method="linear")
    assert linear.is_linear


def test_power_law_covers_held_out_groups_where_a_plain_scale_does_not():
    """Groups differ in how novel they are (their raw variances); the relation is the same.

    Fitted on six groups, scored on two held-out ones at the high-variance end: the
    power law keeps 2-sigma coverage there; a plain scale fitted on the same data
    averages a non-linear relation and misses it (here far too wide).
    """
    rng = np.random.default_rng(5)
    parts = [_power_law_data(rng, 4000, group_shift=shift) for shift in (-2, -1.5, -1, -0.5, 0, 0.5, 2.0, 2.5)]
    fit_parts, held_out = parts[:6], parts[6:]
    residuals, raw, sizes = (np.concatenate([p[k] for p in fit_parts]) for k in range(3))
    groups = np.repeat(np.arange(6), 4000)
    power = fit_recalibration(residuals, raw, sizes, groups=groups, method="power")
    linear = fit_recalibration(residuals, raw, sizes, groups=groups, method="linear")
    for r, q, n in held_out:
        power_report = calibration_report(r, np.sqrt(power.variance(q, n)))
        linear_report = calibration_report(r, np.sqrt(linear.variance(q, n)))
        assert 0.93 < power_report.coverage_2sigma < 0.975
        assert abs(linear_report.coverage_2sigma - 0.954) > 0.04
        assert power_report.nll < linear_report.nll


def test_group_weights_balance_a_large_group_against_small_ones():
    rng = np.random.default_rng(6)
    big = rng.normal(scale=1.0, size=50000)   # s^2 = 1
    small = rng.normal(scale=3.0, size=500)   # s^2 = 9
    residuals = np.concatenate([big, small])
    raw = np.ones_like(residuals)
    groups = ["big"] * big.size + ["small"] * small.size
    pooled = fit_recalibration(residuals, raw, method="linear")
    balanced = fit_recalibration(residuals, raw, groups=groups, method="linear")
    assert pooled.scale == pytest.approx(1.08, abs=0.05)
    assert balanced.scale == pytest.approx(5.0, rel=0.1)  # the mean of the two groups' s^2


def test_refitting_the_scale_keeps_exponent_and_floor():
    rng = np.random.default_rng(7)
    shape = Recalibration(1.0, 1.5, 0.01)
    raw = np.exp(rng.uniform(-4, 0, size=20000))
    residuals = rng.normal(scale=np.sqrt(Recalibration(4.0, 1.5, 0.01).variance(raw)))
    fit = fit_recalibration(residuals, raw, method="scale", shape=shape)
    assert (fit.exponent, fit.floor) == (1.5, 0.01)
    assert fit.scale == pytest.approx(4.0, rel=0.05)
    with pytest.raises(ValueError, match="shape"):
        fit_recalibration(residuals, raw, method="scale")


def test_raw_for_inverts_the_map():
    calibration = Recalibration(2.0, 1.6, 0.05)
    raw = np.array([1e-3, 0.1, 2.0])
    for q, n in zip(raw, (1.0, 4.0, 9.0)):
        assert calibration.raw_for(float(calibration.variance(q, n)), n) == pytest.approx(q, rel=1e-9)
    assert calibration.raw_for(0.01, 1.0) == 0.0  # below the floor
    with pytest.raises(ValueError):
        Recalibration(scale=-1.0)
    with pytest.raises(ValueError, match="method"):
        fit_recalibration(np.ones(3), np.ones(3), method="isotonic")


def test_forgetting_floor_moves_the_floor_by_the_rise_of_the_mean_squared_error():
    from ase_mlipal.uncertainty.calibration import Recalibration, forgetting_floor

    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 12, 200).astype(float)
    before = rng.normal(0, 0.1, 200) * np.sqrt(sizes)  # variance 0.01 per atom
    after = rng.normal(0, 0.3, 200) * np.sqrt(sizes)  # the new model forgot: 0.09 per atom
    start = Recalibration(2.0, 0.7, 0.005)
    moved = forgetting_floor(start, before, after, sizes)
    assert (moved.scale, moved.exponent) == (2.0, 0.7)
    assert moved.floor == pytest.approx(0.005 + np.mean(after**2 / sizes) - np.mean(before**2 / sizes), rel=1e-12)
    assert moved.floor == pytest.approx(0.085, abs=0.02)  # the known per-atom variance added
    assert forgetting_floor(moved, after, before, sizes).floor == pytest.approx(0.005, abs=1e-12)  # and back down
    assert forgetting_floor(start, after, before, sizes).floor == 0.0  # never below zero
    with pytest.raises(ValueError, match="same frames"):
        forgetting_floor(start, before, after[:10])
    with pytest.raises(ValueError, match="positive"):
        forgetting_floor(start, before, after, np.zeros(200))


def test_shrunk_factor_is_the_likelihood_factor_moved_by_the_frames_share():
    from ase_mlipal.uncertainty.calibration import shrunk_factor

    rng = np.random.default_rng(3)
    variances = rng.uniform(0.5, 2.0, 4000)
    residuals = rng.normal(size=4000) * np.sqrt(4.0 * variances)  # variances 4x too small
    assert shrunk_factor(residuals, variances, prior_frames=0, n_frames=5) == pytest.approx(4.0, rel=0.05)
    ratio = np.mean(residuals**2 / variances)
    assert shrunk_factor(residuals, variances, 20, 5) == pytest.approx(ratio ** (5 / 25))
    assert 1 < shrunk_factor(residuals, variances, 20, 1) < shrunk_factor(residuals, variances, 20, 50) < ratio
    assert shrunk_factor(residuals, variances, 20, 5, "linear") == pytest.approx((20 + 5 * ratio) / 25)
    assert shrunk_factor(residuals, variances, np.inf, 5, "linear") == 1.0
    with pytest.raises(ValueError, match="exactly 0"):
        shrunk_factor(np.zeros(3), np.ones(3), 20, 1)
    with pytest.raises(ValueError, match="'log' or 'linear'"):
        shrunk_factor(residuals, variances, 20, 1, "geometric")
    with pytest.raises(ValueError, match="prior_frames >= 0"):
        shrunk_factor(residuals, variances, -1, 1)


def test_one_residual_a_frame_keeps_a_calibrated_sigma_on_average_only_when_shrunk_linearly():
    """A calibrated model's single energy residual per check: ``z^2`` is chi-squared with one degree of freedom.
    Shrunk linearly the factor averages 1 (sigma kept); in log space ``E[log z^2] = -1.27`` pulls it below 1 on
    average, and the more so the fewer the frames. With 3N residuals a frame (forces) log space is nearly unbiased."""
    from ase_mlipal.uncertainty.calibration import shrunk_factor

    rng = np.random.default_rng(5)
    one = rng.standard_normal(20000)
    linear = [shrunk_factor(one[k:k + 1], np.ones(1), 1.0, 1, "linear") for k in range(len(one))]
    in_log = [shrunk_factor(one[k:k + 1], np.ones(1), 1.0, 1, "log") for k in range(len(one))]
    assert np.mean(linear) == pytest.approx(1.0, abs=0.03)
    assert np.mean(np.log(in_log)) == pytest.approx(-1.27 / 2, abs=0.05)  # half the way: w = 1 / (1 + 1)
    many = rng.standard_normal((2000, 27))
    forces = [shrunk_factor(row, np.ones(27), 1.0, 1, "log") for row in many]
    assert np.mean(np.log(forces)) == pytest.approx(0.0, abs=0.04)


def test_times_scales_the_whole_calibrated_variance():
    shape = Recalibration(2.0, 1.5, 0.3)
    raw, size = np.array([0.1, 1.0, 4.0]), np.array([3, 5, 9])
    np.testing.assert_allclose(shape.times(0.25).variance(raw, size), 0.25 * shape.variance(raw, size))
    assert shape.times(0.25).exponent == 1.5
