"""The held-out reactions' endpoints: the product is the reaction's, in the reactant's atom order."""

import pytest

from ase_mlipal.guards import CHEMICAL_BOND_RATIO, bonded_pairs

from .conftest import load_benchmark

pytest.importorskip("tblite")


def bonded(atoms, i, j) -> bool:
    """A chemical bond, as the guard counts one (within 1.25 covalent sums)."""
    return bool(bonded_pairs(atoms, CHEMICAL_BOND_RATIO)[i, j])


@pytest.mark.parametrize("name, broken, formed", [
    ("HCN_to_HNC", (0, 2), (1, 2)),  # H leaves C for N
    ("acetonitrile_to_methyl_isocyanide", (0, 1), (0, 2)),  # the methyl C leaves the nitrile C for N
    ("nitromethane_to_aci_nitromethane", None, None),  # a methyl H onto the O (indices found below)
    ("acetone_to_propen_2_ol", (2, 4), (0, 4)),  # a methyl H onto the O
    ("acetic_acid_to_ethenediol", (4, 5), (1, 5)),  # a methyl H onto the carbonyl O
    ("formic_acid_to_dihydroxycarbene", (1, 4), (2, 4)),  # the H on C onto the carbonyl O
    ("propyne_to_allene", (2, 4), (1, 4)),  # a methyl H onto the far C
])
def test_product_differs_from_the_reactant_by_the_reaction_bonds_only(name, broken, formed):
    module = load_benchmark("learning_loop_heldout")
    reactant, product = module.endpoints(name)
    assert list(reactant.numbers) == list(product.numbers)
    if broken is None:
        o = 5
        h = next(k for k in range(len(product)) if product.numbers[k] == 1 and bonded(product, k, o))
        broken, formed = (0, h), (o, h)
    assert bonded(reactant, *broken) and not bonded(product, *broken)
    assert bonded(product, *formed) and not bonded(reactant, *formed)
    changed = [(i, j) for i in range(len(product)) for j in range(i + 1, len(product))
               if bonded(reactant, i, j) != bonded(product, i, j)]
    assert sorted(changed) == sorted([tuple(sorted(broken)), tuple(sorted(formed))])


def test_md_records_keep_their_prior_weight_apart():
    """A record at the audits' new prior weight, with rewinds, flags out of the reported sigma and the energy
    rescaled linearly gets its own file and counts at the default settings; one without the prior key ran at the
    old 20 frames, one without the rewind key never rewound, one without the flags key ran when flags entered
    sigma, one without the energy key rescaled the energy in log space, and all keep their names."""
    heldout = load_benchmark("learning_loop_heldout")
    loop = load_benchmark("learning_loop")
    new = {**loop.MD_SETTINGS, "force_tolerance": None}
    old = {k: v for k, v in new.items() if k not in ("prior_frames", "rewind_tolerance", "flags_apart",
                                                     "energy_rescale")}
    no_rewind = {k: v for k, v in new.items() if k not in ("rewind_tolerance", "flags_apart", "energy_rescale")}
    apart = {**{k: v for k, v in new.items() if k != "energy_rescale"}, "prior_frames": 2.0}
    flags_in = {k: v for k, v in apart.items() if k != "flags_apart"}
    prior, rewind = f"{heldout.AUDIT_PRIOR_FRAMES:g}", f"{heldout.REWIND_TOLERANCE:g}"
    assert loop.md_tag(new) == f"_recal_prior{prior}_rewind{rewind}_apart_elin"
    assert loop.md_tag(apart) == f"_recal_prior2_rewind{rewind}_apart"
    assert loop.md_tag(flags_in) == f"_recal_prior2_rewind{rewind}"
    assert loop.md_tag(no_rewind) == f"_recal_prior{prior}"
    assert loop.md_tag({**no_rewind, "prior_frames": loop.OLD_PRIOR_FRAMES}) == "_recal"
    assert loop.md_tag({**no_rewind, "seed": 1, "recalibrate": False}) == "_seed1"
    record = {"distance_aware": True, "last_third": {"force_mae": 0.2}, "coverage_2sigma": 0.95, "confident": True}
    runs = [{**record, "settings": settings} for settings in (new, old, no_rewind, flags_in, apart)]
    assert heldout.default_md(runs) == runs[:1]
    assert heldout.default_md(runs, "flags in σ") == [runs[3]]  # the defaults when flags entered sigma
    assert heldout.default_md(runs, "flags apart") == [runs[4]]  # ... and before the energy moved linearly
    assert heldout.md_targets(runs[:1]) == ("MD (1 runs, seeds 0): last-third force MAE <= 0.15 eV/A in 0/1, "
                                            "audited 2σ coverage >= 0.90 in 1/1, confident 1/1")


@pytest.mark.parametrize("name, first, second", [("methylamine_to_methanimine_H2", 0, 1),
                                                 ("hydrazine_to_diazene_H2", 0, 1)])
def test_an_h2_elimination_takes_one_h_from_each_heavy_atom_and_keeps_every_other_bond(name, first, second):
    reactant, product = load_benchmark("learning_loop_heldout").endpoints(name)
    hydrogens = [k for k in range(len(product)) if product.numbers[k] == 1]
    h2 = [(i, j) for i in hydrogens for j in hydrogens if i < j and product.get_distance(i, j) < 0.9]
    assert len(h2) == 1 and reactant.get_distance(*h2[0]) > 1.5  # the H2 that formed: xTB's 0.78 A lies just
    a, b = h2[0]  # beyond 1.25 covalent sums (0.775 A), so it is found by its length
    changed = [(i, j) for i in range(len(product)) for j in range(i + 1, len(product))
               if bonded(reactant, i, j) != bonded(product, i, j) and (i, j) != (a, b)]
    broken = sorted(tuple(sorted(p)) for p in changed)
    assert len(broken) == 2 and {frozenset(p) & {a, b} for p in broken} == {frozenset({a}), frozenset({b})}
    heavy = {k for p in broken for k in p} - {a, b}
    assert heavy == {first, second}  # one H from each end of the bond


def test_a_reference_band_that_ran_away_is_redone_with_twice_the_images(tmp_path, monkeypatch):
    """A direct NEB whose band outgrew the learner's guard limit (3x) resolves no pass: the NEB with twice the
    images (from the same endpoints) is the reference, both cached, unless it ran away too; a band within the
    limit is the reference."""
    heldout = load_benchmark("learning_loop_heldout")
    images = heldout.band(*heldout.endpoints("aziridine_N_inversion"), 5)
    length = heldout.reaction_coordinate(images)[-1]
    calls = []

    def fake_neb(band, fmax):
        calls.append(len(band))
        stretch = 4.0 if len(band) == 5 else 1.5  # the first band runs away, the denser one does not
        return {"converged": True, "barrier": 1.0 * len(band), "calls": 10 * len(band),
                "profile": {"s": [0.0, stretch * length], "energy": [0.0, 0.0]}}

    monkeypatch.setattr(heldout, "PARTS", tmp_path)
    monkeypatch.setattr(heldout, "direct_reference_neb", fake_neb)
    first = heldout.reference_run("r", images)
    assert first["barrier"] == 9.0 and not first["ran_away"] and calls == [5, 9]
    assert heldout.reference_run("r", images) == first and calls == [5, 9]  # cached: no NEB runs again
    monkeypatch.setattr(heldout, "direct_reference_neb",
                        lambda band, fmax: {**fake_neb(band, fmax), "profile": {"s": [0.0, length], "energy": [0.0]}})
    assert heldout.reference_run("other", images)["barrier"] == 5.0  # within the limit: the band itself
    far = {"s": [0.0, 4 * length], "energy": [0.0]}
    monkeypatch.setattr(heldout, "direct_reference_neb", lambda band, fmax: {**fake_neb(band, fmax), "profile": far})
    assert heldout.reference_run("third", images)["ran_away"]  # the denser band ran away too: no reference


def test_an_md_run_rerun_at_new_defaults_is_shown_beside_its_record():
    heldout = load_benchmark("learning_loop_heldout")
    loop = load_benchmark("learning_loop")
    apart = {**{k: v for k, v in loop.MD_SETTINGS.items() if k != "energy_rescale"}, "force_tolerance": None,
             "prior_frames": 2.0}
    old = {k: v for k, v in apart.items() if k != "flags_apart"}

    def record(settings, mae, coverage, labels, confident, molecule="m", z=(0.5, 3.0)):
        audits = [{"energy_error": -0.1 * k, "energy_std": 0.1} for k in z]
        audits.append({"energy_error": 9.0, "energy_std": 0.1, "rewound": True})  # gone back past: not counted
        return {"molecule": molecule, "distance_aware": True, "settings": settings, "last_third": {"force_mae": mae},
                "coverage_2sigma": coverage, "labels": labels, "confident": confident, "audits": audits}

    runs = [record(old, 2.126, 0.776, 187, False), record(apart, 0.1, 0.95, 60, True, z=(0.5, 1.0, 1.5, 2.5)),
            record(old, 0.2, 0.9, 30, True, molecule="not rerun")]
    table = heldout.rerun_table(runs, "flags in σ", "flags apart")
    assert table[-3] == "| m | 0 | 2.126 → 0.100 | 0.776 → 0.950 | 0.50 → 0.75 | 187 → 60 | no → yes |"
    assert table[-1] == ("Over these 1: mean force coverage 0.776 → 0.950; the audits' energy errors pooled: within "
                         "2σ 0.500 of 2 → 0.750 of 4, largest |error| / σ 3.0 → 2.5")
    assert "flags in σ → flags apart" in table[1]
    assert not any("not rerun" in line for line in table)
    assert heldout.rerun_table(runs[:1], "flags in σ", "flags apart") == []
    assert heldout.rerun_table(runs, "flags apart", heldout.CURRENT_MD) == []  # nothing rerun at the new defaults
    assert heldout.energy_coverage(record(apart, 0.1, 0.95, 60, True, z=())) is None  # only a rewound audit
    assert f"prior {loop.AUDIT_PRIOR_FRAMES:g}" in heldout.CURRENT_MD  # the label names the constant's value
