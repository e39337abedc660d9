"""Plain-torch twin of the fused intervention op: the CPU path and the test oracle.

For x: [batch, pos, d_model] the op computes, in one expression (PROTOCOL §2, §4, §5)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]

R holds k directions (shared [k, d] or one set per row [batch, k, d]), w their weights (1 = full
ablation, MoIA's soft w_l otherwise), b an additive vector (the trained bias, a steering vector),
and (V_i, s_i, t0_i) a per-row injection with its own start. ``starts`` are positions *in x's own
coordinates* (the caller has already shifted them by the row's left padding and, in cached
decoding, by the position of x[:, 0]); a start <= 0 injects everywhere, a start >= pos nowhere.

Where a per-row patch mask is set, the op copies instead (activation patching, PROTOCOL §9)::

    out[i, t] = P[src_i, t]      if M[i, t]

(P, M, src) is a patch: P [n_src, pos, d_model] holds source activations (a clean run's), M [batch,
pos] marks the positions each row takes from its source row src_i (``patch_index``; without it, row
i reads P[0] when n_src = 1, else P[i]). The patched value is a copy, bit for bit, not x + (P - x).

Cost, for x of N elements: the coefficients x @ Rᵀ read x once; one ``addmm`` (``baddbmm`` when
something is per row) reads x and writes the ablated output; the bias and the masked injection are
added to that output in place (``add_``, ``addcmul_``: one read and write each, but no new
tensor). The naive chain (``intervention_naive``) makes about 7k + 6 passes. Where several terms are
present a single ``baddbmm`` of C = [x·R, 1, mask] against M = [-w R; b; s V] does it in three passes,
but building C (a ones column, a ``cat``) costs more in dispatch than the extra pass saves at the
shapes moia runs (decode steps of a few KB and prompts of a few MB): measured with interleaved
rounds in ``benchmarks/bench_ops.py``.

Optionally the op also *reads*: given read-only directions E [m, d] it writes the coefficients
``coeffs[i, t] = x[i, t]·Eᵀ`` (float32, of the op's input) to a buffer and never changes x for them
(the mood ring, PROTOCOL §8).
A readout alone is one matmul x @ Eᵀ (one read of x, no write: x itself is returned); beside
other terms the twin computes it as its own small matmul, so the intervened activations are bit for
bit those without the readout (BLAS rounds a column differently when its matrix grows).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class PreparedIntervention:
    """The op's constant operands, in the form the op uses them (made once per hook, not per call)."""

    directions: Tensor | None  # (k, d) shared or (B, k, d) per row, k >= 1
    weights: Tensor | None  # (k,) or (B, k)
    bias: Tensor | None  # (d,)
    vectors: Tensor | None  # (n, d), n = batch or 1
    strengths: Tensor | None  # (n,)
    project: Tensor | None  # Rᵀ: (d, k), or (B, d, k) with per-row directions
    ablate: Tensor | None  # -w R: (k, d), or (B, k, d) when directions or weights are per row
    scaled: Tensor | None  # s V: (n, 1, d)
    readout: Tensor | None = None  # (m, d) read-only directions: coefficients out, x unchanged

    @property
    def is_identity(self) -> bool:
        return self.ablate is None and self.bias is None and self.scaled is None


def prepare_intervention(
    directions: Tensor | None = None,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    vectors: Tensor | None = None,
    strengths: Tensor | None = None,
    readout: Tensor | None = None,
) -> PreparedIntervention:
    """Cast the constant operands of the op (see the module docstring) into the form it uses, once."""
    if readout is not None and (readout.dim() != 2 or readout.shape[0] == 0):
        raise ValueError(f"readout must be [m, d_model] with m >= 1, got shape {tuple(readout.shape)}")
    if directions is not None and directions.shape[-2] == 0:
        directions = weights = None
    if vectors is not None and strengths is None:
        raise ValueError("vectors needs strengths and starts")
    project = ablate = scaled = None
    if directions is not None:
        w = torch.ones(directions.shape[:-1], dtype=directions.dtype, device=directions.device)
        if weights is not None:
            w = w * weights.to(directions.dtype)
        ablate = -(w[..., None] * directions)  # (k, d) or (B, k, d)
        project = directions.transpose(-1, -2).contiguous()
    if vectors is not None:
        assert strengths is not None
        scaled = (strengths[:, None] * vectors)[:, None, :]  # (n, 1, d)
    return PreparedIntervention(
        directions, weights, bias, vectors, strengths, project, ablate, scaled, readout
    )


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
    """The op with the prepared operands: a new tensor (x is never written).

    With ``p.readout`` (E), ``coeffs`` [batch, pos, m] (float32) receives x·Eᵀ of the input x.
    A readout with nothing else to do returns x itself (no copy, no write).
    """
    batch, pos, d_model = x.shape
    if p.readout is not None:
        read_coefficients(x, p.readout, coeffs)
        if p.is_identity:
            return x
    out = None
    if p.ablate is not None and p.project is not None:
        if p.ablate.dim() == 2:  # shared: (B·T, d) @ (d, k), then one addmm over every row
            flat = x.reshape(-1, d_model)
            out = torch.addmm(flat, flat @ p.project, p.ablate).view(batch, pos, d_model)
        else:  # per row: the coefficients (B, T, k), then one batched addmm
            coeff = torch.bmm(x, p.project) if p.project.dim() == 3 else x @ p.project
            out = torch.baddbmm(x, coeff, p.ablate.expand(batch, -1, -1))
    if p.bias is not None:
        out = x + p.bias if out is None else out.add_(p.bias)
    if p.scaled is not None:
        if starts is None:
            raise ValueError("vectors needs strengths and starts")
        t = torch.arange(pos, device=x.device)
        mask = t[None, :, None] >= starts[:, None, None]  # (B, T, 1)
        out = torch.addcmul(x, mask, p.scaled) if out is None else out.addcmul_(mask, p.scaled)
    return x.clone() if out is None else out


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
    readout: Float[Tensor, "m d_model"] | None = None,
    coeffs: Float[Tensor, "batch pos m"] | None = None,
    patch: Float[Tensor, "src pos d_model"] | None = None,
    patch_mask: Bool[Tensor, "batch pos"] | None = None,
    patch_index: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Apply ablation, bias, injection and patch to ``x`` and return a new tensor (x itself for a
    readout alone).

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
        patch: [n_src, pos, d_model] source activations copied where ``patch_mask`` is set.
        patch_mask: [batch, pos] bool, the positions each row takes from its source row.
        patch_index: [batch] the source row of each batch row (default: 0, or i when n_src = batch).
    """
    if vectors is not None and (strengths is None or starts is None):
        raise ValueError("vectors needs strengths and starts")
    check_patch(x, patch, patch_mask, patch_index)
    prepared = prepare_intervention(directions, weights, bias, vectors, strengths, readout)
    if patch is None:
        return apply_prepared(x, prepared, starts, coeffs)
    assert patch_mask is not None
    base = apply_prepared(x, prepared, starts, coeffs)  # x itself when there is nothing to add
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
