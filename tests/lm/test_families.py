"""Shrunk random checkpoints of the families moia targets load on both backends with HF numerics.

Gemma3ForConditionalGeneration (MoIA's Gemma3-27B-IT class, text + vision), Llama (Llama 3 RoPE
scaling), Qwen2, Qwen3 and OLMo-2, each saved as a Hugging Face folder with tiny widths
(``tests/shrunk.py``): every moia site resolves to a hook point that fires, the logits of both
backends equal those of the Hugging Face model loaded independently (for Gemma, the full
multimodal model), and an injected-thought trial runs.
"""

import pathlib

import pytest
import torch

import moia
from moia.core.sites import SITES, has_post_norms, hook_name
from moia.lm.chat import format_chat
from moia.trials.prompt import TrialPrompts
from moia.trials.runner import TrialRow, TrialRunner
from tests.conftest import HAS_HOOKED
from tests.shrunk import FAMILIES, save_shrunk

pytestmark = pytest.mark.slow
TEXT = "Interpretability researchers inject thoughts into a language model, one trial at a time."
POST_NORMS = {"gemma3", "olmo2"}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, folder, {backend: model}, reference HF model) for one family."""
    from transformers import AutoModelForCausalLM

    name = request.param
    folder = save_shrunk(name, tmp_path_factory.mktemp(f"shrunk-{name}"))
    models = {"bridge": moia.load_model(str(folder), backend="bridge")}
    if HAS_HOOKED:
        models["hooked"] = moia.load_model(str(folder), backend="hooked")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return name, folder, models, reference


def _ids(model) -> torch.Tensor:
    return model.tokenizer(TEXT, return_tensors="pt", add_special_tokens=False).input_ids


def test_every_site_resolves_and_fires(family):
    name, _, models, _ = family
    for backend, model in models.items():
        names = []
        for site in SITES:
            for layer in [None] if site == "embed" else range(model.cfg.n_layers):
                if site == "mlp_pre_norm" and backend == "hooked" and name in POST_NORMS:
                    with pytest.raises(ValueError, match="use backend='bridge'"):
                        hook_name(model, site, layer)
                    continue
                if site == "resid_mid" and backend == "bridge":  # the bridge's hook is the MLP norm's input
                    with pytest.raises(ValueError, match="use backend='hf' or 'hooked'"):
                        hook_name(model, site, layer)
                    continue
                names.append(hook_name(model, site, layer))
        with torch.no_grad():
            _, cache = model.run_with_cache(_ids(model), names_filter=list(names))
        assert set(names) <= set(cache.keys()), f"{backend}: hooks that never fired"
        assert has_post_norms(model) == (name in POST_NORMS)
        if name in POST_NORMS and backend == "bridge":  # the bias site is before the post-MLP norm
            assert hook_name(model, "mlp_pre_norm", 1) != hook_name(model, "mlp_out", 1)


def test_logits_and_residuals_equal_hf(family):
    name, _, models, reference = family
    ids = _ids(models["bridge"])
    with torch.no_grad():
        ref = reference(ids, output_hidden_states=True)
        for backend, model in models.items():
            logits, cache = model.run_with_cache(ids)
            torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4, msg=f"{name} {backend}")
            for layer in range(model.cfg.n_layers - 1):  # HF normalises its last hidden state
                ours = cache[hook_name(model, "resid_post", layer)]
                torch.testing.assert_close(ours, ref.hidden_states[layer + 1], atol=1e-4, rtol=1e-4)


def test_gemma3_multimodal_checkpoint_loads_its_language_model(family):
    name, folder, models, reference = family
    if name != "gemma3":
        pytest.skip("Gemma 3 only")
    assert type(reference).__name__ == "Gemma3ForConditionalGeneration"
    bridge = models["bridge"]
    assert type(bridge.original_model).__name__ == "Gemma3ForCausalLM"
    assert not any("vision" in n for n, _ in bridge.original_model.named_parameters())
    assert bridge.cfg.n_layers == 7
    text = format_chat(bridge, "Hi", system="")
    assert text.startswith("<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_one_injected_trial_runs(family):
    name, _, models, _ = family
    for backend, model in models.items():
        prompt = TrialPrompts(model).get(1)
        layer = model.cfg.n_layers // 2
        vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        rows = [TrialRow(prompt), TrialRow(prompt, vector * 50, layer, 1.0)]
        control, injected = TrialRunner(model, max_new_tokens=6).generate(rows)
        alone = TrialRunner(model, max_new_tokens=6).generate(rows[1:])
        assert isinstance(control, str) and injected == alone[0], f"{name} {backend}"
        assert injected != control, f"{name} {backend}: the injection changed nothing"


def test_reproduce_runs_a_trial_on_shrunk_gemma3(tmp_path: pathlib.Path):
    """``moia reproduce`` end to end on the shrunk multimodal Gemma 3 (one concept, one strength)."""
    import json

    from moia.cli import main

    folder = save_shrunk("gemma3", tmp_path / "gemma3")
    out = tmp_path / "run"
    args = ["reproduce", "--model", str(folder), "--out", str(out), "--concepts", "Dust", "--layers", "3"]
    args += ["--strengths", "4", "--trials", "1", "--control-trials", "1", "--arms", "baseline"]
    args += ["--max-new-tokens", "4", "--no-forced", "--kinds", "concept"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [
        "baseline/concept/Dust/L3/s4/t1/n0/free",
        "baseline/control/-/-/s0/t1/n0/free",
    ]
    assert json.loads((out / "report.json").read_text())["settings"]["model"] == "gemma3"


def test_hub_names_load_from_the_local_cache_only(tmp_path, monkeypatch):
    """A repo id resolves to its snapshot in the Hugging Face cache; an uncached one is an error."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "0123abcd"
    save_shrunk("qwen2", snapshot)
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = moia.load_model("Qwen/Qwen2.5-7B-Instruct", backend="bridge")
    assert model.moia_name == "Qwen/Qwen2.5-7B-Instruct" and model.cfg.n_layers == 3
    with pytest.raises(ValueError, match="a hub name in the local Hugging Face cache"):
        moia.load_model("Qwen/Qwen2.5-0.5B-Instruct-not-cached", backend="bridge")
