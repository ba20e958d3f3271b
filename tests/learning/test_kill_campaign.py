"""A small kill -9 campaign (benchmarks/kill_campaign.py): store writers and labelling, SQLite and PostgreSQL."""

import os

import pytest

pytest.importorskip("tblite")


def test_kills_into_store_writers_and_labelling_lose_and_duplicate_nothing(store_url, tmp_path):
    import numpy as np

    from benchmarks.kill_campaign import label_campaign, store_campaign

    rng = np.random.default_rng(1)
    writers = store_campaign(3, rng, tmp_path, store_url, n=40)
    assert writers["kills"] == 3 and writers["lost"] == 0 and writers["duplicates"] == 0 and writers["complete"]
    if store_url.startswith("postgresql"):
        return
    labelling = label_campaign(2, rng, tmp_path, n=300)
    assert labelling["kills"] == 2 and labelling["lost"] == 0 and labelling["duplicates"] == 0
    assert labelling["complete"] and labelling["calculations"] >= 300
    # only frames in flight at a kill are computed again: at most one per worker per kill
    assert labelling["repeated_calculations"] <= 2 * (os.cpu_count() or 1)
