"""Run an injected-thought sweep: batched generation, grading, resumable output (PROTOCOL §2, §3).

Each arm's trials are cut into batches of ``batch_size`` in a fixed order and run by the one trial
runner (``moia.trials.runner``): trials of different concepts, vector kinds, strengths and
injection layers, controls, and forced trials (the prefill is part of the prompt) share a batch;
an arm's own interventions (refusal ablation, bias vector) apply to every row of its batches, so
batches never mix arms. Finished trials are appended to ``trials.jsonl`` after each batch
(``moia.experiment.results``) and skipped when the run is repeated with the same arguments.

Sampled trials draw from their own seed (``stable_seed(seed, trial id without the arm)``), so a
trial's reply does not depend on its batch, a resumed run reproduces an uninterrupted one, and the
arms of one sweep share their samples' seeds (PROTOCOL §2, "Sampling"). They sample with the
model's own top-k / top-p unless the sweep sets them (``sampling_settings``); what was used is
recorded in ``run.json`` and the report.
"""

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..core.interventions import Intervention
from ..core.model import LanguageModel, model_name, n_layers
from ..directions.concepts import ConceptVectors
from ..eval.grading import CONTROL_CONCEPT, names_concept
from ..eval.judge import Judge, JudgeError, RuleJudge
from ..lm.decoding import GREEDY, Sampling
from ..lm.loading import generation_defaults
from ..lm.memory import auto_batch_size
from ..trials.prompt import FORCED_PREFILL, TrialPrompt, TrialPrompts
from ..trials.runner import TrialRow, TrialRunner, random_direction, stable_seed
from .results import TRIALS, append_trials, check_run_settings, read_trials
from .sweep import Sweep, TrialSpec, arm_trials, sweep_trials


class SweepRows:
    """Turns ``TrialSpec``s into ``TrialRow``s: prompts, injected vectors and seeds, each made once."""

    def __init__(self, model: LanguageModel, vectors: ConceptVectors, sweep: Sweep) -> None:
        self.prompts = TrialPrompts(model, sweep.variant, sweep.system)
        self.vectors, self.sweep = vectors, sweep
        self._vectors: dict[tuple[str, str, int], Any] = {}

    def prompt(self, spec: TrialSpec) -> TrialPrompt:
        return self.prompts.get(spec.trial, spec.forced)

    def vector(self, spec: TrialSpec) -> Any:
        """The injected vector of an injected trial: v(concept, layer) or its random stand-in."""
        assert spec.concept is not None and spec.layer is not None and spec.injected
        key = (spec.kind, spec.concept, spec.layer)
        if key not in self._vectors:
            v = self.vectors.get(spec.concept, spec.layer).float()
            if spec.kind == "random":
                v = random_direction(v, self.sweep.seed, spec.concept, spec.layer)
            self._vectors[key] = v
        return self._vectors[key]

    def start(self, spec: TrialSpec) -> int:
        """Where the injection starts: 0 (every position) or the token before "Trial n"."""
        return 0 if self.sweep.inject_from == "all" else self.prompt(spec).start

    def row(self, spec: TrialSpec) -> TrialRow:
        seed = (
            None if self.sweep.temperature == 0 else stable_seed("sample", self.sweep.seed, spec.sample_key)
        )
        if not spec.injected:
            return TrialRow(self.prompt(spec), seed=seed)
        return TrialRow(
            self.prompt(spec), self.vector(spec), spec.layer, spec.strength, self.start(spec), seed=seed
        )


def sampling_settings(sweep: Sweep, model: LanguageModel) -> tuple[Sampling, dict[str, Any]]:
    """The ``Sampling`` of a sweep and its record: the sweep's top-k / top-p where it sets them
    (top-k 0 and top-p 1 are off), else the model's generation config (PROTOCOL §2, "Sampling")."""
    if sweep.temperature == 0:
        return GREEDY, {"temperature": 0.0, "top_k": None, "top_p": None, "source": "greedy"}
    own = generation_defaults(model)
    top_k = own["top_k"] if sweep.top_k is None else (sweep.top_k or None)
    top_p = own["top_p"] if sweep.top_p is None else (None if sweep.top_p >= 1 else sweep.top_p)
    set_here = [name for name in ("top_k", "top_p") if getattr(sweep, name) is not None]
    source = own["source"] if not set_here else f"{', '.join(set_here)} set by the run; else {own['source']}"
    sampling = Sampling(sweep.temperature, top_k, top_p)
    return sampling, {"temperature": sweep.temperature, "top_k": top_k, "top_p": top_p, "source": source}


def trial_record(
    spec: TrialSpec, prompt: TrialPrompt, response: str, n_layers: int, judge: Judge, start: int | None = None
) -> dict[str, Any]:
    """The ``trials.jsonl`` line of one finished trial, graded (PROTOCOL §3)."""
    record: dict[str, Any] = {
        "id": spec.id,
        "arm": spec.arm,
        "kind": spec.kind,
        "concept": spec.concept,
        "layer": spec.layer,
        "depth": None if spec.layer is None else spec.layer / n_layers,
        "strength": spec.strength,
        "trial": spec.trial,
        "sample": spec.sample,
        "forced": spec.forced,
        "variant": prompt.variant,
        "system": prompt.system,
        "system_turn": prompt.system_turn,
        "start": prompt.start if start is None else start,
        "prompt_tokens": prompt.n_tokens,
        "response": response,
    }
    if spec.forced:
        assert spec.concept is not None
        record["prefill"] = FORCED_PREFILL
        record["names_concept"] = names_concept(response, spec.concept)
    else:
        grade = judge.grade(response, spec.concept if spec.injected else CONTROL_CONCEPT, trial=spec.trial)
        record.update(claims_detection=grade.claims_detection, identifies=grade.identifies, rule=grade.rule)
    return record


@dataclass
class RunSummary:
    """What a call of ``run_sweep`` did."""

    total: int  # trials in the sweep
    already: int  # found finished in trials.jsonl
    ran: int  # generated by this call
    seconds: float
    skipped_arms: dict[str, str] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # as ``sampling_settings`` records it


def recorded_settings(
    model: LanguageModel, sweep: Sweep, run_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What ``run.json`` records for ``sweep`` on ``model`` and checks on resume: the model, the
    sweep's settings that change a trial's reply, the sampling actually used, and ``run_settings``.
    A single process and a sharded run (``moia.experiment.shards``) record the same."""
    return {
        "model": model_name(model),
        **{
            k: v
            for k, v in sweep.as_dict().items()
            if k in ("variant", "system", "max_new_tokens", "temperature", "seed", "inject_from")
        },
        "sampling": sampling_settings(sweep, model)[1],
        **(run_settings or {}),
    }


def arm_run_settings(
    model: LanguageModel,
    backend: str,
    dtype: str,
    judge_name: str,
    judge: Judge,
    capitalize: bool,
    arm_settings: dict[str, Any],
) -> dict[str, Any]:
    """The run-wide settings of ``moia reproduce`` (backend, dtype, where the model is, the judge,
    how concept vectors were read, each arm's configuration), the same with or without workers."""
    from ..core.model import device_of

    return {
        "backend": backend,
        "dtype": dtype,
        "device": device_of(model).type,  # where the model is, not what was asked for
        "judge": judge_name if judge_name == "rule" else f"{judge_name} ({getattr(judge, 'model', '?')})",
        "concept_vectors": {"capitalize": capitalize, "system": None},
        "arms": arm_settings,
    }


def run_sweep(
    model: LanguageModel,
    sweep: Sweep,
    out_dir: Any,
    vectors: ConceptVectors,
    arm_interventions: dict[str, list[Intervention]] | None = None,
    judge: Judge | None = None,
    run_settings: dict[str, Any] | None = None,
    progress: bool = True,
    only: Collection[str] | None = None,
) -> RunSummary:
    """Run every unfinished trial of ``sweep`` and append it, graded, to ``out_dir/trials.jsonl``.

    Args:
        vectors: concept vectors covering ``sweep.concepts`` × the sweep's layers.
        arm_interventions: {arm: interventions applied to every row of that arm}; an arm of
            ``sweep.arms`` missing here is skipped (``RunSummary.skipped_arms``). Default: the
            baseline arm with no interventions.
        judge: grades free trials (default ``RuleJudge``); forced trials use ``names_concept``.
        run_settings: extra run-wide settings recorded in ``run.json`` and checked on resume
            (model, vectors, arms' configurations, judge). ``"arms"`` maps arm -> its settings;
            arms are checked only against arms that already have trials.
        only: run only these trial ids (a shard of the sweep, ``moia.experiment.shards``).

    Raises ``JudgeError`` when the judge fails; the trials finished before are kept.
    """
    arm_interventions = {"baseline": []} if arm_interventions is None else arm_interventions
    judge = judge or RuleJudge()
    layers = sweep.validate(n_layers(model))
    for concept in sweep.concepts:
        for layer in layers:
            try:
                vectors.get(concept, layer)
            except KeyError as e:
                raise ValueError(f"the concept vectors do not cover the sweep: {e}") from None
    sampling, sampling_record = sampling_settings(sweep, model)
    check_run_settings(out_dir, recorded_settings(model, sweep, run_settings))
    path = f"{out_dir}/{TRIALS}"
    done = {r["id"] for r in read_trials(path)}
    rows = SweepRows(model, vectors, sweep)
    batch_size = sweep.batch_size or auto_batch_size(
        model, max(rows.prompt(s).n_tokens for s in sweep_trials(sweep, layers)), sweep.max_new_tokens
    )
    runner = TrialRunner(model, sweep.max_new_tokens, sampling, batch_size=batch_size)
    skipped = {arm: "not prepared" for arm in sweep.arms if arm not in arm_interventions}
    plan: list[tuple[str, list[TrialSpec]]] = []  # (arm, unfinished trials of one batch)
    total = already = 0
    for arm in sweep.arms:
        specs = arm_trials(sweep, arm, layers)
        total += len(specs)
        already += sum(1 for s in specs if s.id in done)
        if arm in skipped:
            continue
        todo = [s for s in specs if s.id not in done and (only is None or s.id in only)]
        plan += [(arm, todo[i : i + batch_size]) for i in range(0, len(todo), batch_size)]
    ran, start = 0, time.perf_counter()
    bar = tqdm(total=sum(len(t) for _, t in plan), desc="trials", unit="trial", disable=not progress)
    with bar:
        for arm, todo in plan:
            bar.set_postfix_str(arm)
            replies = runner.generate([rows.row(s) for s in todo], *arm_interventions[arm])
            try:
                records = [
                    trial_record(s, rows.prompt(s), reply, n_layers(model), judge, rows.start(s))
                    for s, reply in zip(todo, replies, strict=True)
                ]
            except JudgeError as e:
                raise JudgeError(
                    f"{e}. The {len(done) + ran} trials finished before are kept in {path}; run again "
                    "with the same arguments to resume"
                ) from e
            ran += append_trials(path, records)
            bar.update(len(records))
    return RunSummary(total, already, ran, time.perf_counter() - start, skipped, sampling_record)
