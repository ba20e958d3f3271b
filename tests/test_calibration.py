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
