"""moia.kernels: the fused intervention op (Triton on CUDA) and its plain-torch twin.

``fused_intervention`` is the single entry point the hook modules call; see ``reference.py`` for the
op's definition and ``triton_intervention.py`` for the kernel. The kernel is used for CUDA tensors
with shared directions [k, d_model] (or none) when triton is installed (``pip install moia[triton]``);
``MOIA_FORCE_TRITON=1`` also sends CPU tensors to it, which only works under ``TRITON_INTERPRET=1``
(how CI tests the kernel). Everything else -- per-row directions, gradients for directions,
weights or vectors, gradients through a patch, no triton -- runs the twin.

A *readout* (read-only directions E, the mood ring of PROTOCOL §8) rides along: ``readout`` [m,
d_model] and a float32 buffer ``coeffs`` [batch, pos, m] that receives x·Eᵀ of the op's input. It
never changes x; alone, the op returns x itself.
"""

import importlib.util
import os
import warnings
from types import ModuleType

from jaxtyping import Bool, Float, Int
from torch import Tensor, is_grad_enabled

from .reference import (
    PreparedIntervention,
    apply_patch,
    apply_prepared,
    intervention_naive,
    intervention_reference,
    prepare_intervention,
    read_coefficients,
)

# Found once here; the kernel module itself is imported on first use so that TRITON_INTERPRET,
# which @triton.jit reads when it decorates, can still be set after `import moia`.
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_triton_module: ModuleType | None = None


def _kernel_module() -> ModuleType | None:
    global _HAS_TRITON, _triton_module
    if _triton_module is None:
        try:
            from . import triton_intervention
        except ImportError as e:  # installed but unusable (e.g. no matching driver)
            _HAS_TRITON = False
            warnings.warn(
                f"moia: triton is installed but cannot be imported ({e}); the fused op runs its plain-torch "
                "twin instead of the Triton kernel (same results, slower on a GPU)",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        _triton_module = triton_intervention
    return _triton_module


def _kernel(x: Tensor, directions: Tensor | None, *constants: Tensor | None) -> ModuleType | None:
    """The kernel module when this call should use it, else None (then the twin runs)."""
    use_kernel = (
        _HAS_TRITON
        and (x.is_cuda or os.environ.get("MOIA_FORCE_TRITON") == "1")
        and (directions is None or directions.dim() == 2)
        and not any(a is not None and a.requires_grad for a in (directions, *constants))
    )
    return _kernel_module() if use_kernel else None


def _run_kernel(
    module: ModuleType,
    x: Tensor,
    *args: Tensor | None,
    readout: Tensor | None = None,
    coeffs: Tensor | None = None,
) -> Tensor:
    bias = args[2]
    if is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        if readout is not None:  # the autograd function has no readout: read it beside (rare: training)
            read_coefficients(x, readout, coeffs)
            if all(a is None for a in args[:5]):
                return x
        return module.FusedIntervention.apply(x, *args)
    return module.triton_intervention(x, *args, readout=readout, coeffs=coeffs)


def fused_intervention(
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
    """Apply ablation, bias, injection and patch to ``x``; same arguments and result as the twin."""
    module = _kernel(x, directions, weights, vectors, strengths, patch)
    wants_grad = is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if patch is not None and wants_grad:
        module = None  # FusedIntervention's backward knows no patch (dx is 0 where it copies)
    if module is None:
        return intervention_reference(
            x, directions, weights, bias, vectors, strengths, starts, readout, coeffs,
            patch, patch_mask, patch_index,
        )  # fmt: skip
    args = (directions, weights, bias, vectors, strengths, starts)
    if patch is None:
        return _run_kernel(module, x, *args, readout=readout, coeffs=coeffs)
    return module.triton_intervention(  # type: ignore[no-any-return]
        x, *args, readout=readout, coeffs=coeffs,
        patch=patch, patch_mask=patch_mask, patch_index=patch_index,
    )  # fmt: skip


def uses_kernel(x: Tensor, prepared: PreparedIntervention) -> bool:
    """Whether ``run_prepared`` sends this ``x`` with these operands to the Triton kernel (else the
    twin runs). A hook decides this once, on its first call, and then calls ``apply_prepared``
    directly on the CPU: the decision costs more than the op at decode shapes."""
    p = prepared
    return _kernel(x, p.directions, p.weights, p.vectors, p.strengths) is not None


def run_prepared(
    x: Float[Tensor, "batch pos d_model"],
    prepared: PreparedIntervention,
    starts: Int[Tensor, " batch"] | None = None,
    coeffs: Float[Tensor, "batch pos m"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``fused_intervention`` with the constant operands prepared once by ``prepare_intervention``
    (``coeffs`` receives the readout's coefficients when ``prepared`` has one)."""
    p = prepared
    module = _kernel(x, p.directions, p.weights, p.vectors, p.strengths)
    if module is None:
        return apply_prepared(x, p, starts, coeffs)
    vectors, strengths = p.vectors, p.strengths
    if vectors is not None and strengths is not None and vectors.shape[0] != x.shape[0]:
        vectors, strengths = vectors.expand(x.shape[0], -1), strengths.expand(x.shape[0])
    args = (p.directions, p.weights, p.bias, vectors, strengths, starts)
    return _run_kernel(module, x, *args, readout=p.readout, coeffs=coeffs)


__all__ = [
    "PreparedIntervention",
    "apply_patch",
    "fused_intervention",
    "intervention_naive",
    "intervention_reference",
    "prepare_intervention",
    "read_coefficients",
    "run_prepared",
    "uses_kernel",
]
