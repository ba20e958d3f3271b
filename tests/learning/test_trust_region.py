"""The trust region: a band relaxed on the model stays near the band it started from and the frames labelled."""

import numpy as np
import pytest
from ase.calculators.emt import EMT

from ase_mlipal import FrameStore, NEBLearner, PhysicalGuard
from ase_mlipal.learning.neb_learner import relax_band
from ase_mlipal.learning.trigger import UncertaintyTrigger
from ase_mlipal.learning.trust_region import LeftTrustRegion, TrustRegion

from .test_neb import formaldehyde_band, formaldehyde_calc


@pytest.fixture()
def calc(tiny_model):
    return formaldehyde_calc(tiny_model)


def test_the_distance_is_the_norm_to_the_nearest_known_structure_of_the_same_shape():
    known = [np.zeros((2, 3)), np.ones((2, 3)), np.zeros((3, 3))]
    region = TrustRegion(1.0, known)
    probe = np.full((2, 3), 0.9)
    assert region.distance(probe) == pytest.approx(np.sqrt(6) * 0.1)  # nearer the ones than the zeros
    assert region.distance(np.zeros((4, 3))) == np.inf  # no structure of its shape is known
    for radius in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="trust radius must be positive"):
            TrustRegion(radius)


def test_the_first_interior_image_outside_is_named_and_endpoints_are_not_judged():
    images = formaldehyde_band(5)
    region = TrustRegion(0.1, [image.positions for image in images])
    moved = [image.copy() for image in images]
    moved[0].positions += 5.0  # an endpoint far off: not the band's business
    region.check(moved)
    assert region.left is None
    moved[3].positions[1] += [0.3, 0.0, 0.0]
    moved[2].positions[0] += [0.0, 0.2, 0.0]
    with pytest.raises(LeftTrustRegion) as error:
        region.check(moved)
    assert (error.value.image, region.left) == (2, error.value)
    assert error.value.distance == pytest.approx(0.2)
    assert "image 2 is 0.20 A" in str(error.value) and "trust radius 0.10 A" in str(error.value)


def test_relax_band_stops_where_an_image_leaves_the_region_after_the_trigger_judged_it(calc, tmp_path):
    images = formaldehyde_band(5)
    start = [image.positions.copy() for image in images]
    region = TrustRegion(1e-4, start)
    store = FrameStore(tmp_path / "f.db")
    trigger = UncertaintyTrigger(calc, store, threshold=1e-6, source="neb")
    converged, steps = relax_band(images, calc, trigger, steps=50, interval=3, trust=region, progress=False)
    assert not converged and steps == 3 == region.left.step  # the first look after the start finds it outside
    assert "NEB step 3, image" in str(region.left)
    flagged_steps = {row.step for row in store.rows("flagged")}
    assert flagged_steps == {0, 1}  # check numbers: the trigger judged the band it stopped on too
    moved = max(np.linalg.norm(image.positions - p) for image, p in zip(images[1:-1], start[1:-1]))
    assert moved == pytest.approx(region.left.distance) and moved > 1e-4
    wide = TrustRegion(1e3, start)
    converged, steps = relax_band(images, calc, UncertaintyTrigger(calc, store, threshold=1e3), steps=6,
                                  interval=3, trust=wide, progress=False)
    assert steps == 6 and wide.left is None  # never left: the relaxation runs its course


class RecordsStarts(PhysicalGuard):
    """A guard that keeps the band each round starts from."""

    def check_band(self, images, where, energies=None):
        if where.endswith("NEB step 0"):
            self.starts = getattr(self, "starts", []) + [np.array([image.positions.copy() for image in images])]
        super().check_band(images, where, energies)


def test_a_paused_band_is_learned_from_and_the_next_round_goes_on_from_it(calc, tmp_path):
    images = formaldehyde_band(5)
    guard = RecordsStarts([images[0], images[-1]])
    learner = NEBLearner(calc, EMT, tmp_path / "run", images, threshold=1e3, max_rounds=1, steps=10, interval=5,
                         guard=guard, conditioning=[], progress=False, trust_radius=1e-4,
                         finetune_options={"epochs": 2, "replay": None})
    report = learner.run()
    first = report.rounds[0]
    assert first.paused and first.cut_short and not first.converged and first.steps == 5
    assert first.check is not None  # the paused band was checked: its labels train the next model
    assert first.learning is not None
    checked = [a for s in ("verified", "labelled") for a in learner.store.frames(s)
               if a.info.get("source") == "verify" and a.info.get("run_id") == "neb-round0"]
    assert len(guard.starts) == 2 and not np.allclose(guard.starts[1], guard.starts[0])  # not the initial band
    assert checked and all(np.allclose(guard.starts[1][a.info["image"]], a.positions) for a in checked)
    assert "paused" in report.table() and NEBLearner(calc, EMT, tmp_path / "other", images, threshold=1.0,
                                                     conditioning=[]).trust_radius is None
    for bad in (0.0, "wide"):
        with pytest.raises(ValueError, match="trust_radius"):
            NEBLearner(calc, EMT, tmp_path / "bad", images, threshold=1.0, trust_radius=bad)


def test_paused_rounds_survive_the_state_file(calc, tmp_path):
    from ase_mlipal.learning.neb_learner import NEBRound

    images = formaldehyde_band(5)
    learner = NEBLearner(calc, EMT, tmp_path / "run", images, threshold=1e3, max_rounds=0, steps=10, interval=5,
                         conditioning=[], progress=False, trust_radius=1e-4)
    report = learner.run()
    again = NEBRound.from_dict(report.rounds[0].as_dict())
    assert again.paused == report.rounds[0].paused != ""
    spaced = NEBLearner(calc, EMT, tmp_path / "spaced", images, threshold=1.0, conditioning=[],
                        trust_radius="spacing")
    assert spaced.trust_radius == pytest.approx(learner.guard.initial_length / 4)  # 5 images: 4 spacings
