from pathlib import Path

import pytest
import torch
from ase.build import molecule

import ase_mlipal
from ase_mlipal import ModelLoadError, load_model, model_hash, save_model


class _Evil:
    """Unpickling this touches a marker file: stands in for malicious code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def energy(model, atoms):
    calc = ase_mlipal.MLIPALCalculator(model=model)
    return calc.get_potential_energy(atoms)


def test_save_load_round_trip_is_exact(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "model.pt")
    loaded = load_model(path)
    assert model_hash(loaded) == model_hash(tiny_model)
    atoms = molecule("CH3OH")
    assert energy(loaded, atoms) == pytest.approx(energy(tiny_model, atoms), abs=1e-12)
    # the file itself is plain data: it loads with weights_only=True
    record = torch.load(path, weights_only=True)
    assert record["format"] == "ase-mlipal-model"


def test_pickled_file_needs_trust_and_runs_no_code_without_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(str(marker))}, path)
    with pytest.raises(ModelLoadError, match="trust=True"):
        load_model(path)
    assert not marker.exists()


def test_pickled_mace_module_loads_with_trust(tiny_model, tmp_path):
    path = tmp_path / "mace.model"
    torch.save(tiny_model, path)
    with pytest.raises(ModelLoadError, match="trust=True"):
        load_model(path)
    assert model_hash(load_model(path, trust=True)) == model_hash(tiny_model)


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"PK\x03\x04 truncated zip"])
def test_corrupt_file_gives_clear_error(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="broken.pt"):
        load_model(path)


def test_missing_file_and_plain_data_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match="not a MACE model"):
        load_model(tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


def test_non_mace_module_is_refused():
    with pytest.raises(ModelLoadError, match="not a MACE model"):
        load_model(torch.nn.Linear(3, 3))


def test_foundation_model_offline_says_what_to_do(monkeypatch, tmp_path):
    from mace.calculators import foundations_models

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(foundations_models, "_urlretrieve_with_timeout", no_network)
    with pytest.raises(ModelLoadError, match="trust=True"):
        load_model("mace-mp-0:small")


def test_loading_a_module_copies_it(tiny_model):
    loaded = load_model(tiny_model, dtype="float32")
    assert next(loaded.parameters()).dtype == torch.float32
    assert next(tiny_model.parameters()).dtype == torch.float64
    assert model_hash(loaded) == model_hash(tiny_model)  # same model, other precision


def test_hash_changes_with_parameters(tiny_model):
    other = load_model(tiny_model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert model_hash(other) != model_hash(tiny_model)


def test_build_mace_is_reproducible_from_seed():
    a = ase_mlipal.build_mace(["H", "O"], channels=4, seed=7)
    b = ase_mlipal.build_mace(["H", "O"], channels=4, seed=7)
    c = ase_mlipal.build_mace(["H", "O"], channels=4, seed=8)
    assert model_hash(a) == model_hash(b) != model_hash(c)
    assert ase_mlipal.model_elements(a) == [1, 8]
