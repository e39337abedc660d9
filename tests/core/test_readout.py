"""The mood ring on a tiny random model: readings against an uncached run_with_cache, in batched,
left-padded, KV-cached and shared-prefix generation; it changes nothing; composition; errors."""

import types

import pytest
import torch

import moia
from moia.core.readout import Calibration, MoodRing
from moia.lm.decoding import Stepper, generate_shared_prefix, generate_tokens, left_pad

ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
LAYER = 1


@pytest.fixture
def tok_model(tiny, monkeypatch):
    """The tiny model with a stand-in tokenizer (the decode loop asks it for stop tokens)."""
    tokenizer = types.SimpleNamespace(
        eos_token_id=100,
        pad_token_id=0,
        unk_token_id=None,
        padding_side="left",
        convert_tokens_to_ids=lambda token: None,
    )
    monkeypatch.setattr(tiny, "tokenizer", tokenizer)
    return tiny


def _unit(e: torch.Tensor) -> torch.Tensor:
    return e / e.norm(dim=-1, keepdim=True)


def reference(model, tokens: list[int], e: torch.Tensor, layer: int = LAYER) -> torch.Tensor:
    """Projections from one uncached forward of the whole sequence (no padding, no cache)."""
    ids = torch.tensor([tokens])
    _, cache = model.run_with_cache(ids, attention_mask=torch.ones_like(ids))
    return cache[f"blocks.{layer}.hook_resid_post"][0] @ _unit(e).T


def assert_matches_reference(model, ring: MoodRing, e: torch.Tensor, rtol: float = 1e-5) -> None:
    for i, tokens in enumerate(ring.tokens):
        ref = reference(model, tokens, e)
        assert ring.raw[i].shape == ref.shape, i
        scale = ref.abs().max()
        assert float((ring.raw[i] - ref).abs().max()) <= rtol * float(scale), i


def test_readings_in_batched_padded_cached_generation(tok_model):
    e = torch.randn(3, 64)
    tokens, mask = left_pad(ROWS, 0)
    free = generate_tokens(tok_model, tokens, mask, max_new_tokens=6)
    stop = free[0][2]  # make row 0 stop early: its third token becomes the stop token
    tok_model.tokenizer.eos_token_id = stop
    ring = MoodRing(e, layer=LAYER)
    new = generate_tokens(tok_model, tokens, mask, ring, max_new_tokens=6)
    assert len(new[0]) < len(new[1]) or len(new[0]) < len(new[2])  # rows of different lengths
    assert ring.tokens == [r + n for r, n in zip(ROWS, new, strict=True)]
    assert ring.prompt_lengths == [len(r) for r in ROWS]
    assert_matches_reference(tok_model, ring, e)


def test_readings_with_a_shared_prefix(tok_model):
    e = torch.randn(2, 64)
    ring = MoodRing(e, layer=LAYER)
    prefix, suffixes = [3, 4, 5], [[6, 7, 8], [9], [10, 11]]
    new = generate_shared_prefix(tok_model, prefix, suffixes, shared=[ring], max_new_tokens=4)
    assert ring.tokens == [prefix + s + n for s, n in zip(suffixes, new, strict=True)]
    assert_matches_reference(tok_model, ring, e)


def test_own_forwards_inside_intervene(tok_model):
    """Without the engine: a forward of several tokens starts a sequence, one token continues it."""
    e = torch.randn(2, 64)
    ring = MoodRing(e, layer=LAYER)
    tokens, mask = left_pad(ROWS, 0)
    with moia.intervene(tok_model, ring, attention_mask=mask):
        tok_model(tokens, attention_mask=mask)
    for i, row in enumerate(ROWS):
        torch.testing.assert_close(ring.raw[i], reference(tok_model, row, e), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no token ids: they are set by moia.generate"):
        ring.tokens  # noqa: B018


def test_the_ring_changes_nothing_alone_and_composed(tok_model):
    """Tokens and logits are bit for bit the same with and without the ring, also when an ablation,
    a bias and an injection act at the ring's own hook point; the ring reads the hook's input."""
    torch.manual_seed(1)
    e, r, b, v = torch.randn(3, 64), torch.randn(64), torch.randn(64), torch.randn(3, 64)
    tokens, mask = left_pad(ROWS, 0)
    others = [
        moia.DirectionAblation(r, layers=[LAYER], site="resid_post", weights=0.5),
        moia.AdditiveVector(b, LAYER, scale=0.3),
        moia.ConceptInjection(v, LAYER, strengths=[1.0, 0.0, 2.0], start=[2, 0, 1]),
    ]
    for extra in ([], others):
        runs = []
        for ring in (None, MoodRing(e, layer=LAYER)):
            ivs = [*extra, *([ring] if ring else [])]
            stepper = Stepper(tok_model, tokens.shape[0])
            with torch.no_grad(), moia.intervene(tok_model, *ivs, attention_mask=mask) as state:
                state.manual = True
                logits = [stepper.forward(tokens, mask)]
                for _ in range(3):
                    logits.append(stepper.step(logits[-1].argmax(-1)[:, None]))
            runs.append(
                (torch.stack(logits), generate_tokens(tok_model, tokens, mask, *ivs, max_new_tokens=5))
            )
            if ring is not None and extra:  # reference: the hook's input, resid_mid + mlp_out
                for i, t in enumerate(ring.tokens):
                    ids = torch.tensor([t])
                    one = [
                        moia.DirectionAblation(r, layers=[LAYER], site="resid_post", weights=0.5),
                        moia.AdditiveVector(b, LAYER, scale=0.3),
                        moia.ConceptInjection(
                            v[i], LAYER, strengths=[[1.0, 0.0, 2.0][i]], start=[2, 0, 1][i]
                        ),
                    ]
                    with moia.intervene(tok_model, *one):
                        _, cache = tok_model.run_with_cache(ids, attention_mask=torch.ones_like(ids))
                    x = cache[f"blocks.{LAYER}.hook_resid_mid"] + cache[f"blocks.{LAYER}.hook_mlp_out"]
                    torch.testing.assert_close(ring.raw[i], x[0] @ _unit(e).T, rtol=1e-5, atol=1e-5)
        (logits_a, new_a), (logits_b, new_b) = runs
        assert torch.equal(logits_a, logits_b)
        assert new_a == new_b


def test_two_rings_at_one_hook_get_their_own_columns(tok_model):
    e1, e2 = torch.randn(2, 64), torch.randn(3, 64)
    ring1, ring2 = MoodRing(e1, layer=LAYER), MoodRing(e2, layer=LAYER, names=["a", "b", "c"])
    tokens, mask = left_pad(ROWS, 0)
    hooks, _ = moia.core.compile.compile_hooks(tok_model, [ring1, ring2])
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_post", "hook_embed"]
    generate_tokens(tok_model, tokens, mask, ring1, ring2, max_new_tokens=3)
    assert_matches_reference(tok_model, ring1, e1)
    assert_matches_reference(tok_model, ring2, e2)


def test_calibration_z_scores_and_file(tok_model, tmp_path):
    e = torch.randn(2, 64)
    raw = [torch.randn(5, 2) * 3 + 1, torch.randn(7, 2)]
    cal = Calibration.from_raw(raw, names=["x", "y"])
    flat = torch.cat(raw).double()
    torch.testing.assert_close(cal.mean, flat.mean(0).float())
    torch.testing.assert_close(cal.std, flat.std(0).float())
    assert cal.n_tokens == 12
    ring = MoodRing(e, layer=LAYER, calibration=cal, names=["x", "y"])
    tokens, mask = left_pad(ROWS, 0)
    generate_tokens(tok_model, tokens, mask, ring, max_new_tokens=2)
    for raw_i, z_i in zip(ring.raw, ring.readings, strict=True):
        torch.testing.assert_close(z_i, (raw_i - cal.mean) / cal.std)
    cal.save(tmp_path / "cal.safetensors", tok_model)
    back = Calibration.load(tmp_path / "cal.safetensors", tok_model)
    assert torch.equal(back.mean, cal.mean) and back.names == ("x", "y") and back.n_tokens == 12
    ring.calibration = (torch.zeros(2), torch.ones(2))  # a (mean, std) pair
    torch.testing.assert_close(ring.readings[0], ring.raw[0])


def test_a_direction_set_object_gives_names_and_layer(tok_model):
    ev = types.SimpleNamespace(names=["calm", "fear"], layer=0.5, vectors=torch.randn(2, 64))
    ring = MoodRing(ev)
    assert ring.names == ["calm", "fear"] and ring.layer == 0.5
    assert [n for n, _ in ring.site_ops(tok_model)] == ["blocks.1.hook_resid_post"]
    assert MoodRing(ev, layer=0).layer == 0


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: MoodRing(torch.randn(2, 64)), ValueError, "layer is required when vectors is a tensor"),
        (lambda: MoodRing(torch.zeros(2, 64), layer=1), ValueError, "direction 0 has zero norm"),
        (lambda: MoodRing(torch.randn(2, 64), 1, names=["a"]), ValueError, "names has 1 entries for 2"),
        (lambda: MoodRing(torch.randn(2, 3, 64), 1), ValueError, r"vectors must be \[k, d_model\]"),
        (lambda: MoodRing(torch.randn(2, 64), 1.5), ValueError, "MoodRing layer"),
        (lambda: MoodRing(torch.randn(2, 64), 1, site="nowhere"), ValueError, "MoodRing site: unknown"),
        (
            lambda: MoodRing(torch.randn(2, 64), 1, calibration=(torch.zeros(3), torch.ones(3))),
            ValueError,
            "calibration has 3 entries for 2 directions",
        ),
        (
            lambda: MoodRing(torch.randn(2, 64), 1, calibration=(torch.zeros(2), torch.zeros(2))),
            ValueError,
            "calibration std must be > 0",
        ),
        (lambda: Calibration.from_raw([torch.zeros(0, 2)]), ValueError, "at least one token"),
    ],
)
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_errors_against_the_model_and_the_sequence(tok_model):
    with pytest.raises(ValueError, match="vectors have d_model=32, but the model has d_model=64"):
        moia.fwd_hooks(tok_model, MoodRing(torch.randn(2, 32), layer=1))
    ring = MoodRing(torch.randn(2, 64), layer=1)
    with pytest.raises(ValueError, match="MoodRing has no calibration"):
        ring.readings  # noqa: B018
    with pytest.raises(ValueError, match="continued a sequence whose start the ring did not see"):
        ring.record(torch.zeros(1, 1, 2), offset=5, mask=None)
    ring.record(torch.zeros(2, 3, 2), offset=0, mask=None)
    with pytest.raises(ValueError, match="row 1: the ring saw 3 positions but the row has 4 tokens"):
        ring.finish([[1, 2], [1, 2, 3]], [[4], [4]])
