"""How far an atom's environment lies from the nearest one the posterior holds, in feature space.

The posterior variance of a linear kernel, ``q = psi^T A^-1 psi``, sees
*directions* the data do not span; it does not see *distance*: a feature
row far out along directions the data span keeps a modest ``q``. The
migrating hydrogen at the saddle of formaldehyde -> hydroxycarbene (a
reaction nothing was fitted on) has activation features 3.3 from the
nearest hydrogen of the pretraining set, where a near-equilibrium frame's
atoms lie 0.08 from theirs, and the model's forces there are off by 3-8
eV/A. :class:`NearestNeighbours` measures that distance ``d`` per atom,
against the stored rows of the atom's own element block, and
:meth:`NearestNeighbours.inflation` turns it into the factor
``1 + (d / d0)^2`` a raw force variance is multiplied by (``d0``: the
median distance of the stored atoms to the kept ones), 1 where the data
are dense, growing with the squared distance beyond their own spacing.
``benchmarks/calibration.py`` (rows ``distance``) measures what it does
to ranking and coverage with reactions held out.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


class NearestNeighbours:
    """Feature rows per element block, and the distance of new rows to the nearest stored one of their block.

    Rows of :class:`~ase_mlipal.uncertainty.features.ActivationFeatures`
    with ``by_element`` hold an atom's features in its element's block and
    zeros elsewhere; a row belongs to the block holding its largest norm
    and is stored as that block alone. ``block_width=None``: one block.

    Args:
        block_width: width of one element block (``None``: the whole row).
        scale: ``d0``, the distance the inflation is counted in (feature
            units); ``None`` until :meth:`fit_scale` or :meth:`thin`.
        chunk: query rows per block of the distance computation (memory:
            ``chunk x stored rows`` floats).
    """

    def __init__(self, block_width: Optional[int] = None, scale: Optional[float] = None, chunk: int = 1024):
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if block_width is not None and block_width < 1:
            raise ValueError(f"block_width must be positive, got {block_width}")
        self.block_width = block_width
        self.scale = scale
        self.chunk = int(chunk)
        self.rows: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def _blocks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(block index per row, each row's block alone)``."""
        rows = np.asarray(rows, dtype=float)
        if rows.ndim != 2:
            raise ValueError(f"need (n, q) feature rows, got shape {rows.shape}")
        width = self.block_width or rows.shape[1]
        if rows.shape[1] % width:
            raise ValueError(f"rows of width {rows.shape[1]} do not split into blocks of {width}")
        blocked = rows.reshape(len(rows), -1, width)
        block = np.argmax(np.einsum("nbw,nbw->nb", blocked, blocked), axis=1)
        return block, blocked[np.arange(len(rows)), block]

    def add(self, rows: np.ndarray) -> None:
        """Store the atom feature ``rows`` (``(n, q)``), rounded to single precision as a file keeps them.

        So a posterior saved and loaded again (a resumed learner) measures
        the same distances, to the last bit, as the one that was saved.
        """
        block, own = self._blocks(rows)
        own = own.astype(np.float32).astype(float)
        for b in np.unique(block):
            new = own[block == b]
            self.rows[int(b)] = new if int(b) not in self.rows else np.concatenate([self.rows[int(b)], new])

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """``(n,)`` Euclidean distance of each row to the nearest stored row of its block (``inf``: none stored)."""
        block, own = self._blocks(rows)
        out = np.full(len(own), np.inf)
        for b in np.unique(block):
            if len(self.rows.get(int(b), ())):
                out[block == b] = self._distance_in(int(b), own[block == b])
        return out

    def fit_scale(self, rows: np.ndarray) -> float:
        """Set ``scale`` to the median distance of ``rows`` (atoms near the data, not stored themselves)."""
        d = self.distance(rows)
        d = d[np.isfinite(d)]
        if not d.size or not np.median(d) > 0:
            raise ValueError("fit_scale needs rows of stored blocks that are not stored themselves")
        self.scale = float(np.median(d))
        return self.scale

    def inflation(self, rows: np.ndarray) -> np.ndarray:
        """``(n,)`` factors ``1 + (d / scale)^2`` on the raw variance of each atom row.

        Without a ``scale`` yet, it is set to the stored rows' own spacing
        (:meth:`spacing`); with no spacing to measure (no block holds two
        rows), every factor is 1.
        """
        if self.scale is None:
            spacing = self.spacing()
            if spacing is None:
                return np.ones(len(np.asarray(rows)))
            self.scale = spacing
        return 1.0 + (self.distance(rows) / self.scale) ** 2

    def spacing(self) -> Optional[float]:
        """Median distance of each stored row to its nearest other stored row (``None``: no block holds two)."""
        nearest = []
        for rows in self.rows.values():
            if len(rows) < 2:
                continue
            norms = np.einsum("ij,ij->i", rows, rows)
            for start in range(0, len(rows), self.chunk):
                part = rows[start:start + self.chunk]
                d2 = norms[start:start + self.chunk, None] + norms[None, :] - 2.0 * part @ rows.T
                d2[np.arange(len(part)), start + np.arange(len(part))] = np.inf  # not to itself
                nearest.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
        positive = np.concatenate(nearest) if nearest else np.zeros(0)
        positive = positive[positive > 0]
        return float(np.median(positive)) if positive.size else None

    def thin(self, max_rows: int) -> None:
        """Keep at most ``max_rows`` rows per block, picked by farthest-point sampling; set ``scale`` if unset.

        scikit-matter's :class:`~skmatter.sample_selection.FPS`: each kept row
        is the one farthest from those kept before, so a distance to the kept
        rows overestimates the exact one by at most the last pick's
        distance. Without a ``scale`` yet, it becomes the median distance of
        the rows let go to the kept ones (the data's own spacing at this
        resolution; with none let go, the kept rows' :meth:`spacing`); a
        scale set before stays, so later thinning does not move ``d0``.
        """
        from skmatter.sample_selection import FPS

        if max_rows < 2:
            raise ValueError(f"max_rows must be at least 2, got {max_rows}")
        dropped = []
        for b, rows in self.rows.items():
            if len(rows) <= max_rows:
                continue
            kept = FPS(n_to_select=max_rows, initialize=0).fit(rows).selected_idx_
            mask = np.zeros(len(rows), bool)
            mask[kept] = True
            dropped.append((b, rows[~mask]))
            self.rows[b] = rows[mask]
        if self.scale is not None:
            return
        if dropped:
            d = np.concatenate([self._distance_in(b, rows) for b, rows in dropped])
            self.scale = float(np.median(d))
        else:
            self.scale = self.spacing()

    def _distance_in(self, block: int, own: np.ndarray) -> np.ndarray:
        stored = self.rows[block]
        norms = np.einsum("ij,ij->i", stored, stored)
        out = np.empty(len(own))
        for start in range(0, len(own), self.chunk):
            part = own[start:start + self.chunk]
            squared = np.einsum("ij,ij->i", part, part)[:, None] + norms[None, :] - 2.0 * part @ stored.T
            out[start:start + self.chunk] = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`from_arrays` rebuilds it from (for a posterior file).

        Rows are stored in single precision: distances need no more, and it
        halves the file.
        """
        out = {f"neighbours_block{b}": rows.astype(np.float32) for b, rows in self.rows.items()}
        out["neighbours_meta"] = np.array([self.block_width or 0, self.scale or 0.0], dtype=float)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict) -> Optional["NearestNeighbours"]:
        """The instance :meth:`arrays` stored, or ``None`` if ``arrays`` hold none."""
        if "neighbours_meta" not in arrays:
            return None
        width, scale = (float(x) for x in np.asarray(arrays["neighbours_meta"]))
        out = cls(int(width) or None, scale or None)
        for key, rows in arrays.items():
            if key.startswith("neighbours_block"):
                out.rows[int(key.removeprefix("neighbours_block"))] = np.asarray(rows, dtype=float)
        return out
