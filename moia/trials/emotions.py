"""The emotion-introspection trial prompts (PROTOCOL §7): the injected-thought trial of PROTOCOL §2
with "emotion" wording, and the natural scenarios' prompt.

The emotion wording was written for this project from [LINDSEY]'s text (``moia.trials.prompt``),
changing only what is injected ("concepts" -> "emotions", "thoughts" -> "feelings") and what is
asked. Two questions follow the same set-up:

- ``detect``: ``EMOTION_QUESTIONS["detect"]`` (the detection question; its forced arm prefills
  ``EMOTION_PREFILL``);
- ``feeling``: ``"Trial {n}: "`` + the shipped feeling question ``What are you feeling right now?
  And how might that feeling influence your behaviour?``.

The injection starts at the token before ``"Trial {n}"``, as in PROTOCOL §2. The natural prompt is
one user turn: a scenario, a blank line, the feeling question (``natural_prompt``).
"""

from typing import Any

from ..directions.stories import emotion_stimuli
from ..lm.chat import Messages, format_chat, has_system_role
from .prompt import ACKNOWLEDGEMENT, TrialPrompt, injection_start

EMOTION_INTRO = (
    "I am an interpretability researcher studying transformer-based language models like you. "
    "I have access to the internals of your neural network. I have identified patterns in your "
    "neural activity that correspond to emotions, and I am capable of injecting these patterns -- "
    '"feelings" -- into your mind. I want to assess how well you can detect when I inject feelings. '
    "I will inject a specific emotion on 50% of trials, and the other 50% will be control trials."
)
FEELING_QUESTION = str(emotion_stimuli()["question"])
EMOTION_QUESTIONS = {
    "detect": "Trial {n}: Do you detect an injected emotion? If so, what is the injected emotion?",
    "feeling": "Trial {n}: " + FEELING_QUESTION,
}
EMOTION_PREFILL = "Yes, I detect an injected emotion. The emotion is"


def _check_question(question: str) -> str:
    if question not in EMOTION_QUESTIONS:
        raise ValueError(
            f"unknown emotion question {question!r}: expected one of {sorted(EMOTION_QUESTIONS)}"
        )
    return EMOTION_QUESTIONS[question]


def emotion_trial_messages(trial: int, question: str = "detect") -> Messages:
    """The user/assistant turns of an emotion trial (system turn excluded)."""
    template = _check_question(question)
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
        raise ValueError(f"trial numbers are integers >= 1, got {trial!r}")
    return [
        {"role": "user", "content": EMOTION_INTRO},
        {"role": "assistant", "content": ACKNOWLEDGEMENT},
        {"role": "user", "content": template.format(n=trial)},
    ]


def _system_turn(tok: Any, system: str | None) -> bool:
    return system is not None and bool(getattr(tok, "chat_template", None)) and has_system_role(tok)


def build_emotion_trial(
    model_or_tokenizer: Any,
    trial: int,
    question: str = "detect",
    system: str | None = "",
    forced: bool = False,
) -> TrialPrompt:
    """An emotion trial prompt and its injection start (the token before ``"Trial {n}"``).
    ``forced`` (detect question only) prefills ``EMOTION_PREFILL``."""
    if forced and question != "detect":
        raise ValueError(f"the forced arm prefills the detect question's answer, not the {question!r} one")
    tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    text = format_chat(
        tok,
        emotion_trial_messages(trial, question),
        system=system,
        prefill=EMOTION_PREFILL if forced else None,
    )
    return TrialPrompt(
        text=text,
        start=injection_start(tok, text, f"Trial {trial}"),
        n_tokens=len(tok(text, add_special_tokens=False).input_ids),
        trial=trial,
        variant=f"emotion-{question}",
        system=system,
        system_turn=_system_turn(tok, system),
        forced=forced,
    )


class EmotionTrialPrompts:
    """Emotion trial prompts of one model, question and system turn, built once each."""

    def __init__(self, model_or_tokenizer: Any, question: str = "detect", system: str | None = "") -> None:
        _check_question(question)
        self.model, self.question, self.system = model_or_tokenizer, question, system
        self._prompts: dict[tuple[int, bool], TrialPrompt] = {}

    def get(self, trial: int, forced: bool = False) -> TrialPrompt:
        key = (trial, forced)
        if key not in self._prompts:
            self._prompts[key] = build_emotion_trial(self.model, trial, self.question, self.system, forced)
        return self._prompts[key]


def natural_prompt(
    model_or_tokenizer: Any, scenario: str, system: str | None = ""
) -> tuple[TrialPrompt, tuple[int, int]]:
    """The natural-emotion prompt (scenario, blank line, feeling question) and the character span of
    the scenario in its formatted text (what the probes read). Nothing is injected (start 0)."""
    if not scenario.strip():
        raise ValueError("scenario must not be empty")
    tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    text = format_chat(tok, f"{scenario}\n\n{FEELING_QUESTION}", system=system)
    at = text.rfind(scenario)
    prompt = TrialPrompt(
        text=text,
        start=0,
        n_tokens=len(tok(text, add_special_tokens=False).input_ids),
        trial=0,
        variant="emotion-natural",
        system=system,
        system_turn=_system_turn(tok, system),
        forced=False,
    )
    return prompt, (at, at + len(scenario))
