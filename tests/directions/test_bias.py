"""The BiasVector object and its file format (PROTOCOL §5): round trip, the intervention, errors."""

import json

import pytest
import torch
from safetensors import safe_open

from moia.core.compile import intervene
from moia.core.interventions import AdditiveVector
from moia.directions.bias import BiasVector, load_bias
from tests.fakes import FakeModel


def make_bias(d_model=64, n_layers=2, layer=1, site="resid_post", seed=0):
    g = torch.Generator().manual_seed(seed)
    return BiasVector(
        vector=torch.randn(d_model, generator=g),
        layer=layer,
        site=site,
        model_name="tiny",
        n_layers=n_layers,
        config={"lr": 1e-3, "train_concepts": ["Dust"]},
        verification={"held_out": {"false_positives": 0, "n_controls": 100}},
        history=[{"type": "step", "step": 1, "loss": 1.5}],
    )


def fake_model(d_model=64, n_layers=2, name="tiny"):
    return FakeModel(d_model, n_layers, name)


def test_round_trip_and_format(tmp_path):
    bias = make_bias()
    path = tmp_path / "bias.safetensors"
    bias.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["bias"]
        assert f.get_tensor("bias").dtype == torch.float32
    assert meta["moia_kind"] == "bias_vector"
    assert (meta["model"], meta["d_model"], meta["n_layers"], meta["layer"]) == ("tiny", "64", "2", "1")
    assert meta["site"] == "resid_post" and float(meta["depth"]) == 0.5
    assert json.loads(meta["config"])["lr"] == 1e-3
    assert json.loads(meta["verification"])["held_out"]["n_controls"] == 100
    loaded = BiasVector.load(path, fake_model())
    torch.testing.assert_close(loaded.vector, bias.vector)
    assert (loaded.layer, loaded.site, loaded.model_name) == (1, "resid_post", "tiny")
    assert loaded.config == bias.config and loaded.verification == bias.verification
    assert loaded.history == bias.history
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_load_bias_gives_the_intervention(tiny, tmp_path):
    bias = make_bias()
    bias.model_name = tiny.cfg.model_name
    bias.save(tmp_path / "b.safetensors")
    intervention = load_bias(tmp_path / "b.safetensors", tiny)
    assert isinstance(intervention, AdditiveVector)
    assert (intervention.layer, intervention.site) == (1, "resid_post")
    tokens = torch.randint(0, 101, (2, 7))
    with intervene(tiny, intervention):
        _, cache = tiny.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    _, plain = tiny.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    added = cache["blocks.1.hook_resid_post"] - plain["blocks.1.hook_resid_post"]
    torch.testing.assert_close(added, bias.vector.expand_as(added), atol=1e-5, rtol=0)


def test_intervention_is_a_frozen_copy():
    bias = make_bias()
    intervention = bias.intervention(scale=2.0)
    assert intervention.scale == 2.0 and not intervention.trainable
    bias.vector.add_(1.0)
    assert not torch.equal(intervention.vector, bias.vector)


def test_other_model_is_refused(tmp_path):
    make_bias().save(tmp_path / "b.safetensors")
    expected = (
        r"b.safetensors: made for model 'tiny' with d_model=64, "
        r"but the given model 'smollm2-135m-instruct' has d_model=576"
    )
    with pytest.raises(ValueError, match=expected):
        load_bias(tmp_path / "b.safetensors", fake_model(576, 30, "smollm2-135m-instruct"))
    with pytest.raises(ValueError, match="n_layers=2, but the given model 'other' has n_layers=4"):
        BiasVector.load(tmp_path / "b.safetensors", fake_model(64, 4, "other"))
    with pytest.raises(ValueError, match="with d_model=64, but the given model 'big' has d_model=128"):
        make_bias().check_model(fake_model(128, 2, "big"))


def test_corrupt_missing_and_foreign_files(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ValueError, match=r"corrupt.safetensors: not a readable safetensors file"):
        load_bias(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_bias(tmp_path / "missing.safetensors")
    from moia.io import save_tensors as save_direction_file

    save_direction_file(tmp_path / "cv.safetensors", "concept_vectors", {"vectors": torch.ones(1, 1, 4)}, {})
    with pytest.raises(
        ValueError, match="expected a moia 'bias_vector' file, but it holds 'concept_vectors'"
    ):
        BiasVector.load(tmp_path / "cv.safetensors")
    save_direction_file(
        tmp_path / "nob.safetensors", "bias_vector", {"other": torch.ones(4)}, {"d_model": "4"}
    )
    with pytest.raises(ValueError, match="no 'bias' tensor"):
        BiasVector.load(tmp_path / "nob.safetensors")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vector": torch.ones(2, 64)}, "must be 1-D"),
        ({"vector": torch.full((64,), float("nan"))}, "NaN or inf"),
        ({"site": "nowhere"}, "unknown hook site 'nowhere'"),
        ({"layer": 2}, "layer 2 out of range for a model with 2 layers"),
    ],
)
def test_invalid_bias(changes, message):
    fields = dict(vector=torch.ones(64), layer=1, site="resid_post", model_name="tiny", n_layers=2)
    with pytest.raises(ValueError, match=message):
        BiasVector(**{**fields, **changes})


def test_zero_bias_is_a_no_op(tiny, tmp_path):
    """A constrained run can return b = 0 (no trained iterate met the constraint): still loadable."""
    bias = make_bias()
    bias.vector.zero_()
    bias.model_name = tiny.cfg.model_name
    bias.save(tmp_path / "zero.safetensors")
    tokens = torch.randint(0, 101, (1, 5))
    with intervene(tiny, load_bias(tmp_path / "zero.safetensors", tiny)):
        out = tiny(tokens)
    torch.testing.assert_close(out, tiny(tokens))
