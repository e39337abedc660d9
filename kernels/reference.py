"""Plain-torch twin of the fused intervention op: the CPU path and the test oracle.

For x: [batch, pos, d_model] the op computes, in one expression (PROTOCOL §2, §4, §5)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]

R holds k directions (shared [k, d] or one set per row [batch, k, d]), w their weights (1 = full
ablation, MoIA's soft w_l otherwise), b an additive vector (the trained bias, a steering vector),
and (V_i, s_i, t0_i) a per-row injection with its own start. ``starts`` are positions *in x's own
coordinates* (the caller has already shifted them by the row's left padding and, in cached
decoding, by the position of x[:, 0]); a start <= 0 injects everywhere, a start >= pos nowhere.

Optionally the op also *reads*: given read-only directions E [m, d] it writes the coefficients
``coeffs[i, t] = x[i, t]·Eᵀ`` (float32, of the op's input) to a buffer and never changes x for them
(the mood ring, PROTOCOL §8).

Cost: the coefficients x @ Rᵀ read x once; every additive term is then folded into a single
batched ``baddbmm`` (x + C @ M with C = [x·R, 1, mask] and M = [-w R; b; s V]) that reads x once
more and writes the output once -- about 1.5x the traffic of a copy, against ~5 passes for the
naive ``x - (x @ r)[..., None] * r + b`` chain. A readout alone is one matmul x @ Eᵀ (one read of x,
no write: x itself is returned). Beside an ablation of shared directions the twin computes x @ Eᵀ
as its own small matmul rather than as more columns of x @ Rᵀ: BLAS rounds a column differently
when the matrix it belongs to grows (by ~1e-6 here), and a readout must leave the ablated
activations bit for bit as they are. The kernel computes every coefficient in its own reduction,
so there the readout is free of that trade-off.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class PreparedIntervention:
    """The op's constant operands, stacked once (per hook, not per call).

    ``static`` holds the additive rows of M for every row of the batch -- ``[-w R; b; s V]`` --
    so that a call only computes the coefficient columns C = [x·R, 1, mask] and one ``baddbmm``.
    """

    directions: Tensor | None  # (k, d) shared or (B, k, d) per row, k >= 1
    weights: Tensor | None  # (k,) or (B, k)
    bias: Tensor | None  # (d,)
    vectors: Tensor | None  # (n, d), n = batch or 1
    strengths: Tensor | None  # (n,)
    static: Tensor | None  # (n_rows, m, d) with n_rows = 1 unless something is per row
    readout: Tensor | None = None  # (m, d) read-only directions: coefficients out, x unchanged


def prepare_intervention(
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    vectors: Tensor | None = None,
    strengths: Tensor | None = None,
    readout: Tensor | None = None,
) -> PreparedIntervention:
    """Stack the constant operands of the op (see the module docstring) once."""
    if readout is not None and (readout.dim() != 2 or readout.shape[0] == 0):
        raise ValueError(f"readout must be [m, d_model] with m >= 1, got shape {tuple(readout.shape)}")
    if directions is not None and directions.shape[-2] == 0:
        directions = weights = None
    if vectors is not None and strengths is None:
        raise ValueError("vectors needs strengths and starts")
    blocks: list[Tensor] = []
    if directions is not None:
        w = torch.ones(directions.shape[:-1], dtype=directions.dtype, device=directions.device)
        if weights is not None:
            w = w * weights.to(directions.dtype)
        blocks.append(-(w[..., None] * directions))  # (k, d) or (B, k, d)
    if bias is not None:
        blocks.append(bias[None, :])
    if vectors is not None:
        assert strengths is not None
        blocks.append((strengths[:, None] * vectors)[:, None, :])  # (n, 1, d)
    static = None
    if blocks:
        rows = max(b.shape[0] if b.dim() == 3 else 1 for b in blocks)
        as3 = [b if b.dim() == 3 else b[None].expand(rows, -1, -1) for b in blocks]
        as3 = [b.expand(rows, -1, -1) for b in as3]
        static = torch.cat(as3, dim=1).contiguous()
    return PreparedIntervention(directions, weights, bias, vectors, strengths, static, readout)


def read_coefficients(
    x: Float[Tensor, "batch pos d_model"], readout: Tensor, coeffs: Tensor | None
) -> Float[Tensor, "batch pos m"]:
    """``coeffs[...] = x @ readoutᵀ`` in float32 (never part of an autograd graph)."""
    if coeffs is None:
        raise ValueError("readout needs coeffs, a float32 buffer [batch, pos, m] for the coefficients")
    expected = (*x.shape[:2], readout.shape[0])
    if tuple(coeffs.shape) != expected or coeffs.dtype != torch.float32:
        raise ValueError(
            f"coeffs must be float32 of shape {expected}, got {coeffs.dtype} {tuple(coeffs.shape)}"
        )
    with torch.no_grad():
        if x.dtype != torch.float32:  # coefficients in float32, as the kernel computes them
            x, readout = x.float(), readout.float()
        coeffs.copy_(x @ readout.T)
    return coeffs


def apply_prepared(
    x: Float[Tensor, "batch pos d_model"],
    p: PreparedIntervention,
    starts: Int[Tensor, " batch"] | None = None,
    coeffs: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``x + C @ M`` with the precomputed M: two reads of x and one write.

    With ``p.readout`` (E), ``coeffs`` [batch, pos, m] (float32) receives x·Eᵀ of the input x.
    A readout with nothing else to do returns x itself (no copy, no write).
    """
    batch, pos, d_model = x.shape
    if p.readout is not None:
        read_coefficients(x, p.readout, coeffs)
        if p.static is None:
            return x
    if p.static is None:
        return x.clone()
    cols: list[Tensor] = []
    if p.directions is not None:
        r = p.directions
        cols.append(torch.bmm(x, r.transpose(1, 2)) if r.dim() == 3 else x @ r.T)  # (B, T, k)
    if p.bias is not None:
        cols.append(x.new_ones(1, 1, 1).expand(batch, pos, 1))
    if p.vectors is not None:
        if starts is None:
            raise ValueError("vectors needs strengths and starts")
        t = torch.arange(pos, device=x.device)
        cols.append((t[None, :, None] >= starts[:, None, None]).to(x.dtype))  # (B, T, 1)
    c = torch.cat(cols, dim=2) if len(cols) > 1 else cols[0]  # (B, T, m)
    if p.static.shape[0] == 1:  # nothing per row: one (B*T, m) @ (m, d) matmul
        return torch.addmm(x.reshape(-1, d_model), c.reshape(-1, c.shape[-1]), p.static[0]).view_as(x)
    return torch.baddbmm(x, c, p.static.expand(batch, -1, -1))


def intervention_reference(
    x: Float[Tensor, "batch pos d_model"],
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Float[Tensor, " d_model"] | None = None,
    vectors: Float[Tensor, "batch d_model"] | None = None,
    strengths: Float[Tensor, " batch"] | None = None,
    starts: Int[Tensor, " batch"] | None = None,
    readout: Float[Tensor, "m d_model"] | None = None,
    coeffs: Float[Tensor, "batch pos m"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Apply ablation, bias and injection to ``x`` and return a new tensor (x itself for a readout
    alone).

    Args:
        x: activations [batch, pos, d_model].
        directions: [k, d_model] shared by every row, or [batch, k, d_model] one set per row;
            assumed unit-norm (and mutually orthogonal for an exact projection). None or k = 0: no
            ablation.
        weights: [k] or [batch, k] ablation weights; None means 1 (full ablation).
        bias: [d_model] added at every position.
        vectors: [batch, d_model] per-row injection vectors (requires ``strengths`` and ``starts``).
        strengths: [batch] per-row scale of ``vectors`` (0 = control row).
        starts: [batch] integer first position (in x's coordinates) that receives the injection.
        readout: [m, d_model] read-only directions; their coefficients x·Eᵀ go to ``coeffs``.
        coeffs: [batch, pos, m] float32 buffer, required with ``readout``, filled in place.
    """
    if vectors is not None and (strengths is None or starts is None):
        raise ValueError("vectors needs strengths and starts")
    prepared = prepare_intervention(directions, weights, bias, vectors, strengths, readout)
    return apply_prepared(x, prepared, starts, coeffs)


def intervention_naive(
    x: Tensor,
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    vectors: Tensor | None = None,
    strengths: Tensor | None = None,
    starts: Tensor | None = None,
) -> Tensor:
    """The TransformerLens-style chain of separate ops (the baseline the twin and kernel beat)."""
    out = x
    if directions is not None:
        r = directions if directions.dim() == 3 else directions.expand(x.shape[0], *directions.shape)
        w = torch.ones(r.shape[:2], dtype=x.dtype, device=x.device) if weights is None else weights
        w = w.expand(r.shape[:2])
        for j in range(r.shape[1]):
            rj = r[:, j, None, :]  # (B, 1, d)
            out = out - w[:, j, None, None] * (out * rj).sum(-1, keepdim=True) * rj
    if bias is not None:
        out = out + bias
    if vectors is not None:
        assert strengths is not None and starts is not None
        t = torch.arange(x.shape[1], device=x.device)
        mask = (t[None, :] >= starts[:, None]).to(x.dtype)[..., None]
        out = out + mask * (strengths[:, None] * vectors)[:, None, :]
    return out
