"""Comparing latent spaces ("Comparing the latent features of universal machine-learning interatomic potentials", arXiv:2512.05717): how well one model's atom features reconstruct another's.

The global feature reconstruction error ``GFRE(X -> Y)`` is the error of the
best linear map from source features ``X`` to target features ``Y`` on held
out atoms (both standardised, so 0 is perfect and 1 is no information);
the local one, ``LFRE``, fits a map per atom on its nearest neighbours in
``X``. They are not symmetric: ``GFRE(X -> Y)`` small and ``GFRE(Y -> X)``
large says ``X`` holds all of ``Y`` and more. Both come from scikit-matter
(``skmatter.metrics``, Goscinski et al. 2021).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms

from ..models.graphs import BatchMaker
from ..uncertainty.features import ActivationFeatures


def atom_latents(model: torch.nn.Module, frames: Sequence[Atoms], chunk_size: int = 16) -> np.ndarray:
    """Invariant atom-level latent features of ``model`` for every atom of ``frames``, ``(n_atoms, D)``.

    The features the activation kernel uses: the invariant node features of
    every interaction layer, concatenated; ``chunk_size`` structures per forward pass.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("need at least one structure")
    feature_map = ActivationFeatures(model, by_element=False)  # the plain latent, one column per channel
    maker = BatchMaker(model)
    rows = []
    for _, batch in maker.batches(frames, chunk_size):
        rows.append(feature_map.evaluate(batch, compute_force=False)[1].atom)
    return np.concatenate(rows)


def layer_latents(features: np.ndarray, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """``atom_latents`` split into its interaction layers: ``{"layer 1": ..., "layer 2": ...}``."""
    width = ActivationFeatures(model).num_invariant
    return {f"layer {k + 1}": features[:, k * width:(k + 1) * width] for k in range(features.shape[1] // width)}


@dataclass
class Comparison:
    """Reconstruction errors among named feature sets: ``gfre[i, j]`` is ``names[i] -> names[j]``."""

    names: list[str]
    gfre: np.ndarray
    lfre: np.ndarray
    n_atoms: int

    def __str__(self) -> str:
        lines = [f"reconstruction errors on {self.n_atoms} atoms (row: source, column: target)"]
        for label, matrix in (("GFRE", self.gfre), ("LFRE", self.lfre)):
            lines.append(f"{label:<12}" + "".join(f"{n:>14}" for n in self.names))
            lines += [f"{n:<12}" + "".join(f"{v:>14.3f}" for v in row) for n, row in zip(self.names, matrix)]
        return "\n".join(lines)


def compare(latents: Mapping[str, np.ndarray], n_local_points: int = 50, max_atoms: Optional[int] = 1000,
            seed: int = 0) -> Comparison:
    """GFRE and LFRE between every ordered pair of named atom feature sets (rows: the same atoms).

    Args:
        latents: ``{name: (n_atoms, D_name)}``, e.g. from :func:`atom_latents`.
        n_local_points: neighbours of each atom in the local fits (LFRE).
        max_atoms: at most this many atoms (drawn with ``seed``) enter; the
            LFRE costs one ridge fit per held-out atom.
        seed: seed of the atom subsample and of the 2-fold train/test split.
    """
    from skmatter.metrics import global_reconstruction_error, local_reconstruction_error

    names = list(latents)
    sizes = {len(x) for x in latents.values()}
    if len(names) < 2 or len(sizes) != 1:
        raise ValueError("need at least two feature sets over the same atoms")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, max_atoms, replace=False)) if max_atoms and n > max_atoms else np.arange(n)
    if len(keep) <= 2 * n_local_points:
        raise ValueError(f"{len(keep)} atoms are too few for n_local_points={n_local_points}; "
                         "use more structures or a smaller n_local_points")
    order = rng.permutation(len(keep))
    train, test = np.sort(order[: len(keep) // 2]), np.sort(order[len(keep) // 2:])
    data = {name: np.asarray(x, dtype=float)[keep] for name, x in latents.items()}
    gfre, lfre = np.zeros((len(names),) * 2), np.zeros((len(names),) * 2)
    for i, source in enumerate(names):
        for j, target in enumerate(names):
            x, y = data[source], data[target]
            gfre[i, j] = global_reconstruction_error(x, y, train_idx=train, test_idx=test)
            lfre[i, j] = local_reconstruction_error(x, y, n_local_points, train_idx=train, test_idx=test)
    return Comparison(names, gfre, lfre, len(keep))


def plot_comparison(comparison: Comparison, path: Union[str, pathlib.Path]) -> pathlib.Path:
    """Heat maps of GFRE and LFRE (source rows, target columns), saved to ``path``."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend or state touched
    )

    size = 1.2 + 0.9 * len(comparison.names)
    fig = Figure(figsize=(2 * size + 1.5, size))
    axes = fig.subplots(1, 2)
    for ax, label, matrix in zip(axes, ("GFRE", "LFRE"), (comparison.gfre, comparison.lfre)):
        image = ax.imshow(matrix, vmin=0, vmax=max(1.0, float(matrix.max())), cmap="viridis")
        ticks = range(len(comparison.names))
        ax.set(xticks=ticks, yticks=ticks, xlabel="target", ylabel="source", title=label)
        ax.set_xticklabels(comparison.names, rotation=30, ha="right")
        ax.set_yticklabels(comparison.names)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
