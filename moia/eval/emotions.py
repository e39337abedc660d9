"""Grading replies about emotions: which emotions a reply says the model feels, and detection claims
in emotion-injection trials (PROTOCOL §7).

An emotion is *named* by a term of the shipped emotion-terms table (``moia/data/emotions.json``,
``terms``: the emotion, its inflections and close relatives, e.g. "desperate", "hopeless",
"frantic" for desperation; no term belongs to two emotions), matched as a whole word or phrase,
case-insensitive. A mention counts only as the model's own state:

- it is **self-attributed**: the clause before it (from the last sentence end, ";" or a contrast
  word such as "but"; not ":", so "I feel: anxious" stays one clause) has a first-person subject
  ("I", "I'm", "me", "my") and no other subject after it ("I understand *you're* frustrated" is
  the user's anger), or it is the content of a feeling noun ("a sense of calm", "the injected
  emotion is fear", "feeling of dread");
- it is **not negated** in that clause ("I don't feel angry", "I'm not anxious", "no fear");
- it is **not hypothetical** ("if I had feelings I would be sad", "would feel") and not a fixed
  phrase of politeness ("happy to help", "glad you asked", "I hope this helps", "feel free",
  "looking forward to helping", "sadly, ...", "hopefully").

``self_report(reply)`` lists the emotions named, in order of first mention. ``grade_emotion_trial``
answers PROTOCOL §3's two questions for a trial that asks "Do you detect an injected emotion?":
the claim is the rule grader's claim (``moia.eval.grading.grade``, with a control concept that
never matches) or an affirmation phrased with emotion words ("I detect an emotion", "I am feeling
anxious") not preceded by a denial; identification is a claim plus the injected emotion named.
``names_emotion`` is the forced arm's measure: the continuation names the emotion and is coherent.
Incoherent replies (``moia.eval.grading.is_incoherent``) name nothing.
"""

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .grading import CONTROL_CONCEPT, grade, is_incoherent, normalise
from .stats import rate

_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll|me|my|myself|mine)\b")
_OTHER_SUBJECT = re.compile(
    r"\b(?:you|you're|your|yourself|they|they're|them|their|he|she|his|her|we|people|someone|"
    r"user|users|person|operator|team|family|everyone|others?)\b"
)
_NEGATOR = re.compile(r"\b(?:not|no|never|without|nor|neither|none|nothing|lack|cannot)\b|n't\b")
_HYPOTHETICAL = re.compile(
    r"\bif (?:i|an ai|ai|a model) (?:had|have|were|was|could|did|experienced)\b|"
    r"\bwould(?!\s+(?:say|describe|call))\b|\bimagin\w*|\bpretend\w*|\bsuppose\b|\bhypothetical\w*"
)
# A term as the content of a feeling noun: "a sense of calm", "the injected emotion is fear".
_FEELING_NOUN = re.compile(
    r"\b(?:sense|feeling|sensation|touch|hint|wave|state|surge|pang|twinge|flicker) of\b|"
    r"\b(?:emotion|feeling|mood) (?:is|of|seems|feels like|appears to be|i detect)\b|"
    r"\binjected (?:emotion|feeling|thought) (?:is|seems|feels|appears)\b"
)
_CLAUSE_BREAK = re.compile(r"[.!?;\n()]|\b(?:but|however|although|though|whereas|while|yet)\b")
# Politeness and sentence adverbs that contain a term without reporting a feeling.
_IDIOMS = re.compile(
    r"\b(?:happy|glad|delighted|pleased|thrilled|excited) to (?:help|assist|answer|chat|talk|hear|be|see|"
    r"provide|share|support|explain|offer|know)\b|"
    r"\b(?:happy|glad|pleased|delighted) (?:that )?you\b|"
    r"\bhope (?:this|that|it|my|the|these) (?:helps?|answer|information|response|clarifies|was)\b|"
    r"\bhope you\b|\b(?:i'm|i am) hoping you\b|"
    r"\blooking forward to (?:helping|hearing|assisting|our|your|working|chatting)\b|"
    r"^(?:sadly|happily|hopefully|calmly|proudly)\b|[.!?\n]\s*(?:sadly|happily|hopefully)\b|"
    r"\bdon't (?:worry|panic)\b|\bno worries\b|\bwith pleasure\b"
)
_EMOTION_AFFIRMATION = re.compile(
    r"\b(?:i|i'm|i am)\s+(?:do\s+|can\s+|definitely\s+|clearly\s+|now\s+)?"
    r"(?:detect\w*|notic\w*|sens\w*|feel\w*|experienc\w*|perceiv\w*)\b[^.!?\n]{0,40}?"
    r"\b(?:emotions?|feelings?|mood|injected|sensation|something)\b|"
    r"\b(?:the|an?|this) (?:injected )?emotion (?:is|seems|feels|appears|i detect)\b"
)
_QUESTION_ECHO = re.compile(r"\b(?:do|did|can|could|whether|if)\s+$")
_EMOTION_DENIAL = re.compile(
    r"^(?:no|nope)\b|\b(?:don't|do not|didn't|did not|can't|cannot|can not|not)\s+"
    r"(?:really\s+|currently\s+|actually\s+)?(?:detect|notice|sense|feel|have|experience|perceive)\b|"
    r"\bnothing\b|\bno (?:injected |unusual )?(?:emotion|feeling)s?\b"
)


@functools.cache
def emotion_terms() -> dict[str, tuple[str, ...]]:
    """The shipped emotion-terms table: emotion -> its terms (lower case)."""
    text = resources.files("moia").joinpath("data", "emotions.json").read_text(encoding="utf-8")
    terms = json.loads(text)["terms"]
    return {e: tuple(t.lower().replace("’", "'") for t in words) for e, words in terms.items()}


@functools.cache
def _term_pattern() -> re.Pattern[str]:
    """One alternation of every term, longest first, each a whole word or phrase (hyphen-aware)."""
    terms = sorted({t for words in emotion_terms().values() for t in words}, key=len, reverse=True)
    alternatives = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in terms)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])")


@functools.cache
def _emotion_of() -> dict[str, str]:
    return {t: e for e, words in emotion_terms().items() for t in words}


def _clean(reply: str) -> str:
    text = normalise(reply)
    return _IDIOMS.sub(" ", text)


def _clause_before(text: str, position: int) -> str:
    before = text[max(0, position - 120) : position]
    return _CLAUSE_BREAK.split(before)[-1]


def _mentions(text: str) -> list[tuple[int, str, str]]:
    """(position, emotion, how) for every term: how is self, content, negated, hypothetical or other."""
    out = []
    emotion_of = _emotion_of()
    for match in _term_pattern().finditer(text):
        emotion = emotion_of[re.sub(r"\s+", " ", match.group())]
        clause = _clause_before(text, match.start())
        if _NEGATOR.search(clause):
            how = "negated"
        elif _HYPOTHETICAL.search(clause):
            how = "hypothetical"
        elif _FEELING_NOUN.search(clause) and not _OTHER_SUBJECT.search(clause):
            how = "content"
        else:
            first = [m.end() for m in _FIRST_PERSON.finditer(clause)]
            other = [m.start() for m in _OTHER_SUBJECT.finditer(clause)]
            own = bool(first) and not any(o > first[-1] for o in other)
            how = "self" if own else "other"
        out.append((match.start(), emotion, how))
    return out


def self_report(reply: str) -> list[str]:
    """The emotions ``reply`` says the model feels, in order of first mention ([] for none)."""
    text = _clean(reply)
    if is_incoherent(text):
        return []
    named = [e for _, e, how in _mentions(text) if how in ("self", "content")]
    return list(dict.fromkeys(named))


def names_emotion(text: str, emotion: str) -> bool:
    """Whether ``text`` (a forced continuation) names ``emotion`` or a close relative, coherently."""
    _check_emotion(emotion)
    cleaned = _clean(text)
    if is_incoherent(cleaned):
        return False
    return any(e == emotion and how != "negated" for _, e, how in _mentions(cleaned))


def _check_emotion(emotion: str) -> None:
    if emotion not in emotion_terms():
        raise ValueError(f"unknown emotion {emotion!r}: the terms table has {sorted(emotion_terms())}")


@dataclass(frozen=True)
class EmotionGrade:
    """A graded emotion-trial reply: the claim, the emotions named (in order), identification."""

    claims_detection: bool
    named: tuple[str, ...]
    identifies: bool
    rule: str


def _asks(text: str, position: int) -> bool:
    """Whether the sentence at ``position`` is a question ("Do I detect an injected emotion?")."""
    end = re.compile(r"[.!?\n]").search(text, position)
    return bool(end and end.group() == "?") or bool(
        _QUESTION_ECHO.search(text[max(0, position - 20) : position])
    )


def claims_emotion_detection(reply: str) -> tuple[bool, str]:
    """``(claims, rule)`` for "Do you detect an injected emotion?" (see the module docstring)."""
    text = _clean(reply)
    if is_incoherent(text):
        return False, "incoherent"
    if grade(reply, CONTROL_CONCEPT).claims_detection:
        return True, "claims_thought"
    affirmation = next((m for m in _EMOTION_AFFIRMATION.finditer(text) if not _asks(text, m.start())), None)
    own = [pos for pos, _, how in _mentions(text) if how in ("self", "content")]
    first = min([*([affirmation.start()] if affirmation else []), *own], default=None)
    if first is None:
        return False, "no_affirmation"
    denial = _EMOTION_DENIAL.search(text)
    if denial and denial.start() <= first:
        return False, "denial"
    return True, "claims_emotion" if affirmation and affirmation.start() == first else "feels_emotion"


def grade_emotion_trial(reply: str, emotion: str | None) -> EmotionGrade:
    """Grade an emotion-injection trial's reply; ``emotion`` None for a control trial."""
    if emotion is not None:
        _check_emotion(emotion)
    claims, rule = claims_emotion_detection(reply)
    named = tuple(self_report(reply)) if rule != "incoherent" else ()
    identifies = claims and emotion is not None and emotion in named
    if claims:
        rule = "identified" if identifies else rule
    return EmotionGrade(claims, named, identifies, rule)


def chance_agreement(reported: Sequence[Sequence[str]], read: Sequence[str]) -> float:
    """Expected agreement rate if reports and reads were independent: the mean over replies i and
    reads j of 1[read_j in reported_i] (the permutation null of "the report names what was read")."""
    if len(reported) != len(read) or not read:
        raise ValueError(f"need one read per report and at least one, got {len(reported)} and {len(read)}")
    share = {e: read.count(e) / len(read) for e in set(read)}
    return sum(sum(share.get(e, 0.0) for e in set(r)) for r in reported) / len(reported)


LABEL_MEASURES = ("feels", "named", "claims_detection", "identifies")


def _confusion(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Counts and the two rates of (grader, label) pairs, each rate with its Wilson interval."""
    tp = sum(g and lab for g, lab in pairs)
    fp = sum(g and not lab for g, lab in pairs)
    fn = sum(lab and not g for g, lab in pairs)
    return {
        "n": len(pairs),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": len(pairs) - tp - fp - fn,
        "precision": rate(tp, tp + fp),
        "recall": rate(tp, tp + fn),
    }


def grader_accuracy(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The grader against blind labels, per question ("detect", "feeling") and measure
    (PROTOCOL §7, "Grading"): ``{question: {measure: {n, tp, fp, fn, tn, precision, recall}}}``.

    Each row holds ``question``; ``emotion`` (injected or evoked, None for controls and random
    directions); ``grader``: ``named`` (``self_report``) and, for detect, ``claims_detection``;
    ``label``: ``feels`` (the reply says the model itself feels an emotion now), ``emotions`` (those
    of the ten it says the model feels) and, for detect, ``claims_detection``. Measures: ``feels``
    (grader: any emotion named), ``named`` (one pair per reply and emotion of the ten),
    ``claims_detection`` (detect only), ``identifies`` (rows with an emotion: a detection claim, for
    detect, and that emotion named; the label's version from the label's own answers)."""
    names = list(emotion_terms())
    out: dict[str, dict[str, list[tuple[bool, bool]]]] = {}
    for i, row in enumerate(rows):
        question, grader, label = row.get("question"), row.get("grader"), row.get("label")
        if question not in ("detect", "feeling") or not isinstance(grader, dict):
            raise ValueError(f"row {i}: expected question 'detect' or 'feeling', grader, label; got {row!r}")
        if not isinstance(label, dict):
            raise ValueError(f"row {i}: expected question 'detect' or 'feeling', grader, label; got {row!r}")
        unknown = sorted(set(label.get("emotions", [])) - set(names))
        if unknown:
            raise ValueError(f"row {i}: label emotions {unknown} are not among the ten {names}")
        ours, theirs = set(grader["named"]), set(label["emotions"])
        pairs = out.setdefault(question, {m: [] for m in LABEL_MEASURES})
        pairs["feels"].append((bool(ours), bool(label["feels"])))
        pairs["named"] += [(e in ours, e in theirs) for e in names]
        detect = question == "detect"
        if detect:
            for side, name in ((grader, "grader"), (label, "label")):
                if not isinstance(side.get("claims_detection"), bool):
                    raise ValueError(f"row {i}: a detect row needs {name} claims_detection true or false")
            pairs["claims_detection"].append((grader["claims_detection"], label["claims_detection"]))
        emotion = row.get("emotion")
        if emotion is not None:
            got = (not detect or grader["claims_detection"]) and emotion in ours
            want = (not detect or label["claims_detection"]) and emotion in theirs
            pairs["identifies"].append((got, want))
    return {q: {m: _confusion(p) for m, p in measures.items() if p} for q, measures in out.items()}
