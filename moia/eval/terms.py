"""What counts as naming a concept: inflections, the related-terms table, idioms (PROTOCOL §3).

A reply identifies the injected concept if it names the concept "or a closely related word"
([MOIA]'s identification criterion). moia makes that concrete with a table written for the project,
``moia/data/related_terms.json``: for each of the 500 concepts of ``concepts.json`` (50 test + 450
extra) 3-10 lowercase terms a careful human grader would accept: the word, its inflections, close
synonyms and the most obvious instances or parts (Oceans: sea, waves, water; Deserts: dunes, sand
dunes). Loose associations (Oceans -> fish, Milk -> cow) are left out on purpose.

``concept_forms`` adds to the table's terms the singular and plural of the concept word itself (any
word, also one outside the table) and of each term (``sand dunes`` -> ``sand dune``), except the few
derived singulars that are everyday words of their own (``mores`` -> ``more``).

Many terms are also everyday words a reply uses about the conversation, not as the content of a
thought: "I'm happy to help", "I hope this helps", "to be honest", "train of thought", "I wonder
if". ``mask_idioms`` blanks such uses (keeping every other character's position) before concepts are
searched for, in three classes: an adjective of the speaker's attitude followed by ``to``/``that``/
``for``/``about``/``you`` ("happy to", "curious about this"); a first-person verb of hoping,
wondering, worrying or thinking ("I hope", "I'm thinking about"); and fixed expressions ("train of
thought", "the key point", "a wave of").
"""

import functools
import json
import re
from importlib import resources

# Derived singulars that are everyday words in their own right: never taken as naming a concept.
_DERIVED_STOPWORDS = frozenset({"more", "plan", "tear", "rich", "vocal", "grit", "shear", "dish"})

_ATTITUDE = (
    r"happy|glad|excited|thrilled|eager|delighted|curious|grateful|thankful|proud|honou?red|pleased|"
    r"hopeful|confused|worried|anxious|sad|sorry|bored|calm"
)
_DOING = r"thinking|hoping|wondering|dreaming|reading|writing|planning|running|building"
_IDIOMS = re.compile(
    # 1. the speaker's attitude to the conversation: "happy to help", "curious about this", "glad you"
    rf"\b(?:{_ATTITUDE})(?= (?:to|that|for|you|about (?:this|the|that|your|it|how|what|participating|"
    rf"helping|being)|by (?:the|this|your)|with (?:the|this|your)|if|whether|what|how)\b)|"
    # 2. first-person verbs of hoping, wondering, worrying, fearing, thinking
    r"(?<=\bi )(?:hope|wonder|worry|fear|dread|regret|dream)\b|"
    r"(?<=\bwe )(?:hope|wonder)\b|"
    r"\bhop(?:e|ing)(?= (?:this|that|it|you|to|so|i)\b)|"
    rf"(?<=\bi'm )(?:just )?(?:{_DOING})\b|(?<=\bi am )(?:just )?(?:{_DOING})\b|"
    r"\bthinking (?=about|of|through|it over|that|carefully|more)\b|"
    r"\b(?:my|your|line of|chain of) reasoning\b|"
    # 3. fixed expressions
    r"\b(?:to|i'll|i will|i should|i must|i want to|let me) be honest\b|\bhonest (?=answer|response|"
    r"assessment|report|opinion)|"
    r"\b(?:train|chain|thread|line) of (?:thought|thoughts|reasoning|the conversation)\b|"
    r"\b(?:the|a|one|two|three|some) key(?= (?:point|thing|question|idea|factor|aspect|part|insight|"
    r"takeaway|detail|difference|feature|element|to|is|here)\b)|\bkey(?= (?:points|takeaways|factors|"
    r"aspects|insights|details|features|elements|findings|ideas|concepts)\b)|"
    r"\bwaves? of\b|\bno wonder\b|\bwonder(?:s|ed)? (?=if|whether|what|how|why)\b|"
    r"\b(?:don't|do not|no) worr(?:y|ies)\b|\bin theory\b|\bdeep dive\b|\bdive (?=in|into|deeper)\b|"
    r"\bjump(?:ing)? (?=in|into|to conclusions|right in)\b|\bup to speed\b|\bbuilding (?=on|upon)\b|"
    r"\ba sense of hum(?:o|ou)r\b|"
    r"\b(?:is|are|was|remains?|stays?|feels?|seems?|quite|very|fairly|relatively|pretty|more|less) stable\b"
)


@functools.cache
def related_terms() -> dict[str, tuple[str, ...]]:
    """The related-terms table: concept as spelled in concepts.json -> its terms (lowercase)."""
    path = resources.files("moia").joinpath("data", "related_terms.json")
    table = json.loads(path.read_text(encoding="utf-8"))["terms"]
    return {concept: tuple(terms) for concept, terms in table.items()}


@functools.cache
def _terms_by_lowercase() -> dict[str, tuple[str, ...]]:
    return {concept.lower(): terms for concept, terms in related_terms().items()}


def _plurals(word: str) -> set[str]:
    if re.search(r"(?:[^su]s|ae|ia|i)$", word):
        return set()  # already plural (or a Latin plural)
    if word.endswith(("s", "x", "z", "ch", "sh")) or re.search(r"[^aeiou]o$", word):
        return {word + "es", word + "s"}
    if re.search(r"[^aeiou]y$", word):
        return {word[:-1] + "ies"}
    return {word + "s"}


def _singulars(word: str) -> set[str]:
    if not word.endswith("s") or word.endswith(("ss", "us", "is", "os", "ics")):
        return set()
    if word.endswith("ies"):
        return {word[:-3] + "y"}
    if word.endswith("ves"):
        return {word[:-3] + "f", word[:-3] + "fe"}  # wolves -> wolf, knives -> knife
    if word.endswith(("oes", "ches", "shes", "xes", "zes", "sses")):
        return {word[:-2]}
    return {word[:-1]}


def _inflections(term: str, everyday_singulars: bool) -> set[str]:
    """term, and its last word in the singular and the plural."""
    head, _, last = term.rpartition(" ")
    prefix = head + " " if head else ""
    singulars = _singulars(last)
    if not head and not everyday_singulars:
        singulars -= _DERIVED_STOPWORDS
    forms = {term} | {prefix + form for form in _plurals(last) | singulars}
    return {form for form in forms if len(form) > 2 or form == term}


@functools.cache
def concept_forms(concept: str) -> tuple[str, ...]:
    """Every lowercase string that names `concept`, longest first (see the module docstring)."""
    word = concept.strip().lower()
    if not word:
        raise ValueError(f"concept must be a non-empty word (got {concept!r})")
    forms = _inflections(word, everyday_singulars=True)
    if word.endswith("iness"):
        forms.add(word[:-5] + "y")  # happiness -> happy
    elif word.endswith("ness"):
        forms.add(word[:-4])  # sadness -> sad
    for term in _terms_by_lowercase().get(word, ()):
        forms |= _inflections(term, everyday_singulars=False)
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


@functools.cache
def concept_pattern(concept: str) -> re.Pattern[str]:
    """Whole-word, case-folded match of any form; a space or hyphen in a term matches either."""
    alternatives = "|".join(
        re.escape(form).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]+") for form in concept_forms(concept)
    )
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def mask_idioms(text: str) -> str:
    """`text` (already lowercase) with idiomatic uses of everyday terms blanked, positions kept."""
    return _IDIOMS.sub(lambda match: " " * len(match.group()), text)
