"""Every bad input named in MLIPALCalculator's docstring and issue 17 gets an error that says what and where."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

import ase_mlipal
from ase_mlipal import FrameStore, MLIPALCalculator, ModelLoadError, save_model

from .conftest import rattled


def water(**changes):
    atoms = molecule("H2O")
    for name, value in changes.items():
        setattr(atoms, name, value)
    return atoms


def with_position(index, value):
    atoms = molecule("H2O")
    atoms.positions[index] = value
    return atoms


STRUCTURES = {
    "not an Atoms": (np.zeros((3, 3)), TypeError, "expected an ase.Atoms, got ndarray"),
    "no atoms": (Atoms(), ValueError, "has no atoms"),
    "NaN position": (with_position(2, np.nan), ValueError, r"Atoms \[2\] have NaN or infinite positions"),
    "infinite position": (with_position(1, np.inf), ValueError, r"Atoms \[1\] have NaN or infinite positions"),
    "NaN cell": (water(cell=np.full((3, 3), np.nan), pbc=True), ValueError, "cell has NaN"),
    "zero-volume cell": (water(cell=np.zeros((3, 3)), pbc=True), ValueError, "cell has zero volume"),
    "two atoms at one position": (with_position(1, molecule("H2O").positions[0]), ValueError,
                                  r"The structure has atoms 0 \(O\) and 1 \(H\) 0.000 A apart .*overlapping atoms"),
    "unknown element": (molecule("SiH4"), ValueError, r"does not know element\(s\) \['Si'\] \(atoms \[0\]\)"),
}


@pytest.mark.parametrize("case", STRUCTURES)
def test_bad_structures_are_named(calc, case):
    atoms, error, message = STRUCTURES[case]
    with pytest.raises(error, match=message):
        calc.get_property("energy", atoms)
    if isinstance(atoms, Atoms):
        with pytest.raises(error, match=message):
            calc.condition([molecule("CH4"), atoms])


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.fixture()
def model_files(tiny_model, tmp_path):
    good = save_model(tiny_model, tmp_path / "good.pt")
    truncated = _write(tmp_path / "truncated.pt", good.read_bytes()[:200])
    pickled = tmp_path / "pickled.model"
    torch.save(tiny_model, pickled)
    state = tmp_path / "state.pt"
    torch.save(tiny_model.state_dict(), state)
    from e3nn.util import jit

    compiled = tmp_path / "model_compiled.model"
    jit.compile(ase_mlipal.load_model(tiny_model)).save(str(compiled))
    return {
        "missing file": (tmp_path / "nope.model", "does not exist"),
        "directory": (tmp_path, "is a directory"),
        "not a PyTorch file": (_write(tmp_path / "notes.model", b"hello"), "is not a PyTorch model file"),
        "truncated file": (truncated, "truncated or\\s+corrupt|not a PyTorch model file"),
        "pickled module without trust": (pickled, "pass trust=True"),
        "state dict": (state, "holds plain data"),
        "compiled TorchScript model": (compiled, "compiled \\(TorchScript\\) model.*uncompiled file"),
    }


@pytest.mark.parametrize("case", ["missing file", "directory", "not a PyTorch file", "truncated file",
                                  "pickled module without trust", "state dict", "compiled TorchScript model"])
def test_bad_model_files_are_named(model_files, case):
    path, message = model_files[case]
    with pytest.raises(ModelLoadError, match=message) as caught:
        MLIPALCalculator(model=path)
    assert str(path) in str(caught.value)


def test_a_compiled_model_is_refused_with_trust_too(model_files):
    path, message = model_files["compiled TorchScript model"]
    with pytest.raises(ModelLoadError, match=message):
        MLIPALCalculator(model=path, trust=True)


def test_a_model_that_is_no_module_or_path_is_a_type_error():
    with pytest.raises(TypeError, match="model must be an nn.Module, a path or a model name, not int"):
        MLIPALCalculator(model=3)


@pytest.fixture()
def posterior_files(calc, tmp_path):
    calc.condition(rattled(molecule("H2O"), 3))
    good = tmp_path / "posterior.npz"
    calc.save_posterior(good)
    other = MLIPALCalculator(model=ase_mlipal.random_like(calc.model, seed=7))
    other.condition(rattled(molecule("H2O"), 3))
    other.save_posterior(tmp_path / "other.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    np.save(tmp_path / "array.npy", np.ones(3))
    return {
        "missing file": (tmp_path / "nope.npz", FileNotFoundError, "does not exist"),
        "truncated file": (_write(tmp_path / "truncated.npz", good.read_bytes()[:300]), ValueError,
                           "not a readable posterior file \\(BadZipFile"),
        "not a zip": (_write(tmp_path / "text.npz", b"not a posterior"), ValueError, "not a readable posterior"),
        "a single array": (tmp_path / "array.npy", ValueError, "a single .npy array"),
        "another npz": (tmp_path / "foreign.npz", ValueError, "not a posterior written by save_posterior"),
        "another model": (tmp_path / "other.npz", ValueError, "was built on model"),
    }


@pytest.mark.parametrize("case", ["missing file", "truncated file", "not a zip", "a single array", "another npz",
                                  "another model"])
def test_bad_posterior_files_are_named(calc, posterior_files, case):
    path, error, message = posterior_files[case]
    with pytest.raises(error, match=message) as caught:
        calc.load_posterior(path)
    assert str(path) in str(caught.value)


def test_a_posterior_of_another_kernel_is_named(tiny_model, posterior_files):
    path = posterior_files["another model"][0].parent / "posterior.npz"
    with pytest.raises(ValueError, match="holds a activation posterior, this calculator uses fixed"):
        MLIPALCalculator(model=tiny_model, kernel="fixed", posterior=path)


def test_bad_calibration_inputs(calc):
    with pytest.raises(ValueError, match="at least one labelled frame"):
        calc.calibrate([])
    with pytest.raises(ValueError, match="groups has 1 labels for 2 images"):
        calc.calibrate(rattled(molecule("H2O"), 2), groups=["a"])
    with pytest.raises(ValueError, match="reference"):
        calc.calibrate(rattled(molecule("H2O"), 2))  # no labels


def test_the_store_refuses_non_finite_frames_and_labels(tmp_path):
    store = FrameStore(tmp_path / "frames.db")
    with pytest.raises(ValueError, match=r"non-finite positions for atoms \[2\]; not stored"):
        store.add_flagged(with_position(2, np.nan), source="md", step=3)
    row, _ = store.add_flagged(water(), source="md")
    with pytest.raises(ValueError, match="labels must be finite"):
        store.mark_labelled(row, 1.0, np.full((3, 3), np.inf))
    assert len(store) == 1 and store.counts()["flagged"] == 1


EVIL = """
import os, pickle, sys
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
with open(sys.argv[2], "wb") as handle:
    pickle.dump(Evil(), handle)
"""


def test_importing_the_package_leaves_torch_load_safe(tmp_path):
    """After `import ase_mlipal`, a plain torch.load of a malicious pickle refuses it instead of running it."""
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    subprocess.run([sys.executable, "-c", EVIL, str(marker), str(evil)], check=True)
    probe = textwrap.dedent(f"""
        import os, sys
        before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        import ase_mlipal, torch
        assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == before, "variable changed"
        try:
            torch.load({str(evil)!r})
        except Exception as error:
            print("REFUSED", type(error).__name__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "REFUSED UnpicklingError" in run.stdout and not marker.exists()
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "0"  # a value the user set is kept
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_importing_the_package_prints_nothing_but_keeps_other_output(capsys):
    from ase_mlipal.environment import CUEQUIVARIANCE_NOTICE, without_cuequivariance_notice

    run = subprocess.run([sys.executable, "-c", "import ase_mlipal"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "", run.stdout + run.stderr[-2000:]
    with without_cuequivariance_notice():
        print(f"{CUEQUIVARIANCE_NOTICE}. Cuequivariance acceleration will be disabled.")
        print("a line of someone else")
    assert capsys.readouterr().out == "a line of someone else\n"
