"""refine_ts: Sella on the model from a band, vibrational modes, the reference check."""

import copy

import numpy as np
import pytest
from ase.io import read
from mace.calculators import MACECalculator

import ase_mlipal
from ase_mlipal.paths import DEMO_REACTION_PATH
from ase_mlipal.learning.transition_state import IMAGINARY_NOISE, refine_ts

pytest.importorskip("sella")


@pytest.fixture(scope="module")
def default_calc():
    return ase_mlipal.MLIPALCalculator()


@pytest.fixture(scope="module")
def demo_band():
    return read(DEMO_REACTION_PATH, ":")


@pytest.fixture(scope="module")
def saddle(default_calc, demo_band):
    """The default model's saddle from the demo band, checked against the model itself as reference."""
    same_model = MACECalculator(models=copy.deepcopy(default_calc.model), default_dtype="float64")
    return refine_ts(default_calc, demo_band, reference=same_model, fmax=0.01, steps=300)


def test_saddle_is_a_stationary_point_with_an_imaginary_mode(saddle, default_calc):
    assert saddle.converged and saddle.max_force < 0.01
    probe = saddle.atoms.copy()
    probe.calc = default_calc
    assert np.linalg.norm(probe.get_forces(), axis=1).max() < 0.01
    assert saddle.n_imaginary >= 1 and saddle.frequencies[0] < -IMAGINARY_NOISE
    assert saddle.frequencies.shape == (3 * len(saddle.atoms),)
    assert np.isclose(np.linalg.norm(saddle.mode), 1.0)
    # moving along the imaginary mode lowers the energy on both sides: a maximum along it
    e0 = probe.get_potential_energy()
    for sign in (1.0, -1.0):
        moved = saddle.atoms.copy()
        moved.positions += sign * 0.02 * saddle.mode
        moved.calc = default_calc
        assert moved.get_potential_energy() < e0


def test_barrier_is_measured_from_the_first_image(saddle, default_calc, demo_band):
    first = demo_band[0].copy()
    first.calc = default_calc
    assert saddle.barrier == pytest.approx(saddle.energy - first.get_potential_energy(), abs=1e-6)
    assert saddle.barrier_std > 0 and saddle.energy_std > 0


def test_a_reference_equal_to_the_model_verifies_the_saddle(saddle):
    check = saddle.check
    assert check.kind == "saddle" and check.passed, check.reason
    assert abs(check.energy_error) < 1e-6 and check.force_mae < 1e-6
    assert saddle.store_id is None
    assert "verified" in saddle.summary()


def test_a_disagreeing_reference_fails_and_the_saddle_is_stored_labelled(default_calc, demo_band, tmp_path):
    pytest.importorskip("tblite")
    store = ase_mlipal.FrameStore(tmp_path / "frames.db")
    ts = refine_ts(default_calc, demo_band[4], reference=ase_mlipal.RobustXTB, fmax=0.05, steps=200,
                   vibrations=False, store=store, tolerance=0.1)
    assert ts.barrier is None and ts.frequencies is None
    assert not ts.check.passed and "beyond the tolerance 0.1 eV" in ts.check.reason
    assert ts.store_id is not None and store.counts().get("labelled") == 1
    stored = store.frame(ts.store_id)
    energy, forces = ase_mlipal.read_labels(stored)
    assert np.allclose(stored.positions, ts.atoms.positions)
    assert energy - ts.energy == pytest.approx(-ts.check.energy_error, abs=1e-6)


def test_bad_bands_are_refused(default_calc, demo_band):
    with pytest.raises(ValueError, match="at least 3 images"):
        refine_ts(default_calc, demo_band[:2])
    mixed = [demo_band[0], demo_band[1][:-1], demo_band[2]]
    with pytest.raises(ValueError, match="same atoms"):
        refine_ts(default_calc, mixed)
    downhill = [demo_band[0], demo_band[4], demo_band[4].copy()]  # last: a rigid shift, equal energy: no maximum
    downhill[2].positions += 0.3
    with pytest.raises(ValueError, match="no interior energy maximum"):
        refine_ts(default_calc, downhill)


def test_cli_ts_refines_the_demo_band_and_writes_the_saddle(tmp_path, capsys):
    from ase_mlipal.cli import main

    out = tmp_path / "saddle.xyz"
    main(["ts", str(DEMO_REACTION_PATH), "--fmax", "0.02", "--no-vibrations", "-o", str(out)])
    printed = capsys.readouterr().out
    assert "saddle: E =" in printed and "barrier (to the band's first image)" in printed
    assert len(read(out)) == len(read(DEMO_REACTION_PATH))
    with pytest.raises(SystemExit, match="reference 'nope'"):
        main(["ts", str(DEMO_REACTION_PATH), "--reference", "nope"])
