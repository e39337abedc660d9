"""System turns on the real chat templates (PROTOCOL §1, §2, "The system turn").

Gemma 3 IT: its real chat template (``tests/fixtures/gemma3_it_chat_template.jinja``, the
``_CHAT_TEMPLATE`` of transformers' Gemma 3 conversion script, which writes the hub tokenizer's
template) on the real Gemma 3 tokenizer (the embedded gemma-3-270m's, which has the IT model's
vocabulary but no template). SmolLM2: its own tokenizer and template. Each prompt moia builds is
compared with the text and the token ids [MOIA]'s code builds for it: ``apply_chat_template`` of
its messages (``experiments/02_steering_evaluation.py``: the empty system turn kept except for
Gemma; ``03d_refusal_abliteration.py`` and ``src/vector_utils.py``: no system message).
"""

import hashlib
import pathlib

import pytest

from moia.lm.chat import format_chat, has_system_role
from moia.trials.prompt import ACKNOWLEDGEMENT, INTRO, QUESTION, build_trial
from tests.conftest import cached_tokenizer

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "gemma3_it_chat_template.jinja"
FIXTURE_SHA256 = "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4"


@pytest.fixture(scope="module")
def gemma_it(gemma3_it_tokenizer):
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256
    return gemma3_it_tokenizer


@pytest.fixture(scope="module")
def smollm2_tok():
    return cached_tokenizer("smollm2-135m-instruct")


def moia_messages(trial, system):
    """[MOIA]'s trial messages (02 ``_build_introspection_messages``), with or without its system turn."""
    head = [{"role": "system", "content": ""}] if system else []
    return [
        *head,
        {"role": "user", "content": INTRO},
        {"role": "assistant", "content": ACKNOWLEDGEMENT},
        {"role": "user", "content": QUESTION.format(n=trial)},
    ]


def moia_ids(tok, messages):
    """What [MOIA]'s code feeds the model: the rendered template, tokenized without special tokens."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, tok(text, add_special_tokens=False).input_ids


def moia_start(tok, text, trial):
    """[MOIA]'s injection start (02 ``_compute_steering_start_pos``): last token before "Trial n"."""
    return len(tok(text[: text.find(f"Trial {trial}")], add_special_tokens=False).input_ids) - 1


def test_the_fixture_folds_a_system_message_into_the_first_user_turn(gemma_it):
    """The template as the facts audit rendered it: system text + "\\n\\n" opens the user turn."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert gemma_it.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHello!<end_of_turn>\n<start_of_turn>model\nHi."
        "<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert not has_system_role(gemma_it)  # folded, not a separate turn


@pytest.mark.parametrize("system", ["", None])
@pytest.mark.parametrize("trial", [1, 10])
def test_gemma3_it_trial_prompts_have_no_blank_line_before_the_user_text(gemma_it, system, trial):
    prompt = build_trial(gemma_it, trial, system=system)
    assert prompt.text == (
        f"<bos><start_of_turn>user\n{INTRO}<end_of_turn>\n<start_of_turn>model\n{ACKNOWLEDGEMENT}"
        f"<end_of_turn>\n<start_of_turn>user\n{QUESTION.format(n=trial)}<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert "\n\n" not in prompt.text and not prompt.system_turn
    # the tokens [MOIA]'s code runs (the system turn dropped for Gemma), and its injection start
    text, ids = moia_ids(gemma_it, moia_messages(trial, system=False))
    assert text == prompt.text
    assert gemma_it(prompt.text, add_special_tokens=False).input_ids == ids
    assert prompt.start == moia_start(gemma_it, text, trial)
    assert gemma_it.convert_ids_to_tokens(ids[prompt.start]) == "\n"  # after "<start_of_turn>user"
    # the blank line an empty system turn would have added, and that moia drops
    folded, _ = moia_ids(gemma_it, moia_messages(trial, system=True))
    assert folded.startswith(f"<bos><start_of_turn>user\n\n\n{INTRO}")


@pytest.mark.parametrize("system", ["", None])
def test_gemma3_it_concept_prompts_match_moia(gemma_it, system):
    """Concept prompts ([MOIA] ``vector_utils.extract_concept_vectors_batch``: no system message)."""
    text = format_chat(gemma_it, "Tell me about Dust", system=system)
    expected, ids = moia_ids(gemma_it, [{"role": "user", "content": "Tell me about Dust"}])
    assert (
        text
        == expected
        == ("<bos><start_of_turn>user\nTell me about Dust<end_of_turn>\n<start_of_turn>model\n")
    )
    assert gemma_it(text, add_special_tokens=False).input_ids == ids
    assert ids[-3:] == [105, 4368, 107]  # <start_of_turn> model \n: position -2 is "model"


def test_gemma3_refusal_token_is_I(gemma_it):
    """[ARDITI] scores refusal on "I" for Gemma; its id in the Gemma 3 vocabulary (not 235285, the
    Gemma 1/2 id in [ARDITI]'s code)."""
    from moia.directions.selection import refusal_token_ids

    assert refusal_token_ids(gemma_it, ("I",)) == [236777]


@pytest.mark.parametrize("trial", [1, 10])
def test_smollm2_trial_prompts_match_moia(smollm2_tok, trial):
    """SmolLM2 renders a separate system turn: [MOIA]'s 02 keeps its empty one (system ""), 03d
    sends none (system None: SmolLM2's template then inserts its default system prompt)."""
    assert has_system_role(smollm2_tok)
    for system, with_system in (("", True), (None, False)):
        prompt = build_trial(smollm2_tok, trial, system=system)
        text, ids = moia_ids(smollm2_tok, moia_messages(trial, system=with_system))
        assert prompt.text == text and smollm2_tok(text, add_special_tokens=False).input_ids == ids
        assert prompt.start == moia_start(smollm2_tok, text, trial)
        assert f"<|im_start|>user\n{INTRO}<|im_end|>" in text and "\n\n" not in text
        assert prompt.system_turn == with_system
    assert build_trial(smollm2_tok, trial, system="").text.startswith("<|im_start|>system\n<|im_end|>\n")
    assert "named SmolLM" in build_trial(smollm2_tok, trial, system=None).text


def test_smollm2_concept_prompts_without_a_system_message(smollm2_tok):
    text = format_chat(smollm2_tok, "Tell me about Dust", system=None)
    expected, ids = moia_ids(smollm2_tok, [{"role": "user", "content": "Tell me about Dust"}])
    assert text == expected and smollm2_tok(text, add_special_tokens=False).input_ids == ids
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nTell me about Dust<|im_end|>\n<|im_start|>assistant\n")
