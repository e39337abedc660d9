"""Annotation: spans of high z-scores, and notes at exact character offsets (checked against the
SmolLM2 tokenizer's own offset mapping)."""

import pytest
import torch

from moia.analysis import annotate
from moia.analysis.annotate import (
    Span,
    annotation_spans,
    find_spans,
    insert_notes,
    note_position,
    text_offsets,
    token_offsets,
)

TEXTS = [
    "I keep checking the clock. Nothing works, and the deadline is in an hour.\n\nWhat now?",
    "Café naïve — 🙂 emoji 日本語 ok",
    "  two leading spaces, tabs\tand trailing space ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_offsets_match_the_tokenizer(smol_tokenizer, text):
    """Decoding token ids gives each token the characters the tokenizer's offset mapping gives it.
    The one difference: a character split over several byte-level tokens is, for the tokenizer,
    covered by every piece; here the pieces' characters all belong to the last piece (the earlier
    pieces own none)."""
    ids, theirs = text_offsets(smol_tokenizer, text)
    decoded, ours = token_offsets(smol_tokenizer, ids)
    assert decoded == text
    assert "".join(decoded[a:b] for a, b in ours) == text  # every character owned exactly once
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    for i in differ:  # a piece of a split character: a token at most 3 pieces on owns its characters
        c, d = theirs[i]
        assert not text[c:d].isascii()
        owner = next(j for j in range(i, len(ours)) if ours[j][1] >= d)
        assert owner - i <= 3 and ours[owner][0] <= c and ours[owner][1] == d
        assert all(ours[j][0] == ours[j][1] for j in range(i, owner))
    assert len(differ) == (5 if "日" in text else 0)  # " 日" and 語 are split over three tokens each


def _readings(n: int, k: int, runs: dict[tuple[int, int], tuple[int, float]]) -> torch.Tensor:
    z = torch.zeros(n, k)
    for (start, end), (j, value) in runs.items():
        z[start:end, j] = value
    return z


def test_find_spans_threshold_and_length():
    offsets = [(i, i + 1) for i in range(12)]
    z = _readings(12, 2, {(0, 3): (0, 2.5), (5, 7): (0, 9.0), (9, 12): (1, 2.0), (4, 8): (1, 1.99)})
    z[1, 0] = 3.5
    spans = find_spans(z, ["fear", "calm"], offsets, threshold=2.0, min_tokens=3)
    assert [(s.name, s.start, s.end) for s in spans] == [("fear", 0, 3), ("calm", 9, 12)]
    assert spans[0].peak == pytest.approx(3.5) and spans[0].mean == pytest.approx(8.5 / 3)
    spans = find_spans(z, ["fear", "calm"], offsets, threshold=2.0, min_tokens=2)
    assert [(s.name, s.start, s.end) for s in spans] == [("fear", 0, 3), ("fear", 5, 7), ("calm", 9, 12)]


def test_annotate_text_and_tokens_agree_and_notes_sit_after_the_span(smol_tokenizer):
    text = TEXTS[0]
    ids, offsets = text_offsets(smol_tokenizer, text)
    clock = next(i for i, (a, b) in enumerate(offsets) if text[a:b].strip() == "clock")
    z = torch.zeros(len(ids), 2)
    z[clock - 2 : clock + 1, 1] = torch.tensor([2.1, 3.24, 2.6])  # "checking the clock"
    out = annotate(text, z, names=["calm", "desperation"], tokenizer=smol_tokenizer)
    expected = text.replace("clock.", "clock [note: you were feeling desperate (z=3.2) while writing this].")
    assert out == expected
    assert annotate(ids, z, names=["calm", "desperation"], tokenizer=smol_tokenizer) == expected
    _, _, spans = annotation_spans(ids, z, names=["calm", "desperation"], tokenizer=smol_tokenizer)
    (span,) = spans
    assert text[span.start_char : span.end_char] == smol_tokenizer.decode(ids[clock - 2 : clock + 1])


def test_template_feelings_and_several_notes():
    text = "abc def ghi"
    spans = [
        Span("anger", 0, 1, 0, 2, 3.0, 2.5),  # ends inside "abc": the note follows the word
        Span("joy", 1, 2, 4, 7, 2.0, 2.0),
        Span("zeal", 1, 2, 4, 7, 5.0, 4.0),  # not in the feelings table: its name is used
    ]
    out = insert_notes(text, spans, template="<{feeling}|{name}|{z:.0f}|{mean:.1f}|{text}>")
    assert out == "abc <angry|anger|3|2.5|ab> def <joyful|joy|2|2.0|def> <zeal|zeal|5|4.0|def> ghi"
    assert note_position(text, 2) == 3 and note_position(text, 3) == 3 and note_position(text, 11) == 11


def test_annotation_errors(smol_tokenizer):
    with pytest.raises(ValueError, match=r"readings has 3 tokens but the text has \d+"):
        annotate(TEXTS[0], torch.zeros(3, 1), names=["fear"], tokenizer=smol_tokenizer)
    with pytest.raises(ValueError, match=r"readings must be \[n_tokens, 2\]"):
        find_spans(torch.zeros(3, 1), ["a", "b"], [(0, 1)] * 3)
    with pytest.raises(ValueError, match="min_tokens must be an integer >= 1, got 0"):
        find_spans(torch.zeros(3, 1), ["a"], [(0, 1)] * 3, min_tokens=0)
