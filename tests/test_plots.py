from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from ase_mlipal.learning.verification import Check
from ase_mlipal.plots import (_flagged_points, check_points, plot_checks, plot_neb_profiles, plot_uncertainty_trace,
                               rewound_points)


@dataclass
class Profile:
    label: str
    s: np.ndarray
    energy: np.ndarray
    energy_std: Optional[np.ndarray] = None
    reference_energy: Optional[np.ndarray] = None


@dataclass
class BareProfile:  # no reference_energy attribute at all
    label: str
    s: np.ndarray
    energy: np.ndarray
    energy_std: Optional[np.ndarray]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_uncertainty_trace_writes_a_png(tmp_path):
    steps = np.arange(50)
    values = 0.05 + 0.1 * np.abs(np.sin(steps / 7))
    out = plot_uncertainty_trace(steps, values, 0.12, tmp_path / "trace.png", flagged_steps=[10, 11], title="MD")
    assert out == tmp_path / "trace.png"
    assert_png(out)

    # (step, value) pairs, also for steps outside the trace; a nested output folder is created
    out = plot_uncertainty_trace(list(steps), list(values), 0.12, str(tmp_path / "sub" / "pairs.png"),
                                 flagged_steps=[(10, 0.2), (60, 0.3)])
    assert_png(out)
    assert_png(plot_uncertainty_trace([0], [0.1], 0.2, tmp_path / "single.png"))


def test_a_trace_that_goes_back_marks_the_stretches_it_left(tmp_path):
    """Steps 5-25, back to 15 (next point 20), on to 30, back to 15 again, on to 40: the points at or past each
    restart before it are left behind; a trace that never goes back leaves nothing."""
    steps = np.array([5, 10, 15, 20, 25, 20, 25, 30, 20, 25, 30, 35, 40])
    expected = [False, False, False, True, True, True, True, True, False, False, False, False, False]
    assert rewound_points(steps).tolist() == expected
    assert not rewound_points(np.arange(0, 50, 5)).any()
    assert_png(plot_uncertainty_trace(steps, np.linspace(0.1, 0.3, steps.size), 0.2, tmp_path / "rewound.png",
                                      flagged_steps=[(25, 0.25)]))
    # a bare flagged step the trace passed three times is drawn on the pass it kept, the last
    values = np.arange(steps.size) / 10
    assert _flagged_points([25, 5], steps, values).tolist() == [[25, 0.9], [5, 0.0]]


def test_uncertainty_trace_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_uncertainty_trace([], [], 0.1, tmp_path / "a.png")
    with pytest.raises(ValueError, match="length"):
        plot_uncertainty_trace([0, 1, 2], [0.1, 0.2], 0.1, tmp_path / "b.png")
    with pytest.raises(ValueError, match="not in steps"):
        plot_uncertainty_trace([0, 1], [0.1, 0.2], 0.1, tmp_path / "c.png", flagged_steps=[5])
    assert not any(tmp_path.iterdir())


def test_neb_profiles_with_and_without_std_and_reference(tmp_path):
    s = np.linspace(0.0, 3.0, 7)
    energy = 0.8 * np.sin(np.pi * s / 3.0)
    profiles = [
        Profile("MACE", s, energy, energy_std=np.full(7, 0.05), reference_energy=energy + 0.02),
        Profile("MACE (fine-tuned)", s, energy * 0.9, energy_std=np.full(7, 0.02)),
        Profile("no std", s, energy * 1.1),
        BareProfile("bare", s, energy * 1.2, energy_std=None),
    ]
    out = plot_neb_profiles(profiles, tmp_path / "neb.png", title="NEB")
    assert out == tmp_path / "neb.png"
    assert_png(out)
    assert_png(plot_neb_profiles([BareProfile("only", s, energy, np.full(7, 0.01))], tmp_path / "one.png"))


def test_neb_profiles_reject_bad_input(tmp_path):
    s = np.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="no profiles"):
        plot_neb_profiles([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="energy_std"):
        plot_neb_profiles([Profile("x", s, np.zeros(5), energy_std=np.zeros(4))], tmp_path / "b.png")
    with pytest.raises(ValueError, match="reference_energy"):
        plot_neb_profiles([Profile("x", s, np.zeros(5), reference_energy=np.zeros(6))], tmp_path / "c.png")


def test_checks_plot_draws_each_labelled_check_against_its_two_sigma(tmp_path):
    """MD audits at their step, with bars of 2σ; a check without a label is left out; a band's checks sit at
    their round, kinds side by side; with nothing labelled, nothing is written."""
    md = [Check(1, "audit", 1, 0.05, 0.1, 0.1, 1.0, True, step=100),
          Check(1, "audit", 2, -4.5, 0.4, 2.1, 0.5, False, "energy error", step=300),
          Check(2, "audit", 3, float("nan"), float("nan"), float("nan"), 0.0, False, "no reference label", step=400),
          Check(2, "audit", 4, 0.02, 0.05, 0.1, 1.0, True, step=350, rewound=True)]
    points = check_points(md)
    assert points.x.tolist() == [100, 300, 350] and points.x_label == "MD step"
    assert points.two_sigma.tolist() == [0.2, 0.8, 0.1] and points.energy_error.tolist() == [0.05, -4.5, 0.02]
    assert points.passed.tolist() == [True, False, True] and points.rewound.tolist() == [False, False, True]
    assert_png(plot_checks(md, tmp_path / "md_checks.png", title="MD"))

    band = [Check(0, "climbing_image", 5, -0.3, 0.2, 0.2, 0.9, False, "tolerance", step=40, image=4),
            Check(0, "audit", 6, 0.1, 0.2, 0.2, 1.0, True, step=40, image=2),
            Check(1, "climbing_image", 7, 0.01, 0.05, 0.1, 1.0, True, step=12, image=4)]
    points = check_points(band)
    assert np.allclose(points.x, [-0.2, 0.2, 0.8]) and points.x_label == "round"
    assert_png(plot_checks(band, tmp_path / "band_checks.png"))
    assert plot_checks(md[2:3], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
