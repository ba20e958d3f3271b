"""Names of 0.1 kept for one release: they work, and they say what to use instead."""

import warnings

import numpy as np
import pytest
from ase.build import molecule

import ase_mlipal
from ase_mlipal.legacy import MOVED

from .conftest import rattled


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_give_the_new_modules_names_with_a_warning(old):
    new = __import__(f"ase_mlipal.{MOVED[old]}", fromlist=["_"])
    public = next(name for name, value in vars(new).items()
                  if not name.startswith("_") and getattr(value, "__module__", None) == new.__name__)
    alias = __import__(f"ase_mlipal.{old}", fromlist=["_"])
    alias._warned = False
    with pytest.warns(DeprecationWarning, match=f"ase_mlipal.{MOVED[old]}"):
        assert getattr(alias, public) is getattr(new, public)


def test_old_argument_names_still_work_and_warn(tiny_model, tmp_path):
    frames = rattled(molecule("CH3OH"), 3, seed=1)
    new = ase_mlipal.MLIPALCalculator(model=tiny_model, chunk_size=2).condition(frames)
    with pytest.warns(DeprecationWarning, match="chunk_size"):
        old = ase_mlipal.MLIPALCalculator(model=tiny_model, batch_size=2)
    assert old.chunk_size == 2
    with pytest.warns(DeprecationWarning, match="use condition"):
        old.add_reference(frames)
    np.testing.assert_allclose(old.energy_posterior.precision(), new.energy_posterior.precision())
    with pytest.warns(DeprecationWarning, match="conditioning="):
        old.set_model(tiny_model, references=frames)
    with pytest.raises(TypeError, match="both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.set_model(tiny_model, frames, references=frames)
    with pytest.raises(TypeError, match="unexpected"):
        old.set_model(tiny_model, frames, refrences=frames)
    store = ase_mlipal.FrameStore(tmp_path / "f.db")
    with pytest.warns(DeprecationWarning, match="typical_frames="):
        trigger = ase_mlipal.UncertaintyTrigger(new, store, 2.0, mode="relative", reference=frames)
    assert trigger.typical == pytest.approx(
        ase_mlipal.UncertaintyTrigger(new, store, 2.0, mode="relative", typical_frames=frames).typical)
    with pytest.warns(DeprecationWarning, match="structures="):
        ase_mlipal.PhysicalGuard(references=frames)
    with pytest.warns(DeprecationWarning, match="labels_per_round="):
        learner = ase_mlipal.OnTheFlyLearner(frames[0], new, ase_mlipal.RobustXTB, tmp_path / "run", 1.0,
                                             batch_size=5, conditioning=[], audit_interval=None, progress=False)
    assert learner.labels_per_round == 5


def test_select_in_the_old_argument_order_warns_and_picks_the_same(calc):
    pool = rattled(molecule("CH3OH"), 8, seed=4)
    with pytest.warns(DeprecationWarning, match=r"select\(calc, pool, n\)"):
        old = ase_mlipal.select(pool, 3, calc, progress=False)
    assert old.tolist() == ase_mlipal.select(calc, pool, 3, progress=False).tolist()


def test_training_results_unpack_as_the_old_tuples_with_a_warning(tiny_model):
    from .conftest import labelled_by

    frames = labelled_by(tiny_model, rattled(molecule("CH3OH"), 4, seed=5))
    result = ase_mlipal.finetune(tiny_model, frames, replay=None, epochs=1, progress=False)
    with pytest.warns(DeprecationWarning, match=r"\.model, \.training, \.valid"):
        model, training, valid = result
    assert (model, training, valid) == (result.model, result.training, result.valid)
    with pytest.warns(DeprecationWarning, match="as a tuple"):
        assert result[0] is result.model and result[2] is result.valid
    distilled = ase_mlipal.distill(tiny_model, frames, epochs=1, progress=False,
                                   student_config={"channels": 4, "mlp_channels": 4, "radial_mlp": (8,)})
    with pytest.warns(DeprecationWarning, match="distill"):
        student, info = distilled
    assert student is distilled.model and info.student_parameters < info.teacher_parameters
