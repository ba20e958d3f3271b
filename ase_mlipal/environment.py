"""What importing mace does to the process, kept to the import: the environment variable it sets, the notice it prints."""

from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager, redirect_stdout
from typing import Iterator

TORCH_LOAD_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# printed by mace.tools.cg at import wherever the optional GPU library is missing: noise on the CPU
CUEQUIVARIANCE_NOTICE = "cuequivariance or cuequivariance_torch is not available"


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


@contextmanager
def without_cuequivariance_notice() -> Iterator[None]:
    """Drop mace's import-time line about the missing (GPU-only) cuequivariance library; print anything else."""
    captured = io.StringIO()
    try:
        with redirect_stdout(captured):
            yield
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True) if CUEQUIVARIANCE_NOTICE not in line]
        sys.stdout.write("".join(kept))
