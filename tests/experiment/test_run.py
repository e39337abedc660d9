"""Sweeps: trial grid and ids, batched per-row injections, crash-safe resumable output, CLI errors.

Slow tests run SmolLM2-135M with synthetic concept vectors (random, of a realistic norm) and a
few new tokens; the kill -9 test runs ``moia reproduce`` in a subprocess.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from moia.cli import main
from moia.directions.concepts import ConceptVectors
from moia.eval.grading import Grade
from moia.eval.judge import HTTPJudge, JudgeError, RuleJudge
from moia.experiment.results import TrialsFileError, append_trials, check_run_settings, read_trials
from moia.experiment.run import SweepRows, run_sweep
from moia.experiment.sweep import Sweep, TrialSpec, arm_trials, sweep_trials
from moia.lm.loading import cache_dir
from moia.trials.runner import TrialRunner, random_direction
from tests.fakes import FakeModel

N_LAYERS = 30


def synthetic_vectors(words, layers, norm=20.0, d_model=576):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(len(words), len(layers), d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * norm
    settings = {"capitalize": True, "system": None}
    return ConceptVectors(list(words), list(layers), v, "smollm2-135m-instruct", N_LAYERS, settings)


# ----------------------------------------------------------------------------------- the grid
def test_sweep_trials_ids_and_counts():
    sweep = Sweep(
        concepts=["Dust", "Oceans"],
        layers=[3, 0.5],
        strengths=[2, 4],
        trials=[1, 2],
        control_trials=[1, 2, 3],
        arms=["baseline", "ablation"],
    )
    layers = sweep.validate(N_LAYERS)
    assert layers == [3, 15]
    specs = sweep_trials(sweep, layers)
    # per arm: 16 concept + 16 random + 16 forced concept + 3 controls + 2 concepts x 2 trials forced
    assert len(specs) == 2 * (16 + 16 + 16 + 3 + 4)
    ids = [s.id for s in specs]
    assert len(set(ids)) == len(ids) and ids == [s.id for s in sweep_trials(sweep, layers)]
    assert "baseline/concept/Dust/L15/s4/t2/n0/free" in ids
    assert "ablation/control/-/-/s0/t3/n0/free" in ids
    assert "baseline/control/Oceans/-/s0/t1/n0/forced" in ids
    assert not any(s.forced and s.kind == "random" for s in specs)  # forced_kinds = concept
    assert {s.arm for s in arm_trials(sweep, "ablation", layers)} == {"ablation"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strengths": [0]}, "strength 0 out of range: strengths must be finite and > 0"),
        ({"strengths": [-2.0]}, "strength -2.0 out of range"),
        ({"strengths": [math.nan]}, "strength nan out of range"),
        ({"layers": [30]}, "layer 30 out of range for a model with 30 layers"),
        ({"layers": [1.5]}, r"depth fraction 1.5 must lie in \[0, 1\)"),
        ({"trials": [0]}, "trial number 0 out of range"),
        ({"arms": ["steering"]}, "unknown arm 'steering'"),
        ({"concepts": ["Dust", "Dust"]}, r"concepts contains duplicates: \['Dust'\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_sweep_validation_errors(change, message):
    sweep = Sweep(**{"concepts": ["Dust"], "layers": [0.5], "strengths": [4.0], **change})
    with pytest.raises(ValueError, match=message):
        sweep.validate(N_LAYERS)


def test_random_directions_are_seeded_and_keep_the_norm():
    v = torch.randn(576) * 7
    r = random_direction(v, 0, "Dust", 12)
    assert torch.allclose(r.norm(), v.norm()) and r.dtype == v.dtype
    assert torch.equal(r, random_direction(v, 0, "Dust", 12))
    for other in (random_direction(v, 1, "Dust", 12), random_direction(v, 0, "Sugar", 12)):
        assert abs(float(torch.nn.functional.cosine_similarity(r, other, dim=0))) < 0.2


# --------------------------------------------------------------------------------- the file
def test_truncated_tail_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "trials.jsonl"
    assert append_trials(path, [{"id": "a", "x": 1}, {"id": "b"}]) == 2
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "respo')  # a kill in the middle of a write
    assert [r["id"] for r in read_trials(path)] == ["a", "b"]
    assert path.read_bytes().endswith(b'{"id": "b"}\n')
    append_trials(path, [{"id": "c"}])
    assert [r["id"] for r in read_trials(path)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", r"trials.jsonl:2: corrupt line, not a trial record: 'not json'"),
        (b'{"no_id": 1}', r"trials.jsonl:2: corrupt line"),
        (b"", r"trials.jsonl:2: corrupt line"),
        (b'{"id": "a"}', r"trials.jsonl:2: duplicate trial id 'a' \(first on line 1\)"),
    ],
)
def test_a_bad_line_in_the_middle_is_reported_with_its_line_number(tmp_path, line, message):
    path = tmp_path / "trials.jsonl"
    path.write_bytes(b'{"id": "a"}\n' + line + b'\n{"id": "b"}\n')
    with pytest.raises(TrialsFileError, match=message):
        read_trials(path)


def test_run_settings_are_checked_on_resume(tmp_path):
    check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 10, "arms": {"baseline": {}}})
    append_trials(tmp_path / "trials.jsonl", [{"id": "a"}])
    check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 10, "arms": {"bias": {"sha256": "x"}}})
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["arms"] == {"baseline": {}, "bias": {"sha256": "x"}}
    with pytest.raises(ValueError, match="max_new_tokens: 10 there, 20 now"):
        check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 20})
    with pytest.raises(ValueError, match="arm bias: .* there, .* now"):
        check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 10, "arms": {"bias": {"sha256": "y"}}})


def test_trials_without_run_json_are_not_resumed(tmp_path):
    """Deleting run.json must not switch the settings check off (a run would mix settings)."""
    check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 4})
    append_trials(tmp_path / "trials.jsonl", [{"id": "a"}])
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match=r"holds trials \(trials.jsonl\) but no run.json"):
        check_run_settings(tmp_path, {"model": "m", "max_new_tokens": 6})


# ------------------------------------------------------------------------- batched injections
@pytest.fixture(scope="module")
def smollm2_tokenizer():
    path = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (path / "tokenizer_config.json").exists():
        pytest.skip("smollm2-135m-instruct is not in the model cache")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_one_injection_per_layer_with_zero_strength_elsewhere(smollm2_tokenizer):
    fake = FakeModel(576, 30, tokenizer=smollm2_tokenizer)
    cv = synthetic_vectors(["Dust", "Oceans"], [12, 18])
    sweep = Sweep(concepts=["Dust", "Oceans"], layers=[12, 18], strengths=[4.0], seed=3)
    rows = SweepRows(fake, cv, sweep)
    runner = TrialRunner(fake)
    specs = [
        TrialSpec("baseline", "concept", "Dust", 12, 4.0, 1, 0, False),
        TrialSpec("baseline", "control", None, None, 0.0, 2, 0, False),
        TrialSpec("baseline", "random", "Oceans", 18, 8.0, 1, 0, True),
        TrialSpec("baseline", "concept", "Oceans", 12, 2.0, 10, 0, False),
    ]
    injections = runner.injections([rows.row(s) for s in specs])
    assert [i.layer for i in injections] == [12, 18]
    at12, at18 = injections
    assert at12.strengths.tolist() == [4.0, 0.0, 0.0, 2.0] and at18.strengths.tolist() == [0, 0, 8.0, 0]
    assert torch.equal(at12.vectors[0], cv["Dust", 12]) and torch.equal(at12.vectors[3], cv["Oceans", 12])
    assert torch.equal(at18.vectors[2], random_direction(cv["Oceans", 18], 3, "Oceans", 18))
    assert at12.start.tolist() == [rows.prompt(s).start for s in specs] == [121, 121, 121, 121]
    assert runner.injections([rows.row(specs[1])]) == []  # a batch of controls injects nothing


# ------------------------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--concepts", "Dust", "Dsut"],
            "unknown concept word 'Dsut': not in moia's test or extra concept lists; did you mean Dust",
        ),
        (["--strengths", "4", "0"], "strength 0.0 out of range"),
        (["--layers", "1.5"], r"depth fraction 1.5 must lie in \[0, 1\)"),
        (["--layers", "-3"], "layer -3 out of range"),
        (["--trials", "0"], "trial number 0 out of range"),
        (["--judge", "gpt"], 'judge must be "rule", "http" or an http'),
        (["--bias", "/nonexistent/bias.safetensors"], "bias file not found"),
        (["--ablation-weights", "2"], r"ablation weight 2.0 out of range: weights lie in \[0, 1\]"),
        (["--ablation-weights", "strong"], "ablation weights 'strong': expected moia-regions or uniform"),
        (["--protocol", "ablation", "--full"], "--full applies to the sweep protocol"),
        (["--temperature", "0", "--controls", "11"], "controls=11 with greedy decoding: the 10 control"),
        (["--top-p", "1.5", "--temperature", "1"], r"top_p must lie in \(0, 1\]"),
    ],
)
def test_cli_bad_input(capsys, tmp_path, argv, message):
    import re

    assert main(["reproduce", "--out", str(tmp_path / "run"), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # nothing was loaded or written


# --------------------------------------------------------------------------------- real model
TINY = dict(
    concepts=["Dust", "Oceans"], layers=[12, 18], strengths=[8.0], trials=[1], control_trials=[1, 2],
    max_new_tokens=5,
)  # fmt: skip


@pytest.mark.slow
def test_batched_rows_equal_their_solo_runs(smollm2_any):
    """One batched call (shared prefix run once, per-row injections at two layers, an ablation)
    gives each trial the reply ``generate_tokens`` gives it alone, on both backends."""
    from moia import DirectionAblation

    cv = synthetic_vectors(["Dust", "Oceans"], [12, 18])
    rows = SweepRows(smollm2_any, cv, Sweep(concepts=["Dust", "Oceans"], layers=[12, 18], strengths=[8.0]))
    runner = TrialRunner(smollm2_any, max_new_tokens=5)
    alone = TrialRunner(smollm2_any, max_new_tokens=5, shared_prefix=False)
    ablation = DirectionAblation(torch.randn(576, generator=torch.Generator().manual_seed(2)), weights=0.5)
    specs = [
        TrialSpec("baseline", "concept", "Dust", 12, 8.0, 1, 0, False),
        TrialSpec("baseline", "random", "Oceans", 18, 8.0, 10, 0, False),
        TrialSpec("baseline", "control", None, None, 0.0, 2, 0, False),
        TrialSpec("baseline", "concept", "Oceans", 18, 16.0, 3, 0, True),
    ]
    batched = runner.generate([rows.row(s) for s in specs], ablation)
    assert batched == [alone.generate([rows.row(s)], ablation)[0] for s in specs]
    assert batched[0] != batched[2]  # the injection changes the reply


class FlakyJudge:
    """The rule judge for the first ``ok`` replies, then an unreachable HTTP endpoint."""

    def __init__(self, ok):
        self.ok, self.rule, self.http = ok, RuleJudge(), HTTPJudge("http://127.0.0.1:9", "judge", timeout=2)

    def grade(self, response, concept, trial=None) -> Grade:
        self.ok -= 1
        return self.rule.grade(response, concept) if self.ok >= 0 else self.http.grade(response, concept)


@pytest.mark.slow
def test_run_sweep_resumes_and_keeps_trials_when_the_judge_fails(smollm2_bridge, tmp_path):
    smollm2 = smollm2_bridge
    sweep = Sweep(**TINY, batch_size=4)
    cv = synthetic_vectors(sweep.concepts, [12, 18])
    layers = sweep.validate(N_LAYERS)
    n = len(sweep_trials(sweep, layers))  # 4 concept + 4 random + 2 controls + 4 forced + 2 forced
    assert n == 16
    kept = r"unreachable.*The 4 trials finished before are kept in .*trials.jsonl"
    with pytest.raises(JudgeError, match=kept):
        run_sweep(smollm2, sweep, tmp_path, cv, judge=FlakyJudge(ok=6), progress=False)
    assert len(read_trials(tmp_path / "trials.jsonl")) == 4  # the first batch; the second failed
    summary = run_sweep(smollm2, sweep, tmp_path, cv, progress=False)
    assert (summary.total, summary.already, summary.ran) == (n, 4, n - 4)
    records = read_trials(tmp_path / "trials.jsonl")
    assert sorted(r["id"] for r in records) == sorted(s.id for s in sweep_trials(sweep, layers))
    free = [r for r in records if not r["forced"]]
    assert all(isinstance(r["claims_detection"], bool) and r["rule"] for r in free)
    assert all(isinstance(r["names_concept"], bool) for r in records if r["forced"])
    assert {r["start"] for r in records} == {121} and {r["system"] for r in records} == {""}
    again = run_sweep(smollm2, sweep, tmp_path, cv, progress=False)
    assert (again.already, again.ran) == (n, 0)


@pytest.mark.slow
def test_sampled_runs_resume_to_the_same_replies(smollm2_bridge, tmp_path):
    """With temperature > 0 each batch is seeded from (seed, arm, batch index) and re-run whole
    when some of its trials are missing, so a resumed run has the replies of an uninterrupted one."""
    sweep = Sweep(**{**TINY, "max_new_tokens": 4}, batch_size=5, temperature=1.0, seed=7)
    cv = synthetic_vectors(sweep.concepts, [12, 18], norm=5.0)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_sweep(smollm2_bridge, sweep, full, cv, progress=False)
    lines = (full / "trials.jsonl").read_bytes().splitlines(keepends=True)
    resumed.mkdir()
    (resumed / "run.json").write_bytes((full / "run.json").read_bytes())
    (resumed / "trials.jsonl").write_bytes(b"".join(lines[:7]))  # the first batch and 2 of the second
    summary = run_sweep(smollm2_bridge, sweep, resumed, cv, progress=False)
    assert (summary.already, summary.ran) == (7, 9)
    replies = {r["id"]: r["response"] for r in read_trials(full / "trials.jsonl")}
    assert {r["id"]: r["response"] for r in read_trials(resumed / "trials.jsonl")} == replies
    assert len(set(replies.values())) > 4  # sampled, not all the same


@pytest.mark.slow
def test_cli_layer_out_of_range(smollm2, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("moia.lm.loading.load_model", lambda *a, **k: smollm2)
    assert main(["reproduce", "--out", str(tmp_path), "--layers", "30", "--arms", "baseline"]) == 2
    assert "layer 30 out of range for a model with 30 layers" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_9_loses_and_duplicates_nothing(smollm2_bridge, tmp_path):
    """``moia reproduce`` killed with SIGKILL after its first batch, a half-written line added
    (a kill in the middle of a write), then run again: the trials equal an uninterrupted run's."""
    sweep = Sweep(**TINY, batch_size=3)
    layers = sweep.validate(N_LAYERS)
    cv = synthetic_vectors(sweep.concepts, layers)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for folder in (killed, reference):
        folder.mkdir()
        cv.save(folder / "concept_vectors.safetensors")  # the CLI finds them cached
    args = [
        sys.executable, "-m", "moia", "reproduce", "--out", str(killed), "--arms", "baseline",
        "--concepts", *sweep.concepts, "--layers", "12", "18", "--strengths", "8", "--trials", "1",
        "--control-trials", "1", "2", "--max-new-tokens", "5", "--batch-size", "3", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    trials = killed / "trials.jsonl"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (trials.exists() and trials.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline, "no batch finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, out
    n_before = len(read_trials(trials, repair=False))
    assert 0 < n_before < 16
    with open(trials, "ab") as f:
        f.write(b'{"id": "baseline/concept/Oceans/L18/s8/t1/n0/fr')
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trials run" in done.stdout and "detection" in done.stdout
    resumed = read_trials(trials)
    run_sweep(smollm2_bridge, sweep, reference, cv, progress=False)
    expected = read_trials(reference / "trials.jsonl")
    assert len(resumed) == len(expected) == 16
    assert {r["id"]: r["response"] for r in resumed} == {r["id"]: r["response"] for r in expected}
    assert (killed / "report.json").exists() and (killed / "report.md").exists()


# ------------------------------------------------------------------------------------- arms
def test_bias_arms_without_a_bias_file_are_skipped_with_a_message(capsys, tmp_path):
    from moia.experiment.arms import NO_BIAS, prepare_arms

    interventions, settings, skipped = prepare_arms(FakeModel(), ["bias", "ablation+bias"], tmp_path)
    assert (
        interventions == {}
        and settings == {}
        and skipped == dict.fromkeys(["bias", "ablation+bias"], NO_BIAS)
    )
    assert main(["reproduce", "--out", str(tmp_path / "run"), "--arms", "bias"]) == 2
    captured = capsys.readouterr()
    assert "skipping arm bias: no bias file (train one with `moia train-bias`" in captured.out
    assert "no arm left to run" in captured.err


def test_bias_arm_from_a_bias_file(tiny, tmp_path, monkeypatch):
    from moia.core.interventions import AdditiveVector
    from moia.directions.bias import BiasVector
    from moia.experiment.arms import prepare_arms

    monkeypatch.setattr(tiny, "moia_name", "tiny", raising=False)
    BiasVector(torch.randn(64), 1, "resid_post", "tiny", 2).save(tmp_path / "bias.safetensors")
    interventions, settings, skipped = prepare_arms(
        tiny, ["baseline", "bias"], tmp_path, bias_path=tmp_path / "bias.safetensors"
    )
    assert skipped == {} and interventions["baseline"] == []
    (bias,) = interventions["bias"]
    assert isinstance(bias, AdditiveVector) and (bias.layer, bias.site) == (1, "resid_post")
    assert settings["bias"]["bias"]["layer"] == 1 and len(settings["bias"]["bias"]["sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="bias file not found"):
        prepare_arms(tiny, ["bias"], tmp_path, bias_path=tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_sampled_replies_do_not_depend_on_the_batch(smollm2_bridge):
    """One sampled grid (temperature 1 with SmolLM2's own top-k, injections from "Trial n" and at
    every position, controls) run in two batch orders and sizes, and one trial alone: every trial
    gets the same reply, because each draws only from its own seed (PROTOCOL §2, "Sampling")."""
    from moia.experiment.run import sampling_settings
    from moia.lm.loading import generation_defaults

    assert generation_defaults(smollm2_bridge)["top_k"] == 50  # transformers' default: SmolLM2 sets none
    replies = {}
    for inject_from in ("trial", "all"):
        sweep = Sweep(**{**TINY, "max_new_tokens": 4}, samples=2, temperature=1.0, forced=False, seed=5)
        sweep.kinds, sweep.inject_from = ["concept"], inject_from
        layers = sweep.validate(N_LAYERS)
        rows = SweepRows(smollm2_bridge, synthetic_vectors(sweep.concepts, layers, norm=5.0), sweep)
        sampling = sampling_settings(sweep, smollm2_bridge)[0]
        specs = sweep_trials(sweep, layers)  # 2 concepts x 2 layers x 2 samples, 2 x 2 controls
        assert len(specs) == 12
        forward = TrialRunner(smollm2_bridge, 4, sampling, batch_size=5).run([rows.row(s) for s in specs])
        backward = TrialRunner(smollm2_bridge, 4, sampling, batch_size=3).run(
            [rows.row(s) for s in specs[::-1]]
        )
        assert forward == backward[::-1], inject_from
        alone = TrialRunner(smollm2_bridge, 4, sampling, shared_prefix=False)
        assert [alone.generate([rows.row(specs[i])])[0] for i in (5, 11)] == [forward[i] for i in (5, 11)]
        assert len(set(forward)) > 6  # sampled: the seeds differ
        replies[inject_from] = forward
    assert replies["trial"] != replies["all"]
