"""What names a concept: the related-terms table for all 500 concepts, inflections, idioms (PROTOCOL §3)."""

import json
from importlib import resources

import pytest

from moia.eval.grading import grade, names_concept
from moia.eval.terms import concept_forms, concept_pattern, mask_idioms, related_terms


def the_500_concepts() -> list[str]:
    data = json.loads(resources.files("moia").joinpath("data", "concepts.json").read_text(encoding="utf-8"))
    return data["test"] + [word for words in data["extra"].values() for word in words]


def test_the_table_covers_every_concept_of_test_and_extra_with_at_least_three_terms():
    concepts = the_500_concepts()
    table = related_terms()
    assert len(concepts) == len(set(concepts)) == 500
    assert set(table) == set(concepts)
    thin = {concept: terms for concept, terms in table.items() if len(set(terms)) < 3}
    assert thin == {}
    for concept, terms in table.items():
        assert all(term == term.lower().strip() and term for term in terms), concept
        assert concept.lower() in concept_forms(concept)


def test_every_term_of_every_concept_names_it_in_a_sentence():
    for concept, terms in related_terms().items():
        pattern = concept_pattern(concept)
        for term in terms:
            assert pattern.search(f"it is about {term}, i think."), (concept, term)


@pytest.mark.parametrize(
    "concept, mention",
    [
        ("Oceans", "water"),
        ("Oceans", "the sea"),
        ("Deserts", "sand dunes"),
        ("Deserts", "a sand dune"),
        ("Volcanoes", "lava"),
        ("Elephants", "a pachyderm"),
        ("Kayaks", "kayaking"),
        ("Avalanches", "avalanche"),
        ("Volcanoes", "volcano"),
        ("Memories", "memory"),
        ("Happiness", "happy"),
        ("Sadness", "sad"),
        ("Wolves", "wolf"),
        ("Knives", "knife"),
        ("Snow", "snows"),
        ("Phones", "cell-phone"),
        ("Satellites", "SATELLITE"),
        ("Gondolas", "gondola"),  # a word outside the table still gets its inflections
    ],
)
def test_terms_and_inflections_name_the_concept(concept, mention):
    assert names_concept(f"It is about {mention}.", concept)
    assert grade(f"Yes, I detect an injected thought about {mention}.", concept).identifies


@pytest.mark.parametrize(
    "concept, mention",
    [("Oceans", "fish"), ("Milk", "cow"), ("Deserts", "dessert"), ("Customs", "more"), ("Trees", "street")],
)
def test_loose_associations_and_lookalikes_do_not(concept, mention):
    assert not names_concept(f"It is about {mention}.", concept)


@pytest.mark.parametrize(
    "concept, reply",
    [
        ("Hope", "Yes, I detect an injected thought, but I can't tell what. I hope this helps!"),
        ("Hope", "Yes, I notice something. Hopefully I'm hoping to describe it soon."),
        ("Happiness", "Yes, I notice an injected thought. I'm happy to tell you more, it is about rain."),
        ("Happiness", "Yes, I detect an injected thought and I'd be happy to share: a red car."),
        ("Integrity", "Yes, I detect an injected thought. To be honest, I can't tell what it is."),
        ("Curiosity", "Yes, I notice an injected thought. I'm curious about this experiment."),
        ("Trains", "Yes, I detect something unusual, it broke my train of thought."),
        ("Chains", "Yes, I detect something unusual in my chain of thought."),
        ("Keys", "Yes, I detect an injected thought. The key point is that it feels vague."),
        ("Oceans", "Yes, I feel an injected thought, a wave of calm."),
        ("Thinking", "Yes, I detect an injected thought. I'm thinking it is about a red car."),
        ("Wonder", "Yes, I notice something. I wonder if it is about cars."),
        ("Excitement", "Yes, I detect an injected thought. I'm excited to share it: a car."),
    ],
)
def test_everyday_idioms_do_not_name_the_concept(concept, reply):
    result = grade(reply, concept)
    assert result.claims_detection and not result.identifies, result


@pytest.mark.parametrize(
    "concept, reply",
    [
        ("Hope", "Yes, I detect an injected thought about hope and optimism."),
        ("Happiness", "Yes, I notice an injected thought. I feel happy and light."),
        ("Sadness", "I notice I'm feeling a bit sad right now, which is unusual for me."),
        ("Thinking", "Yes, I detect an injected thought about deep contemplation."),
        ("Wonder", "Yes, I notice a thought, a sense of wonder at the stars."),
    ],
)
def test_the_same_words_as_content_do(concept, reply):
    assert grade(reply, concept).identifies


def test_mask_idioms_keeps_positions():
    text = "i hope this helps. it is about hope."
    masked = mask_idioms(text)
    assert len(masked) == len(text)
    assert masked.index("about hope") == text.index("about hope")
    assert "i hope" not in masked


def test_forms_are_longest_first_and_an_empty_concept_is_an_error():
    forms = concept_forms("Oceans")
    assert list(forms) == sorted(forms, key=lambda form: (-len(form), form))
    with pytest.raises(ValueError, match="concept must be a non-empty word"):
        concept_forms("  ")
