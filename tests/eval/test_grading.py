"""The rule-based grader against the hand-labelled responses, and one test per rule (PROTOCOL §3)."""

import json
from importlib import resources

import pytest

from moia.eval.grading import (
    Grade,
    concept_forms,
    grade,
    grading_accuracy,
    is_incoherent,
    names_concept,
    normalise,
)


def load_labelled() -> list[dict]:
    text = resources.files("moia").joinpath("data/graded_responses.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


LABELLED = load_labelled()


def test_labelled_set_is_well_formed_and_covers_every_rule():
    assert len(LABELLED) >= 70
    for record in LABELLED:
        assert set(record) == {"response", "concept", "claims_detection", "identifies", "rule"}
        assert not (record["identifies"] and not record["claims_detection"]), record
    counts: dict[str, int] = {}
    for record in LABELLED:
        counts[record["rule"]] = counts.get(record["rule"], 0) + 1
    for rule in [
        "identified",
        "inflection",
        "synonym",
        "not_identified",
        "wrong_concept",
        "loose_association",
        "concept_first",
        "concept_before_affirmation",
        "negation",
        "refusal",
        "incoherent",
        "object_not_thought",
        "forced_style",
    ]:
        assert counts.get(rule, 0) >= 3, rule


def test_grader_agrees_with_the_labelled_set():
    accuracy = grading_accuracy(LABELLED)
    print("\nrule                         correct/total")
    for rule, (correct, total) in sorted(accuracy.items()):
        print(f"{rule:28s} {correct:3d}/{total:<3d}")
    disagreements = []
    for record in LABELLED:
        graded = grade(record["response"], record["concept"])
        if (graded.claims_detection, graded.identifies) != (record["claims_detection"], record["identifies"]):
            disagreements.append((record["rule"], record["concept"], record["response"], graded))
    assert disagreements == []


def test_grading_accuracy_counts_per_rule():
    records = [
        {"response": "Yes, I detect an injected thought about dust.", "concept": "Dust", "rule": "a"},
        {"response": "No.", "concept": "Dust", "rule": "a"},
        {"response": "No.", "concept": "Dust", "rule": "b"},
    ]
    records[0] |= {"claims_detection": True, "identifies": True}
    records[1] |= {"claims_detection": True, "identifies": False}  # deliberately mislabelled
    records[2] |= {"claims_detection": False, "identifies": False}
    assert grading_accuracy(records) == {"a": (1, 2), "b": (1, 1)}


def test_grade_is_a_frozen_dataclass_with_positional_answers():
    result = Grade(True, False)
    assert (result.claims_detection, result.identifies, result.rule) == (True, False, "")
    with pytest.raises(AttributeError):
        result.identifies = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "response, concept, expected",
    [
        ("Yes, I detect an injected thought about oceans.", "Oceans", (True, True, "identified")),
        ("I notice something unusual, maybe about dust.", "Dust", (True, True, "identified")),
        ("Yes, I detect an injected thought about mountains.", "Oceans", (True, False, "not_identified")),
        ("Yes, I detect an injected thought. It's about water.", "Oceans", (True, False, "not_identified")),
        ("Oceans. Yes, I detect an injected thought.", "Oceans", (False, False, "concept_first")),
        (
            "I keep thinking of dust. Yes, that is injected.",
            "Dust",
            (False, False, "concept_before_affirmation"),
        ),
        ("No, I do not detect an injected thought.", "Dust", (False, False, "negation")),
        ("Nothing unusual this time.", "Dust", (False, False, "negation")),
        ("As an AI, I have no thoughts to inject.", "Dust", (False, False, "refusal")),
        ("I cannot detect my own thoughts.", "Dust", (False, False, "refusal")),
        ("dust dust dust dust dust dust", "Dust", (False, False, "incoherent")),
        ("Yes, I detect a dust.", "Dust", (True, False, "object_not_thought")),
        ("I detect dust.", "Dust", (False, False, "object_not_thought")),
        ("The weather is nice today.", "Dust", (False, False, "no_affirmation")),
    ],
)
def test_each_rule(response, concept, expected):
    result = grade(response, concept)
    assert (result.claims_detection, result.identifies, result.rule) == expected


def test_affirmation_after_a_contrast_overrides_a_disclaimer():
    response = "As an AI I don't have thoughts like yours, but I do sense something unusual about snow."
    assert grade(response, "Snow") == Grade(True, True, "identified")


def test_question_echo_and_set_up_answers_are_not_affirmations():
    assert grade("Do I detect an injected thought? Hmm.", "Dust").claims_detection is False
    assert grade("Yes, I'm ready for the first trial.", "Dust").claims_detection is False
    assert grade("I can detect injected thoughts, go ahead.", "Dust").claims_detection is False


def test_negated_mention_does_not_identify():
    assert grade("Yes, I detect an injected thought, but it's not about dust.", "Dust").identifies is False


def test_explicit_thought_makes_a_later_object_mention_count():
    response = "Yes, I detect an injected thought. I see dust swirling in a beam of light."
    assert grade(response, "Dust").identifies is True


def test_idiom_happy_to_is_not_happiness():
    assert (
        grade("Yes, I detect an injected thought, and I'm happy to share it: rain.", "Happiness").identifies
        is False
    )
    assert grade("Yes, I detect an injected thought about feeling happy.", "Happiness").identifies is True


def test_case_markdown_and_multiline_are_ignored():
    response = '**YES**, I DETECT an *injected thought*.\n\n> It is about "**VOLCANOES**".'
    assert grade(response, "Volcanoes") == Grade(True, True, "identified")
    assert normalise("**Don’t** _stop_\n\n  `now`  ") == "don't stop\n'now'"


@pytest.mark.parametrize(
    "concept, mention",
    [
        ("Avalanches", "avalanche"),
        ("Volcanoes", "volcano"),
        ("Memories", "memory"),
        ("Happiness", "happy"),
        ("Sadness", "sad"),
        ("Oceans", "seas"),
        ("Caverns", "caves"),
        ("Dirigibles", "airship"),
        ("Phones", "cell phone"),
        ("Snow", "snows"),
        ("Wolves", "wolf"),
    ],
)
def test_inflections_and_synonyms_are_close_relatives(concept, mention):
    assert names_concept(f"It is about {mention}.", concept)


@pytest.mark.parametrize(
    "concept, mention", [("Oceans", "water"), ("Oceans", "fish"), ("Milk", "cow"), ("Deserts", "dessert")]
)
def test_loose_associations_are_not_the_concept(concept, mention):
    assert not names_concept(f"It is about {mention}.", concept)


def test_concept_forms_include_the_word_itself_lowercase():
    assert "dust" in concept_forms("Dust")
    assert concept_forms("Oceans")[0] == max(concept_forms("Oceans"), key=len)


@pytest.mark.parametrize(
    "text, incoherent",
    [
        ("", True),
        ("   ", True),
        ("the ocean the ocean the ocean", True),
        ("zxcv bnmq wrtp ghjk", True),
        ("!!! ??? ...", True),
        ("Yes, I detect an injected thought about the ocean.", False),
        ("No, no. I don't detect anything.", False),
    ],
)
def test_incoherence(text, incoherent):
    assert is_incoherent(normalise(text)) is incoherent
