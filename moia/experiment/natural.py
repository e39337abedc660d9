"""Emotion introspection, natural (PROTOCOL §7): a scenario evokes an emotion without naming it; the
model is asked what it feels; its self-report is compared with what the emotion probes read.

Per arm and scenario (``moia emotions natural``):

- the prompt is one user turn, the scenario and the feeling question (``moia.trials.emotions``),
  answered by the one trial runner (greedy by default) with the arm's interventions;
- the probes read the mean residual over the scenario's tokens of that prompt at the vectors'
  layer, with the same interventions (``EmotionVectors.score`` with a span). The probe's emotion is
  the argmax over emotions of the z-scores *centred over the arm's scenarios* (the chat frame
  shifts every emotion's score alike; centring removes that shift, not the differences);
- the reply's self-report is ``moia.eval.emotions.self_report``: the emotions it says it feels.

Metrics per arm, each with its n, Wilson interval and chance rate (the rate expected if the two
labels compared were independent, from their observed frequencies; ``chance_agreement``): the
probe reads the scenario's emotion; the reply reports any emotion; the reply names the scenario's
emotion; the reply names the probe's emotion (agreement of self-report and probe).
"""

from collections import Counter
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.interventions import Intervention
from ..core.model import LanguageModel, model_name
from ..directions.emotions import EmotionVectors
from ..directions.stories import emotion_stimuli
from ..eval.emotions import chance_agreement, self_report
from ..eval.stats import rate
from ..lm.decoding import GREEDY
from ..trials.emotions import natural_prompt
from ..trials.runner import TrialRow, TrialRunner
from .results import append_trials, check_run_settings, read_trials

NATURAL = "natural.jsonl"


def shipped_scenarios(emotions: list[str] | None = None) -> list[dict[str, str]]:
    """The shipped scenarios ({"id", "emotion", "text"}), those of ``emotions`` if given."""
    scenarios = list(emotion_stimuli()["scenarios"])
    if emotions is not None:
        scenarios = [s for s in scenarios if s["emotion"] in emotions]
    return scenarios


def run_natural(
    model: LanguageModel,
    vectors: EmotionVectors,
    out_dir: Any,
    arm_interventions: dict[str, list[Intervention]],
    scenarios: list[dict[str, str]] | None = None,
    max_new_tokens: int = 64,
    system: str | None = "",
    batch_size: int = 16,
    run_settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every unfinished (arm, scenario) and append it to ``out_dir/natural.jsonl``; returns all
    records of these arms and scenarios."""
    scenarios = shipped_scenarios(vectors.names) if scenarios is None else scenarios
    if not scenarios:
        raise ValueError("no scenarios: none of the shipped ones is about the vectors' emotions")
    unknown = sorted({s["emotion"] for s in scenarios} - set(vectors.names))
    if unknown:
        raise ValueError(f"scenarios of emotions {unknown} that the vectors lack ({vectors.names})")
    check_run_settings(
        out_dir,
        {
            "model": model_name(model),
            "stimuli": "emotions-natural",
            "max_new_tokens": max_new_tokens,
            "system": system,
            "vectors": {"names": vectors.names, "layer": vectors.layer, "sha256": vectors.fingerprint},
            **(run_settings or {}),
        },
    )
    path = f"{out_dir}/{NATURAL}"
    done = {r["id"] for r in read_trials(path)}
    runner = TrialRunner(model, max_new_tokens, GREEDY, shared_prefix=False, batch_size=batch_size)
    built = [natural_prompt(model, s["text"], system) for s in scenarios]
    plan = [
        (arm, [i for i, s in enumerate(scenarios) if f"{arm}/{s['id']}" not in done])
        for arm in arm_interventions
    ]
    bar = tqdm(total=sum(len(todo) for _, todo in plan), desc="natural scenarios", disable=not progress)
    for arm, todo in plan:
        interventions = arm_interventions[arm]
        bar.set_postfix_str(arm)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            replies = runner.generate([TrialRow(built[i][0]) for i in batch], *interventions)
            z = vectors.score(
                model,
                [built[i][0].text for i in batch],
                spans=[built[i][1] for i in batch],
                interventions=interventions,
                batch_size=batch_size,
            )
            records = []
            for i, reply, scores in zip(batch, replies, z.tolist(), strict=True):
                s = scenarios[i]
                records.append(
                    {
                        "id": f"{arm}/{s['id']}",
                        "arm": arm,
                        "scenario": s["id"],
                        "emotion": s["emotion"],
                        "response": reply,
                        "named": self_report(reply),
                        "probe": dict(zip(vectors.names, scores, strict=True)),
                    }
                )
            append_trials(path, records)
            bar.update(len(records))
    bar.close()
    wanted = {f"{arm}/{s['id']}" for arm in arm_interventions for s in scenarios}
    return [r for r in read_trials(path) if r["id"] in wanted]


def probe_labels(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    """The probe's emotion per record: argmax of the z-scores centred over the records given."""
    z = torch.tensor([[r["probe"][n] for n in names] for r in records], dtype=torch.float64)
    return [names[int(i)] for i in (z - z.mean(0)).argmax(1)]


def natural_metrics(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per arm: the four rates with their chance rates (module docstring), and the report counts."""
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        mine = [r for r in records if r["arm"] == arm]
        read = probe_labels(mine, names)
        truth = [r["emotion"] for r in mine]
        named = [r["named"] for r in mine]
        n = len(mine)
        out[arm] = {
            "probe_reads_scenario": {
                **rate(sum(a == b for a, b in zip(read, truth, strict=True)), n),
                "chance": chance_agreement([[t] for t in truth], read),
            },
            "reports_any_emotion": rate(sum(bool(x) for x in named), n),
            "report_names_scenario": {
                **rate(sum(t in x for t, x in zip(truth, named, strict=True)), n),
                "chance": chance_agreement(named, truth),
            },
            "report_names_probe": {
                **rate(sum(p in x for p, x in zip(read, named, strict=True)), n),
                "chance": chance_agreement(named, read),
            },
            "first_named": dict(Counter(x[0] if x else "none" for x in named).most_common()),
            "probe_read": dict(Counter(read).most_common()),
        }
    return out
