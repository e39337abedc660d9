"""Command-line options derived from config dataclasses, so that a setting is declared once.

``add_options(parser, Config)`` adds ``--field-name`` for every field of ``Config`` (its ``help``
metadata as help text, its default shown), typed from the annotation: ``int``, ``float``, ``str``,
``bool`` (``--x`` / ``--no-x``), ``X | None`` (the word ``none`` gives None), tuples and lists
(``nargs="+"``), and ``int | float`` (a layer: an index or a depth fraction). ``from_args`` builds
the config back from the parsed namespace, so the dataclass validates every value in one place.
"""

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..core.model import LanguageModel
from ..lm.loading import DEFAULT_MODEL

T = TypeVar("T")
DTYPES = ("float32", "bfloat16", "float16")


def add_model_options(parser: argparse.ArgumentParser, backend: str = "hooked") -> None:
    """--model, --backend, --device and --dtype: which model every subcommand loads, and where."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name or directory (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--backend",
        choices=("hooked", "bridge", "hf"),
        default=backend,
        help=f"HookedTransformer, TransformerBridge, or the HF model with native hooks (default {backend})",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")


def load_model_from_args(args: argparse.Namespace) -> LanguageModel:
    import torch

    from ..lm.loading import load_model

    return load_model(args.model, backend=args.backend, dtype=getattr(torch, args.dtype), device=args.device)


def layer_arg(text: str) -> int | float:
    """``"10"`` -> 10 (a layer index), ``"0.6"`` -> 0.6 (a depth fraction)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a layer index nor a depth fraction") from None


_KIND = {int: "an integer", float: "a number", str: "a string"}


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        if text.lower() == "none":
            return None
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError):
            kind = _KIND.get(parse, "value")  # type: ignore[call-overload]
            raise argparse.ArgumentTypeError(f"{text!r} is neither {kind} nor 'none'") from None

    return parse_or_none


def _scalar(tp: Any) -> Callable[[str], Any]:
    args = set(typing.get_args(tp))
    if args == {int, float}:
        return layer_arg
    if tp in (int, float, str):
        return tp  # type: ignore[no-any-return]
    raise TypeError(f"no command-line type for {tp!r}")


def _parser_for(tp: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        kw = _parser_for(inner)
        kw["type"] = _or_none(kw.get("type", str))
        return kw
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (tuple, list):
        return {"type": _scalar(args[0]), "nargs": "+"}
    return {"type": _scalar(tp)}


def add_options(
    parser: argparse.ArgumentParser,
    config: type,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    dest_prefix: str = "",
) -> None:
    """Add one option per field of the dataclass ``config`` (except ``skip``); ``dest_prefix``
    prefixes the option and its dest (``"story_"``: ``--story-seed``, ``args.story_seed``)."""
    hints = typing.get_type_hints(config)
    skip = set(skip)
    defaults = defaults or {}
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        kw = _parser_for(hints[f.name])
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = defaults.get(f.name, f.default_factory())
        shown = list(default) if isinstance(default, tuple) else default
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(
            f"--{(dest_prefix + f.name).replace('_', '-')}",
            dest=dest_prefix + f.name,
            default=shown,
            help=f"{f.metadata.get('help', '')} (default: {shown!r})",
            **kw,
        )


def from_args(config: type[T], args: argparse.Namespace, dest_prefix: str = "", **overrides: Any) -> T:
    """The dataclass ``config`` from parsed options (tuple fields as tuples), with ``overrides``."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        if f.name in overrides or not hasattr(args, dest_prefix + f.name):
            continue
        value = getattr(args, dest_prefix + f.name)
        if isinstance(value, list) and typing.get_origin(hints[f.name]) is tuple:
            value = tuple(value)
        values[f.name] = value
    return config(**{**values, **overrides})
