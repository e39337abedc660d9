"""Fused batched intervention in Triton: ablation, bias and injection in one pass over x.

The op (``reference.py`` is its torch twin and the test oracle)::

    out[i, t] = x[i, t] - Σ_j w_j (x[i, t]·R_j) R_j + b + s_i V_i · 1[t >= t0_i]
    out[i, t] = P[src_i, t]   where the patch mask M[i, t] is set (activation patching)

and, optionally, the coefficients ``coeffs[i, t, j] = x[i, t]·E_j`` of read-only directions E (the
mood ring, PROTOCOL §8) from the same tile of x already in registers: a readout costs no extra read
of x, m·4 bytes written per position, and a readout alone skips the write of ``out`` (x is returned).

Structure follows Triton's tutorials: the forward kernel and its byte count as in
``02-fused-softmax.py`` (one program per block of rows, the whole d_model row in registers), the
backward as in ``05-layer-norm.py`` (dx from the same row pass, the bias gradient as a two-stage
reduction: per-program partial sums in the kernel, then a sum over those few partials in torch).

Set ``TRITON_INTERPRET=1`` *before* this module is imported to run the kernels on CPU tensors
(slowly) -- ``@triton.jit`` reads it when it decorates.
"""

import torch
import triton
import triton.language as tl
from jaxtyping import Float, Int
from torch import Tensor

from .reference import check_patch

# Bytes moved for x of N = batch·pos·d_model elements of e bytes each, with k directions, a bias and
# an injection (R, w, b, V, s, t0 are a few KB and stay in cache).
#
# The naive TransformerLens-style chain (``intervention_naive``), one kernel per op:
#   per direction j:  out * r_j         read N, write N       2N
#                     .sum(-1)          read N                1N
#                     (w·coeff) * r_j   write N               1N
#                     out - that        read 2N, write N      3N
#   + b                                 read N, write N       2N
#   mask * (s V)                        write N               1N
#   out + that                          read 2N, write N      3N
#   total                                                     (7k + 6)·N·e bytes
#
# The twin (``intervention_reference``): x @ Rᵀ reads x, one baddbmm reads x and writes out:  3·N·e.
# This kernel: reads x once and writes out once:                                              2·N·e.
#
# A patch adds, per position, one byte of mask and -- only where the mask is set -- one row of P:
# a patching sweep sets one position (or one head) per row, so the traffic stays 2·N·e.
#
# So for the benchmarked op (k = 1 + bias + injection) we expect, once the tensors are large enough
# to be bandwidth-bound, the kernel to run at about the speed of ``x.clone()`` (the 2·N·e floor),
# ~1.5x faster than the twin and ~6.5x faster than the naive chain. At decode shapes (8×1×d, a few
# KB) every variant is launch-bound, and the win is launches: 1 against 2-4 (twin) and 8 (naive).
# A readout of m directions adds m·4 bytes per position (the coefficients) and no read of x; alone,
# it is N·e read + m·4·N/d_model written, half a copy.
MAX_D_MODEL = 32768  # the whole row lives in registers; beyond this a row no longer fits

# Kernel signatures stay compact, as in the Triton tutorials.
# fmt: off


@triton.jit
def _ablate(x, dir_ptr, w_ptr, batch_idx, row_ok, cols, col_ok, stride_rk, stride_wb,
            K: tl.constexpr, HAS_WEIGHTS: tl.constexpr):
    """Return x - Σ_j w_j (x·R_j) R_j for a [BLOCK_M, BLOCK_D] fp32 tile (coefficients all from x)."""
    acc = x
    for j in tl.static_range(K):
        r = tl.load(dir_ptr + j * stride_rk + cols, mask=col_ok, other=0.0).to(tl.float32)
        coeff = tl.sum(x * r[None, :], axis=1)  # (BLOCK_M,)
        if HAS_WEIGHTS:
            w = tl.load(w_ptr + batch_idx * stride_wb + j, mask=row_ok, other=0.0).to(tl.float32)
            coeff = coeff * w
        acc -= coeff[:, None] * r[None, :]
    return acc


@triton.jit
def _read(x, read_ptr, coef_ptr, batch_idx, t, row_ok, cols, col_ok, stride_ek, stride_cb, stride_ct,
          KE: tl.constexpr):
    """coeffs[row, j] = x·E_j (fp32) for the rows of a [BLOCK_M, BLOCK_D] tile; x is not changed."""
    coef_offs = batch_idx * stride_cb + t * stride_ct
    for j in tl.static_range(KE):
        e = tl.load(read_ptr + j * stride_ek + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(coef_ptr + coef_offs + j, tl.sum(x * e[None, :], axis=1), mask=row_ok)


@triton.jit
def _intervention_fwd_kernel(
    x_ptr, out_ptr, dir_ptr, w_ptr, bias_ptr, vec_ptr, strength_ptr, start_ptr, read_ptr, coef_ptr,
    patch_ptr, pmask_ptr, pindex_ptr,
    n_rows, pos, d_model,
    stride_xb, stride_xt, stride_ob, stride_ot, stride_rk, stride_wb, stride_vb,
    stride_ek, stride_cb, stride_ct, stride_pb, stride_pt, stride_mb,
    K: tl.constexpr, HAS_WEIGHTS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INJECTION: tl.constexpr,
    KE: tl.constexpr, WRITE_OUT: tl.constexpr, HAS_PATCH: tl.constexpr, HAS_PATCH_INDEX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows of the (batch·pos) view
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < d_model
    mask = row_ok[:, None] & col_ok[None, :]
    batch_idx = rows // pos
    t = rows % pos
    x_offs = (batch_idx * stride_xb + t * stride_xt)[:, None] + cols[None, :]
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)  # the one read of x
    if KE > 0:
        _read(x, read_ptr, coef_ptr, batch_idx, t, row_ok, cols, col_ok, stride_ek, stride_cb, stride_ct,
              KE)

    acc = _ablate(x, dir_ptr, w_ptr, batch_idx, row_ok, cols, col_ok, stride_rk, stride_wb,
                  K, HAS_WEIGHTS)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_INJECTION:
        s = tl.load(strength_ptr + batch_idx, mask=row_ok, other=0.0).to(tl.float32)
        t0 = tl.load(start_ptr + batch_idx, mask=row_ok, other=0)
        s = tl.where(t >= t0, s, 0.0)
        v = tl.load(vec_ptr + (batch_idx * stride_vb)[:, None] + cols[None, :], mask=mask, other=0.0)
        acc += s[:, None] * v.to(tl.float32)
    if HAS_PATCH:  # a copy, not x + (P - x): P passes through fp32 unchanged
        hit = tl.load(pmask_ptr + batch_idx * stride_mb + t, mask=row_ok, other=0) != 0
        if HAS_PATCH_INDEX:  # noqa: SIM108 (a constexpr branch, resolved when compiled)
            src = tl.load(pindex_ptr + batch_idx, mask=row_ok, other=0)
        else:
            src = batch_idx  # stride_pb is 0 for a single source row
        p_offs = (src * stride_pb + t * stride_pt)[:, None] + cols[None, :]
        p = tl.load(patch_ptr + p_offs, mask=mask & hit[:, None], other=0.0)
        acc = tl.where(hit[:, None], p.to(tl.float32), acc)

    if WRITE_OUT:  # False for a readout alone: x is returned as it is
        out_offs = (batch_idx * stride_ob + t * stride_ot)[:, None] + cols[None, :]
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)  # the one write


@triton.jit
def _intervention_bwd_kernel(
    dy_ptr, dx_ptr, partial_db_ptr, dir_ptr, w_ptr,
    n_rows, pos, d_model,
    stride_yb, stride_yt, stride_xb, stride_xt, stride_rk, stride_wb,
    K: tl.constexpr, HAS_WEIGHTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx = dy - Σ_j w_j (dy·R_j) R_j (the projection is symmetric), and stage 1 of db = Σ dy.

    Each of the G programs walks row blocks pid, pid + G, ... and writes its column sum of dy to
    partial_db[pid]; stage 2 (a sum over G ≤ a few hundred rows) is left to torch.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < d_model
    db = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for block in range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs):
        rows = (block * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        batch_idx = rows // pos
        t = rows % pos
        dy_offs = (batch_idx * stride_yb + t * stride_yt)[:, None] + cols[None, :]
        dy = tl.load(dy_ptr + dy_offs, mask=mask, other=0.0).to(tl.float32)
        db += tl.sum(dy, axis=0)
        dx = _ablate(dy, dir_ptr, w_ptr, batch_idx, row_ok, cols, col_ok, stride_rk, stride_wb,
                     K, HAS_WEIGHTS)
        dx_offs = (batch_idx * stride_xb + t * stride_xt)[:, None] + cols[None, :]
        tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_db_ptr + pid * d_model + cols, db, mask=col_ok)
# fmt: on


def _launch_config(d_model: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): ~8K fp32 elements per program, at most 16 rows."""
    if d_model > MAX_D_MODEL:
        raise ValueError(f"d_model={d_model} exceeds {MAX_D_MODEL}; use intervention_reference")
    block_d = triton.next_power_of_2(d_model)
    block_m = max(1, min(16, 8192 // block_d))
    tile = block_m * block_d
    num_warps = 4 if tile <= 4096 else 8 if tile <= 8192 else 16
    return block_m, block_d, num_warps


def _row_weights(weights: Tensor | None, batch: int, k: int) -> tuple[Tensor | None, int]:
    """Weights [k] (shared) or [batch, k] (per row) as (tensor, batch stride)."""
    if weights is None or k == 0:
        return None, 0
    if weights.dim() == 0:
        weights = weights.expand(k)
    if weights.dim() == 1:
        return weights.contiguous(), 0
    if weights.shape != (batch, k):
        raise ValueError(f"weights must be [k] or [batch, k], got {tuple(weights.shape)}")
    weights = weights.contiguous()
    return weights, weights.stride(0)


def triton_intervention(
    x: Float[Tensor, "batch pos d_model"],
    directions: Float[Tensor, "k d_model"] | None = None,
    weights: Tensor | None = None,
    bias: Float[Tensor, " d_model"] | None = None,
    vectors: Float[Tensor, "batch d_model"] | None = None,
    strengths: Float[Tensor, " batch"] | None = None,
    starts: Int[Tensor, " batch"] | None = None,
    out: Float[Tensor, "batch pos d_model"] | None = None,
    inplace: bool = False,
    readout: Float[Tensor, "m d_model"] | None = None,
    coeffs: Float[Tensor, "batch pos m"] | None = None,
    patch: Float[Tensor, "src pos d_model"] | None = None,
    patch_mask: Tensor | None = None,
    patch_index: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Apply the op with one read and one write of x; arguments as ``intervention_reference``.

    Only shared directions [k, d_model] are handled here (per-row ones go to the twin). ``out``
    receives the result (any strides with a contiguous last dim); ``inplace=True`` writes into x,
    which is safe because every program reads its whole rows before it writes them. ``readout``
    [m, d_model] fills ``coeffs`` [batch, pos, m] (float32) with x·Eᵀ from the same read of x; with
    nothing else to do, x itself is returned and nothing else is written.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, pos, d_model], got {tuple(x.shape)}")
    if directions is not None and directions.dim() != 2:
        raise ValueError("the kernel takes shared directions [k, d_model]; use intervention_reference")
    if vectors is not None and (strengths is None or starts is None):
        raise ValueError("vectors needs strengths and starts")
    check_patch(x, patch, patch_mask, patch_index)
    batch, pos, d_model = x.shape
    ke = 0 if readout is None else readout.shape[0]
    if readout is not None:
        if (
            coeffs is None
            or tuple(coeffs.shape) != (batch, pos, ke)
            or coeffs.dtype != torch.float32
            or coeffs.stride(-1) != 1
        ):
            raise ValueError(
                f"readout needs coeffs, a float32 buffer of shape {(batch, pos, ke)} with a contiguous "
                f"last dim, got {None if coeffs is None else (coeffs.dtype, tuple(coeffs.shape))}"
            )
        readout = readout.contiguous()
    k = 0 if directions is None else directions.shape[0]
    # a readout alone writes only its coefficients, and x is returned as it is
    write_out = not (readout is not None and k == 0 and bias is None and vectors is None and patch is None)
    if x.stride(-1) != 1:
        if inplace:
            raise ValueError("inplace needs x with a contiguous last dim")
        x = x.contiguous()
    if inplace or not write_out:
        out = x
    elif out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out.shape != x.shape or out.stride(-1) != 1:
        raise ValueError("out must have x's shape and a contiguous last dim")
    n_rows = batch * pos
    if n_rows == 0:
        return out

    dirs = directions.contiguous() if directions is not None and k > 0 else None
    w, stride_wb = _row_weights(weights, batch, k)
    bias = None if bias is None else bias.contiguous()
    if vectors is not None:
        assert strengths is not None and starts is not None
        vectors, strengths, starts = vectors.contiguous(), strengths.contiguous(), starts.contiguous()
    pmask = stride_pb = stride_pt = stride_mb = None
    if patch is not None:
        assert patch_mask is not None
        patch = patch.to(x.dtype) if patch.stride(-1) == 1 else patch.to(x.dtype).contiguous()
        pmask = patch_mask.contiguous().view(torch.uint8)  # bool as bytes
        per_row = patch_index is not None or patch.shape[0] > 1
        stride_pb, stride_pt, stride_mb = patch.stride(0) if per_row else 0, patch.stride(1), pmask.stride(0)
        patch_index = None if patch_index is None else patch_index.contiguous()
    block_m, block_d, num_warps = _launch_config(d_model)
    grid = (triton.cdiv(n_rows, block_m),)
    _intervention_fwd_kernel[grid](
        x, out, dirs, w, bias, vectors, strengths, starts, readout, coeffs,
        patch, pmask, patch_index,
        n_rows, pos, d_model,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        0 if dirs is None else dirs.stride(0), stride_wb, 0 if vectors is None else vectors.stride(0),
        0 if readout is None else readout.stride(0),
        0 if coeffs is None else coeffs.stride(0), 0 if coeffs is None else coeffs.stride(1),
        stride_pb or 0, stride_pt or 0, stride_mb or 0,
        K=k, HAS_WEIGHTS=w is not None, HAS_BIAS=bias is not None, HAS_INJECTION=vectors is not None,
        KE=ke, WRITE_OUT=write_out, HAS_PATCH=patch is not None, HAS_PATCH_INDEX=patch_index is not None,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out


def _intervention_backward(
    dy: Tensor, directions: Tensor | None, weights: Tensor | None, need_db: bool
) -> tuple[Tensor, Tensor | None]:
    """(dx, db) for dy [batch, pos, d_model]; db (fp32) only when ``need_db``."""
    if not need_db:  # dx alone is the forward kernel with neither bias nor injection
        return triton_intervention(dy, directions, weights), None
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    batch, pos, d_model = dy.shape
    n_rows = batch * pos
    dx = torch.empty_like(dy, memory_format=torch.contiguous_format)
    k = 0 if directions is None else directions.shape[0]
    dirs = directions.contiguous() if directions is not None and k > 0 else None
    w, stride_wb = _row_weights(weights, batch, k)
    block_m, block_d, num_warps = _launch_config(d_model)
    n_blocks = triton.cdiv(n_rows, block_m)
    n_programs = max(1, min(n_blocks, 256))  # stage 1 partials: at most 256 rows of d_model fp32
    partial_db = torch.empty((n_programs, d_model), dtype=torch.float32, device=dy.device)
    if n_rows > 0:
        _intervention_bwd_kernel[(n_programs,)](
            dy, dx, partial_db, dirs, w,
            n_rows, pos, d_model,
            dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
            0 if dirs is None else dirs.stride(0), stride_wb,
            K=k, HAS_WEIGHTS=w is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
        )  # fmt: skip
    else:
        partial_db.zero_()
    return dx, partial_db.sum(0)  # stage 2


class FusedIntervention(torch.autograd.Function):
    """The kernel with gradients for x and bias.

    directions, weights, vectors, strengths and starts are treated as constants (their gradients
    are None); ``moia.kernels.fused_intervention`` sends calls that need those gradients to the twin.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        directions: Tensor | None,
        weights: Tensor | None,
        bias: Tensor | None,
        vectors: Tensor | None,
        strengths: Tensor | None,
        starts: Tensor | None,
    ) -> Tensor:
        # save_for_backward accepts None entries; torch's stub says otherwise.
        ctx.save_for_backward(directions, weights)  # type: ignore[arg-type]
        ctx.bias_dtype = None if bias is None else bias.dtype  # type: ignore[attr-defined]
        return triton_intervention(x, directions, weights, bias, vectors, strengths, starts)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, dy: Tensor
    ) -> tuple[Tensor | None, ...]:
        directions, weights = ctx.saved_tensors  # type: ignore[attr-defined]
        need_dx, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[3]  # type: ignore[attr-defined]
        if not (need_dx or need_db):
            return (None,) * 7
        dx, db = _intervention_backward(dy, directions, weights, need_db)
        if db is not None:
            db = db.to(ctx.bias_dtype)  # type: ignore[attr-defined]
        return (dx if need_dx else None), None, None, db, None, None, None
