import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from ase.build import molecule

from ase_mlipal.frames import read_labels
from ase_mlipal.learning.store import FrameStore

from ..conftest import rattled


def test_flag_label_fail_round_trip(store_url):
    store = FrameStore(store_url)
    frames = rattled(molecule("H2O"), 3)
    ids = [store.add_flagged(f, source="md", uncertainty=0.3 + i, step=10 * i, run_id="r1",
                             model_hash="abc", per_atom={"forces_uncertainty": np.arange(3.0)})[0]
           for i, f in enumerate(frames)]
    assert store.counts() == {"flagged": 3, "labelled": 0, "verified": 0, "failed": 0, "unphysical": 0, "skipped": 0}
    store.mark_labelled(ids[0], -10.5, np.ones((3, 3)), reference="xtb")
    store.mark_failed(ids[1], "SCF not converged\ntraceback ...")
    assert store.counts() == {"flagged": 1, "labelled": 1, "verified": 0, "failed": 1, "unphysical": 0, "skipped": 0}

    (labelled,) = store.frames("labelled")
    energy, forces = read_labels(labelled)
    assert energy == -10.5 and np.all(forces == 1.0)
    np.testing.assert_allclose(labelled.positions, frames[0].positions)
    assert labelled.info["source"] == "md" and labelled.info["step"] == 0 and labelled.info["model_hash"] == "abc"
    (failed,) = store.rows("failed")
    assert failed.error == "SCF not converged"
    np.testing.assert_allclose(store.db.get(id=ids[2]).data["forces_uncertainty"], np.arange(3.0))


def test_the_same_frame_is_not_stored_twice(store_url):
    store = FrameStore(store_url)
    water = molecule("H2O")
    first, new = store.add_flagged(water, source="md")
    again, new_again = store.add_flagged(water.copy(), source="neb")
    assert new and not new_again and first == again and len(store) == 1
    moved = water.copy()
    moved.positions[0, 0] += 1e-3
    assert store.add_flagged(moved, source="md")[1]


def test_bad_labels_and_status_are_refused(store_url):
    store = FrameStore(store_url)
    row_id, _ = store.add_flagged(molecule("H2O"), source="md")
    with pytest.raises(ValueError):
        store.mark_labelled(row_id, float("nan"), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        store.mark_labelled(row_id, 1.0, np.zeros((2, 3)))
    with pytest.raises(ValueError):
        list(store.rows("pending"))
    assert store.counts()["flagged"] == 1


def test_store_survives_a_kill_mid_write(store_url):
    path = store_url
    writer = textwrap.dedent(f"""
        import numpy as np
        from ase.build import molecule
        from ase_mlipal.learning.store import FrameStore
        store = FrameStore({path!r})
        rng = np.random.default_rng(0)
        for i in range(100000):
            atoms = molecule("CH4")
            atoms.positions += rng.normal(scale=0.05, size=(5, 3))
            row, _ = store.add_flagged(atoms, source="md", step=i)
            store.mark_labelled(row, -1.0 * i, np.zeros((5, 3)))
            if i == 5:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # mace may print notices first
        if line.strip() == "ready":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FrameStore(path, timeout=10)  # a dead writer holds no lock: no wait
    counts = store.counts()
    assert counts["labelled"] >= 6 and counts["flagged"] <= 1 and counts["failed"] == 0
    for atoms in store.frames("labelled"):  # every labelled row is complete
        energy, forces = read_labels(atoms)
        assert energy == -1.0 * atoms.info["step"] and forces.shape == (5, 3)


def _open_and_count(path):
    try:
        FrameStore(path).counts()
        return None
    except Exception as error:  # reported back to the test
        return repr(error)


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    # a learner and `mlipal status` may open a store that does not exist yet at the same moment
    import multiprocessing

    paths = [tmp_path / f"new{trial}.db" for trial in range(12) for _ in range(6)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        errors = [e for e in pool.map(_open_and_count, paths, chunksize=1) if e]
    assert errors == []
    assert all(sum(FrameStore(path).counts().values()) == 0 for path in set(paths))


def test_processes_opening_a_new_postgresql_store_at_once_all_succeed(store_url):
    if not store_url.startswith("postgresql"):
        pytest.skip("the SQLite case is the test above")
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        errors = [e for e in pool.map(_open_and_count, [store_url] * 6, chunksize=1) if e]
    assert errors == [] and len(FrameStore(store_url)) == 0


def _write_frames(args):
    """Flag and label frames 0..n-1 of a fixed sequence, shuffled per writer; returns row ids by step."""
    url, writer, n = args
    store = FrameStore(url)
    frames = rattled(molecule("CH4"), n, stdev=0.05, seed=0)
    ids = {}
    for step in np.random.default_rng(writer).permutation(n):
        row, new = store.add_flagged(frames[step], source="md", step=int(step))
        if new:
            store.mark_labelled(row, -float(step), np.zeros((5, 3)))
        ids[int(step)] = row
    return ids


def test_concurrent_writers_of_the_same_frames_store_each_once(store_url):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_write_frames, [(store_url, writer, 25) for writer in range(4)])
    assert all(ids == results[0] for ids in results)  # every writer got the one row of each frame
    store = FrameStore(store_url)
    assert len(store) == 25 and store.counts()["labelled"] == 25
    assert sorted(row.step for row in store.rows("labelled")) == list(range(25))
    assert all(row.energy == -row.step for row in store.rows("labelled"))


def test_a_stale_lock_file_does_not_block_a_writer(tmp_path):
    # ase.db's lock file, left by a writer killed under an older version (or ase itself)
    (tmp_path / "frames.db.lock").write_text("")
    store = FrameStore(tmp_path / "frames.db", timeout=5)
    assert store.add_flagged(molecule("H2O"), source="md")[1] and len(store) == 1


def test_a_held_write_lock_ends_in_store_busy_after_the_timeout(store_url):
    from ase_mlipal.learning.store import StoreBusy

    store = FrameStore(store_url, timeout=1)
    if store_url.startswith("postgresql"):
        import psycopg2
        holder = psycopg2.connect(store_url)
        holder.cursor().execute("SELECT pg_advisory_xact_lock(%s)", (0x6D6C6970616C,))
    else:
        import sqlite3
        holder = sqlite3.connect(store_url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.time()
        with pytest.raises(StoreBusy, match="locked by another writer for more than 1 s"):
            store.add_flagged(molecule("H2O"), source="md")
        assert time.time() - started < 10
    finally:
        holder.rollback()
        holder.close()
    assert store.add_flagged(molecule("H2O"), source="md")[1]  # free again once the holder is gone


def test_verified_and_unphysical_rows_and_non_finite_positions(store_url):
    store = FrameStore(store_url)
    water = molecule("H2O")
    row, _ = store.add_flagged(water, source="verify", image=3)
    store.mark_labelled(row, -10.0, np.zeros((3, 3)))
    store.mark_verified(row)
    assert [a.info["store_id"] for a in store.frames("verified")] == [row] and not store.frames("labelled")
    assert read_labels(store.frame(row))[0] == -10.0  # a passed check keeps its labels
    broken = water.copy()
    broken.positions[1] = np.nan
    with pytest.raises(ValueError, match=r"image 4\) has non-finite positions for atoms \[1\]; not stored"):
        store.add_flagged(broken, source="neb", image=4)
    bad, new = store.add_unphysical(broken, source="md", reason="MD step 9: non-finite positions", step=9)
    assert new and store.counts()["unphysical"] == 1 and store.counts()["flagged"] == 0
    assert store.frame(bad).info["error"].startswith("MD step 9")


def test_a_bad_location_is_refused_naming_it_and_nothing_is_created(tmp_path):
    import re

    missing = tmp_path / "no_such_folder" / "frames.db"
    with pytest.raises(FileNotFoundError, match=re.escape(f"its folder {missing.parent} does not exist")):
        FrameStore(missing)
    assert not missing.parent.exists()
    with pytest.raises(ValueError, match=re.escape(f"frame store {tmp_path} is a folder") + ".*frames.db"):
        FrameStore(tmp_path)
    for name in ("frames.json", "frames.aselmdb", "frames.sqlite", "frames"):  # ase.db backends without our locks
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name)) + r".*\.db"):
            FrameStore(tmp_path / name)
    with pytest.raises(ValueError, match="only PostgreSQL URLs"):
        FrameStore("mysql://user@host/frames")
    assert list(tmp_path.iterdir()) == []  # no file, no lock file left behind


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(tmp_path):
    import re

    path = tmp_path / "frames.db"
    path.write_text("energies, not a database\n" * 20)
    with pytest.raises(ValueError, match=re.escape(f"cannot open the frame store {path}: file is not a database")):
        FrameStore(path)
    assert path.read_text() == "energies, not a database\n" * 20
    assert [p.name for p in tmp_path.iterdir()] == ["frames.db"]
