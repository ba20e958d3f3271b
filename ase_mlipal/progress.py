"""Progress bars: every long step of the package shows one the same way."""

from __future__ import annotations

from typing import Iterable, Optional

from tqdm.auto import tqdm


def progress_bar(iterable: Optional[Iterable] = None, progress: Optional[bool] = None, **kwargs) -> tqdm:
    """A tqdm bar; ``progress=None`` shows it only on a terminal, ``True`` always, ``False`` never."""
    return tqdm(iterable, disable=None if progress is None else not progress, **kwargs)
