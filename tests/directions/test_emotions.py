"""Emotion vectors (PROTOCOL §7): the recipe against an independent computation, the span read,
score's batch and padding invariance, the story cache, files and errors."""

import json

import numpy as np
import pytest
import torch

import moia
from moia.directions.activations import span_means, span_token_range
from moia.directions.emotions import EmotionVectors, emotion_vectors, reading_text, vectors_from_means
from moia.directions.stories import (
    NEUTRAL,
    StorySettings,
    cache_file,
    default_emotions,
    emotion_stimuli,
    generate_stories,
    load_stories,
    story_topics,
)
from tests.emotion_fixtures import STORIES


def independent_vectors(model, stories, names, layer, skip, n_pcs):
    """The recipe by hand: run_with_cache on each story alone, mean over its tokens after BOS and
    skip; per-emotion means minus their mean; neutral PCs by an eigendecomposition (numpy)."""
    bos = model.tokenizer.bos_token

    def story_mean(text, skip):
        ids = torch.tensor([model.tokenizer(bos + text, add_special_tokens=False).input_ids])
        _, cache = model.run_with_cache(ids, names_filter=f"blocks.{layer}.hook_resid_post")
        return cache[f"blocks.{layer}.hook_resid_post"][0, 1 + skip :].double().mean(0).numpy()

    per = np.stack([np.mean([story_mean(s.text, skip) for s in stories if s.emotion == n], 0) for n in names])
    vectors = per - per.mean(0)
    neutral = np.stack([story_mean(s.text, skip) for s in stories if s.emotion == NEUTRAL])
    if n_pcs:
        centred = neutral - neutral.mean(0)
        _, eigvecs = np.linalg.eigh(centred.T @ centred)
        top = eigvecs[:, ::-1][:, :n_pcs]  # [d, n_pcs]
        vectors = vectors - (vectors @ top) @ top.T
    whole = np.stack([story_mean(s.text, 0) for s in stories if s.emotion == NEUTRAL])
    proj = whole @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    return vectors, proj.mean(0), proj.std(0, ddof=1)


# ------------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize("n_pcs", [0, 2])
def test_vectors_equal_an_independent_computation(tiny_tok, n_pcs):
    ev = emotion_vectors(tiny_tok, ["joy", "anger", "fear"], layer=1, stories=STORIES, n_pcs=n_pcs, skip=2)
    vectors, mean, std = independent_vectors(tiny_tok, STORIES, ["joy", "anger", "fear"], 1, 2, n_pcs)
    np.testing.assert_allclose(ev.vectors.double().numpy(), vectors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.neutral_mean.double().numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.neutral_std.double().numpy(), std, rtol=1e-4, atol=1e-5)
    assert ev.names == ["joy", "anger", "fear"] and ev.layer == 1
    assert ev.settings["n_stories"] == {"joy": 3, "anger": 2, "fear": 2, NEUTRAL: 4}
    np.testing.assert_allclose(ev.vectors.sum(0).numpy(), 0, atol=1e-5)  # relative to their mean


def test_vectors_from_means_by_hand():
    means = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    v = vectors_from_means(means, ["a", "a", "b"], ["a", "b"])
    assert torch.allclose(v, torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64))
    # the one neutral PC is the x axis: only y survives
    neutral = torch.tensor([[0.0, 1.0], [5.0, 1.0], [-5.0, 1.0]], dtype=torch.float64)
    v = vectors_from_means(means, ["a", "a", "b"], ["a", "b"], neutral, n_pcs=1)
    assert torch.allclose(v, torch.tensor([[0.0, -2.0], [0.0, 2.0]], dtype=torch.float64))


def test_depth_fraction_layer(tiny_tok):
    ev = emotion_vectors(tiny_tok, ["joy", "anger"], layer=0.5, stories=STORIES, skip=0)
    assert ev.layer == 1  # int(0.5 * 3)


# -------------------------------------------------------------------------------- the read
def test_span_token_range_keeps_the_span_tokens(smollm2_tok):
    tok = smollm2_tok
    text, span = reading_text(tok, "The cat sat.")
    ids, first, end = span_token_range(tok, text, span)
    assert text.startswith(tok.bos_token) and first == 1 and end == len(ids)
    assert tok.decode(ids[first:end]) == "The cat sat."
    with pytest.raises(ValueError, match="not a non-empty character range"):
        span_token_range(tok, text, (5, 5))


def test_span_means_equal_run_with_cache_and_ignore_padding(tiny_tok):
    texts = [
        "<|im_start|>A short one.",
        "<|im_start|>A much longer text with many more tokens in it than the first.",
    ]
    spans = [(12, len(texts[0])), (14, 40)]
    both = span_means(tiny_tok, texts, [0, 2], spans, skip=1, batch_size=2)
    for i, text in enumerate(texts):
        ids, first, end = span_token_range(tiny_tok.tokenizer, text, spans[i])
        _, cache = tiny_tok.run_with_cache(torch.tensor([ids]))
        for k, layer in enumerate([0, 2]):
            expected = cache[f"blocks.{layer}.hook_resid_post"][0, first + 1 : end].double().mean(0)
            torch.testing.assert_close(both[i, k], expected, rtol=1e-5, atol=1e-5)


def test_score_is_batch_and_padding_invariant(tiny_tok):
    ev = emotion_vectors(tiny_tok, ["joy", "anger", "fear"], layer=2, stories=STORIES, skip=1)
    texts = [s.text for s in STORIES] + ["Hi.", "A very much longer sentence " * 6]
    alone = torch.cat([ev.score(tiny_tok, [t]) for t in texts])
    batched = ev.score(tiny_tok, texts, batch_size=5)  # padded next to texts of other lengths
    reversed_ = ev.score(tiny_tok, texts[::-1], batch_size=3).flip(0)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reversed_, alone, rtol=1e-4, atol=1e-4)
    assert batched.shape == (len(texts), 3)


def test_score_is_the_z_scored_projection(tiny_tok):
    ev = emotion_vectors(tiny_tok, ["joy", "anger"], layer=2, stories=STORIES, skip=0)
    text = "The dog barked at the mailman."
    full, span = reading_text(tiny_tok.tokenizer, text)
    mean = span_means(tiny_tok, [full], [2], [span])[0, 0]
    unit = ev.vectors.double() / ev.vectors.double().norm(dim=-1, keepdim=True)
    expected = (mean @ unit.T - ev.neutral_mean.double()) / ev.neutral_std.double()
    torch.testing.assert_close(ev.score(tiny_tok, [text])[0].double(), expected, rtol=1e-5, atol=1e-5)
    # neutral stories score about 0 on average: they are the calibration
    neutral = ev.score(tiny_tok, [s.text for s in STORIES if s.emotion == NEUTRAL])
    torch.testing.assert_close(neutral.mean(0), torch.zeros(2), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ the stories
def test_stories_are_cached_and_reused(tiny_tok, tmp_path, monkeypatch):
    settings = StorySettings(max_new_tokens=6)
    first = generate_stories(
        tiny_tok, ["joy", "fear"], ["a walk"], settings, cache_dir=tmp_path, batch_size=2
    )
    assert [(s.emotion, s.topic) for s in first] == [
        ("joy", "a walk"),
        ("fear", "a walk"),
        (NEUTRAL, "a walk"),
    ]
    path = cache_file(tiny_tok, settings, tmp_path)
    assert path.exists() and len(path.read_text().splitlines()) == 3

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached story was generated again")

    monkeypatch.setattr("moia.directions.stories.generate", no_generation)
    again = generate_stories(tiny_tok, ["fear", "joy"], ["a walk"], settings, cache_dir=tmp_path)
    assert {(s.emotion, s.text) for s in again} == {(s.emotion, s.text) for s in first}
    monkeypatch.undo()
    # other settings: another file; more topics: only the missing stories are generated
    assert cache_file(tiny_tok, StorySettings(max_new_tokens=7), tmp_path) != path
    calls = []
    real = moia.directions.stories.generate

    def counting(model, prompts, **kwargs):
        calls.append(len(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr("moia.directions.stories.generate", counting)
    generate_stories(tiny_tok, ["joy", "fear"], ["a walk", "a swim"], settings, cache_dir=tmp_path)
    assert calls == [3] and len(path.read_text().splitlines()) == 6


def test_generated_stories_feed_the_vectors(tiny_tok, tmp_path):
    settings = StorySettings(max_new_tokens=12)
    ev = emotion_vectors(
        tiny_tok,
        ["joy", "fear"],
        layer=1,
        topics=["a walk", "a swim"],
        skip=2,
        story_settings=settings,
        cache_dir=tmp_path,
    )
    stories = generate_stories(tiny_tok, ["joy", "fear"], ["a walk", "a swim"], settings, cache_dir=tmp_path)
    again = emotion_vectors(tiny_tok, ["joy", "fear"], layer=1, stories=stories, skip=2)
    torch.testing.assert_close(ev.vectors, again.vectors)
    assert ev.settings["stories"] == "generated" and ev.settings["topics"] == ["a walk", "a swim"]


def test_shipped_stimuli():
    data = emotion_stimuli()
    assert default_emotions()[:6] == ["calm", "desperation", "anger", "fear", "joy", "sadness"]
    assert len(story_topics("train")) == 24 and len(story_topics("heldout")) == 10
    assert not set(story_topics("train")) & set(story_topics("heldout"))
    assert len(data["sentences"]) >= 60 and len(data["scenarios"]) >= 80
    assert "{emotion}" in data["story_prompt"] and "{topic}" in data["neutral_story_prompt"]
    with pytest.raises(ValueError, match="unknown topic split 'test'"):
        story_topics("test")


# ------------------------------------------------------------------------------ files, errors
def test_save_load_round_trip(tiny_tok, tmp_path):
    ev = emotion_vectors(tiny_tok, ["joy", "anger", "fear"], layer=2, stories=STORIES, skip=1)
    ev.save(tmp_path / "ev.safetensors")
    back = EmotionVectors.load(tmp_path / "ev.safetensors", model=tiny_tok)
    assert back.names == ev.names and back.layer == 2 and back.settings == json.loads(json.dumps(ev.settings))
    for name in ("vectors", "neutral_mean", "neutral_std"):
        assert torch.equal(getattr(back, name), getattr(ev, name))
    assert torch.equal(back.vector("anger"), ev.vectors[1]) and torch.equal(
        back.get("fear", 2), ev.vectors[2]
    )


def test_a_vector_file_of_another_model_is_refused(tiny_tok, tmp_path):
    from tests.fakes import FakeModel

    ev = emotion_vectors(tiny_tok, ["joy", "anger"], layer=2, stories=STORIES)
    ev.save(tmp_path / "ev.safetensors")
    with pytest.raises(ValueError, match=r"made for model 'tiny-tok' with d_model=32, but the given model"):
        EmotionVectors.load(tmp_path / "ev.safetensors", model=FakeModel(576, 30, "smollm2-135m-instruct"))
    with pytest.raises(
        ValueError, match="expected a moia 'concept_vectors' file, but it holds 'emotion_vectors'"
    ):
        from moia.directions.concepts import ConceptVectors

        ConceptVectors.load(tmp_path / "ev.safetensors")
    with pytest.raises(ValueError, match=r"do not fit this model \(d_model 64"):
        ev.score(FakeModel(64, 3), ["Hello."])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(emotions=["joy", "ennui"]),
            r"unknown emotion\(s\) \['ennui'\]: the stories has \['joy', 'anger', 'fear'\]",
        ),
        (dict(emotions=[]), "emotions must not be empty"),
        (dict(emotions=["joy"]), "at least two emotions"),
        (dict(emotions=["joy", "joy"]), r"duplicates: \['joy'\]"),
        (dict(stories=[]), "stories must not be empty"),
        (dict(stories=[s for s in STORIES if s.emotion != NEUTRAL][:4]), "0 neutral stories"),
        (dict(layer=3), "layer 3 out of range for a model with 3 layers"),
        (dict(n_pcs=4), "n_pcs=4 needs more than 4 neutral story means, got 4"),
        (dict(skip=40), "skip=40 leaves none"),
    ],
)
def test_emotion_vector_errors(tiny_tok, kwargs, message):
    kwargs = {"stories": STORIES, **kwargs}
    with pytest.raises(ValueError, match=message):
        emotion_vectors(tiny_tok, **kwargs)


def test_unknown_shipped_emotion_and_story_files(tiny_tok, tmp_path):
    with pytest.raises(ValueError, match=r"unknown emotion\(s\) \['ennui'\]: the shipped stimuli has"):
        emotion_vectors(tiny_tok, ["joy", "ennui"])
    with pytest.raises(FileNotFoundError, match="stories file not found"):
        load_stories(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no stories"):
        load_stories(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"emotion": "joy"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object with 'emotion' and 'text'"):
        load_stories(tmp_path / "bad.jsonl")
    (tmp_path / "s.jsonl").write_text(
        "".join(json.dumps({"emotion": s.emotion, "text": s.text}) + "\n" for s in STORIES)
    )
    ev = emotion_vectors(tiny_tok, layer=1, stories=tmp_path / "s.jsonl")
    assert ev.names == ["joy", "anger", "fear"]
    with pytest.raises(KeyError, match=r"no emotion vector for 'calm'; emotions: \['joy', 'anger', 'fear'\]"):
        ev.vector("calm")
    with pytest.raises(KeyError, match="emotion vectors are at layer 1, not 2"):
        ev.get("joy", 2)
    with pytest.raises(ValueError, match="samples > 1 needs temperature > 0"):
        StorySettings(samples=2, temperature=0.0)


def test_exported():
    assert moia.emotion_vectors is emotion_vectors and moia.EmotionVectors is EmotionVectors


# ---------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_real_model_vectors_and_score(smollm2):
    """SmolLM2: the vectors equal the run_with_cache computation, and score is batch-invariant."""
    names = ["joy", "anger", "fear"]
    ev = emotion_vectors(smollm2, names, layer=0.5, stories=STORIES, n_pcs=1, skip=3)
    vectors, mean, std = independent_vectors(smollm2, STORIES, names, 15, 3, 1)
    np.testing.assert_allclose(ev.vectors.double().numpy(), vectors, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ev.neutral_std.double().numpy(), std, rtol=1e-3)
    texts = ["I could not stop smiling all day.", "The bus leaves at nine.", "He punched the wall. " * 4]
    alone = torch.cat([ev.score(smollm2, [t]) for t in texts])
    torch.testing.assert_close(ev.score(smollm2, texts, batch_size=3), alone, rtol=1e-3, atol=1e-3)
