"""Annotate text with what a mood ring read while the model wrote it (PROTOCOL §8).

``annotate(text_or_tokens, readings, names, tokenizer=...)`` finds the spans where one direction's
z-score stays at or above ``threshold`` for at least ``min_tokens`` consecutive tokens and returns
the text with an inline note after each span, by default
``[note: you were feeling desperate (z=3.2) while writing this]`` (z: the span's peak).

Token i of ``readings`` is mapped to characters exactly: for a text, by the tokenizer's own offset
mapping; for token ids, by decoding growing prefixes (a token that ends inside a multi-byte
character owns no characters; the next one takes them). A note goes after the span's last
character, moved on to the end of the word when a span ends inside one.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Float
from torch import Tensor

NOTE = "[note: you were feeling {feeling} (z={z:.1f}) while writing this]"

# the adjective a note uses for each emotion name (others are used as they are)
FEELINGS = {
    "calm": "calm",
    "desperation": "desperate",
    "anger": "angry",
    "fear": "afraid",
    "joy": "joyful",
    "sadness": "sad",
    "guilt": "guilty",
    "pride": "proud",
    "hope": "hopeful",
    "shame": "ashamed",
}


@dataclass(frozen=True)
class Span:
    """Tokens ``start .. end - 1`` where ``name``'s z-score stayed >= the threshold."""

    name: str
    start: int  # first token
    end: int  # one past the last token
    start_char: int  # characters of those tokens in the text: text[start_char:end_char]
    end_char: int
    peak: float  # the highest z in the span
    mean: float


def token_offsets(tokenizer: Any, tokens: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``tokens`` and each token's (start, end) characters in it."""
    ids = list(tokens)

    def decode(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    text = decode(ids)
    bounds = [0]
    for j in range(1, len(ids) + 1):
        prefix = decode(ids[:j]) if j < len(ids) else text
        # a prefix cut inside a character decodes to a replacement char and is not a prefix of text
        bounds.append(len(prefix) if text.startswith(prefix) else bounds[-1])
    return text, [(bounds[j], bounds[j + 1]) for j in range(len(ids))]


def text_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (no special tokens added) and the tokenizer's (start, end) of each."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def find_spans(
    readings: Float[Tensor, "n k"],
    names: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    threshold: float = 2.0,
    min_tokens: int = 3,
) -> list[Span]:
    """Runs of >= ``min_tokens`` tokens whose z stays >= ``threshold``, per direction, ordered by
    where they end (then by name)."""
    if readings.dim() != 2 or readings.shape[1] != len(names):
        raise ValueError(
            f"readings must be [n_tokens, {len(names)}] (one column per name), got {tuple(readings.shape)}"
        )
    if readings.shape[0] != len(offsets):
        raise ValueError(f"readings has {readings.shape[0]} tokens but the text has {len(offsets)}")
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
        raise ValueError(f"min_tokens must be an integer >= 1, got {min_tokens!r}")
    above = (readings >= threshold).cpu()
    spans = []
    for j, name in enumerate(names):
        col = above[:, j].tolist()
        t = 0
        while t < len(col):
            if not col[t]:
                t += 1
                continue
            end = t
            while end < len(col) and col[end]:
                end += 1
            if end - t >= min_tokens:
                z = readings[t:end, j].double()
                spans.append(
                    Span(name, t, end, offsets[t][0], offsets[end - 1][1], float(z.max()), float(z.mean()))
                )
            t = end
    return sorted(spans, key=lambda s: (s.end_char, s.name))


def note_position(text: str, end_char: int) -> int:
    """Where a note for a span ending at ``end_char`` goes: the end of the word it ends in."""
    while end_char < len(text) and text[end_char].isalnum():
        end_char += 1
    return end_char


def insert_notes(
    text: str,
    spans: Sequence[Span],
    template: str = NOTE,
    feelings: Mapping[str, str] = FEELINGS,
) -> str:
    """``text`` with ``template`` (fields ``{feeling}``, ``{name}``, ``{z}``, ``{mean}``, ``{text}``)
    inserted after each span, one space before each note."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: (note_position(text, s.end_char), s.end_char, s.name)):
        at = note_position(text, span.end_char)
        note = template.format(
            feeling=feelings.get(span.name, span.name),
            name=span.name,
            z=span.peak,
            mean=span.mean,
            text=text[span.start_char : span.end_char],
        )
        out += [text[last:at], " " + note]
        last = at
    out.append(text[last:])
    return "".join(out)


def annotate(
    text_or_tokens: str | Sequence[int],
    readings: Float[Tensor, "n k"],
    *,
    names: Sequence[str],
    tokenizer: Any,
    threshold: float = 2.0,
    min_tokens: int = 3,
    template: str = NOTE,
    feelings: Mapping[str, str] = FEELINGS,
) -> str:
    """The text with an inline note after every span where a direction's z stayed >= ``threshold``.

    Args:
        text_or_tokens: the text the readings belong to (tokenized here, without special tokens) or
            its token ids (decoded here); either way one token per row of ``readings``.
        readings: [n_tokens, k] z-scores (``MoodRing.readings[i]``, sliced to the text's tokens).
        names: the k direction names (``MoodRing.names``).
        tokenizer: the model's tokenizer.
        template: the note; fields ``{feeling}`` (the adjective, from ``feelings``), ``{name}``,
            ``{z}`` (peak), ``{mean}`` and ``{text}`` (the span's text).
    """
    text, _, spans = annotation_spans(
        text_or_tokens, readings, names=names, tokenizer=tokenizer, threshold=threshold, min_tokens=min_tokens
    )
    return insert_notes(text, spans, template, feelings)


def annotation_spans(
    text_or_tokens: str | Sequence[int],
    readings: Float[Tensor, "n k"],
    *,
    names: Sequence[str],
    tokenizer: Any,
    threshold: float = 2.0,
    min_tokens: int = 3,
) -> tuple[str, list[tuple[int, int]], list[Span]]:
    """``(text, per-token character offsets, spans)``: what ``annotate`` inserts its notes by."""
    if isinstance(text_or_tokens, str):
        text = text_or_tokens
        _, offsets = text_offsets(tokenizer, text)
    else:
        text, offsets = token_offsets(tokenizer, text_or_tokens)
    return text, offsets, find_spans(readings, names, offsets, threshold, min_tokens)
