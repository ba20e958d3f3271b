"""Random sketches of parameter gradients, for the NTK kernels.

A foundation MACE has millions of parameters, so a dense random projection
``p x P`` would cost ``p`` times the model's memory. :class:`CountSketch`
(Charikar et al.; Clarkson and Woodruff) needs one bucket index and one sign
per parameter instead: ``S g = sum_j s_j g_j e_{h(j)}``. It is unbiased,
``E[<S a, S b>] = <a, b>``, with variance at most ``2 <a,a><b,b> / p``, so
inner products (the NTK) are kept to within about ``sqrt(2/p)`` of the
norms. The hash is drawn from a seeded generator: the same seed gives the
same sketch on any machine.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence

import torch


class CountSketch:
    """Project vectors of length ``n_in`` to ``dim`` dimensions.

    Args:
        n_in: input length (e.g. the number of model parameters).
        dim: output dimension ``p``.
        seed: the sketch is a function of ``(n_in, dim, seed)`` only.
    """

    def __init__(self, n_in: int, dim: int, seed: int = 0):
        if n_in < 1 or dim < 1:
            raise ValueError("n_in and dim must be positive")
        generator = torch.Generator().manual_seed(seed)
        self.n_in, self.dim, self.seed = n_in, dim, seed
        self.bucket = torch.randint(dim, (n_in,), generator=generator, dtype=torch.int64).to(torch.int32)
        self.sign = (torch.randint(2, (n_in,), generator=generator, dtype=torch.int64) * 2 - 1).to(torch.int8)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Sketch of each row of ``vectors`` (``(k, n_in)`` or ``(n_in,)``)."""
        single = vectors.dim() == 1
        rows = vectors.reshape(1, -1) if single else vectors
        if rows.shape[1] != self.n_in:
            raise ValueError(f"expected vectors of length {self.n_in}, got {rows.shape[1]}")
        out = torch.zeros(rows.shape[0], self.dim, dtype=rows.dtype, device=rows.device)
        out.index_add_(1, self.bucket.to(rows.device, torch.int64), rows * self.sign.to(rows.device, rows.dtype))
        return out[0] if single else out

    def transpose(self, rows: torch.Tensor) -> torch.Tensor:
        """``S^T u`` for each row ``u`` of ``rows`` (``(k, dim)``): ``(k, n_in)``."""
        return rows[:, self.bucket.to(rows.device, torch.int64)] * self.sign.to(rows.device, rows.dtype)

    def nbytes(self) -> int:
        """Memory held by the sketch (bytes)."""
        return self.bucket.numel() * self.bucket.element_size() + self.sign.numel() * self.sign.element_size()


@contextmanager
def tracking(parameters: Sequence[torch.nn.Parameter]):
    """Let autograd track ``parameters`` inside the block only (the calculator keeps them frozen)."""
    for parameter in parameters:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(False)


@contextmanager
def shifted(parameters: Sequence[torch.nn.Parameter], vector: torch.Tensor):
    """Parameters moved by the flat ``vector`` inside the block, restored bit for bit after it."""
    saved = [parameter.detach().clone() for parameter in parameters]
    with torch.no_grad():
        for parameter, step in zip(parameters, vector.split([p.numel() for p in parameters])):
            parameter.add_(step.view_as(parameter))
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, original in zip(parameters, saved):
                parameter.copy_(original)


def flatten(grads: Sequence[Optional[torch.Tensor]], parameters: Sequence[torch.nn.Parameter],
            batch: Optional[int] = None) -> torch.Tensor:
    """Gradients as one ``(P,)`` vector, or ``(batch, P)`` for batched gradients; unused parameters give zeros."""
    lead = () if batch is None else (batch,)
    return torch.cat([(g if g is not None else torch.zeros(lead + p.shape, dtype=p.dtype, device=p.device))
                      .reshape(lead + (-1,)) for g, p in zip(grads, parameters)], dim=-1)
