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
