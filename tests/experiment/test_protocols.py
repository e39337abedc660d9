"""The named protocols of ``moia reproduce`` (PROTOCOL §2, §4): the trial sets they build, the
ablation weights they use and how sampled runs pick top-k / top-p. No model runs here: a
62-layer stand-in (Gemma3-27B's depth) with the real Gemma 3 tokenizer and IT template."""

import json
from collections import Counter

import pytest
import torch
from transformers import GenerationConfig

from moia.cli import build_parser
from moia.cli.reproduce import build_sweep
from moia.directions.ablation_weights import MOIA_UNIFORM, ablation_weights, moia_region_weights
from moia.directions.concepts import ConceptVectors, concept_words
from moia.directions.refusal import RefusalDirections
from moia.experiment.arms import REFUSAL_FILE, AblationSpec, prepare_arms
from moia.experiment.run import SweepRows, sampling_settings
from moia.experiment.sweep import Sweep, sweep_trials
from moia.lm.decoding import GREEDY, Sampling
from moia.trials.prompt import INTRO
from moia.trials.runner import TrialRunner
from tests.fakes import FakeModel

GEMMA3_27B_LAYERS = 62
# [MOIA] 03d DEFAULT_REGION_WEIGHTS at a few layers of the 62 (region boundaries inclusive)
REGION_WEIGHT_AT = {
    0: 0.010190365613071925,  # very_early_a 0-2
    2: 0.010190365613071925,
    3: 0.09976487098474057,  # very_early_b 3-5
    20: 0.11762696391562547,  # early_d 19-20
    21: 0.024324361266584712,  # pre_key_a 21-24
    29: 0.000533052460819306,  # key_a 29-32
    37: 0.020646470409482434,  # mid_a 36-38
    48: 0.07694211978232157,  # late_a 48-51
    58: 2.358688691270255e-05,  # final_a 56-58
    59: 0.003955462234418926,  # final_b 59-61
    61: 0.003955462234418926,
}


def reproduce_sweep(*argv):
    return build_sweep(build_parser().parse_args(["reproduce", *argv]))


# ------------------------------------------------------------------------------ the trial set
def test_ablation_protocol_builds_moias_trial_set():
    """[MOIA] 03d: 50 test concepts × trials 1-10 × 3 samples injected per arm at layer 37 of 62,
    strength 2, and 30 controls per concept (1,500) per arm; no random vectors, no forced trials."""
    sweep = reproduce_sweep("--protocol", "ablation")
    assert sweep.concepts == concept_words("test") and len(sweep.concepts) == 50
    assert (sweep.temperature, sweep.inject_from, sweep.system, sweep.max_new_tokens) == (
        1.0,
        "all",
        None,
        100,
    )
    assert sweep.top_k is None and sweep.top_p is None  # the model's generation config
    layers = sweep.validate(GEMMA3_27B_LAYERS)
    assert layers == [37]
    specs = sweep_trials(sweep, layers)
    assert len(specs) == 2 * (1500 + 1500)
    for arm in ("baseline", "ablation"):
        injected = [s for s in specs if s.arm == arm and s.injected]
        controls = [s for s in specs if s.arm == arm and not s.injected]
        assert len(injected) == 1500 and len(controls) == 1500
        assert {(s.kind, s.layer, s.strength, s.forced) for s in injected} == {("concept", 37, 2.0, False)}
        assert Counter(s.concept for s in injected) == dict.fromkeys(sweep.concepts, 30)
        assert Counter((s.trial, s.sample) for s in injected) == {
            (t, n): 50 for t in range(1, 11) for n in range(3)
        }
        assert Counter(s.trial for s in controls) == dict.fromkeys(range(1, 11), 150)
        assert len({(s.trial, s.sample) for s in controls}) == 1500  # each its own sample
        assert not any(s.forced for s in controls) and {s.concept for s in controls} == {None}
    # the arms share every concept, trial number and sample: they differ only in the ablation
    keys = {arm: sorted(s.sample_key for s in specs if s.arm == arm) for arm in ("baseline", "ablation")}
    assert keys["baseline"] == keys["ablation"]


def test_protocol_settings_can_be_overridden():
    sweep = reproduce_sweep("--protocol", "ablation", "--concepts", "Dust", "Oceans", "--samples", "1")
    sweep.controls = 300  # as --controls 300
    specs = sweep_trials(sweep, sweep.validate(30))
    assert sweep.validate(30) == [17]  # depth 37/62 of SmolLM2's 30 layers
    assert Counter((s.arm, s.injected) for s in specs) == {
        ("baseline", True): 20,
        ("baseline", False): 300,
        ("ablation", True): 20,
        ("ablation", False): 300,
    }
    override = reproduce_sweep("--protocol", "ablation", "--controls", "20", "--kinds", "concept", "random")
    assert override.controls == 20 and override.kinds == ["concept", "random"]


def test_sweep_protocol_controls():
    quick = reproduce_sweep()
    assert (quick.temperature, quick.inject_from, quick.system) == (0.0, "trial", "")
    assert len(quick.control_specs()) == 10  # greedy: one per control trial number
    greedy_full = reproduce_sweep("--full")
    assert greedy_full.controls is None and len(greedy_full.control_specs()) == 10
    sampled_full = reproduce_sweep("--full", "--temperature", "1")
    assert sampled_full.controls == 500  # [MOIA] 02: 50 samples × 10 trial numbers
    assert Counter(t for t, _ in sampled_full.control_specs()) == dict.fromkeys(range(1, 11), 50)
    with pytest.raises(ValueError, match="controls=20 with greedy decoding: the 10 control trial numbers"):
        Sweep(concepts=["Dust"], layers=[0.5], strengths=[4.0], controls=20).validate(30)


# ------------------------------------------------------------------------- rows and seeds
def test_ablation_protocol_rows_inject_at_every_position_with_shared_seeds(gemma3_it_tokenizer):
    sweep = reproduce_sweep("--protocol", "ablation", "--concepts", "Dust", "Oceans", "--samples", "2")
    sweep.controls = 4
    fake = FakeModel(64, GEMMA3_27B_LAYERS, "gemma3-27b-like", tokenizer=gemma3_it_tokenizer)
    layers = sweep.validate(GEMMA3_27B_LAYERS)
    settings = {"capitalize": True, "system": None}
    cv = ConceptVectors(["Dust", "Oceans"], layers, torch.randn(2, 1, 64), "gemma3-27b-like", 62, settings)
    rows = SweepRows(fake, cv, sweep)
    specs = sweep_trials(sweep, layers)
    baseline = [s for s in specs if s.arm == "baseline"]
    (injection,) = TrialRunner(fake).injections([rows.row(s) for s in baseline])
    assert injection.layer == 37
    starts = [start for start, s in zip(injection.start.tolist(), baseline, strict=True) if s.injected]
    assert (
        starts == [0] * 40
    )  # 2 concepts x 10 trials x 2 samples: every position, no "Trial n" start (controls inject nothing)
    assert injection.strengths.tolist() == [2.0 if s.injected else 0.0 for s in baseline]
    for s in specs:  # no system message: Gemma 3 IT's user turn starts with the preamble
        assert rows.prompt(s).text.startswith(f"<bos><start_of_turn>user\n{INTRO}")
    seeds = {(s.arm, s.sample_key): rows.row(s).seed for s in specs}
    assert all(seeds["ablation", key] == seed for (arm, key), seed in seeds.items() if arm == "baseline")
    assert len({seed for (arm, _), seed in seeds.items() if arm == "baseline"}) == len(baseline)


# ------------------------------------------------------------------------------ the weights
def test_ablation_arm_puts_moias_region_weights_at_the_right_layers(tmp_path):
    fake = FakeModel(64, GEMMA3_27B_LAYERS, "gemma3-27b-like")
    candidates = torch.randn(5, GEMMA3_27B_LAYERS + 1, 64)
    post = ["<end_of_turn>", "\n", "<start_of_turn>", "model", "\n"]
    RefusalDirections(candidates, [-5, -4, -3, -2, -1], post, "gemma3-27b-like").save(tmp_path / REFUSAL_FILE)
    interventions, settings, _ = prepare_arms(fake, ["baseline", "ablation"], tmp_path, AblationSpec())
    assert interventions["baseline"] == []
    (ablate,) = interventions["ablation"]
    assert ablate.site == "resid_post"  # each decoder layer's output, as 03d's forward hooks
    per_layer = ablate.per_layer(fake)
    assert sorted(per_layer) == list(range(62))
    for layer, weight in REGION_WEIGHT_AT.items():
        direction, w = per_layer[layer]
        assert float(w) == pytest.approx(weight, rel=1e-6), layer
        # layer l's direction: position -2 ("model"), read at the output of layer l
        expected = candidates[3, layer + 1].double()
        torch.testing.assert_close(direction[0], expected / expected.norm())
    assert settings["ablation"]["ablation"]["layer_weights"] == moia_region_weights(62)
    assert settings["ablation"]["ablation"]["weights"] == "moia-regions"


def test_region_weights_map_by_depth():
    assert moia_region_weights(62) == [ablation_weights("moia-regions", 62)[i] for i in range(62)]
    assert [moia_region_weights(62)[i] for i in REGION_WEIGHT_AT] == list(REGION_WEIGHT_AT.values())
    smol = moia_region_weights(30)  # layer l takes Gemma layer (l * 62) // 30
    assert smol[1] == REGION_WEIGHT_AT[2]  # 62 // 30 = 2
    assert smol[10] == REGION_WEIGHT_AT[20]  # 620 // 30 = 20
    assert smol[14] == 0.009936585603088419  # 868 // 30 = 28: pre_key_b 25-28
    assert smol[29] == REGION_WEIGHT_AT[59]  # 1798 // 30 = 59
    assert ablation_weights("uniform", 30) == [MOIA_UNIFORM] * 30 == [0.0175] * 30
    assert ablation_weights("0.1", 4) == [0.1] * 4


def test_ablation_weights_from_a_file(tmp_path):
    listed, by_layer, partial, bad = (
        tmp_path / f"{n}.json" for n in ("listed", "by_layer", "partial", "bad")
    )
    listed.write_text(json.dumps([0.0, 0.5, 1.0]))
    by_layer.write_text(json.dumps({"2": 0.3, "0": 0.1, "1": 0.2}))
    partial.write_text(json.dumps({"0": 0.1}))
    bad.write_text(json.dumps([0.0, 1.5, 0.2]))
    assert ablation_weights(str(listed), 3) == [0.0, 0.5, 1.0]
    assert ablation_weights(str(by_layer), 3) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"3 weights for a model with 4 layers"):
        ablation_weights(str(listed), 4)
    with pytest.raises(ValueError, match=r"must name every layer 0..2 and no other \(missing \[1, 2\]"):
        ablation_weights(str(partial), 3)
    with pytest.raises(ValueError, match=r"the weight of layer 1 is 1.5; weights lie in \[0, 1\]"):
        ablation_weights(str(bad), 3)
    with pytest.raises(ValueError, match="expected moia-regions or uniform, a number in"):
        AblationSpec(weights=str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------- sampling
def test_sampled_runs_use_the_models_generation_config():
    sweep = Sweep(concepts=["Dust"], layers=[0.5], strengths=[2.0], temperature=1.0)
    gemma_it = FakeModel(64, 62, "gemma3-27b-like")
    # Gemma 3 IT's generation config (transformers' Gemma 3 conversion script)
    gemma_it.moia_generation_config = GenerationConfig(do_sample=True, top_k=64, top_p=0.95)
    sampling, record = sampling_settings(sweep, gemma_it)
    assert sampling == Sampling(1.0, 64, 0.95)
    assert record == {
        "temperature": 1.0,
        "top_k": 64,
        "top_p": 0.95,
        "source": "the model's generation_config",
    }
    bare = FakeModel(64, 30, "smollm2-like")  # a checkpoint that sets neither: transformers' 50 / 1
    bare.moia_generation_config = GenerationConfig(bos_token_id=1)
    assert sampling_settings(sweep, bare)[0] == Sampling(1.0, 50, None)
    sweep.top_k, sweep.top_p = 0, 0.9  # off, and set by the run
    sampling, record = sampling_settings(sweep, gemma_it)
    assert sampling == Sampling(1.0, None, 0.9) and record["source"].startswith("top_k, top_p set by the run")
    sweep.temperature = 0.0
    assert sampling_settings(sweep, gemma_it)[0] is GREEDY


def test_cached_concept_vectors_of_another_recipe_are_refused(tmp_path):
    """Vectors cached under an explicit empty system turn (the recipe before PROTOCOL §1's) are not
    silently reused by a run that extracts with no system message."""
    from moia.experiment.arms import CONCEPT_FILE, cached_concept_vectors

    fake = FakeModel(64, 30, "smollm2-like")
    old = ConceptVectors(
        ["Dust"], [17], torch.randn(1, 1, 64), "smollm2-like", 30, {"capitalize": True, "system": ""}
    )
    old.save(tmp_path / CONCEPT_FILE)
    with pytest.raises(ValueError, match=r"was extracted with system='', not None \(PROTOCOL §1\)"):
        cached_concept_vectors(fake, ["Dust"], [17], tmp_path)
