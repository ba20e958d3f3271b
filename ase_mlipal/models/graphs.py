"""Turn ASE structures into mace-torch batches and run one forward pass.

Everything a feature map or the calculator needs (energy, per-atom energy,
forces, stress, node features, graph index) comes out of a single call of
the model, :func:`forward`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list
from mace import data as mace_data
from mace.tools import torch_geometric, torch_tools
from mace.tools.utils import AtomicNumberTable

_DEFAULT_DTYPE_LOCK = threading.RLock()

#: Atoms closer than this (A) overlap: no chemistry, and undefined features at zero distance.
OVERLAP_DISTANCE = 0.1


class OverlappingAtoms(ValueError):
    """Atoms closer than :data:`OVERLAP_DISTANCE`; ``pairs``: ``(i, j, distance in A)``, closest first."""

    def __init__(self, message: str, pairs: list[tuple[int, int, float]]):
        super().__init__(message)
        self.pairs = pairs


@contextmanager
def graph_dtype(dtype: torch.dtype) -> Iterator[None]:
    """mace's ``default_dtype(dtype)``, held under a process-wide lock.

    mace builds graphs in torch's global default dtype; without the lock one
    thread could restore it while another thread is still building.
    """
    with _DEFAULT_DTYPE_LOCK, torch_tools.default_dtype(dtype):
        yield


# The same keys mace's own calculator reads, so models with charge or spin
# embeddings see the same inputs.
_KEYS = mace_data.KeySpecification(
    info_keys={"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"},
    arrays_keys={"charges": "Qs"},
)


def overlap_message(atoms: Atoms, pairs: list[tuple[int, int, float]], what: str, advice: str) -> str:
    """The message of :class:`OverlappingAtoms` for ``pairs`` (closest first) of ``atoms``: ``what``
    names the structure, ``advice`` says what to do."""
    i, j, distance = pairs[0]
    return (f"{what} has atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) {distance:.3f} A apart "
            f"({len(pairs)} pair(s) closer than {OVERLAP_DISTANCE} A: {[p[:2] for p in pairs[:5]]}): "
            f"overlapping atoms, on which the model's features are undefined. {advice[:1].upper()}{advice[1:]}.")


def check_overlap(atoms: Atoms, what: str = "The structure",
                  advice: str = "fix the structure (a duplicated atom? a wrong unit?) or restart from the last "
                                "good frame") -> None:
    """Raise :class:`OverlappingAtoms` naming the closest pair when atoms are closer than
    :data:`OVERLAP_DISTANCE` (``what``, ``advice``: see :func:`overlap_message`)."""
    overlapping = overlapping_pairs(atoms)
    if overlapping:
        raise OverlappingAtoms(overlap_message(atoms, overlapping, what, advice), overlapping)


def check_atoms(atoms: Atoms, elements: Sequence[int]) -> None:
    """Raise ``ValueError`` with an actionable message if ``atoms`` can't be evaluated.

    Catches an empty structure, non-finite positions or cell, a periodic
    cell of zero volume, overlapping atoms (closer than
    :data:`OVERLAP_DISTANCE`) and elements the model was not trained on,
    each named with the indices of the atoms.
    """
    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("The structure has no atoms: nothing to evaluate.")
    if not np.all(np.isfinite(atoms.positions)):
        bad = np.where(~np.isfinite(atoms.positions).all(axis=1))[0]
        raise ValueError(
            f"Atoms {bad.tolist()[:10]} have NaN or infinite positions; the structure "
            "probably blew up in a previous step. Restart from the last good frame."
        )
    if atoms.pbc.any() and not np.all(np.isfinite(atoms.cell.array)):
        raise ValueError("The cell has NaN or infinite entries.")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-8:
        raise ValueError(
            f"The structure is periodic along {atoms.pbc.tolist()} but its cell has zero "
            "volume. Set a cell (atoms.set_cell) or switch periodicity off (atoms.pbc = False)."
        )
    check_overlap(atoms)
    known = set(int(z) for z in elements)
    unknown = sorted(set(int(z) for z in atoms.numbers) - known)
    if unknown:
        names = [chemical_symbols[z] for z in unknown]
        where = np.where(np.isin(atoms.numbers, unknown))[0]
        raise ValueError(
            f"The model does not know element(s) {names} (atoms {where.tolist()[:10]}); "
            f"it was trained on {[chemical_symbols[z] for z in sorted(known)]}. Use a model "
            "that covers these elements, or fine-tune one on data that contains them."
        )


def overlapping_pairs(atoms: Atoms) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, distance)`` with ``i < j`` closer than :data:`OVERLAP_DISTANCE` (A), closest first."""
    first, second, distance = neighbor_list("ijd", atoms, OVERLAP_DISTANCE)
    pairs = sorted((float(d), int(i), int(j)) for i, j, d in zip(first, second, distance) if i < j)
    return [(i, j, d) for d, i, j in pairs]


class BatchMaker:
    """Converts ``ase.Atoms`` into mace ``Batch`` objects for one model.

    Args:
        model: the MACE model (its elements, cutoff and heads are read).
        head: model head to evaluate; the only one, or the one named
            ``default``, when not given.
    """

    def __init__(self, model: torch.nn.Module, head: Optional[str] = None):
        self.elements = [int(z) for z in model.atomic_numbers]
        self.z_table = AtomicNumberTable(self.elements)
        self.r_max = float(model.r_max)
        self.heads = model_heads(model)
        self.head = resolve_head(model, head)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    def graph(self, atoms: Atoms) -> mace_data.AtomicData:
        """One structure as mace ``AtomicData`` (checked first)."""
        check_atoms(atoms, self.elements)
        with graph_dtype(self.dtype):
            config = mace_data.config_from_atoms(atoms, key_specification=_KEYS, head_name=self.head)
            return mace_data.AtomicData.from_config(
                config, z_table=self.z_table, cutoff=self.r_max, heads=self.heads
            )

    def batch(self, images: Sequence[Atoms]) -> torch_geometric.Batch:
        """Several structures as one batch on the model's device."""
        graphs = [self.graph(atoms) for atoms in images]
        return torch_geometric.Batch.from_data_list(graphs).to(self.device)

    def batches(self, images: Iterable[Atoms], chunk_size: int) -> Iterator[tuple[list[Atoms], torch_geometric.Batch]]:
        """Yield ``(images, batch)`` pairs of at most ``chunk_size`` structures."""
        chunk: list[Atoms] = []
        for atoms in images:
            chunk.append(atoms)
            if len(chunk) == chunk_size:
                yield chunk, self.batch(chunk)
                chunk = []
        if chunk:
            yield chunk, self.batch(chunk)


def forward(
    model: torch.nn.Module,
    batch: torch_geometric.Batch,
    compute_force: bool = True,
    compute_stress: bool = False,
    training: bool = False,
) -> dict[str, Optional[torch.Tensor]]:
    """One forward pass of a MACE model on ``batch``.

    Returns mace's output dictionary (``energy``, ``node_energy``, ``forces``,
    ``stress``, ``node_feats``, ...) plus ``batch`` and ``ptr`` (which atoms
    belong to which structure) and ``node_attrs`` (each atom's element, one-hot
    over the model's elements). ``training=True`` keeps the graph of the
    forces so they can be differentiated again (needed by force kernels).
    """
    data = batch.to_dict()
    out = model(data, training=training, compute_force=compute_force, compute_stress=compute_stress)
    out = dict(out)
    out["batch"] = data["batch"]
    out["ptr"] = data["ptr"]
    out["node_attrs"] = data["node_attrs"]
    return out


def model_heads(model: torch.nn.Module) -> list[str]:
    """Names of ``model``'s heads (readouts, E0s, scale and shift of each), in the model's order."""
    return list(getattr(model, "heads", None) or ["Default"])


def resolve_head(model: torch.nn.Module, head: Optional[str] = None) -> str:
    """The head of ``model`` to predict, train or score: the one rule of the package.

    ``head`` if given (checked against the model's heads); otherwise the
    only head, or the one named ``default`` (any case). A model with several
    heads and none named so needs ``head``: ``ValueError``.
    """
    heads = model_heads(model)
    chosen = head or _pick_head(heads)
    if chosen not in heads:
        raise ValueError(f"head {chosen!r} not in the model's heads {heads}")
    return chosen


def _pick_head(heads: list[str]) -> str:
    if len(heads) == 1:
        return heads[0]
    named = [h for h in heads if h.lower() == "default"]
    if not named:
        raise ValueError(f"The model has heads {heads}; choose one with head=...")
    return named[0]
