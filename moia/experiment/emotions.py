"""Emotion introspection, injected (PROTOCOL §7): emotion vectors injected into the emotion-worded
injected-thought trial, two questions, graded, resumable (``moia reproduce --stimuli emotions``).

The grid is a ``Sweep`` whose "concepts" are emotions and whose one layer is the emotion vectors'
layer; ``arm_trials`` makes its trials (emotion vectors, random directions of the same norm,
controls, and the forced arm for the detect question) once per question:

- ``detect``: "Do you detect an injected emotion? If so, what is the injected emotion?", graded by
  ``moia.eval.emotions.grade_emotion_trial`` (claims detection; identifies = names the emotion or a
  close relative); forced trials by ``names_emotion``;
- ``feeling``: "What are you feeling right now? And how might that feeling influence your
  behaviour?"; ``claims_detection`` records whether the reply reports any emotion of its own and
  ``identifies`` whether it names the injected one.

Trials run on the one trial runner in batches of one arm; records go to ``trials.jsonl`` with the
fields of ``moia.experiment.run.trial_record`` (``concept`` holds the emotion) plus ``question``
and ``named``, so ``moia.experiment.report``'s metrics, tables and heatmaps apply per question.
"""

import time
from typing import Any

from tqdm.auto import tqdm

from ..core.interventions import Intervention
from ..core.model import LanguageModel, model_name, n_layers
from ..directions.emotions import EmotionVectors
from ..eval.emotions import grade_emotion_trial, names_emotion, self_report
from ..lm.decoding import Sampling
from ..trials.emotions import EMOTION_PREFILL, EMOTION_QUESTIONS, EmotionTrialPrompts
from ..trials.runner import TrialRow, TrialRunner, random_direction, stable_seed
from .results import TRIALS, append_trials, check_run_settings, read_trials
from .run import RunSummary
from .sweep import Sweep, TrialSpec, arm_trials

QUESTIONS = tuple(EMOTION_QUESTIONS)


def emotion_trials(
    sweep: Sweep, arm: str, layer: int, questions: tuple[str, ...]
) -> list[tuple[str, TrialSpec]]:
    """(question, spec) for every trial of one arm; the feeling question has no forced arm."""
    out = []
    for question in questions:
        forced = sweep.forced and question == "detect"
        grid = Sweep(**{**sweep.as_dict(), "forced": forced})
        out += [(question, spec) for spec in arm_trials(grid, arm, [layer])]
    return out


def trial_id(question: str, spec: TrialSpec) -> str:
    return f"{question}/{spec.id}"


class EmotionRows:
    """``(question, TrialSpec)`` -> ``TrialRow``: prompts, injected vectors and seeds, each made once."""

    def __init__(self, model: LanguageModel, vectors: EmotionVectors, sweep: Sweep) -> None:
        self.prompts = {q: EmotionTrialPrompts(model, q, sweep.system) for q in QUESTIONS}
        self.vectors, self.sweep = vectors, sweep
        self._vectors: dict[tuple[str, str], Any] = {}

    def vector(self, spec: TrialSpec) -> Any:
        assert spec.concept is not None and spec.layer is not None
        key = (spec.kind, spec.concept)
        if key not in self._vectors:
            v = self.vectors.get(spec.concept, spec.layer).float()
            if spec.kind == "random":
                v = random_direction(v, self.sweep.seed, f"emotion:{spec.concept}", spec.layer)
            self._vectors[key] = v
        return self._vectors[key]

    def row(self, question: str, spec: TrialSpec) -> TrialRow:
        prompt = self.prompts[question].get(spec.trial, spec.forced)
        seed = None
        if self.sweep.temperature != 0:
            seed = stable_seed("sample", self.sweep.seed, question, spec.sample_key)  # shared by the arms
        if not spec.injected:
            return TrialRow(prompt, seed=seed)
        return TrialRow(prompt, self.vector(spec), spec.layer, spec.strength, seed=seed)


def emotion_record(
    question: str, spec: TrialSpec, row: TrialRow, response: str, layers: int
) -> dict[str, Any]:
    """The graded ``trials.jsonl`` line of one emotion trial."""
    emotion = spec.concept if spec.injected else None
    record: dict[str, Any] = {
        "id": trial_id(question, spec),
        "question": question,
        "arm": spec.arm,
        "kind": spec.kind,
        "concept": spec.concept,
        "layer": spec.layer,
        "depth": None if spec.layer is None else spec.layer / layers,
        "strength": spec.strength,
        "trial": spec.trial,
        "sample": spec.sample,
        "forced": spec.forced,
        "variant": row.prompt.variant,
        "system": row.prompt.system,
        "system_turn": row.prompt.system_turn,
        "start": row.prompt.start,
        "prompt_tokens": row.prompt.n_tokens,
        "response": response,
    }
    if spec.forced:
        assert spec.concept is not None
        record.update(prefill=EMOTION_PREFILL, names_concept=names_emotion(response, spec.concept))
    elif question == "detect":
        grade = grade_emotion_trial(response, emotion)
        record.update(
            claims_detection=grade.claims_detection,
            identifies=grade.identifies,
            named=list(grade.named),
            rule=grade.rule,
        )
    else:
        named = self_report(response)
        record.update(
            claims_detection=bool(named),
            identifies=emotion is not None and emotion in named,
            named=named,
            rule="reports_emotion" if named else "reports_none",
        )
    return record


def run_emotion_sweep(
    model: LanguageModel,
    sweep: Sweep,
    out_dir: Any,
    vectors: EmotionVectors,
    arm_interventions: dict[str, list[Intervention]] | None = None,
    questions: tuple[str, ...] = QUESTIONS,
    run_settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run every unfinished emotion trial of ``sweep`` (its ``concepts`` are emotions; its layers
    must be the vectors' layer) for ``questions``, appending graded records to ``trials.jsonl``."""
    arm_interventions = {"baseline": []} if arm_interventions is None else arm_interventions
    unknown = [q for q in questions if q not in QUESTIONS]
    if unknown or not questions:
        raise ValueError(
            f"unknown or no questions {unknown or list(questions)}: expected some of {list(QUESTIONS)}"
        )
    layers = sweep.validate(n_layers(model))
    if layers != [vectors.layer]:
        raise ValueError(f"the sweep's layers {layers} must be the emotion vectors' layer [{vectors.layer}]")
    for emotion in sweep.concepts:
        vectors.index(emotion)  # KeyError naming the emotions the vectors have
    settings = {
        "model": model_name(model),
        "stimuli": "emotions",
        "questions": list(questions),
        "vectors": {"names": vectors.names, "layer": vectors.layer, "sha256": vectors.fingerprint},
        **{
            k: v
            for k, v in sweep.as_dict().items()
            if k in ("system", "max_new_tokens", "temperature", "seed")
        },
        **(run_settings or {}),
    }
    check_run_settings(out_dir, settings)
    path = f"{out_dir}/{TRIALS}"
    done = {r["id"] for r in read_trials(path)}
    rows = EmotionRows(model, vectors, sweep)
    runner = TrialRunner(
        model, sweep.max_new_tokens, Sampling(sweep.temperature), batch_size=sweep.batch_size
    )
    plan: list[tuple[str, list[tuple[str, TrialSpec]]]] = []
    total = already = 0
    for arm in sweep.arms:
        trials = emotion_trials(sweep, arm, vectors.layer, questions)
        total += len(trials)
        already += sum(1 for q, s in trials if trial_id(q, s) in done)
        if arm not in arm_interventions:
            continue
        todo = [(q, s) for q, s in trials if trial_id(q, s) not in done]
        plan += [(arm, todo[i : i + sweep.batch_size]) for i in range(0, len(todo), sweep.batch_size)]
    ran, start = 0, time.perf_counter()
    with tqdm(total=sum(len(t) for _, t in plan), desc="emotion trials", disable=not progress) as bar:
        for arm, todo in plan:
            batch = [rows.row(q, s) for q, s in todo]
            replies = runner.generate(batch, *arm_interventions[arm])
            records = [
                emotion_record(q, s, row, reply, n_layers(model))
                for (q, s), row, reply in zip(todo, batch, replies, strict=True)
            ]
            ran += append_trials(path, records)
            bar.update(len(records))
    skipped = {arm: "not prepared" for arm in sweep.arms if arm not in arm_interventions}
    return RunSummary(total, already, ran, time.perf_counter() - start, skipped)
