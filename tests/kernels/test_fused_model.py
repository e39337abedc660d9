"""The fused hooks inside a real model run equal the unfused, TransformerLens-style hooks: SmolLM2,
refusal ablation at every layer (every writer) + a bias + a per-row injection. Through the twin
in-process, and through the Triton kernel (interpreted on CPU) in a subprocess."""

import json
import os
import subprocess
import sys

import pytest
import torch

import moia

pytestmark = pytest.mark.slow


def naive_hooks(model, r, bias, bias_layer, vectors, strengths, starts, layer):
    """One Python hook per op, as a TransformerLens user writes them."""
    r = r / r.norm()

    def ablate(x, hook):
        return x - (x @ r)[..., None] * r

    def add(x, hook):
        return x + bias

    def inject(x, hook):
        pos = torch.arange(x.shape[1])
        mask = (pos[None, :] >= starts[:, None]).to(x.dtype)[..., None]
        return x + mask * (strengths[:, None] * vectors)[:, None, :]

    hooks = [("blocks.0.hook_resid_pre", ablate)]
    for i in range(model.cfg.n_layers):
        hooks += [(f"blocks.{i}.hook_attn_out", ablate), (f"blocks.{i}.hook_mlp_out", ablate)]
    return hooks + [
        (f"blocks.{bias_layer}.hook_resid_post", add),
        (f"blocks.{layer}.hook_resid_post", inject),
    ]


def _case(model, batch=3, pos=12):
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    return dict(
        tokens=torch.randint(100, 40000, (batch, pos), generator=g),
        r=torch.randn(d, generator=g),
        bias=torch.randn(d, generator=g),
        bias_layer=8,
        vectors=torch.randn(batch, d, generator=g) * 2,
        strengths=torch.tensor([4.0, 0.0, 2.0])[:batch],
        starts=torch.tensor([0, 5, 11])[:batch],
        layer=14,
    )


def _fused(model, c):
    return (
        moia.DirectionAblation(c["r"]),
        moia.AdditiveVector(c["bias"], c["bias_layer"]),
        moia.ConceptInjection(c["vectors"], c["layer"], c["strengths"], c["starts"]),
    )


def test_fused_twin_equals_naive_hooks(smollm2):
    c = _case(smollm2)
    with torch.no_grad():
        naive = smollm2.run_with_hooks(
            c["tokens"], fwd_hooks=naive_hooks(smollm2, **{k: v for k, v in c.items() if k != "tokens"})
        )
        fused = smollm2.run_with_hooks(c["tokens"], fwd_hooks=moia.fwd_hooks(smollm2, *_fused(smollm2, c)))
        plain = smollm2(c["tokens"])
    assert (fused - naive).abs().max() <= 1e-3
    assert (fused - plain).abs().max() > 0.1


SCRIPT = """
import json, sys, torch, moia
from tests.kernels.test_fused_model import _case, _fused
torch.set_grad_enabled(False)
model = moia.load_model("smollm2-135m-instruct", backend="hooked")
c = _case(model, batch=2, pos=6)
hooks = moia.fwd_hooks(model, *_fused(model, c))
import moia.kernels.triton_intervention as tk
calls = []
orig = tk.triton_intervention
tk.triton_intervention = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
logits = model.run_with_hooks(c["tokens"], fwd_hooks=hooks)
json.dump({"logits": logits[:, -1].tolist(), "kernel_calls": len(calls)}, sys.stdout)
"""


def test_fused_kernel_equals_twin_in_model(smollm2):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "MOIA_FORCE_TRITON": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kernel_calls"] == 1 + 2 * smollm2.cfg.n_layers + 2  # every hook ran the kernel
    c = _case(smollm2, batch=2, pos=6)
    with torch.no_grad():
        twin = smollm2.run_with_hooks(c["tokens"], fwd_hooks=moia.fwd_hooks(smollm2, *_fused(smollm2, c)))
    torch.testing.assert_close(torch.tensor(result["logits"]), twin[:, -1], atol=1e-3, rtol=1e-4)
