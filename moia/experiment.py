"""Run an injected-thought sweep: batched generation, grading, resumable output (PROTOCOL §2, §3).

Trials of different concepts, vector kinds, strengths and injection layers, and control trials,
share a batch: one generation call carries one ``ConceptInjection`` per injection layer present
in the batch, with per-row vectors, strengths and starts; a row injected at another layer (or a
control row) has strength 0 there. Forced and free trials share batches too: the prefill is part
of each row's prompt. An arm's own interventions (refusal ablation, bias vector) apply to every
row of its batches, so batches never mix arms. The prompt tokens before the injection start are
the same in every trial and run once per batch (``moia.shared_prefix``; ``generate_tokens`` with
the full prompts gives the same replies, tested).

Each arm's trials are cut into batches of ``batch_size`` in a fixed order; finished trials are
appended to ``trials.jsonl`` after each batch (``moia.results``) and skipped when the run is
repeated with the same arguments. Greedy decoding (the default) makes each trial's reply
independent of its batch. With sampling, a batch is seeded from (seed, arm, batch index) and
re-run whole when resumed, so a resumed run reproduces the replies of an uninterrupted one.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .generation import generate_tokens, tokenize_prompts
from .grading import names_concept
from .hooks import ConceptInjection, injections_by_layer
from .judge import Judge, JudgeError, RuleJudge
from .protocol import FORCED_PREFILL, TrialPrompt, build_trial
from .results import TRIALS, append_trials, check_run_settings, read_trials
from .shared_prefix import generate_shared_prefix
from .sweep import CONTROL_CONCEPT, Sweep, TrialSpec, arm_trials, random_direction, stable_seed


class TrialRunner:
    """Generates the replies of a list of trials in one batched call (no per-trial loop).

    Args:
        vectors: concept vectors with ``get(word, layer) -> [d_model]`` (``moia.ConceptVectors``).
        variant, system: the trial prompt (``moia.protocol.build_trial``).
        seed: also seeds the random directions (``moia.sweep.random_direction``).
        shared_prefix: run the prompt tokens every trial shares once per batch.
    """

    def __init__(
        self,
        model: Any,
        vectors: Any,
        variant: str = "moia",
        system: str | None = "",
        max_new_tokens: int = 100,
        temperature: float = 0.0,
        seed: int = 0,
        shared_prefix: bool = True,
    ) -> None:
        self.model, self.vectors = model, vectors
        self.shared_prefix = shared_prefix
        self._ids: dict[tuple[int, bool], list[int]] = {}
        self.variant, self.system = variant, system
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self._prompts: dict[tuple[int, bool], TrialPrompt] = {}
        self._vectors: dict[tuple[str, str, int], torch.Tensor] = {}
        self.device = next(model.parameters()).device

    def prompt(self, spec: TrialSpec) -> TrialPrompt:
        key = (spec.trial, spec.forced)
        if key not in self._prompts:
            self._prompts[key] = build_trial(self.model, spec.trial, self.variant, self.system, spec.forced)
        return self._prompts[key]

    def vector(self, spec: TrialSpec) -> torch.Tensor:
        """The injected vector of an injected trial: v(concept, layer) or its random stand-in."""
        assert spec.concept is not None and spec.layer is not None and spec.injected
        key = (spec.kind, spec.concept, spec.layer)
        if key not in self._vectors:
            v = self.vectors.get(spec.concept, spec.layer).float()
            if spec.kind == "random":
                v = random_direction(v, self.seed, spec.concept, spec.layer)
            self._vectors[key] = v
        return self._vectors[key]

    def injections(self, specs: Sequence[TrialSpec]) -> list[ConceptInjection]:
        """One ``ConceptInjection`` per injection layer in ``specs``; other rows get strength 0."""
        return injections_by_layer(
            [self.vector(s) if s.injected else None for s in specs],
            [s.layer if s.injected else None for s in specs],
            [s.strength if s.injected else 0.0 for s in specs],
            torch.tensor([self.prompt(s).start for s in specs]),
        )

    def token_ids(self, spec: TrialSpec) -> list[int]:
        key = (spec.trial, spec.forced)
        if key not in self._ids:
            self._ids[key] = list(
                self.model.tokenizer(self.prompt(spec).text, add_special_tokens=False).input_ids
            )
        return self._ids[key]

    def generate(self, specs: Sequence[TrialSpec], *interventions: Any, seed: int | None = None) -> list[str]:
        """The replies (forced: the continuation after the prefill) of ``specs``, in order.

        The prompt tokens before the injection start are the same in every trial; they are run
        once per batch (``moia.shared_prefix``) unless ``shared_prefix`` is off.
        """
        ids = [self.token_ids(s) for s in specs]
        starts = [self.prompt(s).start for s in specs]
        prefix = ids[0][: min(starts)]
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed
        )
        if self.shared_prefix and prefix and all(row[: len(prefix)] == prefix for row in ids):
            new = generate_shared_prefix(
                self.model,
                prefix,
                [row[len(prefix) :] for row in ids],
                shared=tuple(interventions),
                per_row=tuple(self.injections(specs)),
                **kwargs,
            )
        else:
            tokens, mask = tokenize_prompts(self.model, [self.prompt(s).text for s in specs], self.device)
            new = generate_tokens(self.model, tokens, mask, *interventions, *self.injections(specs), **kwargs)
        return [self.model.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def trial_record(
    spec: TrialSpec, prompt: TrialPrompt, response: str, n_layers: int, judge: Judge
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
        "start": prompt.start,
        "prompt_tokens": prompt.n_tokens,
        "response": response,
    }
    if spec.forced:
        assert spec.concept is not None
        record["prefill"] = FORCED_PREFILL
        record["names_concept"] = names_concept(response, spec.concept)
    else:
        grade = judge.grade(response, spec.concept if spec.injected and spec.concept else CONTROL_CONCEPT)
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


def run_sweep(
    model: Any,
    sweep: Sweep,
    out_dir: Any,
    vectors: Any,
    arm_interventions: dict[str, list[Any]] | None = None,
    judge: Judge | None = None,
    run_settings: dict[str, Any] | None = None,
    progress: bool = True,
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

    Raises ``JudgeError`` when the judge fails; the trials finished before are kept.
    """
    arm_interventions = {"baseline": []} if arm_interventions is None else arm_interventions
    judge = judge or RuleJudge()
    n_layers = int(model.cfg.n_layers)
    layers = sweep.validate(n_layers)
    for concept in sweep.concepts:
        for layer in layers:
            try:
                vectors.get(concept, layer)
            except KeyError as e:
                raise ValueError(f"the concept vectors do not cover the sweep: {e}") from None
    settings = {
        "model": getattr(model, "moia_name", None) or str(getattr(model.cfg, "model_name", "")),
        **{
            k: v
            for k, v in sweep.as_dict().items()
            if k in ("variant", "system", "max_new_tokens", "temperature", "seed")
        },
        **(run_settings or {}),
    }
    if sweep.temperature > 0:
        settings["batch_size"] = sweep.batch_size  # sampled replies depend on the batch
    check_run_settings(out_dir, settings)
    path = f"{out_dir}/{TRIALS}"
    done = {r["id"] for r in read_trials(path)}
    runner = TrialRunner(
        model, vectors, sweep.variant, sweep.system, sweep.max_new_tokens, sweep.temperature, sweep.seed
    )
    skipped = {arm: "not prepared" for arm in sweep.arms if arm not in arm_interventions}
    plan = []  # (arm, batch index, batch, unfinished trials of the batch)
    total = 0
    for arm in sweep.arms:
        specs = arm_trials(sweep, arm, layers)
        total += len(specs)
        if arm in skipped:
            continue
        for i in range(0, len(specs), sweep.batch_size):
            batch = specs[i : i + sweep.batch_size]
            todo = [s for s in batch if s.id not in done]
            if todo:
                plan.append((arm, i // sweep.batch_size, batch, todo))
    already = sum(1 for arm in sweep.arms for s in arm_trials(sweep, arm, layers) if s.id in done)
    ran, start = 0, time.perf_counter()
    bar = tqdm(total=sum(len(t) for *_, t in plan), desc="trials", unit="trial", disable=not progress)
    with bar:
        for arm, index, batch, todo in plan:
            bar.set_postfix_str(arm)
            rows = batch if sweep.temperature > 0 else todo
            seed = stable_seed("batch", sweep.seed, arm, index) if sweep.temperature > 0 else None
            replies = runner.generate(rows, *arm_interventions[arm], seed=seed)
            todo_ids = {s.id for s in todo}
            try:
                records = [
                    trial_record(s, runner.prompt(s), reply, n_layers, judge)
                    for s, reply in zip(rows, replies, strict=True)
                    if s.id in todo_ids
                ]
            except JudgeError as e:
                raise JudgeError(
                    f"{e}. The {len(done) + ran} trials finished before are kept in {path}; run again "
                    "with the same arguments to resume"
                ) from e
            ran += append_trials(path, records)
            bar.update(len(records))
    return RunSummary(total, already, ran, time.perf_counter() - start, skipped)
