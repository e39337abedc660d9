"""What concept vectors and refusal directions share: layers, residual reads and direction files.

- ``resolve_layers`` turns layer indices or depth fractions into indices, so that a config written
  for Gemma3-27B ("0.6 depth", [MOIA]'s layer 37 of 62) carries over to a 30-layer model.
- ``residual_stream`` reads the output of decoder layers (``hook_resid_post``) at chosen positions
  of chat-formatted prompts, in left-padded batches, running the model only up to the last layer
  it needs.
- ``save_direction_file`` / ``load_direction_file``: safetensors with JSON metadata that says which
  model and layers the tensors belong to, written atomically (temporary file + ``os.replace``).
"""

import json
import math
import numbers
import os
import pathlib
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .generation import tokenize_prompts
from .hooks import hook_name

FORMAT_VERSION = "1"


# ------------------------------------------------------------------------------------ layers
def resolve_layers(model_or_n_layers: Any, layers: Any) -> list[int]:
    """Layer indices, sorted and unique, from ints and/or depth fractions.

    An int is a decoder layer index in ``[0, n_layers)``; a float in ``[0, 1)`` is a depth and
    becomes ``floor(f * n_layers + 0.5)`` (round half up), capped at ``n_layers - 1``: 0.6 on
    Gemma3-27B (62 layers) is 37, [MOIA]'s canonical layer; on SmolLM2 (30 layers) it is 18.
    None means every layer.
    """
    n = model_or_n_layers if isinstance(model_or_n_layers, int) else int(model_or_n_layers.cfg.n_layers)
    if layers is None:
        return list(range(n))
    items = list(layers) if isinstance(layers, (list, tuple, range)) else [layers]
    if not items:
        raise ValueError("layers must not be empty")
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise TypeError(f"layers: {item!r} is neither a layer index (int) nor a depth fraction (float)")
        if isinstance(item, numbers.Integral):  # numpy / torch integers too
            if not 0 <= int(item) < n:
                raise ValueError(f"layers: layer {item} out of range for a model with {n} layers")
            out.add(int(item))
            continue
        depth = float(item)
        if not 0.0 <= depth < 1.0:
            raise ValueError(f"layers: depth fraction {depth} must lie in [0, 1); give layer indices as ints")
        out.add(min(math.floor(depth * n + 0.5), n - 1))
    return sorted(out)


def depth_fractions(layers: Sequence[int], n_layers: int) -> list[float]:
    """``layer / n_layers`` for each layer (the inverse of ``resolve_layers`` up to rounding)."""
    return [layer / n_layers for layer in layers]


# --------------------------------------------------------------------------- residual reads
def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def residual_stream(
    model: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    positions: Sequence[int] = (-1,),
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "residual stream",
) -> Iterator[tuple[list[int], Float[Tensor, "batch pos layer d_model"]]]:
    """Yield ``(indices, acts)`` per batch: the output of each decoder layer in ``layers`` at
    ``positions`` (negative, from the last prompt token: -1 is the last) of each formatted text.

    Texts are batched by length (less padding) and left-padded, so a position counted from the
    end is the same token in every row; ``indices`` say which texts a batch holds. The forward
    stops after ``max(layers)``; only the requested hook points and positions are kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise ValueError("texts must not be empty")
    if any(p >= 0 for p in positions):
        raise ValueError(
            f"positions count from the end of the prompt and must be negative, got {list(positions)}"
        )
    tok = model.tokenizer
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    if min(lengths) < -min(positions):
        raise ValueError(f"position {min(positions)} lies before the start of a {min(lengths)}-token prompt")
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    names = [hook_name(model, "resid_post", layer) for layer in layers]
    pos = list(positions)
    captured: dict[str, Tensor] = {}

    def capture(x: Tensor, hook: Any) -> None:
        captured[hook.name] = x[:, pos]  # [batch, n_pos, d_model]

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        tokens, mask = tokenize_prompts(model, [texts[i] for i in idx], _device(model))
        captured.clear()
        with model.hooks(fwd_hooks=[(name, capture) for name in names]):  # not held across yields
            model(tokens, attention_mask=mask, stop_at_layer=max(layers) + 1)
        yield idx, torch.stack([captured[name] for name in names], dim=2)


# ---------------------------------------------------------------------------- direction files
def model_metadata(model: Any) -> dict[str, str]:
    """The metadata that ties a direction file to its model."""
    return {
        "model": str(getattr(model, "moia_name", None) or getattr(model.cfg, "model_name", "unknown")),
        "d_model": str(int(model.cfg.d_model)),
        "n_layers": str(int(model.cfg.n_layers)),
    }


def save_direction_file(
    path: str | os.PathLike, kind: str, tensors: dict[str, Tensor], metadata: dict[str, Any]
) -> pathlib.Path:
    """Write ``tensors`` as safetensors with string metadata, atomically; returns the path.

    Non-string metadata values are stored as JSON. The file is written to a temporary file in
    the same directory and renamed into place, so a crash never leaves a half-written file.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"moia_kind": kind, "format_version": FORMAT_VERSION}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_direction_file(
    path: str | os.PathLike, kind: str, model: Any = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by ``save_direction_file``; check its kind and, given a model, that it
    fits the model (d_model and layer count; a different model name only warns)."""
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"direction file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    found = meta.get("moia_kind")
    if found != kind:
        what = f"holds {found!r}" if found else "has no moia metadata"
        raise ValueError(f"{path}: expected a moia {kind!r} file, but it {what}")
    if model is not None:
        check_model(meta, model, path)
    return tensors, meta


def check_model(meta: dict[str, str], model: Any, path: Any) -> None:
    """Raise if the file's d_model or layer count differs from ``model``'s."""
    ours = model_metadata(model)
    for key in ("d_model", "n_layers"):
        if meta.get(key) != ours[key]:
            raise ValueError(
                f"{path}: made for model {meta.get('model')!r} with {key}={meta.get(key)}, but the given "
                f"model {ours['model']!r} has {key}={ours[key]}"
            )
    if meta.get("model") != ours["model"]:
        warnings.warn(
            f"{path}: made for model {meta.get('model')!r}, loading for {ours['model']!r} "
            "(same d_model and layer count)",
            stacklevel=3,
        )


def json_meta(meta: dict[str, str], key: str, path: Any) -> Any:
    """A JSON metadata entry, with an error naming the file when it is missing or broken."""
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: metadata entry {key!r} is missing or not JSON") from e
