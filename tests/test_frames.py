import numpy as np
import pytest
from ase.build import molecule
from ase.io import read, write

from ase_mlipal import read_labels, with_labels


def test_with_labels_is_a_labelled_copy_that_survives_a_file(tmp_path):
    atoms = molecule("H2O")
    forces = np.arange(9.0).reshape(3, 3)
    labelled = with_labels(atoms, -12.5, forces)
    assert atoms.calc is None and labelled is not atoms  # the original is untouched
    energy, got = read_labels(labelled)
    assert energy == -12.5 and np.array_equal(got, forces)
    labelled.positions[0, 0] += 1.0
    assert atoms.positions[0, 0] != labelled.positions[0, 0]
    write(tmp_path / "one.extxyz", labelled)
    energy, got = read_labels(read(tmp_path / "one.extxyz"))
    assert energy == pytest.approx(-12.5) and np.allclose(got, forces)


def test_a_frame_with_a_live_calculator_is_told_how_to_store_its_labels():
    from ase.calculators.emt import EMT

    atoms = molecule("CH4")
    atoms.calc = EMT()
    forces = atoms.get_forces()
    with pytest.raises(ValueError, match=r"atoms.calc is a live EMT, whose results are not read.*with_labels"):
        read_labels(atoms)
    energy, read_forces = read_labels(with_labels(atoms, atoms.get_potential_energy(), forces))
    np.testing.assert_array_equal(read_forces, forces)


def _labelled_frames(n):
    frames = []
    for k in range(n):
        atoms = molecule("CH3OH")
        atoms.rattle(0.05, seed=k)
        atoms.info["k"] = k
        frames.append(with_labels(atoms, -float(k), np.full((6, 3), 0.1 * k)))
    return frames


def test_a_gzipped_pool_streams_every_frame_without_seeking(tmp_path, monkeypatch):
    """ASE's iread seeks, and a seek in a gzip stream decompresses it again from the start."""
    import gzip

    from ase_mlipal.frames import iread_frames
    from ase_mlipal.selection import stream

    frames = _labelled_frames(7)
    write(tmp_path / "pool.extxyz", frames)
    with open(tmp_path / "pool.extxyz", "rb") as plain, gzip.open(tmp_path / "pool.xyz.gz", "wb") as packed:
        packed.write(plain.read())

    def no_seek(*args, **kwargs):
        raise AssertionError("the gzip stream was sought")

    monkeypatch.setattr(gzip.GzipFile, "seek", no_seek)
    chunks = list(stream(tmp_path / "pool.xyz.gz", chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    got = [atoms for chunk in chunks for atoms in chunk]
    for want, atoms in zip(frames, got):
        assert atoms.info["k"] == want.info["k"] and np.allclose(atoms.positions, want.positions)
        energy, forces = read_labels(atoms)
        assert energy == pytest.approx(read_labels(want)[0]) and np.allclose(forces, read_labels(want)[1])
    assert len(list(iread_frames(tmp_path / "pool.extxyz"))) == 7  # an uncompressed file: ASE's iread


def test_a_gzipped_file_cut_short_names_its_frame(tmp_path):
    import gzip

    from ase_mlipal.frames import iread_frames

    write(tmp_path / "pool.extxyz", _labelled_frames(3))
    text = (tmp_path / "pool.extxyz").read_text().splitlines(keepends=True)
    with gzip.open(tmp_path / "cut.xyz.gz", "wt") as packed:
        packed.write("".join(text[:-3]))  # the last frame loses three atom lines
    frames = iread_frames(tmp_path / "cut.xyz.gz")
    assert len([next(frames), next(frames)]) == 2
    with pytest.raises(ValueError, match=r"cut.xyz.gz: frame 2 cannot be read"):
        next(frames)


def test_a_gzipped_file_of_another_format_is_read_by_ase(tmp_path):
    import gzip

    from ase.build import bulk

    from ase_mlipal.frames import iread_frames

    write(tmp_path / "cu.cif", bulk("Cu"))
    with open(tmp_path / "cu.cif", "rb") as plain, gzip.open(tmp_path / "cu.cif.gz", "wb") as packed:
        packed.write(plain.read())
    (atoms,) = iread_frames(tmp_path / "cu.cif.gz")
    assert atoms.get_chemical_formula() == "Cu"
