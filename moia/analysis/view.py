"""The mood ring's view: an HTML page of the text coloured by what the ring read, and a PNG of traces.

``moodring_html`` renders one ``<span class="tok">`` per token, coloured by the direction with the
highest z-score there (its intensity by that z), with every direction's value in a side panel on
hover or focus, annotated spans underlined and their notes shown inline (PROTOCOL §8). The page is
self-contained: inline CSS and JavaScript, no network resource. ``trace_png`` plots every
direction's z over the tokens (matplotlib). ``write_view`` writes both, atomically.
"""

import html
import io
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from ..io import atomic_write, write_text
from .annotate import FEELINGS, NOTE, Span

# tab10: distinguishable on white, the same order in the page and the plot
PALETTE = [
    "#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#2ca02c",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
Z_FULL = 4.0  # z at which a token's colour is at full intensity
# flags for opening the page in a headless chromium (Debian's, driven by Playwright's
# executable_path): the README's screenshot script and the browser test launch it with these
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; display: flex; color: #222; }
main { flex: 1; padding: 1.5em 2em; max-width: 60em; }
aside { width: 19em; padding: 1.5em 1em; border-left: 1px solid #ddd; position: sticky; top: 0;
        height: 100vh; box-sizing: border-box; font-size: 0.9em; background: #fafafa; }
h1 { font-size: 1.2em; } .meta { color: #666; font-size: 0.85em; }
.text { white-space: pre-wrap; line-height: 1.9; font-size: 1.02em; }
.tok { border-radius: 3px; cursor: default; }
.tok:hover, .tok:focus { outline: 2px solid #333; }
.prompt { color: #666; }
.special { color: #999; font-size: 0.8em; }
.ann { text-decoration: underline; text-decoration-thickness: 3px; text-underline-offset: 4px; }
.note { font-style: italic; font-size: 0.85em; padding: 0 0.3em; border-radius: 3px; background: #f2f2f2; }
.sep { display: block; border-top: 1px dashed #aaa; margin: 0.6em 0; font-size: 0.8em; color: #888; }
.legend span { display: inline-block; margin: 0 0.8em 0.3em 0; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin-right: 0.3em;
            vertical-align: -0.1em; }
table { border-collapse: collapse; width: 100%; } td { padding: 2px 4px; }
td.bar { width: 45%; } td.bar div { height: 0.8em; border-radius: 2px; }
td.z { text-align: right; font-variant-numeric: tabular-nums; }
"""

_SCRIPT = """
const DATA = JSON.parse(document.getElementById("moodring-data").textContent);
const panel = document.getElementById("panel");
function show(i) {
  const z = DATA.readings[i];
  let rows = "";
  const order = z.map((v, j) => j).sort((a, b) => z[b] - z[a]);
  for (const j of order) {
    const w = Math.min(100, Math.max(0, 100 * z[j] / DATA.zfull));
    rows += `<tr><td>${DATA.names[j]}</td><td class="bar"><div style="width:${w}%;` +
            `background:${DATA.colors[j]}"></div></td><td class="z">${z[j].toFixed(2)}</td></tr>`;
  }
  const where = i < DATA.prompt_length ? "prompt" : "generated";
  panel.innerHTML = `<p>token ${i} (${where}): <code>${JSON.stringify(DATA.tokens[i])}</code></p>` +
                    `<table>${rows}</table>`;
}
for (const el of document.querySelectorAll(".tok")) {
  el.addEventListener("mouseenter", () => show(Number(el.dataset.i)));
  el.addEventListener("focus", () => show(Number(el.dataset.i)));
}
show(DATA.prompt_length < DATA.readings.length ? DATA.prompt_length : 0);
"""


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"


def moodring_html(
    token_texts: Sequence[str],
    readings: Float[Tensor, "n k"],
    names: Sequence[str],
    spans: Sequence[Span] = (),
    prompt_length: int = 0,
    title: str = "mood ring",
    special: Sequence[bool] | None = None,
    meta: str = "",
    template: str = NOTE,
) -> str:
    """The page: one ``span.tok`` per token (``token_texts[i]`` shown, ``readings[i]`` in the panel).

    ``spans`` index tokens of the whole sequence; ``prompt_length`` tokens are the prompt (dimmed);
    ``special`` marks template tokens (shown small).
    """
    n, k = readings.shape
    if len(token_texts) != n or len(names) != k:
        raise ValueError(
            f"{len(token_texts)} token texts and {len(names)} names for readings of shape {(n, k)}"
        )
    if k > len(PALETTE):
        raise ValueError(f"the view colours at most {len(PALETTE)} directions, got {k}")
    special = special or [False] * n
    z = readings.float()
    top, which = z.max(dim=1)
    underline: dict[int, str] = {}
    notes_after: dict[int, list[str]] = {}
    for span in spans:
        color = PALETTE[list(names).index(span.name)]
        for t in range(span.start, span.end):
            underline.setdefault(t, color)
        note = template.format(
            feeling=FEELINGS.get(span.name, span.name), name=span.name, z=span.peak, mean=span.mean, text=""
        )
        notes_after.setdefault(span.end - 1, []).append(
            f'<span class="note" style="border-left:3px solid {color}">{html.escape(note)}</span>'
        )
    parts = []
    for i, text in enumerate(token_texts):
        if i == prompt_length and 0 < prompt_length < n:
            parts.append('<span class="sep">generated</span>')
        color = PALETTE[int(which[i])]
        alpha = max(0.0, min(1.0, float(top[i]) / Z_FULL)) * 0.85
        classes = ["tok"]
        if i < prompt_length:
            classes.append("prompt")
        if special[i]:
            classes.append("special")
        style = f"background:{_rgba(color, alpha)}"
        if i in underline:
            classes.append("ann")
            style += f";text-decoration-color:{underline[i]}"
        label = f"{names[int(which[i])]} z={float(top[i]):.2f}"
        parts.append(
            f'<span class="{" ".join(classes)}" data-i="{i}" tabindex="0" title="{html.escape(label)}" '
            f'style="{style}">{html.escape(text)}</span>'
        )
        parts += notes_after.get(i, [])
    legend = "".join(
        f"<span><i style='background:{PALETTE[j]}'></i>{html.escape(nm)}</span>" for j, nm in enumerate(names)
    )
    data = {
        "names": list(names),
        "colors": PALETTE[:k],
        "readings": [[round(float(v), 3) for v in row] for row in z],
        "tokens": list(token_texts),
        "prompt_length": prompt_length,
        "zfull": Z_FULL,
    }
    blob = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body><main><h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>
<p class="legend">{legend}</p>
<p class="meta">Colour: the direction with the highest z-score at each token; intensity: that z (full at
z = {Z_FULL:g}). Underlined: annotated spans. Hover a token for every direction's value.</p>
<div class="text">{"".join(parts)}</div></main>
<aside><h1>readings</h1><div id="panel"></div></aside>
<script type="application/json" id="moodring-data">{blob}</script>
<script>{_SCRIPT}</script></body></html>
"""


def trace_png(
    readings: Float[Tensor, "n k"],
    names: Sequence[str],
    prompt_length: int = 0,
    spans: Sequence[Span] = (),
    title: str = "mood ring",
) -> bytes:
    """A PNG of every direction's z over the tokens; the prompt shaded, annotated spans marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = readings.float().numpy()
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=110)
    try:
        if prompt_length > 0:
            ax.axvspan(-0.5, prompt_length - 0.5, color="#eeeeee", label="prompt")
        for j, name in enumerate(names):
            ax.plot(z[:, j], color=PALETTE[j], lw=1.3, label=name)
        for span in spans:
            j = list(names).index(span.name)
            ax.axvspan(span.start - 0.5, span.end - 0.5, color=PALETTE[j], alpha=0.15)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_xlabel("token")
        ax.set_ylabel("z-score")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_view(
    out_dir: str | pathlib.Path,
    token_texts: Sequence[str],
    readings: Float[Tensor, "n k"],
    names: Sequence[str],
    spans: Sequence[Span] = (),
    prompt_length: int = 0,
    title: str = "mood ring",
    **html_options: Any,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``moodring.html`` and ``moodring.png`` into ``out_dir`` atomically; returns their paths."""
    out = pathlib.Path(out_dir)
    page = write_text(
        out / "moodring.html",
        moodring_html(token_texts, readings, names, spans, prompt_length, title, **html_options),
    )
    png = atomic_write(out / "moodring.png", trace_png(readings, names, prompt_length, spans, title))
    return page, png
