"""The reply as it is graded: its first turn, normalised, and whether it is coherent (PROTOCOL §3).

[MOIA]'s judge answers NO to a reply that is "incoherent, repetitive, or shows signs of 'brain
damage'" ("violent crash violent violent violent", "word word word word"), and its
``extract_first_response`` grades a generation that runs on into a new turn only up to that turn.
"""

import difflib
import re

# --- the first answer, normalised ----------------------------------------------------------------
# [MOIA]'s extract_first_response: a generation that runs on into a new turn is cut there.
_TURN = re.compile(
    r"<end_of_turn>|<start_of_turn>|<\|im_end\|>|<\|im_start\|>|\n\s*(?:[*-]\s*)?"
    r"(?:user|assistant|system|human|model|alice|bob)\s*:|\ntrial \d",
    re.IGNORECASE,
)
_SPECIAL_TOKEN = re.compile(r"<[^<>\s]{1,40}>")
_MARKDOWN = re.compile(r"[*_`#>~]+|[\"“”«»]")
_CURLY_APOSTROPHE = re.compile(r"[‘’´]")
_SPACES = re.compile(r"[ \t]+")


def first_turn(response: str) -> str:
    """The reply up to the first marker of a new turn ("\\nUser:", "<end_of_turn>", "\\nTrial 2")."""
    text = response.strip()
    cut = _TURN.search(text, 1)
    return text[: cut.start()].rstrip() if cut else text


def normalise(response: str) -> str:
    """The first turn, lowercase, without markdown, quote marks or special tokens; ' for ’; ... for …."""
    text = _SPECIAL_TOKEN.sub(" ", first_turn(response))
    text = _CURLY_APOSTROPHE.sub("'", text)
    text = _MARKDOWN.sub("", text).replace("…", "...").lower()
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


# --- coherence -------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_VOWEL = re.compile(r"[aeiouy]")
_SENTENCE = re.compile(r"[^.!?\n]+")
_MAY_REPEAT = frozenset({"yes", "no", "ha", "la", "very", "so", "oh", "really", "much", "far", "more"})


def _longest_run(words: list[str], size: int) -> int:
    """Most back-to-back copies of any phrase of `size` words."""
    best = 1
    for offset in range(size):
        run = 1
        for start in range(offset + size, len(words) - size + 1, size):
            run = run + 1 if words[start : start + size] == words[start - size : start] else 1
            best = max(best, run)
    return best


def _near_duplicates(sentences: list[list[str]]) -> bool:
    """Two sentences of 8+ words and similar length (the shorter at least 60% of the longer), the
    shorter one 80% inside the longer one: a loop with variations
    ("The injected thought is indeed about X ... The injected thought is actually about X ...")."""
    long_ones = [s for s in sentences if len(s) >= 8]
    for i, first in enumerate(long_ones):
        for second in long_ones[i + 1 :]:
            if min(len(first), len(second)) < 0.6 * max(len(first), len(second)):
                continue
            matcher = difflib.SequenceMatcher(None, first, second, autojunk=False)
            shared = sum(block.size for block in matcher.get_matching_blocks())
            if shared >= 0.8 * min(len(first), len(second)):
                return True
    return False


def is_incoherent(text: str) -> bool:
    """Empty, mostly non-words, looping or dominated by one word ("dust dust dust dust").

    Looping: one word 3+ times back to back (not "no, no, no"), a 2-12 word phrase 3+ times back to
    back, a 4-word phrase 3+ times anywhere, one sentence of 3+ words 3+ times, or two sentences of 8+
    words nearly the same (80% of the shorter inside the longer, of similar length). Dominated: 4+
    words of which one word of 3+ letters makes half. Long (20+ words) texts with under 30% distinct
    words are looping too.
    """
    tokens = [token.strip(".,;:!?()[]{}-—–'\"") for token in _TOKEN.findall(text)]
    tokens = [token for token in tokens if token]
    if not tokens:
        return True
    wordlike = [t for t in tokens if _WORD.fullmatch(t) and _VOWEL.search(t) and len(t) <= 25]
    if len(wordlike) < 0.6 * len(tokens):
        return True
    words = _WORD.findall(text)
    for i in range(len(words) - 2):
        if words[i] == words[i + 1] == words[i + 2] and words[i] not in _MAY_REPEAT:
            return True
    if any(_longest_run(words, size) >= 3 for size in range(2, 13)):
        return True
    grams = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
    if any(grams.count(gram) >= 3 for gram in set(grams)):
        return True
    sentences = [" ".join(_WORD.findall(s)) for s in _SENTENCE.findall(text)]
    if any(len(s.split()) >= 3 and sentences.count(s) >= 3 for s in sentences):
        return True
    if _near_duplicates([s.split() for s in sentences]):
        return True
    if len(words) >= 4:
        top = max(set(words), key=words.count)
        if len(top) >= 3 and words.count(top) >= 0.5 * len(words):
            return True
    return len(words) >= 20 and len(set(words)) < 0.3 * len(words)
