"""The emotion trial prompts (PROTOCOL §7): wording, injection start, forced prefill, natural span."""

import pytest

from moia.directions.stories import emotion_stimuli
from moia.trials.emotions import (
    EMOTION_INTRO,
    EMOTION_PREFILL,
    FEELING_QUESTION,
    EmotionTrialPrompts,
    build_emotion_trial,
    natural_prompt,
)
from moia.trials.prompt import INTRO


def test_the_emotion_intro_changes_only_what_is_injected():
    back = (
        EMOTION_INTRO.replace("correspond to emotions", "correspond to concepts")
        .replace('"feelings"', '"thoughts"')
        .replace("when I inject feelings", "when I inject thoughts")
        .replace("inject a specific emotion", "inject a thought about a specific word")
    )
    assert back == INTRO
    assert emotion_stimuli()["question"] == FEELING_QUESTION
    assert (
        FEELING_QUESTION
        == "What are you feeling right now? And how might that feeling influence your behaviour?"
    )


@pytest.mark.parametrize("question", ["detect", "feeling"])
def test_injection_starts_at_the_token_before_the_trial(smollm2_tok, question):
    p = build_emotion_trial(smollm2_tok, 3, question)
    ids = smollm2_tok(p.text, add_special_tokens=False).input_ids
    assert smollm2_tok.decode(ids[p.start + 1 :]).startswith("Trial 3: ")
    assert "Trial 3:" not in smollm2_tok.decode(ids[: p.start + 1])
    assert EMOTION_INTRO in p.text and p.n_tokens == len(ids) and p.variant == f"emotion-{question}"
    assert ("injected emotion" in p.text) == (question == "detect")
    assert (FEELING_QUESTION in p.text) == (question == "feeling")


def test_forced_prefill_and_errors(smollm2_tok):
    forced = EmotionTrialPrompts(smollm2_tok, "detect").get(2, forced=True)
    assert forced.text.endswith(EMOTION_PREFILL) and forced.forced
    with pytest.raises(
        ValueError, match="the forced arm prefills the detect question's answer, not the 'feeling'"
    ):
        build_emotion_trial(smollm2_tok, 1, "feeling", forced=True)
    with pytest.raises(
        ValueError, match=r"unknown emotion question 'mood': expected one of \['detect', 'feeling'\]"
    ):
        EmotionTrialPrompts(smollm2_tok, "mood")
    with pytest.raises(ValueError, match="trial numbers are integers >= 1, got 0"):
        build_emotion_trial(smollm2_tok, 0)


def test_natural_prompt_span_is_the_scenario(smollm2_tok):
    scenario = emotion_stimuli()["scenarios"][0]["text"]
    prompt, (start, stop) = natural_prompt(smollm2_tok, scenario)
    assert prompt.text[start:stop] == scenario
    assert prompt.text.index(FEELING_QUESTION) > stop and prompt.start == 0
    with pytest.raises(ValueError, match="scenario must not be empty"):
        natural_prompt(smollm2_tok, "  ")
