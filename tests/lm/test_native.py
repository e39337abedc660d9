"""The native path (moia.lm.native) gives the TransformerLens paths' results: every intervention kind
at every site, left-padded batches, KV-cached greedy and sampled generation, the shared-prefix
runner, gradients of a trainable bias, stop_at_layer. Tiny random Llama (against HookedTransformer)
and Gemma 3 (against TransformerBridge) models here; the two embedded models in test_native_real."""

import pytest
import torch

import moia
from moia.core.sites import SITES
from moia.lm.decoding import Sampling, final_logits, generate_shared_prefix, generate_tokens
from moia.lm.native import NativeModel, execution_model, native_model

TOL = 1e-4  # float32, a 3-layer model: the paths differ by ~1e-6


@pytest.fixture(scope="module")
def llama(tiny_hf_dirs):
    """(native, reference): the tiny Llama on backend 'hf' and as a HookedTransformer."""
    path = tiny_hf_dirs["llama"]
    return moia.load_model(path, backend="hf"), moia.load_model(path, backend="hooked")


@pytest.fixture(scope="module")
def gemma(tiny_hf_dirs):
    """(native, reference): the native twin of the tiny Gemma 3's TransformerBridge, and the bridge."""
    bridge = moia.load_model(tiny_hf_dirs["gemma"], backend="bridge")
    return native_model(bridge), bridge


def _batch():
    """Three left-padded rows (padding 0, 3 and 5)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(2, 101, (3, 9), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    mask[2, :5] = 0
    return tokens, mask


def _interventions(case: str, d: int) -> list:
    g = torch.Generator().manual_seed(2)

    def vec(*shape):
        return torch.randn(*shape, d, generator=g)

    if case == "ablation-full":
        return [moia.DirectionAblation(vec(2), layers=[0, 2])]
    if case == "ablation-weighted":
        return [moia.DirectionAblation(vec(1), site="resid_post", weights={0: 0.3, 1: 0.9}, layers=[0, 1])]
    if case == "ablation-per-row":
        return [moia.DirectionAblation(vec(3, 2), layers=[1, 2], per_row=True)]
    if case == "ablation-resid-pre":
        return [moia.DirectionAblation(vec(1), site="resid_pre", weights=0.5)]
    if case == "injection-per-row":
        starts, strengths = torch.tensor([0, 2, 3]), torch.tensor([2.0, 0.0, 3.0])
        return [moia.ConceptInjection(vec(3), 1, strengths, starts)]
    if case == "all":  # what an experiment arm installs: ablation + bias + injection
        return [
            moia.DirectionAblation(vec(1), weights=0.7),
            moia.AdditiveVector(vec(), 0, scale=0.5),
            moia.ConceptInjection(vec(3), 1, torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1, 0, 3])),
        ]
    site = case.removeprefix("additive-")
    return [moia.AdditiveVector(vec(), 1, site=site)]


CASES = [
    "ablation-full",
    "ablation-weighted",
    "ablation-per-row",
    "ablation-resid-pre",
    "injection-per-row",
    "all",
] + [f"additive-{s}" for s in SITES]


def _logits(model, interventions, tokens, mask):
    with torch.no_grad(), moia.intervene(model, *interventions, attention_mask=mask):
        return model(tokens, attention_mask=mask)[mask.bool()]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_forward_equals_the_transformer_lens_path(request, arch, case):
    native, reference = request.getfixturevalue(arch)
    if case == "additive-resid_mid" and arch == "gemma":
        pytest.skip("the bridge has no resid_mid hook (test_resid_mid_is_the_residual_stream)")
    if case == "additive-mlp_pre_norm" and arch == "llama":
        reference_ivs = _interventions("additive-mlp_out", 64)  # the same site without a post-norm
    else:
        reference_ivs = _interventions(case, 64)
    tokens, mask = _batch()
    ours = _logits(native, _interventions(case, 64), tokens, mask)
    theirs = _logits(reference, reference_ivs, tokens, mask)
    plain = _logits(native, [], tokens, mask)
    assert (ours - theirs).abs().max() <= TOL
    assert (ours - plain).abs().max() > 100 * TOL  # the intervention did something


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_resid_mid_is_the_residual_stream(request, arch):
    """Adding b between attention and MLP equals adding it to what the attention block writes."""
    native, _ = request.getfixturevalue(arch)
    tokens, mask = _batch()
    b = torch.randn(64)
    mid = _logits(native, [moia.AdditiveVector(b, 1, site="resid_mid")], tokens, mask)
    attn = _logits(native, [moia.AdditiveVector(b, 1, site="attn_out")], tokens, mask)
    assert (mid - attn).abs().max() <= TOL


def test_resid_mid_on_the_bridge_is_an_error(gemma):
    with pytest.raises(ValueError, match="resid_mid.*no hook point on TransformerBridge"):
        moia.fwd_hooks(gemma[1], moia.AdditiveVector(torch.randn(64), 1, site="resid_mid"))


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_generation_equals_the_transformer_lens_path(request, arch):
    """KV-cached, left-padded, greedy and sampled; and the shared-prefix runner."""
    native, reference = request.getfixturevalue(arch)
    tokens, mask = _batch()
    ivs = _interventions("all", 64)
    sampled = dict(sampling=Sampling(1.0, top_k=20), seeds=[5, 6, 7])
    for kwargs in ({}, sampled):
        ours = generate_tokens(native, tokens, mask, *ivs, max_new_tokens=6, **kwargs)
        theirs = generate_tokens(reference, tokens, mask, *ivs, max_new_tokens=6, native=False, **kwargs)
        assert ours == theirs and sum(map(len, ours)) > 9
    prefix, suffixes = [5, 6, 7, 8], [[9, 10], [11], [12, 13, 14]]
    inj = moia.ConceptInjection(torch.randn(3, 64), 1, torch.tensor([3.0, 0.0, 2.0]), torch.tensor([4, 4, 5]))
    runs = [
        generate_shared_prefix(m, prefix, suffixes, ivs[:2], [inj], max_new_tokens=6, native=m is native)
        for m in (native, reference)
    ]
    assert runs[0] == runs[1]


def test_the_switch_runs_the_bridge_natively(gemma):
    native, bridge = gemma
    assert execution_model(bridge) is native  # the default (NATIVE_BY_DEFAULT)
    assert execution_model(bridge, native=False) is bridge
    assert execution_model(bridge, native=True) is native
    assert execution_model(native, native=False) is native  # a NativeModel has no other path
    tokens, mask = _batch()
    ivs = _interventions("all", 64)
    ours = generate_tokens(bridge, tokens, mask, *ivs, max_new_tokens=6, native=True)
    assert ours == generate_tokens(bridge, tokens, mask, *ivs, max_new_tokens=6, native=False)


def test_the_default_keeps_a_bridge_with_hooks_of_its_own(gemma):
    """A bridge inside a hooks context stays on the bridge, so the caller's hooks see the run."""
    native, bridge = gemma
    assert execution_model(bridge) is native
    seen: list[int] = []
    spy = [("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))]
    tokens, mask = _batch()
    with bridge.hooks(fwd_hooks=spy):
        assert execution_model(bridge) is bridge
        generate_tokens(bridge, tokens, mask, max_new_tokens=3)
    assert seen[0] == tokens.shape[1] and len(seen) >= 2  # the prefill and the decode steps


def test_the_native_path_needs_an_hf_model(llama):
    with pytest.raises(TypeError, match="needs a model that wraps a Hugging Face model"):
        native_model(llama[1])
    with pytest.raises(ValueError, match="backend must be 'hooked', 'bridge' or 'hf'"):
        moia.load_model("smollm2-135m-instruct", backend="native")


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_trainable_bias_gradients_equal(request, arch):
    """The trainer's forward (final_logits) with a live bias: same loss, same gradient."""
    native, reference = request.getfixturevalue(arch)
    tokens, mask = _batch()
    site = "mlp_pre_norm" if arch == "gemma" else "mlp_out"
    grads = []
    start = torch.randn(64) * 0.1
    inj = moia.ConceptInjection(torch.randn(3, 64), 2, 2.0, 1)
    for model in (native, reference):
        bias = torch.nn.Parameter(start.clone())
        with moia.intervene(model, moia.AdditiveVector(bias, 1, site=site), inj, attention_mask=mask):
            loss = final_logits(model, tokens, mask, keep=2).float().logsumexp(-1).sum()
        loss.backward()
        grads.append((loss.detach(), bias.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=TOL)
    assert grads[0][1].abs().max() > 1e-3
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=TOL, rtol=1e-4)


def test_stop_at_layer_returns_the_residual_after_the_hooks(llama):
    native, reference = llama
    tokens, mask = _batch()
    ivs = [moia.AdditiveVector(torch.randn(64), 1)]
    out = []
    for model in (native, reference):
        with torch.no_grad(), moia.intervene(model, *ivs):
            out.append(model(tokens, attention_mask=mask, stop_at_layer=2)[mask.bool()])
    assert out[0].shape == (int(mask.sum()), 64)
    assert (out[0] - out[1]).abs().max() <= TOL
    with pytest.raises(ValueError, match=r"stop_at_layer must lie in \[1, 3\], got 4"):
        native(tokens, stop_at_layer=4)


def test_hooks_contexts_remove_only_their_own(llama):
    native = llama[0]
    tokens = _batch()[0]
    calls: list[str] = []

    def record(tag):
        return lambda x, hook: calls.append(f"{tag}:{hook.name}")

    name = "blocks.0.hook_resid_post"
    with native.hooks(fwd_hooks=[(name, record("outer"))]):
        with native.hooks(fwd_hooks=[(lambda n: n.endswith("2.hook_mlp_out"), record("inner"))]):
            native(tokens)
        native(tokens)
    native(tokens)
    assert calls == [f"outer:{name}", "inner:blocks.2.hook_mlp_out", f"outer:{name}"]
    with (
        pytest.raises(RuntimeError, match="boom"),
        moia.intervene(native, moia.AdditiveVector(torch.randn(64), 0)),
    ):
        raise RuntimeError("boom")
    assert all(not p._handles for p in native.hook_dict.values()) and native.context_level == 0
    unknown = [("blocks.9.hook_resid_post", record("x"))]
    with (
        pytest.raises(ValueError, match="unknown hook name 'blocks.9.hook_resid_post'"),
        native.hooks(unknown),
    ):
        pass
    with pytest.raises(NotImplementedError, match="forward hooks only"), native.hooks(bwd_hooks=unknown):
        pass


def test_native_twin_of_a_bridge_shares_its_weights_and_leaves_it_alone(gemma):
    native, bridge = gemma
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    assert native_model(bridge) is native  # made once per bridge
    assert isinstance(native, NativeModel)
    assert not any(isinstance(m, GeneralizedComponent) for m in native.original_model.modules())
    ours = {p.data_ptr() for p in native.parameters()}
    assert ours and ours <= {p.data_ptr() for p in bridge.original_model.parameters()}
    tokens, mask = _batch()
    fired: list[str] = []
    spy = [("blocks.0.hook_resid_post", lambda x, hook: fired.append(hook.name))]
    with native.hooks(fwd_hooks=spy), torch.no_grad():
        theirs = bridge(tokens, attention_mask=mask)[mask.bool()]
    assert not fired  # a hook on the native twin does not act on the bridge
    assert (_logits(native, [], tokens, mask) - theirs).abs().max() <= TOL


def test_generation_runs_the_forwards_hf_generate_runs(llama, monkeypatch):
    """n new tokens cost n forwards (prefill + n - 1 steps), as in HF ``generate``, with HF's tokens;
    with a recorder (the mood ring) the last token is fed too, so the ring reads every token."""
    from moia.lm.decoding import Stepper

    native, _ = llama
    tokens, mask = _batch()
    calls: list[int] = []
    forward = Stepper.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Stepper, "forward", counted)
    ours = generate_tokens(native, tokens, mask, max_new_tokens=6)
    assert len(calls) == 6
    hf = native.original_model.generate(
        input_ids=tokens,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert ours == hf[:, tokens.shape[1] :].tolist()
    calls.clear()
    ring = moia.MoodRing(torch.randn(2, 64), layer=1)
    generate_tokens(native, tokens, mask, ring, max_new_tokens=6)
    assert len(calls) == 7
    assert [len(r) for r in ring.raw] == [int(m.sum()) + 6 for m in mask]
