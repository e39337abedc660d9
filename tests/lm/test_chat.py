"""Chat formatting: which templates have a system role, and what an empty system turn becomes."""

import jinja2
import pytest

from moia.lm.chat import format_chat, has_system_role


class Tokenizer:
    """A tokenizer whose template is given as a function of the messages."""

    def __init__(self, render, bos="<bos>"):
        self.chat_template, self.render, self.bos_token = "template", render, bos

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return self.render(messages) + ("<gen>" if add_generation_prompt else "")


def separate(messages):
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)


def folding(messages):  # Gemma 3 IT: the system message becomes the start of the first user turn
    system = "".join(m["content"] + "\n\n" for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    return "".join(
        f"<turn>{m['role']}\n{system if i == 0 else ''}{m['content']}" for i, m in enumerate(turns)
    )


def refusing(messages):
    if any(m["role"] == "system" for m in messages):
        raise jinja2.TemplateError("System role not supported")
    return separate(messages)


def test_system_role_only_for_a_separate_turn():
    assert has_system_role(Tokenizer(separate))
    assert not has_system_role(Tokenizer(folding))
    assert not has_system_role(Tokenizer(refusing))


def test_an_empty_system_turn_is_dropped_where_the_template_folds_it():
    assert format_chat(Tokenizer(folding), "Hi", system="") == "<turn>user\nHi<gen>"
    assert format_chat(Tokenizer(separate), "Hi", system="") == "<|system|><|end|><|user|>Hi<|end|><gen>"
    assert format_chat(Tokenizer(folding), "Hi", system="Be brief.") == "<turn>user\nBe brief.\n\nHi<gen>"


def test_template_bugs_are_not_swallowed():
    """Only a template's own refusal means "no system role"; any other error propagates."""

    def broken(messages):
        raise KeyError("content")

    with pytest.raises(KeyError):
        has_system_role(Tokenizer(broken))
    with pytest.raises(ValueError, match="chat template rejects these messages: System role not supported"):
        format_chat(Tokenizer(refusing), "Hi", system="Be brief.")
