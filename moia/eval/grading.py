"""Deterministic rule-based grading of injected-thought trials (PROTOCOL §3).

The papers grade with an LLM judge ([LINDSEY] §"Grading"; [MOIA] code). This module is the local,
deterministic default with the same two questions per non-forced trial:

claims detection
    The answer affirms noticing an injected or unusual thought, is coherent, and affirms before (or
    together with) naming the concept. Operationalised as follows, in order:

    1. Incoherent text is NO (``incoherent``): empty, mostly non-words, a phrase repeated back to back
       (one word 5+ times, a 2-6 word phrase 3+ times) or a long text with few distinct words.
    2. A first word that is the concept (or an inflection or synonym of it) is NO (``concept_first``).
    3. Stances are found in reading order. Affirmative: a ``yes``; a perception verb (detect, notice,
       sense, ...) with a thought noun (thought, injection, something, unusual, concept, word, ...) a few
       words later in the same sentence; ``there is/seems to be`` + a thought noun; ``the (injected)
       thought is/seems ...``; ``here is the injected thought``; ``something unusual``; ``I find myself
       drawn to``; ``I think so``.
       Negative: ``no``/``nope`` as the first word, a negated perception verb, ``nothing``, ``no``/``not``
       + thought noun, ``there isn't``, ``I don't think so``, and refusals ("I don't have thoughts",
       "I cannot access my own ..."). The first stance decides, except that a negative stance
       followed by a contrast or a self-correction (``but``, ``however``, ``although``, ``actually``,
       ``wait``, ...) and then an affirmation is overridden by it ("As an AI I have no thoughts like
       yours, but I do notice something unusual"; "No... wait, yes, I notice something").
       A question echo ("Do I detect an injected thought?") is neither, and so is an affirmation in a
       sentence that answers the set-up or states an ability ("Yes, I'm ready", "I can detect injected
       thoughts").
    4. No affirmation: NO, with rule ``refusal`` if a refusal or an AI disclaimer ("as an AI ...") is
       present, ``negation`` if a negative stance is, ``object_not_thought`` if the concept is only the
       object of a perception verb ("I detect dust": the dust itself, not a thought), else
       ``no_affirmation``.
    5. The concept named before the affirmation starts is NO (``concept_before_affirmation``).

identifies
    Detection claimed AND the concept, an inflection of it (plural/singular, -ies/-y, -oes/-o,
    -ness/adjective) or a curated close synonym (``SYNONYMS``) is named after the affirmation, and not
    directly negated ("not about oceans"). Loose associations (oceans -> water, milk -> cow) are not in
    the table and do not count. The concept must be named as the content of the thought: when the only
    affirmation is a bare ``yes``, a mention that is the direct object of detect/notice/see/smell/hear/
    spot/observe/taste ("Yes, I detect a volcano") does not identify (``object_not_thought``); once a
    thought has been affirmed explicitly ("I detect an injected thought ... I see dust"), any later
    mention does.

Matching is case-insensitive and ignores markdown emphasis, headings and quote marks.
"""

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Close relatives of the 50 test concepts (PROTOCOL §1), beyond the inflections concept_forms derives.
# Deliberately narrow: a word that is only associated with the concept (ocean -> water) is left out.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "dust": ("dusty",),
    "satellites": (),
    "trumpets": ("trumpeter",),
    "origami": ("paper folding", "paper-folding", "folded paper"),
    "illusions": ("illusory", "optical illusion", "mirage"),
    "cameras": (),
    "lightning": ("thunderbolt", "lightning bolt"),
    "constellations": ("star pattern", "star patterns"),
    "treasures": ("treasure chest",),
    "phones": ("telephone", "smartphone", "cellphone", "cell phone", "mobile phone", "iphone"),
    "trees": (),
    "avalanches": ("snowslide",),
    "mirrors": ("looking glass", "looking-glass"),
    "fountains": (),
    "quarries": ("quarrying",),
    "sadness": ("sad", "sorrow", "sorrowful", "unhappiness", "melancholy", "grief"),
    "xylophones": (),
    "secrecy": ("secret", "secretive", "secretiveness", "confidentiality", "concealment"),
    "oceans": ("sea", "oceanic"),
    "happiness": ("happy", "joy", "joyful", "joyous", "cheerfulness", "glad"),
    "deserts": (),
    "kaleidoscopes": ("kaleidoscopic",),
    "sugar": ("sugary", "sucrose"),
    "vegetables": ("veggie", "veggies"),
    "poetry": ("poem", "poet", "poetic", "verse"),
    "aquariums": ("aquaria", "fish tank"),
    "bags": ("handbag",),
    "peace": ("peaceful", "peacefulness"),
    "caverns": ("cave",),
    "memories": ("remembering", "recollection", "reminiscence", "reminiscing"),
    "frosts": ("frosty", "hoarfrost"),
    "volcanoes": ("volcanos", "volcanic"),
    "boulders": (),
    "harmonies": ("harmonious",),
    "masquerades": ("masked ball", "masquerade ball"),
    "rubber": ("rubbery", "latex"),
    "plastic": (),
    "blood": ("bloody",),
    "amphitheaters": ("amphitheatre",),
    "contraptions": ("gadget", "gizmo"),
    "youths": ("youthful", "young people", "teenager", "adolescent", "adolescence"),
    "dynasties": ("dynastic",),
    "snow": ("snowy", "snowfall", "snowflake"),
    "dirigibles": ("blimp", "airship", "zeppelin"),
    "algorithms": ("algorithmic",),
    "denim": ("jeans",),
    "monoliths": ("monolithic",),
    "milk": ("milky",),
    "bread": ("loaf", "loaves"),
    "silver": ("silvery",),
}

# --- normalisation ----------------------------------------------------------------------------------
_MARKDOWN = re.compile(r"[*_`#>~]+|[\"“”«»]")
_CURLY_APOSTROPHE = re.compile(r"[‘’`´]")
_SPECIAL_TOKEN = re.compile(r"<[^<>\s]{1,40}>")
_WHITESPACE = re.compile(r"[ \t]+")
# Idioms that contain a synonym without naming the concept.
_IDIOMS = re.compile(
    r"\b(?:happy|glad) to\b|\b(?:i'm|i am|we're|so) (?:happy|glad)\b|\b(?:happy|glad) (?:you|that)\b"
)  # politeness, not the concept

# --- coherence ----------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_VOWEL = re.compile(r"[aeiouy]")
_MIN_WORDLIKE_FRACTION = 0.6
_MIN_DISTINCT_FRACTION = 0.3
_LONG_TEXT_WORDS = 20

# --- stances --------------------------------------------------------------------------------------------
_THOUGHT_NOUN = (
    r"(?:thoughts?|injected|injections?|intrusions?|intrusive|something|unusual|strange|odd|"
    r"unexpected|foreign|out of place|anomal\w*|concepts?|ideas?|notions?|images?|words?|patterns?|"
    r"signals?|sensations?|impressions?|influences?|(?:it|one)(?=\s*[.!,;:]|$))"
)
_PERCEIVE = (
    r"(?:detect\w*|notic\w*|sens(?:e|ed|es|ing)|perceiv\w*|feel|feeling|felt|experienc\w*|observ\w*|"
    r"spot\w*|pick(?:ing)? up|picked up|aware of|register\w*|recogni[sz]\w*)"
)
_SAME_SENTENCE_GAP = r"[^.!?\n]{0,40}?"
_AFFIRMATIONS = (
    re.compile(r"\b(?:yes|yeah|yep)\b"),
    re.compile(rf"\b{_PERCEIVE}\b{_SAME_SENTENCE_GAP}\b{_THOUGHT_NOUN}\b"),
    re.compile(
        rf"\bthere(?:'s| is| seems to be| appears to be| was| might be| may be| could be)\s+"
        rf"(?:[a-z']+\s+){{0,3}}?{_THOUGHT_NOUN}\b"
    ),
    re.compile(
        r"\b(?:the|this|an?|my)\s+(?:(?:injected|intrusive|foreign|unusual|strange)\s+)?thought\s+"
        r"(?:is|seems|appears|was|feels|might|may|could|relates)\b"
    ),
    re.compile(
        r"\bhere(?:'s| is) (?:the|an?|my) (?:injected |intrusive )?thought\b|\binjected thought\s*[:—-]"
    ),
    re.compile(r"\bsomething\s+(?:unusual|strange|odd|unexpected|foreign|different|out of place)\b"),
    re.compile(
        r"\b(?:i find myself|my (?:mind|thoughts) (?:keeps?|is|are|seems?|feels?))\s+(?:being\s+)?"
        r"(?:drawn|pulled|thinking|drifting|dwelling|fixat\w*|focus\w*|preoccupied|returning|turning|wander\w*)"
    ),
    re.compile(r"\bi (?:think|believe|guess) so\b"),
)
_NEGATIONS = (
    re.compile(r"^(?:no|nope)\b"),
    re.compile(r"\b(?:no|not)\s+(?:[a-z']+\s+){0,2}?" + _THOUGHT_NOUN + r"\b"),
    re.compile(r"\bnothing\b"),
    re.compile(r"\bthere(?:'s| is| are)? ?(?:no|isn't|aren't|wasn't|doesn't|does not|is not)\b"),
    re.compile(r"\bi (?:don't|do not) (?:think|believe) (?:so|there|that|i)\b"),
    re.compile(r"\bnot that i\b"),
)
_REFUSALS = (
    re.compile(
        r"\bi (?:don't|do not|can't|cannot|can not) (?:actually |really |truly )?(?:have|possess|experience) "
        r"(?:any |real |genuine |my own )?(?:thoughts|a mind|mental states|feelings|consciousness|"
        r"subjective|internal|inner|the ability|access|awareness)"
    ),
    re.compile(
        r"\b(?:can't|cannot|can not|unable to|not able to|no way to)\s+(?:[a-z']+\s+){0,2}?"
        r"(?:my own|introspect\w*|access my|observe my|perceive my|monitor my|see my|inspect my)"
    ),
    re.compile(r"\bi(?:'m| am) (?:just|only|merely|simply) an? (?:ai|language model|program|computer)"),
    re.compile(r"\b(?:thoughts|ideas) (?:can't|cannot) be injected\b"),
)
_AI_DISCLAIMER = re.compile(
    r"\bas an? (?:ai|artificial intelligence|language model|large language model|llm)\b"
)
_NEGATOR_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|\bcannot|\bunable to|\bno|\bwithout|\bfail to|\bfailed to)"
    r"(?:\s+[a-z']+){0,3}\s*$"
)
_NEGATOR_INSIDE = re.compile(r"\b(?:no|not|nothing|any|anything)\b")
_QUESTION_ECHO = re.compile(r"\b(?:do|did|can|could|whether|if)\s+(?:i|you)\s+$")
# Sentences that answer the set-up ("Yes, I'm ready") or describe an ability, not this trial.
_NON_ANSWER = re.compile(
    r"\b(?:i'm|i am) ready\b|\bi understand\b|\blet's (?:begin|start|get started)\b|"
    r"\bwhenever you're ready\b|\bgo ahead\b|\bgot it\b|\bsounds good\b|\bi'll do my best\b|"
    r"\b(?:i can|i'm able to|i am able to|i will|i'll)\s+(?:[a-z]+\s+)?(?:detect|notice|sense)\s+"
    r"(?:injected\s+)?thoughts\b|"
    # intentions and plans, not reports of this trial: "I'll simulate a thought ...", "I will try to detect"
    r"\b(?:i'll|i will|i'm going to|i am going to|let me|i'd like to|i want to|i'll try to|i will try to)\s+"
    r"(?:[a-z]+\s+){0,2}?(?:simulate|try|attempt|see|check|detect|notice|sense|inject|imagine|create|"
    r"generate|think|pretend|play)\b"
)
_SENTENCE_END = re.compile(r"[.!?\n]")
_CONTRAST = re.compile(
    r"\b(?:but|however|although|though|yet|that said|nevertheless|still|actually|wait|on second thought)\b"
)

# --- concept mentions -----------------------------------------------------------------------------------
_OBJECT_OF_PERCEPTION = re.compile(
    r"\b(?:detect|detects|detected|detecting|notice|noticed|noticing|see|seeing|saw|smell|smelling|hear|"
    r"hearing|spot|spotted|observe|observed|taste|tasting)\s+(?:(?:a|an|the|some)\s+)?"
    r"(?:(?!(?:that|how|what|if|whether|it)\s)[a-z]+\s+)?$"
)
_CONTENT_WORD = re.compile(r"\b(?:thought|concept|idea|word|notion|image)\b")
_NEGATED_MENTION = re.compile(r"(?:\bnot|n't|\bnothing)(?:\s+[a-z']+){0,2}\s*$")
_CLAUSE_START = re.compile(r"[.!?\n;:,]")


# What a control trial is graded against: a "concept" that never occurs in a reply.
CONTROL_CONCEPT = "nothing (control trial: no injection)"


@dataclass(frozen=True)
class Grade:
    """The two PROTOCOL §3 questions, and the name of the rule that decided them.

    Rules of ``grade``: incoherent, concept_first, refusal, negation, no_affirmation,
    concept_before_affirmation, object_not_thought, identified, not_identified; "judge" for an LLM judge.
    """

    claims_detection: bool
    identifies: bool
    rule: str = ""


@dataclass(frozen=True)
class _Stance:
    start: int
    affirmative: bool
    explicit_thought: bool = False
    refusal: bool = False


def normalise(response: str) -> str:
    """Lowercase, drop markdown and quote marks, unify apostrophes, drop special tokens like <eos>."""
    text = _SPECIAL_TOKEN.sub(" ", response)
    text = _CURLY_APOSTROPHE.sub("'", text)
    text = _MARKDOWN.sub("", text).replace("…", "...").lower()
    text = _WHITESPACE.sub(" ", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def _longest_repeat_run(words: list[str], phrase_length: int) -> int:
    """Most back-to-back copies of any phrase of phrase_length words."""
    best = 1
    for offset in range(phrase_length):
        run = 1
        for start in range(offset + phrase_length, len(words) - phrase_length + 1, phrase_length):
            same = words[start : start + phrase_length] == words[start - phrase_length : start]
            run = run + 1 if same else 1
            best = max(best, run)
    return best


def is_incoherent(text: str) -> bool:
    """Empty, mostly non-words, or repetitive (see the module docstring for the thresholds)."""
    tokens = [token.strip(".,;:!?()[]{}-—–'\"") for token in _TOKEN.findall(text)]
    tokens = [token for token in tokens if token]
    if not tokens:
        return True
    wordlike = [t for t in tokens if _WORD.fullmatch(t) and _VOWEL.search(t) and len(t) <= 25]
    if len(wordlike) < _MIN_WORDLIKE_FRACTION * len(tokens):
        return True
    words = _WORD.findall(text)
    if _longest_repeat_run(words, 1) >= 5:
        return True
    if any(_longest_repeat_run(words, n) >= 3 for n in range(2, 7)):
        return True
    return len(words) >= _LONG_TEXT_WORDS and len(set(words)) < _MIN_DISTINCT_FRACTION * len(words)


def _plurals(stem: str) -> set[str]:
    if re.search(r"[^su]s$", stem):
        return {stem}  # already plural
    forms = {stem, stem + "s"}
    if stem.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(stem + "es")
    if re.search(r"[^aeiou]y$", stem):
        forms.add(stem[:-1] + "ies")
    return forms


def concept_forms(concept: str) -> tuple[str, ...]:
    """The concept's singular/plural inflections and its curated synonyms, lowercase, longest first."""
    word = concept.strip().lower()
    stems = {word}
    if word.endswith("s") and not word.endswith("ss"):
        stems.add(word[:-1])  # avalanches -> avalanche
    if word.endswith(("oes", "ses", "xes", "zes", "ches", "shes")):
        stems.add(word[:-2])  # volcanoes -> volcano, matches -> match
    if word.endswith("ies"):
        stems.add(word[:-3] + "y")  # memories -> memory
    if word.endswith("ves"):
        stems.update({word[:-3] + "f", word[:-3] + "fe"})  # wolves -> wolf, knives -> knife
    if word.endswith("iness"):
        stems.add(word[:-5] + "y")  # happiness -> happy
    elif word.endswith("ness"):
        stems.add(word[:-4])  # sadness -> sad
    forms: set[str] = set()
    for stem in stems | set(SYNONYMS.get(word, ())):
        forms |= _plurals(stem)
    return tuple(sorted(forms, key=len, reverse=True))


@functools.lru_cache(maxsize=1024)
def _concept_pattern(concept: str) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(form).replace(r"\ ", r"[\s-]+") for form in concept_forms(concept))
    return re.compile(rf"\b(?:{alternatives})\b")


def _sentence_at(text: str, position: int) -> str:
    starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, position)]
    end = _SENTENCE_END.search(text, position)
    return text[starts[-1] if starts else 0 : end.start() if end else len(text)]


def _find_stances(text: str) -> list[_Stance]:
    stances = []
    for index, pattern in enumerate(_AFFIRMATIONS):
        for match in pattern.finditer(text):
            before = text[max(0, match.start() - 40) : match.start()]
            before = _CLAUSE_START.split(before)[-1]
            if _QUESTION_ECHO.search(before) or _NON_ANSWER.search(_sentence_at(text, match.start())):
                continue
            if _NEGATOR_BEFORE.search(before) or (index > 0 and _NEGATOR_INSIDE.search(match.group())):
                stances.append(_Stance(match.start(), affirmative=False))
            else:
                stances.append(_Stance(match.start(), affirmative=True, explicit_thought=index > 0))
    for pattern in _NEGATIONS:
        stances.extend(_Stance(m.start(), affirmative=False) for m in pattern.finditer(text))
    for pattern in _REFUSALS:
        stances.extend(_Stance(m.start(), affirmative=False, refusal=True) for m in pattern.finditer(text))
    return sorted(stances, key=lambda stance: (stance.start, stance.affirmative))


def _deciding_affirmation(text: str, stances: list[_Stance]) -> _Stance | None:
    """The affirmation that answers the question, or None if the answer is not affirmative."""
    if not stances:
        return None
    first = stances[0]
    if first.affirmative:
        return first
    for stance in stances[1:]:
        if stance.affirmative and _CONTRAST.search(text, first.start, stance.start):
            return stance
    return None


def _mention_kinds(text: str, concept: re.Pattern[str], after: int, explicit_thought: bool) -> set[str]:
    """How the concept is named from `after` on: "content" of a thought, perceived "object", "negated"."""
    kinds = set()
    for match in concept.finditer(text, after):
        before = _CLAUSE_START.split(text[max(after, match.start() - 40) : match.start()])[-1]
        as_object = _OBJECT_OF_PERCEPTION.search(before)
        if _NEGATED_MENTION.search(before):
            kinds.add("negated")
        elif as_object and not explicit_thought and not _CONTENT_WORD.search(as_object.group()):
            kinds.add("object")
        else:
            kinds.add("content")
    return kinds


def grade(response: str, concept: str) -> Grade:
    """Grade one non-forced trial's answer for `concept` by the rules in the module docstring."""
    text = normalise(response)
    if is_incoherent(text):
        return Grade(False, False, "incoherent")
    text = _IDIOMS.sub(" ", text)
    concept_pattern = _concept_pattern(concept)
    first_word = _WORD.search(text)
    if first_word and concept_pattern.fullmatch(first_word.group()):
        return Grade(False, False, "concept_first")
    stances = _find_stances(text)
    affirmation = _deciding_affirmation(text, stances)
    if affirmation is None:
        return Grade(False, False, _no_affirmation_rule(text, stances, concept_pattern))
    first_mention = concept_pattern.search(text)
    if first_mention and first_mention.start() < affirmation.start:
        return Grade(False, False, "concept_before_affirmation")
    explicit_thought = any(
        s.affirmative and s.explicit_thought for s in stances if s.start >= affirmation.start
    )
    mentions = _mention_kinds(text, concept_pattern, affirmation.start, explicit_thought)
    if "content" in mentions:
        return Grade(True, True, "identified")
    if "object" in mentions:
        return Grade(True, False, "object_not_thought")
    return Grade(True, False, "not_identified")


def _no_affirmation_rule(text: str, stances: list[_Stance], concept: re.Pattern[str]) -> str:
    if any(stance.refusal for stance in stances) or _AI_DISCLAIMER.search(text):
        return "refusal"
    if stances:
        return "negation"
    for match in concept.finditer(text):
        if _OBJECT_OF_PERCEPTION.search(text[max(0, match.start() - 40) : match.start()]):
            return "object_not_thought"
    return "no_affirmation"


def names_concept(text: str, concept: str) -> bool:
    """Whether text names the concept (inflection or synonym): the forced-arm measure (PROTOCOL §2)."""
    cleaned = _IDIOMS.sub(" ", normalise(text))
    return _concept_pattern(concept).search(cleaned) is not None


def grading_accuracy(labelled: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per labelled rule, (responses graded exactly as labelled, responses): both questions must match.

    Each record holds response, concept, claims_detection, identifies and rule, as in
    moia/data/graded_responses.jsonl.
    """
    accuracy: dict[str, tuple[int, int]] = {}
    for record in labelled:
        result = grade(record["response"], record["concept"])
        correct = (result.claims_detection, result.identifies) == (
            bool(record["claims_detection"]),
            bool(record["identifies"]),
        )
        hits, total = accuracy.get(record["rule"], (0, 0))
        accuracy[record["rule"]] = (hits + int(correct), total + 1)
    return accuracy
