"""Atomic file writes: a file is either the old version or the complete new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in the same folder, then rename it to ``path``.

    A crash leaves either the old file or the new one, never half of it.
    ``write`` must write to exactly the path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
