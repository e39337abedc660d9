"""Plain-torch twin of the fused intervention op: the CPU path and the test oracle.

For x: [batch, pos, d_model] the op computes, in one expression (PROTOCOL §2, §4, §5)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]

and, where a per-row patch mask is set, a copy instead (activation patching)::

    out[i, t] = P[src_i, t]      if M[i, t]

R holds k directions (shared [k, d] or one set per row [batch, k, d]), w their weights (1 = full
ablation, MoIA's soft w_l otherwise), b an additive vector (the trained bias, a steering vector),
and (V_i, s_i, t0_i) a per-row injection with its own start. ``starts`` are positions *in x's own
coordinates* (the caller has already shifted them by the row's left padding and, in cached
decoding, by the position of x[:, 0]); a start <= 0 injects everywhere, a start >= pos nowhere.
(P, M, src) is a patch: P [n_src, pos, d_model] holds source activations (a clean run's), M [batch,
pos] marks the positions each row takes from its source row src_i (``patch_index``; without it, row
i reads P[0] when n_src = 1, else P[i]). The patched value is a copy, bit for bit, not x + (P - x).

Cost: the coefficients x @ Rᵀ read x once; every additive term is then folded into a single
batched ``baddbmm`` (x + C @ M with C = [x·R, 1, mask] and M = [-w R; b; s V]) that reads x once
more and writes the output once -- about 1.5x the traffic of a copy, against ~5 passes for the
naive ``x - (x @ r)[..., None] * r + b`` chain.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
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


def prepare_intervention(
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    vectors: Tensor | None = None,
    strengths: Tensor | None = None,
) -> PreparedIntervention:
    """Stack the constant operands of the op (see the module docstring) once."""
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
    return PreparedIntervention(directions, weights, bias, vectors, strengths, static)


def apply_prepared(
    x: Float[Tensor, "batch pos d_model"],
    p: PreparedIntervention,
    starts: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``x + C @ M`` with the precomputed M: two reads of x and one write."""
    batch, pos, d_model = x.shape
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


def check_patch(
    x: Tensor, patch: Tensor | None, patch_mask: Tensor | None, patch_index: Tensor | None
) -> None:
    """Shapes of a patch (P, M, src) against x [batch, pos, d_model]; see the module docstring."""
    if patch is None:
        if patch_mask is not None or patch_index is not None:
            raise ValueError("patch_mask and patch_index need a patch")
        return
    batch, pos, d_model = x.shape
    if patch.dim() != 3 or patch.shape[1:] != (pos, d_model):
        raise ValueError(f"patch must be [n_src, {pos}, {d_model}], got {tuple(patch.shape)}")
    if patch_mask is None or patch_mask.dtype != torch.bool or patch_mask.shape != (batch, pos):
        got = None if patch_mask is None else (tuple(patch_mask.shape), patch_mask.dtype)
        raise ValueError(f"a patch needs patch_mask, a bool [{batch}, {pos}] tensor, got {got}")
    if patch_index is None:
        if patch.shape[0] not in (1, batch):
            raise ValueError(
                f"patch has {patch.shape[0]} source rows for a batch of {batch}: give patch_index"
            )
    elif patch_index.shape != (batch,) or patch_index.is_floating_point():
        raise ValueError(f"patch_index must be integer [{batch}], got {tuple(patch_index.shape)}")


def apply_patch(
    base: Float[Tensor, "batch pos d_model"],
    patch: Float[Tensor, "src pos d_model"],
    patch_mask: Bool[Tensor, "batch pos"],
    patch_index: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``base`` with the masked positions copied from their source rows of ``patch``.

    One ``torch.where``: reads base once, writes once; a single source row broadcasts (no copy).
    """
    source = patch if patch_index is None else patch.index_select(0, patch_index)
    return torch.where(patch_mask[..., None], source.to(base.dtype), base)


def intervention_reference(
    x: Float[Tensor, "batch pos d_model"],
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Float[Tensor, " d_model"] | None = None,
    vectors: Float[Tensor, "batch d_model"] | None = None,
    strengths: Float[Tensor, " batch"] | None = None,
    starts: Int[Tensor, " batch"] | None = None,
    patch: Float[Tensor, "src pos d_model"] | None = None,
    patch_mask: Bool[Tensor, "batch pos"] | None = None,
    patch_index: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Apply ablation, bias, injection and patch to ``x`` and return a new tensor.

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
        patch: [n_src, pos, d_model] source activations copied where ``patch_mask`` is set.
        patch_mask: [batch, pos] bool, the positions each row takes from its source row.
        patch_index: [batch] the source row of each batch row (default: 0, or i when n_src = batch).
    """
    if vectors is not None and (strengths is None or starts is None):
        raise ValueError("vectors needs strengths and starts")
    check_patch(x, patch, patch_mask, patch_index)
    prepared = prepare_intervention(directions, weights, bias, vectors, strengths)
    if patch is None:
        return apply_prepared(x, prepared, starts)
    assert patch_mask is not None
    base = x if prepared.static is None else apply_prepared(x, prepared, starts)
    return apply_patch(base, patch, patch_mask, patch_index)


def intervention_naive(
    x: Tensor,
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    vectors: Tensor | None = None,
    strengths: Tensor | None = None,
    starts: Tensor | None = None,
    patch: Tensor | None = None,
    patch_mask: Tensor | None = None,
    patch_index: Tensor | None = None,
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
    if patch is not None:  # TransformerLens' patch setter: index assignment, row by row
        assert patch_mask is not None
        out = out.clone()
        for i in range(x.shape[0]):
            src = int(patch_index[i]) if patch_index is not None else (i if patch.shape[0] > 1 else 0)
            out[i, patch_mask[i]] = patch[src, patch_mask[i]].to(out.dtype)
    return out
