"""Chat formatting with an explicit system turn (PROTOCOL §2, "The system turn").

[MOIA] passes an empty system turn to models whose chat template has a system role and none to
Gemma. A template *has a system role* only if it renders a system message as a separate turn;
Gemma 3 IT's folds it into the first user turn (``content + "\n\n"``), which does not count, so an
empty system turn is dropped there instead of becoming two newlines before the user's text. Some
templates (SmolLM2's) insert a default system prompt when none is given, so the system turn is an
explicit setting: ``system=""`` sends an empty one (where the template has a system role),
``system=None`` sends none (the template's default applies), any other text is sent as it is.

Models without a chat template (Gemma 3 base) get Gemma's turn format, folding a non-empty system
message into the first user turn as Gemma 3 IT's template does.
"""

from typing import Any

import jinja2

Messages = list[dict[str, str]]

GEMMA_TURNS = "<start_of_turn>{role}\n{content}<end_of_turn>\n"


def _tokenizer(model_or_tokenizer: Any) -> Any:
    return getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer


_SYSTEM_PROBE, _USER_PROBE = "MOIA-SYSTEM-PROBE", "MOIA-USER-PROBE"


def has_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message as a separate turn.

    False for templates without one, for templates that reject a system message (raise), and for
    templates that fold it into the user turn (Gemma 3 IT: only whitespace between the two texts).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    messages = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except jinja2.TemplateError:  # raise_exception("System role not supported") and the like
        return False
    if _SYSTEM_PROBE not in text or _USER_PROBE not in text:
        return False
    between = text[text.index(_SYSTEM_PROBE) + len(_SYSTEM_PROBE) : text.index(_USER_PROBE)]
    return bool(between.strip())


def as_messages(prompt: str | Messages) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt):
        raise ValueError("a prompt must be a string or a non-empty list of {'role', 'content'} dicts")
    return list(prompt)


def format_chat(
    model_or_tokenizer: Any,
    prompt: str | Messages,
    system: str | None = "",
    add_generation_prompt: bool = True,
    prefill: str | None = None,
) -> str:
    """Render a prompt as the model's chat text, ready to tokenize without special tokens.

    Args:
        prompt: a user message, or a list of {"role", "content"} messages.
        system: the system turn ("" = an explicit empty one; None = none). Dropped for templates
            without a system role, as [MOIA] does for Gemma.
        prefill: text that starts the assistant's reply (the forced arm of PROTOCOL §2).
    """
    tok = _tokenizer(model_or_tokenizer)
    messages = [m for m in as_messages(prompt) if m["role"] != "system" or system is None]
    template = getattr(tok, "chat_template", None)
    if system is not None and (system != "" or (template and has_system_role(tok))):
        messages = [{"role": "system", "content": system}, *messages]
    if template:
        try:
            text = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"the model's chat template rejects these messages: {e}") from e
        return str(text) + (prefill or "")
    return gemma_turns(tok, messages, add_generation_prompt) + (prefill or "")


def gemma_turns(tokenizer: Any, messages: Messages, add_generation_prompt: bool = True) -> str:
    """Gemma's turn format for models without a chat template; a system message is folded into the
    first user turn as ``content + "\n\n"``, as Gemma 3 IT's template does."""
    system = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if system and turns and turns[0]["role"] == "user":
        turns[0] = {"role": "user", "content": system + turns[0]["content"]}
    text = (tokenizer.bos_token or "") + "".join(
        GEMMA_TURNS.format(role="model" if m["role"] == "assistant" else m["role"], content=m["content"])
        for m in turns
    )
    if add_generation_prompt:
        text += "<start_of_turn>model\n"
    return text


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn (EOS and the template's end-of-turn marker)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)
