"""`mlipal demo` pipeline, on a tiny budget (checks the pipeline, not the numbers)."""

import numpy as np
import pytest

from ase_mlipal import FrameStore
from ase_mlipal.demo import run_demo


def test_demo_runs_the_loop_and_scores_before_and_after(tmp_path, capsys):
    pytest.importorskip("tblite")
    scores = run_demo(tmp_path, n_images=4, threshold=0.05, max_rounds=2, steps=3,
                      finetune_options={"epochs": 2, "replay_ratio": 1})
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "xTB NEB barrier 3.124" in out
    for score in scores.values():
        assert np.isfinite([score.force_mae, score.barrier, score.barrier_error, score.reaction_energy_error]).all()
    counts = FrameStore(tmp_path / "run" / "frames.db").counts()
    assert counts["labelled"] + counts["verified"] >= 3  # the endpoints and the climbing-image check at least
    assert (tmp_path / "neb.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "checks.png").read_bytes()[:4] == b"\x89PNG"  # the climbing-image checks at least


def test_demo_without_xtb_stops_before_doing_anything(tmp_path, monkeypatch):
    import sys

    from ase_mlipal.cli import main

    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # as if tblite were not installed
    with pytest.raises(SystemExit, match=r"mlipal demo: .*pip install 'ase-mlipal\[xtb\]'"):
        main(["demo", "--workdir", str(tmp_path / "demo")])
    assert not (tmp_path / "demo").exists()
