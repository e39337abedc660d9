"""Files moia writes: atomically, and tensors only as safetensors with metadata (never pickles).

- ``atomic_write`` / ``write_text`` / ``write_json``: the content goes to a temporary file in the
  target's folder, is flushed and fsynced, then renamed over the target. A crash or a full disk
  leaves the previous file intact, never a half-written one.
- ``save_tensors`` / ``load_tensors``: a safetensors file whose string metadata names its kind
  (``moia_kind``) and the model it belongs to (name, d_model, n_layers); structured metadata is
  stored as JSON. Loading checks the kind and, given a model, that d_model and the layer count fit.
"""

import contextlib
import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

FORMAT_VERSION = "1"
PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = pathlib.Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # what was written reaches the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def writable_dir(path: PathLike, option: str) -> pathlib.Path:
    """Check, before any long work, that the folder ``path`` (named ``option`` in errors, e.g.
    ``--out``) can hold moia's outputs: it is created if missing, and a file is written and removed
    in it. A path that is a file, or a folder where nothing can be written, is a ``ValueError``."""
    folder = pathlib.Path(path)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".moia-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{option} {str(path)!r}: cannot write there ({e.strerror or e})") from None
    return folder


def writable_file(path: PathLike, option: str) -> pathlib.Path:
    """``writable_dir`` for the folder of the file ``path``; ``path`` itself must not be a folder."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder, expected a file name")
    writable_dir(target.parent, option)
    return target


def atomic_write(path: PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return pathlib.Path(path)


def write_text(path: PathLike, text: str) -> pathlib.Path:
    return atomic_write(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: int | None = 1) -> pathlib.Path:
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def model_metadata(model: Any) -> dict[str, str]:
    """The metadata that ties a tensor file to its model."""
    return {
        "model": str(getattr(model, "moia_name", None) or getattr(model.cfg, "model_name", "unknown")),
        "d_model": str(int(model.cfg.d_model)),
        "n_layers": str(int(model.cfg.n_layers)),
    }


def save_tensors(
    path: PathLike, kind: str, tensors: dict[str, Tensor], metadata: dict[str, Any]
) -> pathlib.Path:
    """Write ``tensors`` as safetensors with string metadata (JSON where structured), atomically."""
    from safetensors.torch import save_file

    meta = {"moia_kind": kind, "format_version": FORMAT_VERSION}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return pathlib.Path(path)


def load_tensors(path: PathLike, kind: str, model: Any = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by ``save_tensors``; check its kind and, given a model, that it fits."""
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind.replace('_', ' ')} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    found = meta.get("moia_kind")
    if found != kind:
        what = f"holds {found!r}" if found else "has no moia metadata"
        raise ValueError(f"{path}: expected a moia {kind!r} file, but it {what}")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name!r} contains NaN or inf values")
    if model is not None:
        check_fits(meta, model, path)
    return tensors, meta


def check_fits(meta: dict[str, str], model: Any, where: Any) -> None:
    """Raise if the file's d_model or layer count differs from ``model``'s (another name only warns)."""
    ours = model_metadata(model)
    for key in ("d_model", "n_layers"):
        if meta.get(key) != ours[key]:
            raise ValueError(
                f"{where}: made for model {meta.get('model')!r} with {key}={meta.get(key)}, but the given "
                f"model {ours['model']!r} has {key}={ours[key]}"
            )
    if meta.get("model") != ours["model"]:
        warnings.warn(
            f"{where}: made for model {meta.get('model')!r}, loading for {ours['model']!r} "
            "(same d_model and layer count)",
            stacklevel=3,
        )


def json_meta(meta: dict[str, str], key: str, path: Any) -> Any:
    """A JSON metadata entry, with an error naming the file when it is missing or broken."""
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: metadata entry {key!r} is missing or not JSON") from e
