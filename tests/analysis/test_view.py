"""The mood ring's HTML page and PNG, checked as documents (the browser test is test_browser.py)."""

import html.parser
import json

import pytest
import torch

from moia.analysis.annotate import Span
from moia.analysis.view import PALETTE, moodring_html, trace_png, write_view

NAMES = ["calm", "desperation", "fear"]
TOKENS = [
    "<|im_start|>",
    "user",
    "\n",
    "Help",
    "!",
    "<|im_end|>",
    "\n",
    "I",
    " <script>alert(1)</script>",
    " am",
    ' "late"',
    "\n\n",
    " 🙂",
]


def page_data(n_prompt: int = 7) -> tuple[torch.Tensor, list[Span]]:
    z = torch.zeros(len(TOKENS), 3)
    z[7:11, 1] = torch.tensor([2.5, 3.0, 2.2, 2.1])  # a desperation span over "I <script> am 'late'"
    z[11:, 0] = 5.0
    return z, [Span("desperation", 7, 11, 0, 0, 3.0, 2.45)]


class Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_one_element_per_token_escaped_and_self_contained():
    z, spans = page_data()
    page = moodring_html(
        TOKENS, z, NAMES, spans, prompt_length=7, special=[t.startswith("<|") for t in TOKENS]
    )
    parser = Tags()
    parser.feed(page)
    toks = [a for t, a in parser.tags if t == "span" and "tok" in a.get("class", "").split()]
    assert [int(a["data-i"]) for a in toks] == list(range(len(TOKENS)))
    assert "<script>alert(1)</script>" not in page  # token text is escaped
    assert not [a for _, a in parser.tags if any(str(v).startswith(("http", "//")) for v in a.values())]
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert [t for t, _ in parser.tags].count("script") == 2  # the data block and the inline script
    ann = [a for a in toks if "ann" in a["class"].split()]
    assert [int(a["data-i"]) for a in ann] == [7, 8, 9, 10]
    assert "you were feeling desperate (z=3.0) while writing this" in page
    # colour: the dominant emotion at full intensity from z = 4; nothing where every z is 0
    assert "rgba(23,190,207" not in page  # only PALETTE[:3] is used
    assert toks[12]["style"].startswith("background:rgba(31,119,180,0.85)")  # calm, z=5: full
    assert toks[8]["style"].startswith("background:rgba(214,39,40,0.64)")  # desperation, z=3
    assert toks[0]["style"].startswith("background:rgba(31,119,180,0.00)")
    blob = page.split('id="moodring-data">')[1].split("</script>")[0]
    data = json.loads(blob.replace("<\\/", "</"))
    assert data["tokens"] == TOKENS and data["names"] == NAMES and data["prompt_length"] == 7
    assert data["readings"][8] == [0.0, 3.0, 0.0]


def test_bad_view_input():
    z, _ = page_data()
    with pytest.raises(ValueError, match="12 token texts and 3 names for readings of shape"):
        moodring_html(TOKENS[:-1], z, NAMES)
    with pytest.raises(ValueError, match=f"at most {len(PALETTE)} directions"):
        moodring_html(["a"], torch.zeros(1, 11), [str(i) for i in range(11)])


def test_write_view_writes_page_and_png(tmp_path):
    z, spans = page_data()
    png = trace_png(z, NAMES, 7, spans)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page, image = write_view(tmp_path / "out", TOKENS, z, NAMES, spans, 7)
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["moodring.html", "moodring.png"]
