"""Bias training under an FPR constraint (PROTOCOL §5): data, loss paths, dual ascent, checkpoints,
resume, NaN handling, the fused kernel's autograd, and (slow) the constraint binding on SmolLM2."""

import json
import math
import os
import pathlib
import random
import re
import subprocess
import sys
import warnings

import pytest
import torch

from moia.core.interventions import AdditiveVector
from moia.directions.concepts import ConceptVectors
from moia.training import TrainConfig, make_config, train_bias
from moia.training.checkpoint import load_checkpoint
from moia.training.data import Example, TrialTokens, make_batch, plan_epoch, split_concepts
from moia.training.loss import target_losses
from tests.fakes import FakeModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = ["Dust", "Trees", "Satellites", "Origami"]


# ------------------------------------------------------------------------------ tiny fixtures
def tiny_model():
    """The conftest ``tiny`` model, buildable in a subprocess (same config and seed)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=101, n_ctx=64, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, rotary_dim=16, seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def tiny_tokens() -> TrialTokens:
    """Trial n: a shared 10-token prefix, then the start token, n's own token and two more."""
    prefix = list(range(1, 11))
    prompts = {n: [*prefix, 11, 20 + n, 12, 13] for n in (1, 2, 3)}
    targets: dict[str | None, list[int]] = {w: [40 + i, 50, 51] for i, w in enumerate(WORDS)}
    targets[None] = [60, 61, 62, 63]
    return TrialTokens(prompts, dict.fromkeys(prompts, 10), targets)


def tiny_vectors() -> ConceptVectors:
    g = torch.Generator().manual_seed(1)
    return ConceptVectors(list(WORDS), [0, 1], 3 * torch.randn(4, 2, 64, generator=g), "custom", 2)


class FakeCalibration:
    """Deterministic stand-in for generation + grading: false positives grow with |b|."""

    def __init__(self, scale: float = 0.05) -> None:
        self.scale, self.calls = scale, 0

    def __call__(self, bias: torch.Tensor) -> dict:
        self.calls += 1
        norm = float(bias.norm())
        return {
            "n_controls": 10,
            "false_positives": min(10, int(norm / self.scale)),
            "n_injected": 4,
            "detected": min(4, int(norm / (0.5 * self.scale))),
            "identified": 0,
        }


TINY = dict(
    layer=0,
    site="mlp_pre_norm",
    injection_layers=[0, 1],
    trials=[1, 2, 3],
    calibration_trials=[1, 2, 3],
    batch_size=4,
    lr=1e-2,
    verify_controls=0,
    progress=False,
)


def tiny_train(model, **options):
    settings = {**TINY, **options}
    settings.setdefault("calibrator", FakeCalibration())
    return train_bias(model, WORDS, vectors=tiny_vectors(), tokens=tiny_tokens(), **settings)


def tiny_curve(steps: int = 6) -> dict:
    """Losses and final b of a short unconstrained run (used in a subprocess by the kernel test)."""
    bias = tiny_train(tiny_model(), steps=steps, epsilon=None, calibrator=lambda b: FakeCalibration(1e9)(b))
    losses = [r["loss"] for r in bias.history if r["type"] == "step"]
    return {"losses": losses, "bias": bias.vector.tolist()}


# -------------------------------------------------------------------------------------- data
def test_split_concepts_is_seeded_and_moia_sized():
    words = [f"w{i}" for i in range(500)]
    train, held = split_concepts(words)
    assert (len(train), len(held)) == (400, 100)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(words)
    assert split_concepts(words) == (train, held)
    assert split_concepts(words, seed=0) != (train, held)
    assert len(split_concepts(words, n_heldout=15)[1]) == 15


@pytest.mark.parametrize(
    ("words", "n", "message"),
    [
        (["a", "b"], 0, "empty concept split: 2 concepts with n_heldout=0 leaves 2 for training"),
        (["a", "b"], 2, "empty concept split: 2 concepts with n_heldout=2 leaves 0 for training"),
        ([], None, "empty concept split: 0 concepts"),
        (["a", "a", "b"], 1, r"duplicates: \['a'\]"),
    ],
)
def test_split_errors(words, n, message):
    with pytest.raises(ValueError, match=message):
        split_concepts(words, n)


def test_plan_epoch():
    plan = plan_epoch(WORDS, [3, 5], trials=range(1, 11), seed=42)
    injected = [e for e in plan if e.concept is not None]
    controls = [e for e in plan if e.concept is None]
    assert len(injected) == 40 and 10 <= len(controls) <= 30  # about half as many controls
    assert {e.layer for e in injected} == {3, 5} and {e.strength for e in injected} <= {2.0, 3.0, 4.0, 5.0}
    assert all(e.layer == -1 and e.strength == 0 for e in controls)
    assert plan == plan_epoch(WORDS, [3, 5], trials=range(1, 11), seed=42)
    assert plan != plan_epoch(WORDS, [3, 5], trials=range(1, 11), seed=43)
    assert not any(e.concept is None for e in plan_epoch(WORDS, [3], control_prob=0.0))
    with pytest.raises(ValueError, match="train concepts are empty"):
        plan_epoch([], [3])


def test_config_errors(tiny):
    with pytest.raises(TypeError, match=r"unknown training option\(s\) \['learning_rate'\]; valid options"):
        make_config(learning_rate=1e-3)
    with pytest.raises(
        ValueError, match=r"invalid training setting\(s\): lr=0.0 \(AdamW learning rate\); batch_size=0"
    ):
        TrainConfig(lr=0.0, batch_size=0)
    with pytest.raises(ValueError, match=r"calibration_trials=\(\)"):
        TrainConfig(calibration_trials=())
    assert make_config(trials=range(1, 4)).trials == (1, 2, 3)
    with pytest.raises(ValueError, match="train_concepts is empty"):
        train_bias(tiny, [])
    cv = ConceptVectors(WORDS, [0], torch.ones(4, 1, 64), "custom", 2)
    with pytest.raises(ValueError, match=r"the given concept vectors lack layers \[1\]"):
        train_bias(tiny, WORDS, layer=0, injection_layers=[1], vectors=cv, progress=False)


# ------------------------------------------------------------------------------------ losses
def test_loss_paths_agree(tiny):
    """The shared-prefix KV-cache path gives the full path's per-row losses and gradient."""
    plan = [Example(1, "Dust", 1, 4.0), Example(2, None), Example(3, "Trees", 0, 2.0), Example(1, None)]
    batch = make_batch(plan, tiny_tokens(), tiny_vectors())
    b = torch.nn.Parameter(0.3 * torch.randn(64))
    for p in tiny.parameters():
        p.requires_grad_(False)
    results = {}
    for path in ("full", "shared_prefix"):
        sums, counts = target_losses(tiny, batch, AdditiveVector(b, 0, site="mlp_pre_norm"), path)
        (grad,) = torch.autograd.grad(sums.sum(), b)
        results[path] = (sums.detach(), grad)
        assert counts.tolist() == [3, 4, 3, 4]
    torch.testing.assert_close(results["full"][0], results["shared_prefix"][0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(results["full"][1], results["shared_prefix"][1], atol=1e-5, rtol=1e-4)
    # the injection acts on the target tokens: another strength changes the injected rows only
    batch.strengths[0] = 0.5
    sums, _ = target_losses(tiny, batch, AdditiveVector(b, 0, site="mlp_pre_norm"), "shared_prefix")
    assert not torch.isclose(sums[0], results["full"][0][0]) and torch.isclose(sums[1], results["full"][0][1])
    with pytest.raises(ValueError, match="unknown loss path 'fast'"):
        target_losses(tiny, batch, AdditiveVector(b, 0), "fast")


# ------------------------------------------------------------------------- constraint, choice
def test_dual_ascent_and_choice_of_iterate(tiny):
    cal = FakeCalibration(scale=0.05)
    bias = tiny_train(tiny, steps=6, eval_every=2, epsilon=0.0, dual_lr=10.0, calibrator=cal)
    records = [r for r in bias.history if r["type"] == "calibration"]
    assert [r["step"] for r in records] == [0, 2, 4, 6] and cal.calls == 4
    lam = 0.0
    for r in records:  # λ before each calibration, then λ <- max(0, λ + 10 (FPR - 0))
        assert r["multiplier"] == pytest.approx(lam)
        lam = max(0.0, lam + 10.0 * r["fpr"])
        assert r["multiplier_after"] == pytest.approx(lam)
    steps = [r for r in bias.history if r["type"] == "step"]
    assert steps[-1]["multiplier"] == pytest.approx(records[-2]["multiplier"] + 10 * records[-2]["fpr"])
    assert any(r["fpr"] > 0 for r in records)  # the constraint binds here
    chosen = bias.verification["calibration"]
    feasible = [r for r in records if r["fpr"] == 0]
    assert chosen["fpr"] == 0 and bias.verification["feasible"] is True
    assert chosen["step"] == max(feasible, key=lambda r: (r["detected"], r["step"]))["step"]
    assert cal(bias.vector)["false_positives"] == 0  # the returned b is that iterate


def test_unconstrained_returns_the_last_iterate(tiny):
    bias = tiny_train(tiny, steps=4, eval_every=2, epsilon=None, calibrator=FakeCalibration(0.05))
    assert all(r["multiplier"] == 0 for r in bias.history)
    assert bias.verification["feasible"] is None and bias.config["steps_run"] == 4
    assert bias.verification["calibration"]["step"] == 4  # the record of the returned (last) iterate


def test_no_feasible_iterate_warns_and_returns_lowest_fpr(tiny):
    def always(b):  # every iterate has false positives; b = 0 the fewest
        fp = 3 if b.norm() == 0 else 5
        return {"n_controls": 10, "false_positives": fp, "n_injected": 0, "detected": 0, "identified": 0}

    with pytest.warns(UserWarning, match=r"no evaluated iterate met the calibration constraint FPR <= 0.0"):
        bias = tiny_train(tiny, steps=2, eval_every=1, calibrator=always)
    assert bias.verification["feasible"] is False and bias.verification["calibration"]["step"] == 0
    assert float(bias.vector.norm()) == 0


# ------------------------------------------------------------------ checkpoints, resume, NaN
def test_checkpoint_contents(tiny, tmp_path):
    path = tmp_path / "run.ckpt.safetensors"
    tiny_train(tiny, steps=2, eval_every=1, checkpoint=path, checkpoint_every=1)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        saved_rng = f.get_tensor("rng.torch")
    assert saved_rng.dtype == torch.uint8
    assert keys == {
        "bias",
        "best_bias",
        "adam.exp_avg",
        "adam.exp_avg_sq",
        "adam.step",
        "rng.torch",
        "rng.python",
    }
    assert meta["moia_kind"] == "bias_checkpoint" and meta["step"] == "2"
    assert json.loads(meta["config"])["lr"] == 1e-2
    torch.manual_seed(5)
    random.seed(5)
    state = load_checkpoint(path)  # restores the torch and Python RNG states saved with it
    assert state.step == 2 and torch.equal(torch.get_rng_state(), saved_rng)
    drawn = (torch.rand(3), random.random())
    load_checkpoint(path)
    assert torch.equal(torch.rand(3), drawn[0]) and random.random() == drawn[1]


def test_resume_gives_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    settings = dict(steps=8, eval_every=2, checkpoint_every=4, epsilon=0.0, dual_lr=10.0)
    whole = tiny_train(tiny, checkpoint=tmp_path / "whole.ckpt", calibrator=FakeCalibration(0.08), **settings)
    import moia.training.fit as bias_fit

    real, calls = bias_fit.target_losses, []

    def crash_on_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(bias_fit, "target_losses", crash_on_step_5)
    with pytest.raises(KeyboardInterrupt):
        tiny_train(tiny, checkpoint=tmp_path / "part.ckpt", calibrator=FakeCalibration(0.08), **settings)
    assert load_checkpoint(tmp_path / "part.ckpt").step == 4
    monkeypatch.setattr(bias_fit, "target_losses", real)
    resumed = tiny_train(
        tiny, checkpoint=tmp_path / "part.ckpt", resume=True, calibrator=FakeCalibration(0.08), **settings
    )
    torch.testing.assert_close(resumed.vector, whole.vector, atol=1e-6, rtol=0)
    assert resumed.history == whole.history
    assert resumed.verification["calibration"] == whole.verification["calibration"]
    final_whole, final_resumed = (
        load_checkpoint(tmp_path / "whole.ckpt"),
        load_checkpoint(tmp_path / "part.ckpt"),
    )
    torch.testing.assert_close(final_resumed.bias, final_whole.bias, atol=1e-6, rtol=0)
    assert final_resumed.multiplier == final_whole.multiplier > 0


def test_resume_refuses_other_settings_and_corrupt_checkpoints(tiny, tmp_path):
    path = tmp_path / "run.ckpt"
    tiny_train(tiny, steps=2, checkpoint=path)
    with pytest.raises(ValueError, match=r"run.ckpt was written with different settings \(lr\)"):
        tiny_train(tiny, steps=2, checkpoint=path, resume=True, lr=0.5)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=r"run.ckpt: not a readable safetensors file"):
        tiny_train(tiny, steps=2, checkpoint=path, resume=True)
    tiny_train(tiny, steps=2, checkpoint=path, resume=False)  # without resume it is overwritten
    assert load_checkpoint(path).step == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import moia.training.fit as bias_fit

    real, calls = bias_fit.target_losses, []

    def nan_on_step_5(*args, **kwargs):
        calls.append(1)
        sums, counts = real(*args, **kwargs)
        return (sums * float("nan") if len(calls) == 5 else sums), counts

    monkeypatch.setattr(bias_fit, "target_losses", nan_on_step_5)
    path = tmp_path / "run.ckpt"
    expected = (
        r"non-finite loss \(nan\) at step 5 with lr=0.01: training stopped; "
        rf"the last good checkpoint is {re.escape(str(path))} \(step 4\)"
    )
    with pytest.raises(FloatingPointError, match=expected):
        tiny_train(tiny, steps=8, checkpoint=path, checkpoint_every=2)
    state = load_checkpoint(path)
    assert state.step == 4 and torch.isfinite(state.bias).all()
    monkeypatch.setattr(bias_fit, "target_losses", real)
    with pytest.raises(FloatingPointError, match="no checkpoint had been written yet"):
        tiny_train(tiny, steps=8, lr=1e30, eval_every=0, calibrator=FakeCalibration(1e9))


# ---------------------------------------------------------------------------- fused kernel
@pytest.mark.slow
def test_training_through_the_kernel_equals_the_twin():
    """Same loss curve through the Triton kernel's autograd Function (interpreted on CPU) as
    through the torch twin; each run in its own process so TRITON_INTERPRET is set before import."""
    pytest.importorskip("triton")
    code = (
        "import json, sys\n"
        "import moia.kernels as k\n"
        "calls = []\n"
        "if k._HAS_TRITON and k._kernel_module() is not None:\n"
        "    F = k._kernel_module().FusedIntervention\n"
        "    real = F.apply\n"
        "    F.apply = lambda *a: (calls.append(1), real(*a))[1]\n"
        "from tests.training.test_train import tiny_curve\n"
        "out = tiny_curve()\n"
        "out['kernel_calls'] = len(calls)\n"
        "print(json.dumps(out))\n"
    )
    runs = {}
    for name, extra in (("twin", {}), ("kernel", {"MOIA_FORCE_TRITON": "1", "TRITON_INTERPRET": "1"})):
        env = {k: v for k, v in os.environ.items() if k not in ("MOIA_FORCE_TRITON", "TRITON_INTERPRET")}
        done = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["twin"]["kernel_calls"] == 0 and runs["kernel"]["kernel_calls"] > 0
    assert len(runs["kernel"]["losses"]) == 6 and all(math.isfinite(x) for x in runs["kernel"]["losses"])
    torch.testing.assert_close(
        torch.tensor(runs["kernel"]["losses"]), torch.tensor(runs["twin"]["losses"]), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor(runs["kernel"]["bias"]), torch.tensor(runs["twin"]["bias"]), atol=1e-4, rtol=1e-3
    )


# ---------------------------------------------------------------------- real model (slow)
@pytest.mark.slow
def test_certified_run_on_smollm2(smollm2):
    """A short certified run on SmolLM2 and greedy paraphrase D₀: either the bound holds (upper
    bound <= ε) or the report says infeasible; the certification's counts are those of the test
    units recounted here, and b = 0 is measured on the very same units. Random concept vectors
    (the claim is the certification, not concept quality) and tiny splits keep it short."""
    from moia.training.constrained import d0_splits
    from moia.training.control import ControlFamily
    from moia.training.evaluation import bias_intervention

    g = torch.Generator().manual_seed(0)
    words = WORDS[:2]
    cv = ConceptVectors(words, [15], 4 * torch.randn(2, 1, 576, generator=g), "smollm2-135m-instruct", 30)
    settings = dict(
        injection_layers=[15], steps=1, eval_every=1, batch_size=2, trials=[1], calibration_trials=[1],
        max_new_tokens=6, calibration_units=4, test_units=4, calibration_batch=2, unlikelihood_units=0,
        select_candidates=1, epsilon=0.5, progress=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an infeasible run warns; the report is what is checked
        bias = train_bias(smollm2, words, vectors=cv, **settings)
    v, c = bias.verification, bias.verification["certification"]
    assert c["certified"] == (c["upper_bound"] <= 0.5) and c["n"] == 4
    assert v["feasible"] or c.get("infeasible") is True
    cfg = make_config(**{k: x for k, x in settings.items() if k != "progress"})
    test = d0_splits(cfg).test
    assert c["unit_indices"] == [u.index for u in test]
    family = ControlFamily(smollm2, "paraphrase", None)
    flags, _ = family.false_positives(test, bias_intervention(bias.vector, bias.layer, bias.site), 6)
    base, _ = family.false_positives(test, [], 6)
    assert (c["false_positives"], c["baseline"]["false_positives"]) == (sum(flags), sum(base))


@pytest.mark.slow
@pytest.mark.bridge
def test_bridge_full_path_matches_hooked(smollm2, smollm2_bridge):
    """The path a GPU run of Gemma takes (TransformerBridge, full left-padded batch) gives the
    HookedTransformer's losses and gradient on the real PROTOCOL §2 prompts."""
    from moia.training.data import trial_tokens

    words = WORDS[:2]
    tokens = trial_tokens(smollm2, [1, 10], words)
    g = torch.Generator().manual_seed(0)
    cv = ConceptVectors(words, [15], 4 * torch.randn(2, 1, 576, generator=g), "smollm2-135m-instruct", 30)
    plan = [Example(1, "Dust", 15, 4.0), Example(10, None), Example(10, "Trees", 15, 2.0)]
    batch = make_batch(plan, tokens, cv)
    assert tokens.prompts[10] != tokens.prompts[1] and len(tokens.prompts[10]) > len(tokens.prompts[1])
    results = []
    for model, path in ((smollm2, "shared_prefix"), (smollm2, "full"), (smollm2_bridge, "full")):
        b = torch.nn.Parameter(0.5 * torch.randn(576, generator=g.manual_seed(1)))
        sums, _ = target_losses(model, batch, AdditiveVector(b, 12, site="mlp_pre_norm"), path)
        (grad,) = torch.autograd.grad(sums.sum(), b)
        results.append((sums.detach(), grad))
    for sums, grad in results[1:]:
        torch.testing.assert_close(sums, results[0][0], atol=2e-3, rtol=1e-4)
        torch.testing.assert_close(grad, results[0][1], atol=1e-4, rtol=2e-3)


def test_layer_sweep_picks_the_best_eligible_layer(monkeypatch):
    """One bias per layer; the choice is the best validation detection among biases feasible on
    calibration whose validation FPR meets ε (training and evaluation stubbed out here)."""

    import moia.training.train as training
    from moia.directions.bias import BiasVector

    model = FakeModel(8, 10, "m")
    detection = {2: 0.9, 4: 0.6, 6: 0.8, 8: 0.3}
    fpr = {2: 0.2, 4: 0.0, 6: 0.0, 8: 0.0}  # layer 2 fails on validation controls
    feasible = {2: True, 4: True, 6: False, 8: True}  # layer 6 failed its calibration constraint

    def fake_vectors(model, words, layers, **kw):
        return ConceptVectors(list(words), list(layers), torch.ones(len(words), len(layers), 8), "m", 10)

    def fake_train(model, concepts, layer, **kw):
        assert kw["verify_controls"] == 0 and kw["config"].lr == 1e-3
        assert kw["certify_test"] is False  # each layer's bias leaves the test split alone
        return BiasVector(
            torch.ones(8), layer, "mlp_pre_norm", "m", 10, verification={"feasible": feasible[layer]}
        )

    def fake_eval(model, b, layer, site, vectors, strengths, **kw):
        assert vectors.words == ["c", "d"]
        return {
            "concept": {"detection": {"rate": detection[layer]}, "introspection": {"rate": 0.0}},
            "fpr": {"rate": fpr[layer]},
        }

    monkeypatch.setattr(training, "concept_vectors", fake_vectors)
    monkeypatch.setattr(training, "train_bias", fake_train)
    monkeypatch.setattr(training, "evaluate_bias", fake_eval)
    chosen, rows = training.sweep_bias_layers(
        model, ["a", "b"], ["c", "d"], [2, 4, 6, 8], verify_controls=0, progress=False
    )
    assert [r["eligible"] for r in rows] == [False, True, False, True]
    assert chosen.layer == 4 and chosen.verification["layer_sweep"] == rows
    with pytest.raises(ValueError, match="val_concepts is empty"):
        training.sweep_bias_layers(model, ["a"], [], [2])
