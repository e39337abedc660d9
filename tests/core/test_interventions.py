"""Hook modules on a tiny random model: values against plain formulas, composition, errors."""

import pytest
import torch

import moia
from moia.core.compile import compile_hooks
from moia.core.interventions import injections_by_layer


def _resid(model, tokens, *interventions, name="blocks.1.hook_resid_post", attention_mask=None):
    store = {}

    def save(x, hook):
        store["x"] = x.detach().clone()

    hooks = moia.fwd_hooks(model, *interventions, attention_mask=attention_mask)
    model.run_with_hooks(tokens, fwd_hooks=[*hooks, (name, save)])
    return store["x"]


def test_additive_vector_adds_exactly(tiny):
    tokens = torch.randint(0, 100, (3, 9))
    v = torch.randn(64)
    clean = _resid(tiny, tokens, name="blocks.0.hook_resid_post")
    steered = _resid(tiny, tokens, moia.AdditiveVector(v, 0, scale=2.5), name="blocks.0.hook_resid_post")
    torch.testing.assert_close(steered - clean, (2.5 * v).expand_as(clean), atol=1e-5, rtol=0)


def test_injection_per_row_starts_and_strengths(tiny):
    tokens = torch.randint(0, 100, (3, 9))
    v = torch.randn(3, 64)
    inj = moia.ConceptInjection(v, 1, strengths=[1.0, 0.0, -2.0], start=[0, 4, 8])
    delta = _resid(tiny, tokens, inj) - _resid(tiny, tokens)
    expected = torch.zeros_like(delta)
    expected[0, 0:] = v[0]
    expected[2, 8:] = -2.0 * v[2]
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)


def test_injection_respects_left_padding(tiny):
    """Row 1 is padded by 3: its start 2 is padded position 5."""
    tokens = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    v = torch.randn(64)
    inj = moia.ConceptInjection(v, 1, strengths=1.0, start=2)
    delta = _resid(tiny, tokens, inj, attention_mask=mask) - _resid(tiny, tokens, attention_mask=mask)
    assert delta[0, :2].abs().max() == 0 and delta[1, :5].abs().max() == 0
    torch.testing.assert_close(delta[0, 2:], v.expand(6, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(delta[1, 5:], v.expand(3, 64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_ablation_resid_post_weighted(tiny, weight):
    tokens = torch.randint(0, 100, (2, 7))
    r = torch.randn(64)
    rhat = r / r.norm()
    abl = moia.DirectionAblation(r, layers=[1], weights=weight, site="resid_post")
    clean, out = _resid(tiny, tokens), _resid(tiny, tokens, abl)
    torch.testing.assert_close(out @ rhat, (1 - weight) * (clean @ rhat), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out - (out @ rhat)[..., None] * rhat, clean - (clean @ rhat)[..., None] * rhat, atol=1e-5, rtol=1e-5
    )


def test_k_directions_are_orthonormalised(tiny):
    tokens = torch.randint(0, 100, (2, 7))
    r = torch.randn(3, 64)
    out = _resid(tiny, tokens, moia.DirectionAblation(r, site="resid_post"))
    assert (out @ r.T).abs().max() < 1e-4 * out.norm(dim=-1).max()


def test_per_row_directions(tiny):
    tokens = torch.randint(0, 100, (3, 7))
    r = torch.randn(3, 64)
    out = _resid(tiny, tokens, moia.DirectionAblation(r, site="resid_post", per_row=True))
    for i in range(3):
        single = _resid(tiny, tokens[i : i + 1], moia.DirectionAblation(r[i], site="resid_post"))
        torch.testing.assert_close(out[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_one_hook_per_hook_point(tiny):
    r1, r2, b = torch.randn(64), torch.randn(64), torch.randn(64)
    hooks, _ = compile_hooks(
        tiny,
        (
            moia.DirectionAblation(r1, site="resid_post"),
            moia.DirectionAblation(r2, site="resid_post"),
            moia.AdditiveVector(b, 1),
            moia.ConceptInjection(b, 1, 2.0, 0),
        ),
    )
    names = [n for n, _ in hooks]
    assert len(names) == len(set(names))
    assert "blocks.1.hook_resid_post" in names and "hook_embed" in names


def test_composed_full_ablations_project_out_the_span(tiny):
    tokens = torch.randint(0, 100, (2, 7))
    r1, r2 = torch.randn(64), torch.randn(64)
    out = _resid(
        tiny,
        tokens,
        moia.DirectionAblation(r1, site="resid_post"),
        moia.DirectionAblation(r2, site="resid_post"),
    )
    assert (out @ torch.stack([r1, r2]).T).abs().max() < 1e-4 * out.norm(dim=-1).max()


def test_weighted_non_orthogonal_composition_is_refused(tiny):
    r1, r2 = torch.randn(64), torch.randn(64)
    with pytest.raises(ValueError, match="non-orthogonal"):
        compile_hooks(
            tiny,
            (
                moia.DirectionAblation(r1, weights=0.5, site="resid_post"),
                moia.DirectionAblation(r2, weights=0.5, site="resid_post"),
            ),
        )


def test_writers_site_hook_points(tiny):
    hooks, _ = compile_hooks(tiny, (moia.DirectionAblation(torch.randn(64)),))
    assert sorted(n for n, _ in hooks) == sorted(
        [
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_attn_out",
            "blocks.0.hook_mlp_out",
            "blocks.1.hook_attn_out",
            "blocks.1.hook_mlp_out",
        ]
    )


def test_no_hook_remains_after_exception(tiny):
    tokens = torch.randint(0, 100, (1, 5))
    with (
        pytest.raises(RuntimeError, match="boom"),
        moia.intervene(
            tiny, moia.DirectionAblation(torch.randn(64)), moia.ConceptInjection(torch.randn(64), 1, 1.0, 0)
        ),
    ):
        tiny(tokens)
        assert (
            sum(len(hp.fwd_hooks) for hp in tiny.hook_dict.values()) == 7
        )  # 5 writers, injection, position tracker
        raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny.hook_dict.values())


def test_nested_contexts_remove_only_their_own(tiny):
    with moia.intervene(tiny, moia.AdditiveVector(torch.randn(64), 0)):
        with moia.intervene(tiny, moia.AdditiveVector(torch.randn(64), 1)):
            pass
        assert len(tiny.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 1
    assert len(tiny.hook_dict["blocks.0.hook_resid_post"].fwd_hooks) == 0


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: moia.AdditiveVector(torch.randn(63), 0), "d_model=64"),
        (lambda: moia.DirectionAblation(torch.randn(2, 65)), "d_model=64"),
        (lambda: moia.AdditiveVector(torch.tensor([float("nan")] * 64), 0), "vector contains NaN"),
        (lambda: moia.ConceptInjection(torch.full((64,), float("inf")), 0), "vectors contains NaN or inf"),
        (lambda: moia.DirectionAblation(torch.zeros(64)), "zero-norm"),
        (lambda: moia.DirectionAblation(torch.randn(64), layers=[5]), "layer 5 out of range"),
        (lambda: moia.AdditiveVector(torch.randn(64), 2), "layer 2 out of range"),
        (lambda: moia.ConceptInjection(torch.randn(64), -1), "layer -1 out of range"),
        (lambda: moia.AdditiveVector(torch.randn(64), 0, site="resid_middle"), "unknown hook site"),
        (
            lambda: moia.DirectionAblation(torch.randn(64), site="attn"),
            "DirectionAblation site: unknown hook site 'attn'",
        ),
        (lambda: moia.ConceptInjection(torch.randn(3, 64), 0, strengths=[1.0, 2.0]), "disagree on the batch"),
        (lambda: moia.DirectionAblation(torch.randn(2, 64), weights=[1.0, 1.0, 1.0]), "weights has 3"),
    ],
)
def test_bad_input_errors(tiny, make, match):
    with pytest.raises(ValueError, match=match):
        moia.fwd_hooks(tiny, make())


def test_per_row_length_must_match_batch(tiny):
    inj = moia.ConceptInjection(torch.randn(3, 64), 1, strengths=1.0, start=0)
    with pytest.raises(ValueError, match="have 3 rows but the batch has 2"):
        tiny.run_with_hooks(torch.randint(0, 100, (2, 5)), fwd_hooks=moia.fwd_hooks(tiny, inj))


def test_start_beyond_prompt(tiny):
    inj = moia.ConceptInjection(torch.randn(64), 1, strengths=1.0, start=[1, 9])
    with pytest.raises(ValueError, match=r"start \[9\] lies beyond the prompt"):
        tiny.run_with_hooks(torch.randint(0, 100, (2, 5)), fwd_hooks=moia.fwd_hooks(tiny, inj))


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match=r"unknown model name 'gpt-17'.*smollm2-135m-instruct"):
        moia.load_model("gpt-17")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        moia.load_model("smollm2-135m-instruct", backend="jax")


def test_trainable_vector_gets_gradients_and_updates_show(tiny):
    tokens = torch.randint(0, 100, (2, 6))
    b = torch.nn.Parameter(torch.zeros(64))
    hooks = moia.fwd_hooks(tiny, moia.AdditiveVector(b, 0))
    for p in tiny.parameters():
        p.requires_grad_(False)
    loss = tiny.run_with_hooks(tokens, fwd_hooks=hooks).logsumexp(-1).mean()
    loss.backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    with torch.no_grad():
        b.add_(1.0)
        shifted = _resid(tiny, tokens, moia.AdditiveVector(b, 0), name="blocks.0.hook_resid_post")
        base = _resid(tiny, tokens, name="blocks.0.hook_resid_post")
    torch.testing.assert_close(shifted - base, torch.ones_like(base), atol=1e-5, rtol=0)


def test_injections_by_layer_per_row_layers_and_controls(tiny):
    """Row 0 at layer 0, row 1 a control, row 2 at layer 1: each sees only its own injection."""
    tokens = torch.randint(0, 100, (3, 6))
    v = torch.randn(3, 64)
    injections = injections_by_layer([v[0], None, v[2]], [0, None, 1], [2.0, 0.0, 3.0], [1, 0, 2])
    assert [inj.layer for inj in injections] == [0, 1]
    got0 = _resid(tiny, tokens, *injections, name="blocks.0.hook_resid_post")
    want0 = _resid(tiny, tokens, moia.ConceptInjection(v[0], 0, 2.0, 1), name="blocks.0.hook_resid_post")
    torch.testing.assert_close(got0[0], want0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got0[1:], _resid(tiny, tokens, name="blocks.0.hook_resid_post")[1:], atol=0, rtol=0
    )
    got1 = _resid(tiny, tokens, *injections)
    want1 = _resid(tiny, tokens[2:], moia.ConceptInjection(v[2], 1, 3.0, 2))
    torch.testing.assert_close(got1[2:], want1, atol=1e-5, rtol=1e-5)
    assert injections_by_layer([None], [None], [0.0], [0]) == []
    with pytest.raises(ValueError, match="one entry per row, got 2, 1 and 2"):
        injections_by_layer([v[0], v[1]], [0], [1.0, 1.0], 0)
