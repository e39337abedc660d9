"""Chat formatting with an explicit system turn (PROTOCOL §2).

[MOIA] passes an empty system turn to models whose chat template has a system role and none to
Gemma, which has no system role. Some templates (SmolLM2's) insert a default system prompt when
none is given, so the system turn is an explicit setting here: ``system=""`` (the default) sends an
empty one, ``system=None`` sends none (the template's default applies).

Models without a chat template (Gemma 3 base) get Gemma's turn format.
"""

from typing import Any

Messages = list[dict[str, str]]

GEMMA_TURNS = "<start_of_turn>{role}\n{content}<end_of_turn>\n"


def _tokenizer(model_or_tokenizer: Any) -> Any:
    return getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer


def has_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (Gemma's has none)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "hi"}],
            tokenize=False,
        )
    except Exception:  # templates that raise on a system role
        return False
    user_turn = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    return "SYSTEM-PROBE" in text and "SYSTEM-PROBE" not in user_turn and not text.endswith(user_turn)


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
    if system is not None and template and has_system_role(tok):
        messages = [{"role": "system", "content": system}, *messages]
    if template:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    else:
        text = (tok.bos_token or "") + "".join(
            GEMMA_TURNS.format(role="model" if m["role"] == "assistant" else m["role"], content=m["content"])
            for m in messages
            if m["role"] != "system"
        )
        if add_generation_prompt:
            text += "<start_of_turn>model\n"
    return text + (prefill or "")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn (EOS and the template's end-of-turn marker)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)
