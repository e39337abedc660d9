"""Orthonormal bases of direction sets, with rank detection (PROTOCOL §4).

Ablating a set of directions means removing their span. ``orthonormal_rows`` turns any set —
repeated, collinear or merely overlapping directions included — into orthonormal rows spanning
the same space: Gram–Schmidt in float64, in the given order (the first direction keeps its own
direction), where a direction that lies in the span of the earlier ones (its residual norm below
``tol`` times its own norm) becomes a **zero row**. A zero row is a no-op in the intervention op
(x − w (x·0) 0 = x), so per-row sets of different rank keep one shape.
"""

import torch
from jaxtyping import Float
from torch import Tensor

RANK_TOL = 1e-6


def orthonormal_rows(
    directions: Float[Tensor, "*batch k d_model"], tol: float = RANK_TOL
) -> tuple[Float[Tensor, "*batch k d_model"], torch.Tensor]:
    """``(basis, independent)``: orthonormal rows (zero where dependent), float64, and a bool mask
    [*batch, k] of the directions that were kept."""
    v = directions.double()
    norms = v.norm(dim=-1)
    basis = torch.zeros_like(v)
    keep = torch.zeros(v.shape[:-1], dtype=torch.bool, device=v.device)
    for j in range(v.shape[-2]):
        u = v[..., j, :]
        earlier = basis[..., :j, :]  # [*batch, j, d]
        for _ in range(2 if j else 0):  # Gram-Schmidt twice: orthogonal to working precision
            u = u - ((earlier @ u.unsqueeze(-1)) * earlier).sum(-2)
        n = u.norm(dim=-1)
        ok = n > tol * norms[..., j].clamp_min(torch.finfo(torch.float64).tiny)
        basis[..., j, :] = torch.where(ok.unsqueeze(-1), u / n.clamp_min(1e-300).unsqueeze(-1), 0.0)
        keep[..., j] = ok
    return basis, keep
