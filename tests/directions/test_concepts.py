"""Concept vectors (PROTOCOL §1): layers, lookup, files, and agreement with HF hidden states."""

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from moia.core.layers import resolve_layers
from moia.directions.concepts import ConceptVectors, apply_casing, concept_vectors, concept_words
from tests.fakes import FakeModel


def fake_model(d_model=576, n_layers=30, name="smollm2-135m-instruct"):
    return FakeModel(d_model, n_layers, name)


def synthetic(words=("Dust", "Trees", "Satellites"), layers=(3, 15), d=576, n_layers=30):
    vectors = torch.randn(len(words), len(layers), d)
    return ConceptVectors(
        list(words), list(layers), vectors, "smollm2-135m-instruct", n_layers, {"capitalize": True}
    )


# -------------------------------------------------------------------------------------- layers
def test_resolve_layers_indices_and_depths():
    assert resolve_layers(62, 0.6) == [37]  # [MOIA]'s canonical Gemma3-27B layer
    assert resolve_layers(30, [0.6, 3, 18]) == [3, 18]  # sorted, unique
    assert resolve_layers(30, 0.5) == [15]
    assert resolve_layers(30, 0.99) == [29]  # round(29.7) = 30, capped
    assert resolve_layers(30, 0.0) == [0]
    assert resolve_layers(4, None) == [0, 1, 2, 3]
    assert resolve_layers(30, np.int64(7)) == [7]
    assert resolve_layers(fake_model(n_layers=18), [0.5]) == [9]


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        (30, ValueError, "layer 30 out of range for a model with 30 layers"),
        (-1, ValueError, "layer -1 out of range"),
        (1.0, ValueError, r"depth fraction 1.0 must lie in \[0, 1\)"),
        (True, TypeError, "neither a layer index"),
        ("10", TypeError, "neither a layer index"),
        ([], ValueError, "layers must not be empty"),
    ],
)
def test_resolve_layers_errors(layers, error, message):
    with pytest.raises(error, match=message):
        resolve_layers(30, layers)


# ---------------------------------------------------------------------------------- word lists
def test_word_lists_and_casing():
    baseline = concept_words("baseline")
    assert len(baseline) == 100 and baseline.count("Butterflies") == 2
    assert len(concept_words("test")) == 50 and "Happiness" in concept_words("test")
    assert len(concept_words("extra")) == 450
    assert "Dolphins" in concept_words("animals")
    with pytest.raises(KeyError, match="unknown word list 'nope'"):
        concept_words("nope")
    assert apply_casing("dust", True) == "Dust" and apply_casing("Dust", True) == "Dust"
    assert apply_casing("Dust", False) == "dust"


# ------------------------------------------------------------------------------------- lookup
def test_lookup_by_word_layer_and_depth():
    cv = synthetic()
    assert torch.equal(cv["Trees", 15], cv.vectors[1, 1])
    assert torch.equal(cv.get("trees", 0.5), cv.vectors[1, 1])  # case-insensitive; depth 0.5 -> 15
    assert cv.d_model == 576


def test_lookup_errors_list_what_exists():
    cv = synthetic()
    with pytest.raises(
        KeyError, match=r"no concept vector for word 'Moon'; words: \['Dust', 'Trees', 'Satellites'\]"
    ):
        cv.get("Moon", 3)
    with pytest.raises(KeyError, match=r"no concept vectors at layer 7 .*layers: \[3, 15\]"):
        cv.get("Dust", 7)
    with pytest.raises(KeyError, match=r"out of range.*layers with vectors: \[3, 15\]"):
        cv.get("Dust", 99)
    with pytest.raises(KeyError, match=r"index with \(word, layer\)"):
        cv["Dust"]


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"vectors has shape \(2, 2, 8\), expected \(3, 2\)"):
        ConceptVectors(["a", "b", "c"], [0, 1], torch.zeros(2, 2, 8), "m", 4)


# -------------------------------------------------------------------------------------- files
def test_save_load_roundtrip_and_metadata(tmp_path):
    cv = synthetic()
    path = tmp_path / "sub" / "cv.safetensors"
    cv.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["cv.safetensors"]  # no temporary file left
    back = ConceptVectors.load(path, model=fake_model())
    assert back.words == cv.words and back.layers == cv.layers and back.n_layers == 30
    assert torch.equal(back.vectors, cv.vectors) and back.settings == cv.settings
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["moia_kind"] == "concept_vectors" and meta["model"] == "smollm2-135m-instruct"
    assert meta["d_model"] == "576" and meta["n_layers"] == "30"
    assert json.loads(meta["depths"]) == [0.1, 0.5] and json.loads(meta["words"]) == cv.words


def test_load_for_a_model_with_another_d_model(tmp_path):
    synthetic().save(tmp_path / "cv.safetensors")
    with pytest.raises(
        ValueError,
        match=r"made for model 'smollm2-135m-instruct' with d_model=576, .*'gemma-3-270m' has d_model=640",
    ):
        ConceptVectors.load(tmp_path / "cv.safetensors", model=fake_model(640, 18, "gemma-3-270m"))


def test_load_for_another_model_of_the_same_shape_warns(tmp_path):
    synthetic().save(tmp_path / "cv.safetensors")
    with pytest.warns(UserWarning, match="made for model 'smollm2-135m-instruct', loading for 'other'"):
        ConceptVectors.load(tmp_path / "cv.safetensors", model=fake_model(name="other"))


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable safetensors file"):
        ConceptVectors.load(bad)
    with pytest.raises(FileNotFoundError, match=r"concept vectors file not found: .*nope\.safetensors"):
        ConceptVectors.load(tmp_path / "nope.safetensors")


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(
        ValueError, match="expected a moia 'concept_vectors' file, but it has no moia metadata"
    ):
        ConceptVectors.load(tmp_path / "x.safetensors")


# ------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(words=[]), ValueError, "words must not be empty"),
        (dict(words="Dust"), TypeError, "not one string"),
        (dict(words=["Dust", "Trees", "Dust"]), ValueError, r"duplicates: \['Dust'\]"),
        (dict(words=["Dust"], prompt="Tell me"), ValueError, "prompt must contain '{word}'"),
        (dict(words=["Dust"], baseline_words=[]), ValueError, "baseline_words must not be empty"),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        concept_vectors(fake_model(), layers=[3], **kwargs)


# ------------------------------------------------------------------------------ real model
def hf_reference(smollm2, words, baseline, layers, capitalize=True):
    """v = act - mean(baseline act) from HF ``output_hidden_states``, one unpadded prompt at a time,
    prompts rendered as [MOIA]'s ``extract_concept_vectors_batch`` does (one user message, no system
    message; SmolLM2's template then adds its default system prompt)."""
    from moia.lm.loading import load_hf

    hf, tok = load_hf("smollm2-135m-instruct")

    def act(word):
        messages = [{"role": "user", "content": f"Tell me about {apply_casing(word, capitalize)}"}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states
        return torch.stack([hidden[layer + 1][0, -1] for layer in layers]).double()  # output of layer L

    base = torch.stack([act(w) for w in baseline]).mean(0)
    return torch.stack([act(w) - base for w in words])


@pytest.mark.slow
@pytest.mark.parametrize("capitalize", [True, False])
def test_agrees_with_hf_hidden_states(smollm2, capitalize):
    words, baseline = ["dust", "Trees", "Satellites"], ["Desks", "Jackets", "Gondolas", "Laughter"]
    cv = concept_vectors(
        smollm2, words, [2, 0.5], baseline_words=baseline, capitalize=capitalize, batch_size=4
    )
    assert cv.layers == [2, 15]
    ref = hf_reference(smollm2, words, baseline, cv.layers, capitalize)
    scale = ref.abs().max()
    torch.testing.assert_close(cv.vectors.double(), ref, rtol=0, atol=1e-4 * float(scale))
    assert cv.settings["capitalize"] is capitalize


@pytest.mark.slow
def test_batch_size_invariance(smollm2):
    words, baseline = ["Dust", "Trees", "Satellites", "Volcanoes"], ["Desks", "Jackets", "Gondolas"]
    big = concept_vectors(smollm2, words, [4, 12], baseline_words=baseline, batch_size=3)
    one = concept_vectors(smollm2, words, [4, 12], baseline_words=baseline, batch_size=1)
    # only float32 rounding differs (other matmul shapes): ~3e-5 of the largest entry
    torch.testing.assert_close(big.vectors, one.vectors, rtol=0, atol=1e-4 * float(one.vectors.abs().max()))


@pytest.mark.slow
def test_defaults_use_the_100_baseline_words_and_roundtrip(smollm2, tmp_path):
    cv = concept_vectors(smollm2, ["Dust"], [0], batch_size=32)
    assert cv.settings["baseline_words"] == concept_words("baseline")
    assert cv.settings["system"] is None and cv.settings["prompt"] == "Tell me about {word}"
    assert cv.model_name == "smollm2-135m-instruct" and cv.vectors.dtype == torch.float32
    cv.save(tmp_path / "cv.safetensors")
    back = ConceptVectors.load(tmp_path / "cv.safetensors", model=smollm2)
    assert torch.equal(back["Dust", 0], cv["Dust", 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same model: no warning
        ConceptVectors.load(tmp_path / "cv.safetensors", model=smollm2)


@pytest.mark.slow
def test_cli_concepts(tmp_path, capsys):
    from moia.cli import main

    out = tmp_path / "cv.safetensors"
    argv = ["directions", "concepts", "--model", "smollm2-135m-instruct", "--layers", "10"]
    argv += ["--words", "Dust", "Trees", "--baseline-words", "Desks", "Jackets", "--out", str(out)]
    assert main(argv) == 0
    assert "wrote 2 words x layers [10] (d_model 576)" in capsys.readouterr().out
    cv = ConceptVectors.load(out)
    assert cv.words == ["Dust", "Trees"] and cv.layers == [10] and cv.vectors.shape == (2, 1, 576)
    assert cv.settings["baseline_words"] == ["Desks", "Jackets"] and cv.settings["capitalize"] is True


def test_cli_layer_argument():
    import argparse

    from moia.cli.options import layer_arg

    assert layer_arg("10") == 10 and layer_arg("0.6") == 0.6
    with pytest.raises(
        argparse.ArgumentTypeError, match="'ten' is neither a layer index nor a depth fraction"
    ):
        layer_arg("ten")


@pytest.mark.slow
@pytest.mark.bridge
def test_bridge_equals_hooked(smollm2, smollm2_bridge):
    args = (["Dust", "Trees"], [3, 20])
    kwargs = dict(baseline_words=["Desks", "Jackets", "Gondolas"], batch_size=2)
    hooked, bridge = (
        concept_vectors(smollm2, *args, **kwargs),
        concept_vectors(smollm2_bridge, *args, **kwargs),
    )
    torch.testing.assert_close(
        bridge.vectors, hooked.vectors, rtol=0, atol=1e-4 * float(hooked.vectors.abs().max())
    )
