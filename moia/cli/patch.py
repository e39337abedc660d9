"""``moia patch``: activation-patching sweeps of a prompt pair, as heatmaps (PROTOCOL §9).

    moia patch --out ioi/                                    # the IOI pair on the default model
    moia patch --sites resid_pre attn_head_out_all_pos --attribution --out ioi/
    moia patch --clean "..." --corrupted "..." --answer " Paris" --wrong " Rome" --out city/

The metric is the logit difference answer − wrong at the last position (the clean answer minus the
corrupted one). Writes ``patching_<site>.png`` (layers × tokens, or layers × heads), with
``--attribution`` also ``attribution_<site>.png``, and ``patching.json`` with every grid.
"""

import argparse
import time
from typing import Any

from ..io import writable_dir
from .options import add_model_options, load_model_from_args

IOI_CLEAN = "When John and Mary went to the store, John gave a drink to"
IOI_CORRUPTED = "When John and Mary went to the store, Mary gave a drink to"
SITES_2D = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_head_out_all_pos")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("patch", help="activation-patching sweeps of a prompt pair, as heatmaps")
    add_model_options(parser)
    parser.add_argument("--clean", default=IOI_CLEAN, help="the clean prompt (default: the IOI pair's)")
    parser.add_argument("--corrupted", default=IOI_CORRUPTED, help="the corrupted prompt, same length")
    parser.add_argument("--answer", default=" Mary", help="the clean answer token (default ' Mary')")
    parser.add_argument("--wrong", default=" John", help="the corrupted answer token (default ' John')")
    parser.add_argument("--sites", nargs="+", choices=SITES_2D, default=["resid_pre"], help="(resid_pre)")
    parser.add_argument("--attribution", action="store_true", help="also the attribution-patching estimate")
    parser.add_argument("--batch-size", type=int, default=None, help="patched runs per forward")
    parser.add_argument("--out", required=True, help="the folder for the PNGs and patching.json")
    parser.set_defaults(func=run)


def _single_token(model: Any, text: str, flag: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise ValueError(f"{flag} {text!r} is {len(ids)} tokens; the logit difference needs one token each")
    return int(ids[0])


def run(args: argparse.Namespace) -> int:
    import torch

    from ..analysis import patching
    from ..io import write_json

    out = writable_dir(args.out, "--out")  # before the model loads
    model: Any = load_model_from_args(args)  # to_tokens / to_str_tokens: both backends have them
    answer, wrong = _single_token(model, args.answer, "--answer"), _single_token(model, args.wrong, "--wrong")
    clean, corrupted = model.to_tokens(args.clean), model.to_tokens(args.corrupted)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer] - logits[:, -1, wrong]

    with torch.no_grad():
        base = {"clean": float(metric(model(clean))), "corrupted": float(metric(model(corrupted)))}
    labels = model.to_str_tokens(corrupted[0])
    report: dict[str, Any] = {"clean": args.clean, "corrupted": args.corrupted, "tokens": labels}
    report |= {"answer": args.answer, "wrong": args.wrong, "metric": base, "sites": {}}
    print(f"logit difference {args.answer!r} - {args.wrong!r}: clean {base['clean']:.3f}, "
          f"corrupted {base['corrupted']:.3f}")  # fmt: skip
    estimates: dict[str, Any] = {}
    if args.attribution:
        start = time.perf_counter()
        one_value = lambda lg: metric(lg).sum()  # noqa: E731
        found = patching.attribution(model, corrupted, clean, one_value, site=list(args.sites))
        assert isinstance(found, dict)
        estimates = found
        report["attribution_s"] = time.perf_counter() - start
    for site in args.sites:
        start = time.perf_counter()
        grid = patching.sweep(model, corrupted, clean, metric, site, args.batch_size, progress=True)
        entry: dict[str, Any] = {"seconds": time.perf_counter() - start, "grid": grid.tolist()}
        columns = labels if site != "attn_head_out_all_pos" else [f"H{h}" for h in range(grid.shape[1])]
        title = f"{site}: logit diff after patching clean into corrupted"
        patching.heatmap(grid, out / f"patching_{site}.png", labels=columns, title=title)
        line = f"{site}: {grid.numel()} cells in {entry['seconds']:.1f} s"
        if site in estimates:
            r = torch.corrcoef(torch.stack([grid.flatten(), estimates[site].flatten()]))[0, 1]
            entry |= {"attribution": estimates[site].tolist(), "pearson_r": float(r)}
            patching.heatmap(
                estimates[site], out / f"attribution_{site}.png", labels=columns, title=f"{site}: attribution"
            )
            line += f"; attribution r = {float(r):.3f}"
        report["sites"][site] = entry
        print(line)
    write_json(out / "patching.json", report)
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} and patching.json to {out}")
    return 0
