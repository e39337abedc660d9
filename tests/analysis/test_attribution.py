"""Attribution patching against central finite differences of the metric (float64 tiny model): the
estimate minus the corrupted value must be the directional derivative along clean − corrupted."""

import pytest
import torch

from moia import patching
from tests.conftest import HAS_HOOKED

pytestmark = pytest.mark.skipif(not HAS_HOOKED, reason="transformer-lens >= 4 has no HookedTransformer")

A, B = 3, 7


@pytest.fixture(scope="module")
def tiny64():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        seed=1, dtype=torch.float64,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, A] - logits[:, -1, B]).mean()


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.tensor([[5, 9, 14, 2, 33, 8]])
    corrupted = clean.clone()
    corrupted[0, 1] = 40
    return clean, corrupted


@torch.no_grad()
def directional_derivative(model, corrupted, clean, name: str, index: tuple, eps: float = 1e-5) -> float:
    """(metric(act + eps·d) − metric(act − eps·d)) / 2eps with d = clean − corrupted at ``index``."""
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    delta = torch.zeros_like(corrupted_cache[name])
    delta[(slice(None), *index)] = (clean_cache[name] - corrupted_cache[name])[(slice(None), *index)]
    values = []
    for sign in (1, -1):
        out = model.run_with_hooks(corrupted, fwd_hooks=[(name, lambda x, hook, s=sign: x + s * eps * delta)])
        values.append(float(metric(out)))
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize(
    ("site", "name", "cell", "index"),
    [
        ("resid_pre", "blocks.1.hook_resid_pre", (1, 2), (2,)),
        ("resid_mid", "blocks.0.hook_resid_mid", (0, 1), (1,)),
        ("mlp_out", "blocks.0.hook_mlp_out", (0, 4), (4,)),
        ("attn_out", "blocks.1.hook_attn_out", (1, 5), (5,)),
        ("attn_head_out_by_pos", "blocks.0.attn.hook_z", (0, 3, 2), (3, 2)),
        ("attn_head_out_all_pos", "blocks.1.attn.hook_z", (1, 3), (slice(None), 3)),
    ],
)
def test_attribution_is_the_directional_derivative(tiny64, site, name, cell, index) -> None:
    clean, corrupted = prompts()
    estimate = patching.attribution(tiny64, corrupted, clean, metric, site=site)
    with torch.no_grad():
        base = metric(tiny64(corrupted)).float()
    expected = directional_derivative(tiny64, corrupted, clean, name, index)
    assert abs(expected) > 1e-4  # a cell that matters
    assert float(estimate[cell] - base) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_several_sites_in_one_pass_equal_one_at_a_time(tiny64) -> None:
    clean, corrupted = prompts()
    _, cache = tiny64.run_with_cache(clean)
    sites = ["resid_pre", "attn_out", "attn_head_out_all_pos"]
    together = patching.attribution(tiny64, corrupted, cache, metric, site=sites)
    assert list(together) == sites
    for site in sites:
        alone = patching.attribution(tiny64, corrupted, cache, metric, site=site)
        assert (
            together[site].shape
            == alone.shape
            == patching.sweep(tiny64, corrupted, cache, metric, site).shape
        )
        torch.testing.assert_close(together[site], alone)


def test_frozen_weights_still_get_a_gradient(tiny64) -> None:
    clean, corrupted = prompts()
    before = patching.attribution(tiny64, corrupted, clean, metric, site="resid_post")
    for p in tiny64.parameters():
        p.requires_grad_(False)
    try:
        torch.testing.assert_close(
            patching.attribution(tiny64, corrupted, clean, metric, site="resid_post"), before
        )
    finally:
        for p in tiny64.parameters():
            p.requires_grad_(True)


def test_attribution_needs_one_value(tiny64) -> None:
    clean, corrupted = prompts()
    with pytest.raises(
        ValueError, match=r"attribution needs a metric with one differentiable value.*got \(1, 50\)"
    ):
        patching.attribution(tiny64, corrupted, clean, lambda logits: logits[:, -1])
    with pytest.raises(ValueError, match=r"site: unknown patching site 'z'"):
        patching.attribution(tiny64, corrupted, clean, metric, site=["resid_pre", "z"])
