"""The one environment variable that mace sets at import, scoped to the import."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

TORCH_LOAD_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def torch_load_override(unpickle: bool = False) -> Iterator[None]:
    """Restore ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` on exit to what it was on entry.

    mace sets it to ``"1"`` when imported (e3nn needs it to import under
    torch >= 2.6); left set, every later ``torch.load`` of the user's own
    code would unpickle arbitrary code without being asked. Wrap imports of
    mace modules in this. ``unpickle=True`` sets it for the block (for
    mace's own loaders of trusted, pickled files).
    """
    before = os.environ.get(TORCH_LOAD_VARIABLE)
    if unpickle:
        os.environ[TORCH_LOAD_VARIABLE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TORCH_LOAD_VARIABLE, None)
        else:
            os.environ[TORCH_LOAD_VARIABLE] = before
