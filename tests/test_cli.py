"""The mlipal command line on the tiny model."""

import pytest
from ase.build import molecule
from ase.io import write

from ase_mlipal import FrameStore, save_model
from ase_mlipal.cli import main, reference_factory

from .test_neb import formaldehyde_band


@pytest.fixture()
def model_file(tiny_model, tmp_path):
    return str(save_model(tiny_model, tmp_path / "tiny.pt"))


def is_png(path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG"


def test_md_flags_frames_and_plots_the_trace(model_file, tmp_path, capsys):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    db, png = tmp_path / "f.db", tmp_path / "md.png"
    main(["md", str(tmp_path / "start.xyz"), "--model", model_file, "--steps", "12", "--interval", "3",
          "--threshold", "1e-9", "--db", str(db), "--plot", str(png), "--temperature", "500"])
    assert FrameStore(db).counts()["flagged"] == 4  # every check is above a tiny threshold
    assert is_png(png) and "4 frames flagged" in capsys.readouterr().out


def test_neb_reports_the_barrier_and_writes_band_and_plot(model_file, tmp_path, capsys):
    images = formaldehyde_band(3)
    write(tmp_path / "a.xyz", images[0])
    write(tmp_path / "b.xyz", images[-1])
    out_band, png = tmp_path / "band.xyz", tmp_path / "neb.png"
    main(["neb", str(tmp_path / "a.xyz"), str(tmp_path / "b.xyz"), "--model", model_file, "--images", "5",
          "--steps", "3", "--db", str(tmp_path / "f.db"), "-o", str(out_band), "--plot", str(png)])
    out = capsys.readouterr().out
    assert "barrier" in out and "±" in out
    assert out_band.exists() and is_png(png)


def test_learn_refuses_a_bad_config_and_reference(tmp_path, model_file):
    config = tmp_path / "run.toml"
    config.write_text(f'kind = "kmc"\nmodel = "{model_file}"\nreference = "emt"\nthreshold = 0.1\n')
    with pytest.raises(SystemExit, match="kind must be"):
        main(["learn", str(config)])
    with pytest.raises(SystemExit, match="use one of"):
        reference_factory("dft")
    with pytest.raises(SystemExit, match="cannot be imported"):
        reference_factory("no.such.module:Calc")
    with pytest.raises(SystemExit, match="cannot read a structure"):
        main(["md", str(config), "--model", model_file])
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    with pytest.raises(SystemExit, match="cannot load model"):
        main(["md", str(tmp_path / "start.xyz"), "--model", str(tmp_path / "missing.pt")])


def test_learn_runs_an_md_learner_from_a_config(tmp_path, model_file):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    config = tmp_path / "run.toml"
    config.write_text(f"""
kind = "md"
model = "{model_file}"
reference = "emt"
threshold = 1e-9
structure = "{tmp_path / 'start.xyz'}"
workdir = "{tmp_path / 'run'}"
batch_size = 2
max_rounds = 1
[md]
steps = 6
interval = 2
[finetune]
epochs = 2
replay_ratio = 0
""")
    main(["learn", str(config)])
    store = FrameStore(tmp_path / "run" / "frames.db")
    assert store.counts()["labelled"] >= 2
    assert (tmp_path / "run" / "model_round1.pt").exists() and is_png(tmp_path / "run" / "uncertainty.png")
