"""The mlipal command line on the tiny model."""

import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.io import write

import ase_mlipal
from ase_mlipal import FrameStore, save_model
from ase_mlipal.cli import main, reference_factory

from .learning.test_neb import formaldehyde_band


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
        main(["md", str(config), "--model", model_file, "--db", str(tmp_path / "bad.db")])
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    with pytest.raises(SystemExit, match="cannot load model"):
        main(["md", str(tmp_path / "start.xyz"), "--model", str(tmp_path / "missing.pt"), "--db", str(tmp_path / "bad.db")])


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
labels_per_round = 2
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


class FailingReference(Calculator):
    """A reference that fails on every frame."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("SCF did not converge")


def test_learn_says_why_a_neb_run_ran_no_band(tmp_path, model_file):
    """The reference fails on the first endpoint: no band to report, and the user is told why, not a traceback."""
    images = formaldehyde_band(3)
    write(tmp_path / "a.xyz", images[0])
    write(tmp_path / "b.xyz", images[-1])
    config = tmp_path / "run.toml"
    config.write_text(f"""
kind = "neb"
model = "{model_file}"
reference = "tests.test_cli:FailingReference"
threshold = 1e3
initial = "{tmp_path / 'a.xyz'}"
final = "{tmp_path / 'b.xyz'}"
workdir = "{tmp_path / 'run'}"
max_rounds = 1
[neb]
images = 5
steps = 2
""")
    with pytest.raises(SystemExit, match="no band was run: the reference failed on the first endpoint"):
        main(["learn", str(config)])
    assert FrameStore(tmp_path / "run" / "frames.db").counts()["failed"] >= 1  # the failure is stored, not lost


def test_select_writes_the_picked_structures(model_file, tmp_path, capsys):
    from ase.io import read

    from .conftest import rattled

    pool = rattled(molecule("CH3OH"), 8, seed=0) + rattled(molecule("C2H6"), 4, seed=1)
    write(tmp_path / "pool.xyz", pool)
    write(tmp_path / "train.xyz", pool[:3])
    out = tmp_path / "picked.xyz"
    main(["select", str(tmp_path / "pool.xyz"), "-n", "3", "--model", model_file, "--labelled",
          str(tmp_path / "train.xyz"), "--kernel", "ntk", "--kernel-option", "dim=64", "--method", "lcmd",
          "-o", str(out)])
    picked = read(out, ":")
    assert len(picked) == 3
    for atoms in picked:  # each written structure is the pool's at its recorded index
        assert atoms.positions == pytest.approx(pool[atoms.info["pool_index"]].positions, abs=1e-6)
    assert "picked 3" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["select", str(tmp_path / "pool.xyz"), "-n", "1", "--model", model_file, "--kernel-option", "dim"])


def test_score_writes_csv_and_into_an_ase_db(model_file, tmp_path):
    import csv

    import ase.db

    from .conftest import rattled

    pool = rattled(molecule("CH3OH"), 5, seed=0)
    write(tmp_path / "pool.xyz", pool)
    main(["score", str(tmp_path / "pool.xyz"), "--model", model_file, "-o", str(tmp_path / "s.csv")])
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == list(range(5)) and all(float(r["uncertainty"]) > 0 for r in rows)
    with ase.db.connect(tmp_path / "pool.db") as db:
        for atoms in pool:
            db.write(atoms)
    main(["score", str(tmp_path / "pool.db"), "--model", model_file, "--kernel", "fixed"])
    with ase.db.connect(tmp_path / "pool.db") as db:
        values = [row.uncertainty for row in db.select()]
    assert len(values) == 5 and all(v > 0 for v in values)
    with pytest.raises(SystemExit, match="-o"):
        main(["score", str(tmp_path / "pool.xyz"), "--model", model_file])


def test_md_distance_aware_flags_with_the_distance_aware_uncertainty(tmp_path):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    db = tmp_path / "d.db"
    main(["md", str(tmp_path / "start.xyz"), "--distance-aware", "--steps", "3", "--interval", "3",
          "--threshold", "1e-9", "--db", str(db), "--temperature", "300"])
    row = next(FrameStore(db).rows("flagged"))
    frame = FrameStore(db).frame(row.id)
    values = {}
    for aware in (True, False):
        frame.calc = ase_mlipal.MLIPALCalculator(distance_aware=aware)
        frame.get_forces()
        values[aware] = frame.calc.results["uncertainty"]
    assert row.uncertainty == pytest.approx(values[True], rel=1e-6)  # the shipped distance-aware posterior judged it
    assert values[True] != pytest.approx(values[False], rel=1e-3)
