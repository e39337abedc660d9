"""The fused intervention kernel against its torch twin, and the twin against the naive chain.

On a machine without CUDA the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set below
before triton is imported, since @triton.jit reads it when it decorates); on a GPU the same tests
run the compiled kernel on CUDA tensors.
"""

import os
import subprocess
import sys

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
from types import ModuleType  # noqa: E402

import moia.kernels as kernels  # noqa: E402
import pytest  # noqa: E402
from moia.kernels import fused_intervention, intervention_naive, intervention_reference  # noqa: E402
from moia.kernels.reference import apply_prepared, prepare_intervention  # noqa: E402

STARTS = [-3, 0, 10, 36, 50]  # before, at, inside, at the end of and after a 37-position sequence


@pytest.fixture(scope="module")
def tk() -> ModuleType:
    """The kernel module, interpreted on CPU (re-imported if something imported it compiled)."""
    pytest.importorskip("triton")
    module = importlib.import_module("moia.kernels.triton_intervention")
    interpreted = type(module._intervention_fwd_kernel).__name__ == "InterpretedFunction"
    if DEVICE == "cpu" and not interpreted:
        module = importlib.reload(module)
    return module


def make_inputs(
    batch: int,
    pos: int,
    d_model: int,
    k: int,
    *,
    bias: bool = True,
    inject: bool = True,
    dtype: torch.dtype = torch.float32,
    per_row_weights: bool = False,
    seed: int = 0,
) -> dict:
    """Random (never zero) inputs with orthonormal directions; starts cycle through STARTS."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d_model, max(k, 1), generator=g, dtype=torch.float64))[0]
    w_shape = (batch, k) if per_row_weights else (k,)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(DEVICE)

    return {
        "x": randn(batch, pos, d_model).to(dtype),
        "directions": q.T[:k].float().contiguous().to(DEVICE),
        "weights": (0.5 + torch.rand(w_shape, generator=g)).to(DEVICE),
        "bias": randn(d_model) if bias else None,
        "vectors": randn(batch, d_model) if inject else None,
        "strengths": (1 + torch.rand(batch, generator=g)).to(DEVICE) if inject else None,
        "starts": torch.tensor([STARTS[(i + 2) % 5] for i in range(batch)], device=DEVICE)
        if inject
        else None,
    }


# --- the twin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_twin_matches_naive(k: int, per_row: bool) -> None:
    inputs = make_inputs(5, 37, 64, k, per_row_weights=per_row)
    if per_row:  # one set of directions per row
        inputs["directions"] = torch.stack([inputs["directions"].roll(i, dims=1) for i in range(5)])
    torch.testing.assert_close(intervention_reference(**inputs), intervention_naive(**inputs))


def test_twin_without_anything_is_a_copy() -> None:
    x = torch.randn(2, 3, 8)
    out = intervention_reference(x)
    assert out is not x
    torch.testing.assert_close(out, x)


def test_twin_gradcheck() -> None:
    inputs = make_inputs(2, 3, 8, 2)
    inputs = {k: v.cpu().double() if v.is_floating_point() else v.cpu() for k, v in inputs.items()}
    x = inputs.pop("x").requires_grad_()
    bias = inputs.pop("bias").requires_grad_()
    assert torch.autograd.gradcheck(lambda x, b: intervention_reference(x, bias=b, **inputs), (x, bias))


def test_vectors_need_strengths_and_starts() -> None:
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="vectors needs strengths and starts"):
        intervention_reference(x, vectors=torch.randn(2, 8))


# --- the kernel against the twin -------------------------------------------------------------------


@pytest.mark.parametrize("extras", ["none", "bias", "injection", "both"])
@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("pos", [1, 37])
@pytest.mark.parametrize("d_model", [576, 640, 1000])
def test_kernel_matches_twin(tk: ModuleType, d_model: int, pos: int, batch: int, k: int, extras: str) -> None:
    inputs = make_inputs(
        batch, pos, d_model, k, bias=extras in ("bias", "both"), inject=extras in ("injection", "both")
    )
    out = torch.full_like(inputs["x"], float("nan"))  # poisoned: every element must be written
    result = tk.triton_intervention(**inputs, out=out)
    assert result is out
    torch.testing.assert_close(out, intervention_reference(**inputs))


@pytest.mark.parametrize("start", STARTS)
def test_kernel_injection_starts(tk: ModuleType, start: int) -> None:
    inputs = make_inputs(2, 37, 576, 1)
    inputs["starts"] = torch.tensor([start, 37 - start], device=DEVICE)
    torch.testing.assert_close(tk.triton_intervention(**inputs), intervention_reference(**inputs))


def test_kernel_per_row_and_absent_weights(tk: ModuleType) -> None:
    inputs = make_inputs(3, 5, 640, 3, per_row_weights=True)
    torch.testing.assert_close(tk.triton_intervention(**inputs), intervention_reference(**inputs))
    inputs["weights"] = None
    torch.testing.assert_close(tk.triton_intervention(**inputs), intervention_reference(**inputs))


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)], ids=["fp16", "bf16"]
)
def test_kernel_low_precision(tk: ModuleType, dtype: torch.dtype, tol: float) -> None:
    inputs = make_inputs(5, 37, 1000, 3, dtype=dtype)
    out = tk.triton_intervention(**inputs)
    assert out.dtype == dtype
    expected = intervention_reference(**{**inputs, "x": inputs["x"].float()})  # fp32 twin
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


def test_kernel_inplace(tk: ModuleType) -> None:
    inputs = make_inputs(5, 37, 576, 3)
    expected = intervention_reference(**inputs)
    x = inputs["x"]
    assert tk.triton_intervention(**inputs, inplace=True) is x
    torch.testing.assert_close(x, expected)
    with pytest.raises(ValueError, match="contiguous last dim"):
        tk.triton_intervention(x.transpose(1, 2), inplace=True)


def test_kernel_strided_input(tk: ModuleType) -> None:
    inputs = make_inputs(3, 20, 576, 1)
    inputs["x"] = inputs["x"][:, ::2]  # every other position: non-contiguous rows
    torch.testing.assert_close(tk.triton_intervention(**inputs), intervention_reference(**inputs))


def test_kernel_rejects_per_row_directions(tk: ModuleType) -> None:
    x = torch.randn(2, 3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="shared directions"):
        tk.triton_intervention(x, torch.randn(2, 1, 8, device=DEVICE))


@pytest.mark.slow
@pytest.mark.parametrize("d_model", [4096, 5376])
def test_kernel_large_d_model(tk: ModuleType, d_model: int) -> None:
    inputs = make_inputs(2, 3, d_model, 3)
    torch.testing.assert_close(tk.triton_intervention(**inputs), intervention_reference(**inputs))


# --- the readout (read-only directions, PROTOCOL §8) -----------------------------------------------


def _readout(d_model: int, m: int, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(m, d_model, generator=g)
    return (e / e.norm(dim=-1, keepdim=True)).to(DEVICE)


def _poisoned(x: torch.Tensor, m: int) -> torch.Tensor:
    return torch.full((*x.shape[:2], m), float("nan"), device=x.device)


@pytest.mark.parametrize("m", [1, 4])
def test_twin_readout_is_the_projection_and_changes_nothing(m: int) -> None:
    inputs = make_inputs(3, 9, 64, 2, per_row_weights=True)
    e = _readout(64, m)
    coeffs = _poisoned(inputs["x"], m)
    out = intervention_reference(**inputs, readout=e, coeffs=coeffs)
    expected = (inputs["x"].double() @ e.double().T).float()  # float64 oracle
    torch.testing.assert_close(coeffs, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, intervention_reference(**inputs))  # bit for bit, beside the ablation
    x = inputs["x"]
    alone = torch.zeros(*x.shape[:2], m)
    assert intervention_reference(x, readout=e, coeffs=alone) is x  # alone: x itself, not a copy
    torch.testing.assert_close(alone, expected)


def test_twin_readout_beside_per_row_directions() -> None:
    inputs = make_inputs(4, 5, 64, 1)
    inputs["directions"] = torch.stack([inputs["directions"].roll(i, dims=1) for i in range(4)])
    e = _readout(64, 3)
    coeffs = _poisoned(inputs["x"], 3)
    out = intervention_reference(**inputs, readout=e, coeffs=coeffs)
    assert torch.equal(out, intervention_reference(**inputs))
    torch.testing.assert_close(coeffs, inputs["x"] @ e.T)


def test_readout_errors() -> None:
    x = torch.randn(2, 3, 8)
    prepared = prepare_intervention(readout=torch.randn(2, 8))
    with pytest.raises(ValueError, match="readout needs coeffs"):
        apply_prepared(x, prepared)
    with pytest.raises(ValueError, match=r"coeffs must be float32 of shape \(2, 3, 2\), got .*\(2, 3, 3\)"):
        apply_prepared(x, prepared, coeffs=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"coeffs must be float32"):
        apply_prepared(x, prepared, coeffs=torch.zeros(2, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"readout must be \[m, d_model\] with m >= 1, got shape \(8,\)"):
        prepare_intervention(readout=torch.randn(8))


@pytest.mark.parametrize("extras", ["alone", "ablation", "all"])
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("pos", [1, 37])
@pytest.mark.parametrize("d_model", [576, 1000])
def test_kernel_readout_matches_twin(tk: ModuleType, d_model: int, pos: int, m: int, extras: str) -> None:
    k = 0 if extras == "alone" else 3
    inputs = make_inputs(5, pos, d_model, k, bias=extras == "all", inject=extras == "all")
    if k == 0:
        inputs["directions"] = inputs["weights"] = None
    e = _readout(d_model, m)
    got, want = _poisoned(inputs["x"], m), _poisoned(inputs["x"], m)  # every coefficient is written
    x_before = inputs["x"].clone()
    out = tk.triton_intervention(**inputs, readout=e, coeffs=got)
    expected = intervention_reference(**inputs, readout=e, coeffs=want)
    torch.testing.assert_close(got, want)  # the kernel emits the twin's coefficients
    torch.testing.assert_close(out, expected)
    assert torch.equal(inputs["x"], x_before)
    if extras == "alone":
        assert out is inputs["x"]  # nothing written
    else:  # the readout leaves the kernel's own output bit for bit as it is
        assert torch.equal(out, tk.triton_intervention(**inputs))


def test_kernel_readout_low_precision_and_strided(tk: ModuleType) -> None:
    inputs = make_inputs(3, 20, 640, 1, dtype=torch.bfloat16)
    inputs["x"] = inputs["x"][:, ::2]  # non-contiguous rows
    e = _readout(640, 3)
    got = _poisoned(inputs["x"], 3)
    tk.triton_intervention(**inputs, readout=e, coeffs=got)
    expected = inputs["x"].double() @ e.double().T  # fp32 accumulation of the bf16 values
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="readout needs coeffs"):
        tk.triton_intervention(inputs["x"], readout=e)


# --- autograd and dispatch -------------------------------------------------------------------------


def _grads(fn, inputs: dict) -> tuple[torch.Tensor, ...]:
    x = inputs["x"].clone().requires_grad_()
    bias = None if inputs["bias"] is None else inputs["bias"].clone().requires_grad_()
    y = fn(**{**inputs, "x": x, "bias": bias})
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device))
    return (y, x.grad) if bias is None else (y, x.grad, bias.grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [0, 2])
def test_autograd_matches_twin(tk: ModuleType, k: int, bias: bool) -> None:
    inputs = make_inputs(5, 37, 640, k, bias=bias, per_row_weights=True)

    def fused(**kw: torch.Tensor | None) -> torch.Tensor:
        return tk.FusedIntervention.apply(*(kw[name] for name in list(inputs)))

    for got, want in zip(_grads(fused, inputs), _grads(intervention_reference, inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_autograd_broadcast_gradient(tk: ModuleType) -> None:
    """y.sum().backward() hands backward a dy with all strides 0."""
    inputs = make_inputs(3, 7, 576, 1)
    grads = []
    for fn in (tk.FusedIntervention.apply, intervention_reference):
        x, bias = inputs["x"].clone().requires_grad_(), inputs["bias"].clone().requires_grad_()
        fn(x, inputs["directions"], inputs["weights"], bias, None, None, None).sum().backward()
        grads.append((x.grad, bias.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_dispatch(tk: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = make_inputs(2, 4, 576, 1)
    x = inputs.pop("x").requires_grad_()
    if DEVICE == "cpu":  # without the flag CPU tensors take the twin
        monkeypatch.delenv("MOIA_FORCE_TRITON", raising=False)
        assert "FusedIntervention" not in type(fused_intervention(x, **inputs).grad_fn).__name__
    monkeypatch.setenv("MOIA_FORCE_TRITON", "1")
    assert "FusedIntervention" in type(fused_intervention(x, **inputs).grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(fused_intervention(x, **inputs), intervention_reference(x, **inputs))
    per_row = inputs["directions"].expand(2, 1, 576)
    y = fused_intervention(x, **{**inputs, "directions": per_row})
    assert "FusedIntervention" not in type(y.grad_fn).__name__
    weights = inputs["weights"].clone().requires_grad_()  # a trained w: only the twin gives its grad
    fused_intervention(x, **{**inputs, "weights": weights}).sum().backward()
    assert weights.grad is not None
    e = _readout(576, 2)
    for grad in (True, False):  # with gradients the coefficients are read beside the autograd op
        coeffs = _poisoned(x, 2)
        with torch.set_grad_enabled(grad):
            y = fused_intervention(x, **inputs, readout=e, coeffs=coeffs)
            assert y is not x
            alone = _poisoned(x, 2)
            assert fused_intervention(x, readout=e, coeffs=alone) is x
        assert not coeffs.requires_grad
        torch.testing.assert_close(coeffs, (x @ e.T).detach())
        torch.testing.assert_close(alone, coeffs)


def test_import_without_triton() -> None:
    code = (
        "import sys, torch; sys.modules['triton'] = None\n"
        "import moia.kernels as k\n"
        "assert not k._HAS_TRITON\n"
        "x = torch.randn(2, 3, 8)\n"
        "assert torch.equal(k.fused_intervention(x, bias=torch.ones(8)), x + 1)\n"
    )
    env = {**os.environ, "MOIA_FORCE_TRITON": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert isinstance(kernels._HAS_TRITON, bool)


def test_a_broken_triton_says_so_once(monkeypatch):
    """An installed triton that cannot be imported falls back to the twin with a warning."""
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.endswith("triton_intervention") or (args and args[2] and "triton_intervention" in args[2]):
            raise ImportError("libcuda.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(kernels, "_HAS_TRITON", True)
    monkeypatch.setattr(kernels, "_triton_module", None)
    monkeypatch.setattr(builtins, "__import__", failing)
    with pytest.warns(RuntimeWarning, match="triton is installed but cannot be imported.*libcuda"):
        assert kernels._kernel_module() is None
    assert kernels._HAS_TRITON is False


# --- patches (activation patching: a per-row copy from source rows) --------------------------------


def make_patch(batch: int, pos: int, d_model: int, mode: str, seed: int = 3) -> dict:
    """A patch whose mask sets one position per row (row i: position i % pos), plus one row with two
    and one with none; ``mode``: one shared source row, one per row, or an index into 3 sources."""
    g = torch.Generator().manual_seed(seed)
    n_src = {"shared": 1, "per_row": batch, "indexed": 3}[mode]
    mask = torch.zeros(batch, pos, dtype=torch.bool)
    mask[torch.arange(batch), torch.arange(batch) % pos] = True
    mask[0, -1] = True
    if batch > 2:
        mask[1] = False
    return {
        "patch": (100 * torch.randn(n_src, pos, d_model, generator=g)).to(DEVICE),
        "patch_mask": mask.to(DEVICE),
        "patch_index": torch.randint(0, 3, (batch,), generator=g).to(DEVICE) if mode == "indexed" else None,
    }


@pytest.mark.parametrize("mode", ["shared", "per_row", "indexed"])
@pytest.mark.parametrize("extras", [False, True])
def test_twin_patch_matches_naive(mode: str, extras: bool) -> None:
    inputs = make_inputs(5, 7, 64, 2 if extras else 0, bias=extras, inject=extras)
    inputs.update(make_patch(5, 7, 64, mode))
    torch.testing.assert_close(intervention_reference(**inputs), intervention_naive(**inputs))


def test_twin_patch_is_a_copy_not_an_addition() -> None:
    """Patched positions hold the source bit for bit; x + (P - x) would not (fp32 rounding)."""
    inputs = make_inputs(5, 7, 64, 1)
    patch = make_patch(5, 7, 64, "indexed")
    out = intervention_reference(**inputs, **patch)
    mask, source = patch["patch_mask"], patch["patch"][patch["patch_index"]]
    assert torch.equal(out[mask], source[mask])
    assert torch.equal(out[~mask], intervention_reference(**inputs)[~mask])
    x = inputs["x"]
    assert not torch.equal((x + (source - x))[mask], source[mask])  # why the op copies


def test_patch_errors() -> None:
    """check_patch (which the twin and the kernel call) names what is wrong."""
    from moia.kernels.reference import check_patch

    x = torch.randn(2, 3, 8)
    p = torch.randn(1, 3, 8)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="patch_mask and patch_index need a patch"):
        check_patch(x, None, mask, None)
    with pytest.raises(ValueError, match=r"patch must be \[n_src, 3, 8\], got \(1, 4, 8\)"):
        check_patch(x, torch.randn(1, 4, 8), mask, None)
    with pytest.raises(ValueError, match=r"a patch needs patch_mask, a bool \[2, 3\] tensor"):
        check_patch(x, p, mask.long(), None)
    with pytest.raises(ValueError, match="patch has 3 source rows for a batch of 2: give patch_index"):
        check_patch(x, torch.randn(3, 3, 8), mask, None)
    with pytest.raises(ValueError, match=r"patch_index must be integer \[2\]"):
        check_patch(x, p, mask, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="patch has 3 source rows"):  # the kernel checks too
        kernels.fused_intervention(x, patch=torch.randn(3, 3, 8), patch_mask=mask)


@pytest.mark.parametrize("mode", ["shared", "per_row", "indexed"])
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("d_model", [64, 576])
def test_kernel_patch_matches_twin(tk: ModuleType, d_model: int, extras: bool, mode: str) -> None:
    inputs = make_inputs(5, 7, d_model, 2 if extras else 0, bias=extras, inject=extras)
    inputs.update(make_patch(5, 7, d_model, mode))
    out = torch.full_like(inputs["x"], float("nan"))
    tk.triton_intervention(**inputs, out=out)
    expected = intervention_reference(**inputs)
    torch.testing.assert_close(out, expected)
    mask = inputs["patch_mask"]
    assert torch.equal(out[mask], expected[mask])  # the copy is exact in the kernel too


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_patch_low_precision_is_exact(tk: ModuleType, dtype: torch.dtype) -> None:
    inputs = make_inputs(4, 6, 640, 0, bias=False, inject=False, dtype=dtype)
    patch = make_patch(4, 6, 640, "shared")
    patch["patch"] = patch["patch"].to(dtype)
    out = tk.triton_intervention(**inputs, **patch)
    assert torch.equal(out, intervention_reference(**inputs, **patch))


def test_patch_dispatch_and_gradient(tk: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel takes patches without gradients; with them the twin runs, and dx is 0 where copied."""
    monkeypatch.setenv("MOIA_FORCE_TRITON", "1")
    inputs = make_inputs(3, 5, 576, 1, bias=False, inject=False)
    patch = make_patch(3, 5, 576, "shared")
    with torch.no_grad():
        torch.testing.assert_close(
            fused_intervention(**inputs, **patch), intervention_reference(**inputs, **patch)
        )
    x = inputs.pop("x").requires_grad_()
    y = fused_intervention(x, **inputs, **patch)
    assert "FusedIntervention" not in type(y.grad_fn).__name__
    y.sum().backward()
    assert x.grad is not None
    assert bool((x.grad[patch["patch_mask"]] == 0).all()) and bool((x.grad[~patch["patch_mask"]] != 0).any())
