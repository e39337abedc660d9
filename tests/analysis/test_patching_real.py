"""Patching sweeps on SmolLM2-135M-Instruct against TransformerLens' own ``transformer_lens.patching``
on both backends (≤ 1e-4 on the metric), one full grid, left padding and batch size on the real
model, and attribution patching's agreement with the exact sweep (PROTOCOL §9)."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from moia import patching
from moia.analysis.sites import PATCH_SITES

pytestmark = pytest.mark.slow
CLEAN, CORRUPTED = "John and Mary. John thanked", "John and Mary. Mary thanked"  # 6 tokens each
IOI_CLEAN = "When John and Mary went to the store, John gave a drink to"  # PROTOCOL §9
IOI_CORRUPTED = "When John and Mary went to the store, Mary gave a drink to"
SETTERS = {
    ("layer", "pos"): tlp.layer_pos_patch_setter,
    ("layer", "head"): tlp.layer_head_vector_patch_setter,
    ("layer", "pos", "head"): tlp.layer_pos_head_vector_patch_setter,
}


def setup(model, clean: str = CLEAN, corrupted: str = CORRUPTED):
    clean_t, corrupted_t = model.to_tokens(clean), model.to_tokens(corrupted)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, mary] - logits[:, -1, john]

    return clean_t, corrupted_t, metric, lambda logits: metric(logits).mean()


def tl_cells(model, corrupted, cache, metric, site: str, layers: list[int]) -> torch.Tensor:
    """TransformerLens' generic_activation_patch on every cell of ``layers`` (flattened, its order)."""
    spec = PATCH_SITES[site]
    sizes = {"pos": corrupted.shape[1], "head": model.cfg.n_heads}
    rows = [[layer] for layer in layers]
    for axis in spec.axes[1:]:
        rows = [r + [i] for r in rows for i in range(sizes[axis])]
    index = pd.DataFrame(rows, columns=list(spec.axes))
    return tlp.generic_activation_patch(
        model, corrupted, cache, metric, SETTERS[spec.axes], spec.act, index_df=index
    )


@torch.no_grad()
def test_resid_pre_grid_equals_transformer_lens(smollm2) -> None:
    """Every position of every fourth layer and the last (9 × 6 cells; the whole 30 × 6 grid took
    ~160 s of CI for TransformerLens' 180 batch-1 forwards), from the clean tokens."""
    clean, corrupted, metric, tl_metric = setup(smollm2)
    _, cache = smollm2.run_with_cache(clean)
    layers = [*range(0, 30, 4), 29]
    expected = tl_cells(smollm2, corrupted, cache, tl_metric, "resid_pre", layers)
    ours = patching.sweep(smollm2, corrupted, clean, metric, "resid_pre", layers=layers)
    assert ours.shape == (9, 6)
    torch.testing.assert_close(ours.flatten(), expected, atol=1e-4, rtol=0)
    assert float(expected.max() - expected.min()) > 1.0


@torch.no_grad()
@pytest.mark.parametrize("site", list(PATCH_SITES))
def test_every_site_equals_transformer_lens(smollm2_any, site: str) -> None:
    model = smollm2_any
    clean, corrupted, metric, tl_metric = setup(model)
    _, cache = model.run_with_cache(clean)
    layers = [17] if site == "attn_head_out_by_pos" else [0, 17]
    expected = tl_cells(model, corrupted, cache, tl_metric, site, layers)
    ours = patching.sweep(model, corrupted, cache, metric, site, layers=layers)
    torch.testing.assert_close(ours.flatten(), expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_padding_and_batch_size_change_no_cell(smollm2_any) -> None:
    model = smollm2_any
    clean, corrupted, metric, _ = setup(model)
    pad = torch.full((1, 2), model.tokenizer.pad_token_id)
    mask = torch.tensor([[0, 0] + [1] * corrupted.shape[1]])
    layers = [0, 12, 29]
    plain = patching.sweep(model, corrupted, clean, metric, layers=layers)
    padded = patching.sweep(
        model,
        torch.cat([pad, corrupted], 1),
        torch.cat([pad, clean], 1),
        metric,
        layers=layers,
        attention_mask=mask,
    )
    one_by_one = patching.sweep(model, corrupted, clean, metric, layers=layers, batch_size=1)
    torch.testing.assert_close(padded[:, 2:], plain, atol=1e-4, rtol=0)
    torch.testing.assert_close(one_by_one, plain, atol=1e-4, rtol=0)
    torch.testing.assert_close(padded[:, :2], metric(model(corrupted)).expand(3, 2), atol=1e-4, rtol=0)


def test_attribution_tracks_the_exact_sweep_on_ioi(smollm2) -> None:
    """Pearson correlation of attribution patching with the exact sweep on the IOI pair (README)."""
    clean, corrupted, metric, _ = setup(smollm2, IOI_CLEAN, IOI_CORRUPTED)
    sites = ["attn_out", "attn_head_out_all_pos"]
    estimate = patching.attribution(smollm2, corrupted, clean, lambda lg: metric(lg).sum(), site=sites)
    for site, floor in zip(sites, (0.85, 0.85), strict=True):  # measured: 0.919, 0.930
        exact = patching.sweep(smollm2, corrupted, clean, metric, site)
        r = torch.corrcoef(torch.stack([exact.flatten(), estimate[site].flatten()]))[0, 1]
        assert float(r) > floor, (site, float(r))
