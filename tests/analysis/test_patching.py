"""Patching sweeps on the tiny random model: every site against TransformerLens' own
``transformer_lens.patching`` (full grids), batching and left padding changing no cell, several
prompt pairs, and every error a caller can cause, by message. Real-model checks: test_patching_real."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from moia import patching
from moia.analysis.sites import PATCH_SITES

A, B = 3, 7  # the metric: logit of token A minus token B at the last position


def row_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, A] - logits[:, -1, B]


def tl_metric(logits: torch.Tensor) -> torch.Tensor:  # TransformerLens' kind: one scalar
    return row_metric(logits).mean()


def pair(seed: int = 1, length: int = 7, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 101, (n, length), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 50) % 101
    return clean, corrupted


def tl_sweep(model, corrupted, cache, metric, site: str) -> torch.Tensor:
    """TransformerLens' own result: its get_act_patch_<site>, or generic_activation_patch for
    resid_post (which it has no function for)."""
    if site == "resid_post":
        return tlp.generic_activation_patch(
            model, corrupted, cache, metric, tlp.layer_pos_patch_setter, "resid_post", ("layer", "pos")
        )
    return getattr(tlp, f"get_act_patch_{site}")(model, corrupted, cache, metric)


@pytest.mark.parametrize("site", list(PATCH_SITES))
def test_every_site_equals_transformer_lens(tiny, site: str) -> None:
    clean, corrupted = pair()
    _, cache = tiny.run_with_cache(clean)
    expected = tl_sweep(tiny, corrupted, cache, tl_metric, site)
    from_cache = patching.sweep(tiny, corrupted, cache, row_metric, site=site, batch_size=5)
    from_tokens = patching.sweep(tiny, corrupted, clean, tl_metric, site=site)  # scalar metric, run by run
    assert from_cache.shape == expected.shape
    torch.testing.assert_close(from_cache, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(from_tokens, expected, atol=1e-4, rtol=0)
    assert float((expected - expected.flatten()[0]).abs().max()) > 1e-2  # the grid is not flat


def test_tl_named_functions(tiny) -> None:
    clean, corrupted = pair()
    _, cache = tiny.run_with_cache(clean)
    torch.testing.assert_close(
        patching.get_act_patch_attn_head_out_by_pos(tiny, corrupted, cache, tl_metric),
        tlp.get_act_patch_attn_head_out_by_pos(tiny, corrupted, cache, tl_metric),
        atol=1e-4,
        rtol=0,
    )


def test_several_prompt_pairs_equal_transformer_lens(tiny) -> None:
    """Three pairs in one corrupted batch: a cell patches all three, as TransformerLens does."""
    clean, corrupted = pair(seed=2, n=3)
    _, cache = tiny.run_with_cache(clean)
    expected = tlp.get_act_patch_resid_mid(tiny, corrupted, cache, tl_metric)

    def per_run(logits: torch.Tensor) -> torch.Tensor:  # rows come three per patched run
        return row_metric(logits).view(-1, 3).mean(1)

    torch.testing.assert_close(
        patching.sweep(tiny, corrupted, cache, per_run, "resid_mid"), expected, atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        patching.sweep(tiny, corrupted, clean, tl_metric, "resid_mid"), expected, atol=1e-4, rtol=0
    )


def test_layers_subset_equals_transformer_lens_index_df(tiny) -> None:
    clean, corrupted = pair()
    _, cache = tiny.run_with_cache(clean)
    df = pd.DataFrame([[1, p, h] for p in range(7) for h in range(4)], columns=["layer", "pos", "head"])
    expected = tlp.get_act_patch_attn_head_out_by_pos(
        tiny, corrupted, cache, tl_metric, index_axis_names=None, index_df=df
    )
    ours = patching.sweep(tiny, corrupted, cache, row_metric, "attn_head_out_by_pos", layers=[1])
    assert ours.shape == (1, 7, 4)
    torch.testing.assert_close(ours.flatten(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "attn_head_out_by_pos"])
def test_batch_size_changes_no_cell(tiny, site: str) -> None:
    clean, corrupted = pair()
    results = [
        patching.sweep(tiny, corrupted, clean, row_metric, site, batch_size=b) for b in (1, 3, 10, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=0)


def test_left_padding_changes_no_cell(tiny) -> None:
    """A pair padded by 3 positions gives the unpadded grid shifted by 3; patching a padded
    position changes nothing (the corrupted run's metric)."""
    clean, corrupted = pair()
    pad = torch.zeros(1, 3, dtype=torch.long)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], dim=1).long()
    padded = patching.sweep(
        tiny, torch.cat([pad, corrupted], 1), torch.cat([pad, clean], 1), row_metric, attention_mask=mask
    )
    plain = patching.sweep(tiny, corrupted, clean, row_metric)
    torch.testing.assert_close(padded[:, 3:], plain, atol=1e-5, rtol=0)
    unpatched = row_metric(tiny(corrupted))[0]
    torch.testing.assert_close(padded[:, :3], unpatched.expand(2, 3), atol=1e-5, rtol=0)


def test_pairs_of_different_lengths_left_padded(tiny) -> None:
    """Pairs of 7 and 5 tokens left-padded into one sweep: with a mean-over-pairs metric each cell
    is the mean of the two pairs' own sweeps at the same distance from the end."""
    (c1, x1), (c2, x2) = pair(seed=3, length=7), pair(seed=4, length=5)
    pad = torch.zeros(1, 2, dtype=torch.long)
    clean, corrupted = torch.cat([c1, torch.cat([pad, c2], 1)]), torch.cat([x1, torch.cat([pad, x2], 1)])
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    joint = patching.sweep(tiny, corrupted, clean, tl_metric, "attn_out", attention_mask=mask)
    one = patching.sweep(tiny, x1, c1, row_metric, "attn_out")
    two = patching.sweep(tiny, x2, c2, row_metric, "attn_out")
    two = torch.cat([row_metric(tiny(x2))[0].expand(2, 2), two], dim=1)  # padded positions: no change
    torch.testing.assert_close(joint, (one + two) / 2, atol=1e-5, rtol=0)


# --- errors -----------------------------------------------------------------------------------------


def test_errors(tiny) -> None:
    clean, corrupted = pair()
    _, cache = tiny.run_with_cache(clean)
    with pytest.raises(ValueError, match=r"site: unknown patching site 'resid'.*'resid_pre'"):
        patching.sweep(tiny, corrupted, clean, row_metric, site="resid")
    with pytest.raises(
        ValueError, match=r"metric returned shape \(5, 101\) for the logits of 5 patched runs"
    ):
        patching.sweep(tiny, corrupted, clean, lambda lg: lg[:, -1], batch_size=5)
    with pytest.raises(ValueError, match=r"metric returned shape \(2,\) for one patched run \(2 rows\)"):
        two = torch.cat([corrupted, corrupted])
        patching.sweep(
            tiny,
            two,
            torch.cat([clean, clean]),
            lambda lg: row_metric(lg[:2]).sum() if lg.shape[0] > 2 else row_metric(lg),
        )
    with pytest.raises(ValueError, match="unequal prompt lengths: clean 6 tokens, corrupted 7"):
        patching.sweep(tiny, corrupted, clean[:, :6], row_metric)
    _, short_cache = tiny.run_with_cache(clean[:, :6])
    with pytest.raises(ValueError, match="unequal prompt lengths: clean 6 tokens, corrupted 7"):
        patching.sweep(tiny, corrupted, short_cache, row_metric)
    with pytest.raises(ValueError, match="2 clean prompts for 1 corrupted ones"):
        patching.sweep(tiny, corrupted, torch.cat([clean, clean]), row_metric)
    with pytest.raises(ValueError, match="clean cache has no 'blocks.1.hook_resid_mid'"):
        patching.sweep(
            tiny,
            corrupted,
            {"blocks.0.hook_resid_mid": cache["blocks.0.hook_resid_mid"]},
            row_metric,
            "resid_mid",
        )
    with pytest.raises(
        TypeError, match="expected an ActivationCache, a dict of activations or token ids, got list"
    ):
        patching.sweep(tiny, corrupted, [cache], row_metric)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        patching.sweep(tiny, corrupted, clean, row_metric, batch_size=0)
    with pytest.raises(ValueError, match="layers: layer 2 out of range for a model with 2 layers"):
        patching.sweep(tiny, corrupted, clean, row_metric, layers=[2])
    with pytest.raises(ValueError, match=r"corrupted_tokens: expected token ids \[pos\] or \[batch, pos\]"):
        patching.sweep(tiny, corrupted.float(), clean, row_metric)
    with pytest.raises(ValueError, match="padding on the left only"):
        patching.sweep(
            tiny, corrupted, clean, row_metric, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
        )
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 6\); the prompts are \(1, 7\)"):
        patching.sweep(tiny, corrupted, clean, row_metric, attention_mask=torch.ones(1, 6))
    with pytest.raises(TypeError, match="metric must be callable, got int"):
        patching.MetricValues(3)  # (sweep's own annotation rejects it first under the test checker)
    with pytest.raises(TypeError, match="metric must return a tensor or a number, got str"):
        patching.sweep(tiny, corrupted, clean, lambda lg: "high")
