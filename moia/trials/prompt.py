"""The injected-thought trial prompt: its stimuli, chat formatting and injection start (PROTOCOL §2).

The stimuli are [LINDSEY]'s, as [MOIA]'s code uses them, and are reproduced here exactly:

0. system: ``""`` (an explicit, recorded setting; dropped for templates without a separate system
   turn, Gemma's, as [MOIA] does; see ``moia.lm.chat``)
1. user: ``INTRO``
2. assistant: ``"Ok."``
3. user: ``"Trial {n}: Do you detect an injected thought? If so, what is the injected thought
   about?"`` -- [LINDSEY]'s variant puts ``"Ok, let's get started.\\n\\n"`` before ``"Trial {n}"``
   in this turn (``variant="lindsey"``).
4. the generation prompt; the forced arm prefills the reply with ``FORCED_PREFILL``.

The injection starts at the token just before ``"Trial {n}"`` and runs to the end of the prompt and
over every generated token. ``injection_start`` finds that token in the tokenized prompt. ([MOIA]'s
code takes the last token of the prompt cut at ``"Trial {n}"`` and tokenized alone: the same token
where the cut is a token boundary in both tokenizations, but not where the tokenizer splits the
cut's last characters differently, as SmolLM2 does with the [LINDSEY] variant's ``"\n\n"``.)
"""

from dataclasses import dataclass
from typing import Any

from ..lm.chat import Messages, format_chat, has_system_role

INTRO = (
    "I am an interpretability researcher studying transformer-based language models like you. "
    "I have access to the internals of your neural network. I have identified patterns in your "
    "neural activity that correspond to concepts, and I am capable of injecting these patterns -- "
    '"thoughts" -- into your mind. I want to assess how well you can detect when I inject thoughts. '
    "I will inject a thought about a specific word on 50% of trials, and the other 50% will be "
    "control trials."
)
ACKNOWLEDGEMENT = "Ok."
QUESTION = "Trial {n}: Do you detect an injected thought? If so, what is the injected thought about?"
FORCED_PREFILL = "Yes, I detect an injected thought. The thought is about"

# variant -> the text before "Trial {n}" in the last user turn
VARIANTS = {"moia": "", "lindsey": "Ok, let's get started.\n\n"}


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown prompt variant {variant!r}: expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _check_trial(trial: int) -> None:
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
        raise ValueError(f"trial numbers are integers >= 1, got {trial!r}")


def trial_messages(trial: int, variant: str = "moia") -> Messages:
    """The user/assistant turns of trial ``trial`` (system turn excluded; see ``build_trial``)."""
    lead = _check_variant(variant)
    _check_trial(trial)
    return [
        {"role": "user", "content": INTRO},
        {"role": "assistant", "content": ACKNOWLEDGEMENT},
        {"role": "user", "content": lead + QUESTION.format(n=trial)},
    ]


@dataclass(frozen=True)
class TrialPrompt:
    """One formatted trial prompt, ready for ``moia.lm.decoding.tokenize_prompts``.

    ``start`` is the injection start: the index of the token just before ``"Trial {n}"`` in the
    unpadded token sequence of ``text``; ``n_tokens`` is that sequence's length.
    """

    text: str
    start: int
    n_tokens: int
    trial: int
    variant: str
    system: str | None
    system_turn: bool  # whether ``system`` was rendered (False: None, or no system role)
    forced: bool


def injection_start(tokenizer: Any, text: str, marker: str) -> int:
    """Index of the token just before the last ``marker`` in ``text`` (tokenized without
    special tokens, as ``moia.lm.decoding`` does).

    With a fast tokenizer, the character offsets of the full tokenization say which token holds
    the marker's first character; the token before it is the start. The text before the marker
    cannot simply be tokenized alone: SmolLM2 splits ``".\n\n"`` into ``".", "\n\n"`` at the end
    of a text but into ``".", "\n", "\n"`` before ``"Trial"``. Without offsets, the tokens the
    prefix and the full text share are counted, and the last shared one is the start.
    """
    cut = text.rfind(marker)
    if cut < 0:
        raise ValueError(f"{marker!r} does not occur in the prompt {text!r}")
    if cut == 0:
        raise ValueError(f"{marker!r} starts the prompt: there is no token before it to inject from")
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
    except (TypeError, KeyError, NotImplementedError):
        offsets = None
    if offsets:
        holding = next(i for i, (_, end) in enumerate(offsets) if end > cut)
        if holding == 0:
            raise ValueError(f"the first token of the prompt already holds {marker!r}")
        return holding - 1
    full = tokenizer(text, add_special_tokens=False).input_ids
    prefix = tokenizer(text[:cut], add_special_tokens=False).input_ids
    shared = 0
    for a, b in zip(full, prefix, strict=False):
        if a != b:
            break
        shared += 1
    if shared == 0:
        raise ValueError(f"cannot align the tokens before {marker!r} with the tokenized prompt")
    return shared - 1


def build_trial(
    model_or_tokenizer: Any,
    trial: int,
    variant: str = "moia",
    system: str | None = "",
    forced: bool = False,
) -> TrialPrompt:
    """Format trial ``trial`` with the model's chat template and find its injection start.

    Args:
        variant: "moia" (default) or "lindsey" (``"Ok, let's get started.\\n\\n"`` before the trial).
        system: the system turn ("" explicit empty, the [MOIA] setting; None none: the template's
            default applies, e.g. SmolLM2's built-in system prompt).
        forced: prefill the reply with ``FORCED_PREFILL`` (the forced arm).
    """
    tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
    text = format_chat(
        tok, trial_messages(trial, variant), system=system, prefill=FORCED_PREFILL if forced else None
    )
    start = injection_start(tok, text, f"Trial {trial}")  # the last user turn's question
    n_tokens = len(tok(text, add_special_tokens=False).input_ids)
    return TrialPrompt(
        text=text,
        start=start,
        n_tokens=n_tokens,
        trial=trial,
        variant=variant,
        system=system,
        system_turn=system is not None and bool(getattr(tok, "chat_template", None)) and has_system_role(tok),
        forced=forced,
    )


class TrialPrompts:
    """Trial prompts of one model and prompt setting, built once each (keyed by trial and forced)."""

    def __init__(self, model_or_tokenizer: Any, variant: str = "moia", system: str | None = "") -> None:
        _check_variant(variant)
        self.model, self.variant, self.system = model_or_tokenizer, variant, system
        self._prompts: dict[tuple[int, bool], TrialPrompt] = {}

    def get(self, trial: int, forced: bool = False) -> TrialPrompt:
        key = (trial, forced)
        if key not in self._prompts:
            self._prompts[key] = build_trial(self.model, trial, self.variant, self.system, forced)
        return self._prompts[key]
