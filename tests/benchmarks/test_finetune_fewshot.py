"""benchmarks/finetune_fewshot.py: the leave-one-reaction-out choice never sees the reaction it is scored on."""

import pytest

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def fewshot():
    return load_benchmark("finetune_fewshot")


def rows(table: dict, seed: int = 0) -> list[dict]:
    return [{"reaction": r, "setting": s, "seed": seed, "held_out_mae": v, "barrier_error": -v}
            for (r, s), v in table.items()]


def test_each_reaction_gets_the_pick_of_the_other_five(fewshot):
    reactions = [f"r{k}" for k in range(6)]
    table = {}
    for r in reactions:
        table[(r, "a")] = 0.1  # best on five reactions...
        table[(r, "b")] = 0.2
    table[("r0", "a")] = 9.0  # ...and terrible on r0, where b would win if r0 could vote
    picks = fewshot.leave_one_reaction_out(rows(table), "held_out_mae")
    assert picks["r0"] == {"setting": "a", "held_out": 9.0}  # chosen without r0, scored on it
    assert all(picks[r]["setting"] == "a" and picks[r]["held_out"] == 0.1 for r in reactions[1:])
    signed = fewshot.leave_one_reaction_out(rows(table), "barrier_error")  # ranked by magnitude
    assert signed["r3"]["setting"] == "a" and signed["r0"]["held_out"] == 9.0


def test_seeds_are_averaged_before_the_choice(fewshot):
    reactions = [f"r{k}" for k in range(3)]
    names = list(fewshot.SETTINGS)  # "before" first
    first = {(r, s): (0.1 if s == "before" else 0.15) for r in reactions for s in names}
    second = {(r, s): (0.3 if s == "before" else 0.15) for r in reactions for s in names}  # "before" is unstable
    both = rows(first, 0) + rows(second, 1) + rows({(r, "pretrained"): 1.0 for r in reactions})
    picks = fewshot.leave_one_reaction_out(both, "held_out_mae")
    assert all(p["setting"] != "before" and p["held_out"] == pytest.approx(0.15) for p in picks.values())
    text = fewshot.markdown(both, picks, "held_out_mae")
    assert "mean over 2 seed(s)" in text and "earlier setting's 0.200 eV" in text
