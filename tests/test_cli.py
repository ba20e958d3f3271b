"""The mlipal command line on the tiny model."""

import re

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


def test_md_with_a_seed_repeats_its_trajectory(model_file, tmp_path):
    from ase.io import read

    write(tmp_path / "start.xyz", molecule("CH3OH"))
    ends = []
    for k in range(3):
        traj = tmp_path / f"md{k}.traj"
        seed = ["--seed", "7"] if k < 2 else ["--seed", "8"]
        main(["md", str(tmp_path / "start.xyz"), "--model", model_file, "--steps", "6", "--interval", "3",
              "--db", str(tmp_path / f"f{k}.db"), "--trajectory", str(traj), "--temperature", "500", *seed])
        ends.append(read(traj, -1).positions)
    assert ends[0] == pytest.approx(ends[1], abs=0) and not ends[0] == pytest.approx(ends[2], abs=1e-6)


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
    assert not (tmp_path / "bad.db").exists()  # the inputs are checked before the store is made


def test_md_checks_its_arguments_before_it_makes_the_store(tmp_path, model_file):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    db = tmp_path / "f.db"
    for extra, message in [(["--threshold", "-1"], "--threshold must be positive, not -1.0"),
                           (["--interval", "0"], "--interval must be at least 1, not 0"),  # once an endless loop
                           (["--trajectory", str(tmp_path / "nowhere" / "md.traj")], "the folder of --trajectory")]:
        with pytest.raises(SystemExit, match=message):
            main(["md", str(tmp_path / "start.xyz"), "--db", str(db), *extra])
    with pytest.raises(SystemExit, match="no such file: .*missing.xyz"):
        main(["md", str(tmp_path / "missing.xyz"), "--db", str(db)])
    write(tmp_path / "chloro.xyz", molecule("CH3Cl"))
    with pytest.raises(SystemExit, match=r"mlipal md: .*chloro.xyz: The model does not know element\(s\) \['Cl'\]"):
        main(["md", str(tmp_path / "chloro.xyz"), "--model", model_file, "--db", str(db)])
    (tmp_path / "chloro.xyz").unlink()
    assert not db.exists()
    with pytest.raises(SystemExit, match=r"mlipal md: frame store .*f\.json: give an SQLite file ending \.db"):
        main(["md", str(tmp_path / "start.xyz"), "--model", model_file, "--db", str(tmp_path / "f.json")])
    with pytest.raises(SystemExit, match=r"mlipal md: frame store .*its folder .*nowhere does not exist"):
        main(["md", str(tmp_path / "start.xyz"), "--model", model_file, "--db", str(tmp_path / "nowhere" / "f.db")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start.xyz", "tiny.pt"]


@pytest.mark.parametrize("command, extra, message", [
    ("neb", ["--images", "2"], "mlipal neb: --images must be at least 3, not 2"),
    ("neb", ["--threshold", "0", "--fmax", "-0.1"], "--threshold must be positive, not 0.0; --fmax must be positive"),
    ("neb", ["--plot", "nowhere/neb.png"], "the folder of --plot nowhere/neb.png does not exist"),
    ("ts", ["--steps", "0"], "mlipal ts: --steps must be at least 1, not 0"),
    ("ts", ["--tolerance", "-1", "--reference", "emt"], "--tolerance must be positive, not -1.0"),
    ("ts", ["-o", "nowhere/ts.xyz"], "the folder of --output nowhere/ts.xyz does not exist"),
])
def test_neb_and_ts_check_their_arguments_before_anything_is_made(tmp_path, monkeypatch, command, extra, message):
    monkeypatch.chdir(tmp_path)
    write("a.xyz", molecule("CH3OH"))
    structures = ["a.xyz", "a.xyz"] if command == "neb" else ["a.xyz"]
    with pytest.raises(SystemExit, match=re.escape(message)):
        main([command, *structures, "--db", "f.db", *extra])
    assert [p.name for p in tmp_path.iterdir()] == ["a.xyz"]


@pytest.mark.parametrize("command", ["neb", "ts"])
def test_neb_and_ts_refuse_an_unknown_element_before_the_store(tmp_path, monkeypatch, model_file, command):
    monkeypatch.chdir(tmp_path)
    write("a.xyz", molecule("CH3OH"))
    write("chloro.xyz", molecule("CH3Cl") if command == "neb" else [molecule("CH3OH"), molecule("CH3Cl")])
    structures = ["a.xyz", "chloro.xyz"] if command == "neb" else ["chloro.xyz"]  # ts: a band, its frame 1 wrong
    where = "chloro.xyz" if command == "neb" else "chloro.xyz, frame 1"
    extra = ["--reference", "emt"] if command == "ts" else []
    with pytest.raises(SystemExit, match=re.escape(f"mlipal {command}: {where}: The model does not know element(s) ['Cl']")):
        main([command, *structures, "--model", model_file, "--db", "f.db", *extra])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xyz", "chloro.xyz", "tiny.pt"]


@pytest.mark.parametrize("argv, message", [
    (["select", "pool.xyz", "-n", "0"], "mlipal select: -n must be at least 1, not 0"),
    (["select", "pool.xyz", "-n", "2", "--chunk-size", "0", "--workers", "0"],
     "--workers must be at least 1, not 0; --chunk-size must be at least 1, not 0"),
    (["select", "pool.xyz", "-n", "2", "-o", "nowhere/picked.xyz"], "the folder of --output nowhere/picked.xyz"),
    (["select", "pool.xyz", "-n", "2", "--shortlist", "-1"], "mlipal select: --shortlist must be 0 or more, not -1"),
    (["score", "pool.xyz"], "mlipal score: give -o scores.csv (-o - for the terminal), or a pool that is an ase.db"),
    (["score", "pool.xyz", "--chunk-size", "-1"], "mlipal score: --chunk-size must be at least 1, not -1"),
    (["score", "pool.xyz", "-o", "nowhere/s.csv"], "mlipal score: the folder of --output nowhere/s.csv does not exist"),
    (["compare", "default", "default", "pool.xyz", "--n-local", "0"], "mlipal compare: --n-local must be at least 1"),
    (["compare", "default", "default", "pool.xyz", "--max-atoms", "0"],
     "mlipal compare: --max-atoms must be at least 1, not 0"),
    (["compare", "default", "default", "pool.xyz", "--plot", "nowhere/r.png"], "the folder of --plot nowhere/r.png"),
    (["demo", "--images", "2"], "mlipal demo: --images must be at least 3, not 2"),
    (["demo", "--threshold", "0"], "mlipal demo: --threshold must be positive, not 0.0"),
    (["demo", "--max-labels", "0", "--rounds", "0"],
     "--max-labels must be at least 1, not 0; --rounds must be at least 1, not 0"),
])
def test_pool_commands_and_demo_check_their_arguments_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write("pool.xyz", [molecule("CH4"), molecule("H2O")])
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(argv)
    assert [p.name for p in tmp_path.iterdir()] == ["pool.xyz"]


def test_foundation_names_are_told_from_model_files():
    from ase_mlipal.models.model import is_foundation_name

    assert all(is_foundation_name(name) for name in ("mace-mp", "mace-off:small", "MACE-OMOL", "mace-mp-0b3:medium"))
    assert not any(is_foundation_name(name) for name in ("mace.model", "default", "my-mace-mp", "models/mace-mp.pt"))


MD_CONFIG = 'kind = "md"\nreference = "emt"\nstructure = "start.xyz"\n'


@pytest.mark.parametrize("text, message", [
    (MD_CONFIG, "run.toml: missing required key threshold"),
    (MD_CONFIG + "treshold = 0.5\n", r"run.toml: unknown key treshold for kind = 'md'; allowed: .*threshold"),
    (MD_CONFIG + 'threshold = "4"\n', r"run.toml: threshold must be a number \(eV/A\), not '4'"),
    (MD_CONFIG + "threshold = 0.5\n[md]\ntemprature = 300\n", r"run.toml \[md\]: unknown key temprature; "
                                                                 r"allowed: .*temperature"),
    (MD_CONFIG + "threshold = 0.5\n[finetune]\nepoch = 5\n", r"run.toml \[finetune\]: unknown key epoch; "
                                                               r"allowed: .*epochs"),
    ('kind = "neb"\nthreshold = 0.5\nstructure = "a.xyz"\n', r"unknown key structure for kind = 'neb'; "
                                                             r"allowed: .*final, .*initial"),
    ('kind = "neb"\nthreshold = 0.5\ninitial = "a.xyz"\n', "run.toml: missing required key final"),
    ("threshold = 0.5\nstructure = [1]\n", "run.toml: structure must be a string"),
    ("threshold = 0.5\nstructure = \n", "run.toml is not valid TOML"),
], ids=["missing", "typo", "string-threshold", "md-typo", "finetune-typo", "other-kind", "neb-missing", "not-a-string",
        "not-toml"])
def test_learn_refuses_a_config_naming_the_file_and_the_key(tmp_path, text, message):
    """Checked before any model is loaded or any folder made: a typo never falls back to a default."""
    config = tmp_path / "run.toml"
    config.write_text(text)
    with pytest.raises(SystemExit, match=f"mlipal learn: .*{message}"):
        main(["learn", str(config)])
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]
    with pytest.raises(SystemExit, match="no such config file: .*missing.toml"):
        main(["learn", str(tmp_path / "missing.toml")])


def test_learn_config_paths_are_relative_to_its_folder(tmp_path, tiny_model, monkeypatch):
    from ase_mlipal.cli import learn_config

    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the current folder is not the config's
    config = folder / "run.toml"
    config.write_text('threshold = 0.5\nstructure = "start.xyz"\nmodel = "tiny.pt"\n'
                      f'[finetune]\nreplay = "old.xyz"\ncheckpoint = "{tmp_path / "best.pt"}"\n')
    got = learn_config("configs/run.toml")
    assert got["structure"] == str(folder / "start.xyz") and got["model"] == str(folder / "tiny.pt")
    assert got["workdir"] == str(folder / "run")  # the default: the config's name, beside it
    assert got["finetune"] == {"replay": str(folder / "old.xyz"), "checkpoint": str(tmp_path / "best.pt")}
    for name in ("default", "mace-mp-0:small"):  # names, not files
        config.write_text(f'threshold = 0.5\nstructure = "start.xyz"\nmodel = "{name}"\nworkdir = "../out"\n')
        got = learn_config(str(config))
        assert got["model"] == name and got["workdir"] == str(folder / ".." / "out")
    # the end to end: the model is read from the config's folder, and so would the structure be
    save_model(tiny_model, folder / "tiny.pt")
    write(tmp_path / "start.xyz", molecule("CH3OH"))  # beside the current folder only: not found
    config.write_text('threshold = 0.5\nstructure = "start.xyz"\nmodel = "tiny.pt"\nreference = "emt"\n')
    with pytest.raises(SystemExit, match=re.escape(f"no such file: {folder / 'start.xyz'}")):
        main(["learn", "configs/run.toml"])
    assert not (folder / "run").exists() and not (tmp_path / "run").exists()


def test_learn_runs_an_md_learner_from_a_config(tmp_path, model_file, monkeypatch):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    config = tmp_path / "run.toml"
    config.write_text("""
kind = "md"
model = "tiny.pt"
reference = "emt"
threshold = 1e-9
structure = "start.xyz"
workdir = "run"
labels_per_round = 2
max_rounds = 1
[md]
steps = 6
interval = 2
[finetune]
epochs = 2
replay_ratio = 0
""")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the config's relative paths are to its folder
    main(["learn", str(config)])
    store = FrameStore(tmp_path / "run" / "frames.db")
    assert store.counts()["labelled"] >= 2
    assert (tmp_path / "run" / "model_round1.pt").exists() and is_png(tmp_path / "run" / "uncertainty.png")
    assert not (tmp_path / "run" / "checks.png").exists()  # every frame flagged: no audit, no check to plot


def test_learn_plots_the_audits_of_an_md_learner(tmp_path, model_file):
    """No flag, an audit every 2 steps: each is labelled and checked, and checks.png shows them."""
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    config = tmp_path / "run.toml"
    config.write_text('kind = "md"\nmodel = "tiny.pt"\nreference = "emt"\nthreshold = 1e9\nstructure = "start.xyz"\n'
                      'workdir = "run"\nmax_rounds = 0\n[md]\nsteps = 4\ninterval = 2\naudit_interval = 2\n'
                      'max_rewinds = 0\n')  # the tiny model is eV off EMT: no hole makes a round here
    main(["learn", str(config)])
    counts = FrameStore(tmp_path / "run" / "frames.db").counts()
    assert counts.get("verified", 0) + counts.get("labelled", 0) >= 1  # audits, labelled and checked
    assert is_png(tmp_path / "run" / "checks.png")


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


def test_score_writes_csv_and_into_an_ase_db(model_file, tmp_path, capsys):
    import csv

    import ase.db

    from .conftest import rattled

    pool = rattled(molecule("CH3OH"), 5, seed=0)
    write(tmp_path / "pool.xyz", pool)
    main(["score", str(tmp_path / "pool.xyz"), "--model", model_file, "-o", str(tmp_path / "s.csv")])
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == list(range(5)) and all(float(r["uncertainty"]) > 0 for r in rows)
    capsys.readouterr()
    main(["score", str(tmp_path / "pool.xyz"), "--model", model_file, "-o", "-"])  # the table alone on stdout
    out = capsys.readouterr()
    assert list(csv.DictReader(out.out.splitlines())) == rows and "uncertainties" in out.err
    with ase.db.connect(tmp_path / "pool.db") as db:
        for atoms in pool:
            db.write(atoms)
    main(["score", str(tmp_path / "pool.db"), "--model", model_file, "--kernel", "fixed"])
    with ase.db.connect(tmp_path / "pool.db") as db:
        values = [row.uncertainty for row in db.select()]
    assert len(values) == 5 and all(v > 0 for v in values)
    with pytest.raises(SystemExit, match="-o"):
        main(["score", str(tmp_path / "pool.xyz"), "--model", model_file])


@pytest.mark.parametrize("flag, aware", [([], True), (["--distance-aware"], True), (["--no-distance-aware"], False)])
def test_md_flags_with_the_uncertainty_its_flag_asks_for(tmp_path, flag, aware):
    write(tmp_path / "start.xyz", molecule("CH3OH"))
    db = tmp_path / "d.db"
    main(["md", str(tmp_path / "start.xyz"), *flag, "--steps", "3", "--interval", "3",
          "--threshold", "1e-9", "--db", str(db), "--temperature", "300"])
    row = next(FrameStore(db).rows("flagged"))
    frame = FrameStore(db).frame(row.id)
    values = {}
    for distance_aware in (True, False):
        frame.calc = ase_mlipal.MLIPALCalculator(distance_aware=distance_aware)
        frame.get_forces()
        values[distance_aware] = frame.calc.results["uncertainty"]
    assert row.uncertainty == pytest.approx(values[aware], rel=1e-6)  # the default: the distance-aware posterior
    assert values[True] != pytest.approx(values[False], rel=1e-3)


def test_the_learn_help_examples_are_valid_configs(tmp_path):
    from ase_mlipal.cli import LEARN_HELP, learn_config

    examples = [block for block in LEARN_HELP.split("\n\n") if block.startswith("    kind = ")]
    assert len(examples) == 2
    for k, block in enumerate(examples):
        path = tmp_path / f"example{k}.toml"
        path.write_text("\n".join(line[4:] for line in block.splitlines()))
        config = learn_config(str(path))
        assert config["kind"] == ("md", "neb")[k]
        assert config["workdir"] == str(tmp_path / ("run1" if k == 0 else f"example{k}"))  # beside the file
