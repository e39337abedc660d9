"""The native execution path: moia's hooks as plain torch hooks on a Hugging Face model's own modules.

``NativeModel`` wraps a Hugging Face causal LM (no TransformerLens in the forward) and offers the
``LanguageModel`` protocol: TransformerLens' hook names (``blocks.L.hook_resid_post`` ...), each a
``NativeHookPoint`` that places the hook on the HF module computing that tensor, so that
``moia.intervene``, ``fwd_hooks`` and the decoding engine run unchanged, at HF speed:

| site | HF module (Llama-style / Gemma-style decoder layer) |
|---|---|
| ``embed`` | the input embedding's output (Gemma's is already scaled by sqrt(d_model)) |
| ``resid_pre`` | the decoder layer's input (a forward pre-hook) |
| ``resid_post`` | the decoder layer's output (HF ``hidden_states[L + 1]``) |
| ``attn_out`` | ``self_attn.o_proj``'s output / the post-attention norm's output |
| ``mlp_out`` | ``mlp``'s output (its down-projection) / the post-feed-forward norm's output |
| ``mlp_pre_norm`` | the same as ``mlp_out`` / ``mlp``'s output, before the post-feed-forward norm |
| ``resid_mid`` | the pre-MLP norm's input; the change made there is added to the layer's output too |

``resid_mid`` needs the second half because HF keeps the residual in a local variable: a hook can
change what the MLP reads but not what is added to it.

Where the modules come from: ``load_model(name, backend="hf")`` loads the HF model itself;
``native_model(bridge)`` unwraps a ``TransformerBridge``'s HF model into a plain module tree that
shares every parameter with the bridge (calling ``bridge.original_model`` directly would still
dispatch over the bridge's ~1,700 hook points); ``NativeModel(hf, tokenizer)`` wraps an HF model
you loaded yourself.
"""

import copy
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.model import LanguageModel, is_bridge, wraps_hf

# Generation runs a model that wraps an HF model (TransformerBridge) on its native twin unless told
# otherwise: the same tokens (tests/lm/test_native*.py) at HF speed (benchmarks/RESULTS.md, "Peers").
NATIVE_BY_DEFAULT = True


@dataclass
class NativeConfig:
    """The configuration fields moia reads, in TransformerLens' names."""

    d_model: int
    n_layers: int
    d_vocab: int
    n_ctx: int
    dtype: torch.dtype
    model_name: str
    default_prepend_bos: bool = False  # chat templates carry their own BOS


class _Stop(Exception):
    """Raised by the hook that ends a forward at ``stop_at_layer``; carries the residual."""

    def __init__(self, resid: Tensor) -> None:
        self.resid = resid


# ------------------------------------------------------------------------------- hook points
class NativeHookPoint:
    """One hook site on an HF module, with TransformerLens' ``HookPoint`` calling convention.

    A hook is ``fn(tensor, hook=point)`` returning a replacement tensor or None; ``add_hook`` /
    ``remove_hooks`` take TransformerLens' context ``level`` so nested contexts remove only their own.
    ``kind``: "output" (a forward hook on ``module``'s output, the first element of a tuple output),
    "input" (a forward pre-hook on the first argument or ``hidden_states``), or "mid" (a pre-hook on
    ``module`` that also adds its change to the output of ``layer``; see the module docstring).
    """

    def __init__(self, name: str, module: nn.Module, kind: str, layer: nn.Module | None = None) -> None:
        self.name, self.module, self.kind, self.layer = name, module, kind, layer
        self._handles: list[tuple[list[Any], int | None, bool]] = []  # (torch handles, level, permanent)

    def __repr__(self) -> str:
        return f"NativeHookPoint({self.name!r} on {type(self.module).__name__}, {self.kind})"

    def add_hook(
        self,
        hook: Callable[..., Tensor | None],
        dir: str = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        if dir != "fwd":
            raise NotImplementedError(
                f"{self.name}: the native path has forward hooks only (dir={dir!r}); use a "
                "TransformerLens backend for backward hooks"
            )
        handles = self._register(hook, prepend)
        self._handles.append((handles, level, is_permanent))

    def _register(self, fn: Callable[..., Tensor | None], prepend: bool) -> list[Any]:
        point = self
        if self.kind == "output":

            def out_hook(module: nn.Module, args: Any, output: Any) -> Any:
                if isinstance(output, tuple):  # (hidden, attention weights, ...)
                    new = fn(output[0], hook=point)
                    return None if new is None else (new, *output[1:])
                return fn(output, hook=point)

            return [self.module.register_forward_hook(out_hook, prepend=prepend)]
        if self.kind == "input":

            def in_hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
                if args:
                    new = fn(args[0], hook=point)
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"], hook=point)
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            return [self.module.register_forward_pre_hook(in_hook, with_kwargs=True, prepend=prepend)]
        assert self.kind == "mid" and self.layer is not None
        change: list[Tensor] = []

        def mid_hook(module: nn.Module, args: Any) -> Any:
            new = fn(args[0], hook=point)
            if new is None:
                return None
            change.append(new - args[0])
            return (new, *args[1:])

        def add_change(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
            return output + change.pop() if change else None

        # prepend: the change enters the residual before any resid_post hook of this layer runs
        return [
            self.module.register_forward_pre_hook(mid_hook, prepend=prepend),
            self.layer.register_forward_hook(add_change, prepend=True),
        ]

    def remove_hooks(
        self, dir: str = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        kept = []
        for handles, at, permanent in self._handles:
            if including_permanent or (not permanent and (level is None or at == level)):
                for handle in handles:
                    handle.remove()
            else:
                kept.append((handles, at, permanent))
        self._handles = kept


class NativeUnsupportedError(ValueError):
    """The native path does not know this architecture's decoder layers (e.g. OLMo 2's norms after
    the writers and none before the MLP); by default generation then stays on the bridge."""


def _decoder_layers(hf: Any) -> tuple[nn.Module, nn.ModuleList]:
    """(input embedding, decoder layers) of an HF causal LM."""
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else getattr(hf, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise NativeUnsupportedError(
            f"the native path needs a decoder with a `layers` ModuleList (Llama, Gemma, Qwen, Mistral "
            f"...); {type(hf).__name__} has none"
        )
    return hf.get_input_embeddings(), layers


def hook_points(hf: Any) -> dict[str, NativeHookPoint]:
    """TransformerLens hook names -> the native hook points of ``hf`` (see the module docstring)."""
    embed, layers = _decoder_layers(hf)
    points = {"hook_embed": NativeHookPoint("hook_embed", embed, "output")}
    layer: Any
    for i, layer in enumerate(layers):
        sandwich = hasattr(layer, "post_feedforward_layernorm")  # Gemma 2/3: norms after the writers
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        pre_mlp_norm = getattr(
            layer, "pre_feedforward_layernorm" if sandwich else "post_attention_layernorm", None
        )
        if attn is None or mlp is None or pre_mlp_norm is None:
            raise NativeUnsupportedError(
                f"the native path knows Llama- and Gemma-style decoder layers (self_attn, mlp and their "
                f"norms); layer {i} is a {type(layer).__name__}"
            )
        sites: dict[str, tuple[nn.Module, str]] = {
            "hook_resid_pre": (layer, "input"),
            "hook_resid_post": (layer, "output"),
            "hook_attn_out": (
                layer.post_attention_layernorm if sandwich else getattr(attn, "o_proj", attn),
                "output",
            ),
            "hook_mlp_out": (layer.post_feedforward_layernorm if sandwich else mlp, "output"),
        }
        if sandwich:
            sites["ln2_post.hook_in"] = (mlp, "output")  # mlp_pre_norm: [MOIA]'s bias site
        for suffix, (module, kind) in sites.items():
            name = f"blocks.{i}.{suffix}"
            points[name] = NativeHookPoint(name, module, kind)
        name = f"blocks.{i}.hook_resid_mid"
        points[name] = NativeHookPoint(name, pre_mlp_norm, "mid", layer)
    return points


# ------------------------------------------------------------------------------------ model
class NativeModel:
    """A Hugging Face causal LM with moia's ``LanguageModel`` protocol and TransformerLens hook names.

    ``model(tokens, attention_mask=..., stop_at_layer=...)`` returns logits (or, with
    ``stop_at_layer=L``, the residual stream after L decoder layers); left padding is handled by
    deriving position ids from the mask. ``original_model`` is the HF model itself.
    """

    def __init__(self, hf: Any, tokenizer: Any, name: str | None = None) -> None:
        config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self.original_model = hf.eval()
        self.tokenizer = tokenizer
        self.cfg = NativeConfig(
            d_model=int(config.hidden_size),
            n_layers=int(config.num_hidden_layers),
            d_vocab=int(config.vocab_size),
            n_ctx=int(getattr(config, "max_position_embeddings", 0) or 0),
            dtype=next(hf.parameters()).dtype,
            model_name=str(name or getattr(config, "name_or_path", "") or type(hf).__name__),
        )
        self.moia_name = self.cfg.model_name
        self.moia_generation_config: Any = getattr(hf, "generation_config", None)  # sampling defaults
        self.context_level = 0
        self._points = hook_points(hf)
        self._layers = _decoder_layers(hf)[1]

    def __repr__(self) -> str:
        return f"NativeModel({self.moia_name!r}, {type(self.original_model).__name__})"

    @property
    def hook_dict(self) -> dict[str, NativeHookPoint]:
        return self._points

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator["NativeModel"]:
        """TransformerLens' ``hooks`` context: ``fwd_hooks`` is ``[(name or filter, fn)]``."""
        if bwd_hooks:
            raise NotImplementedError("the native path has forward hooks only; use a TransformerLens backend")
        self.context_level += 1
        level, touched = self.context_level, []
        try:
            for name, fn in fwd_hooks:
                names = [name] if isinstance(name, str) else [n for n in self._points if name(n)]
                for n in names:
                    if n not in self._points:
                        raise ValueError(f"unknown hook name {n!r} on the native model")
                    self._points[n].add_hook(fn, level=level)
                    touched.append(self._points[n])
            yield self
        finally:
            if reset_hooks_end:
                for point in touched:
                    point.remove_hooks(level=level)
            self.context_level -= 1

    def run_with_hooks(self, *args: Any, fwd_hooks: Any = (), **kwargs: Any) -> Tensor:
        with self.hooks(fwd_hooks=fwd_hooks):
            return self(*args, **kwargs)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.original_model.parameters(recurse)

    def to(self, *args: Any, **kwargs: Any) -> "NativeModel":
        self.original_model.to(*args, **kwargs)
        self.cfg.dtype = next(self.original_model.parameters()).dtype
        return self

    def eval(self) -> "NativeModel":
        self.original_model.eval()
        return self

    def __call__(
        self, tokens: Tensor, attention_mask: Tensor | None = None, stop_at_layer: int | None = None
    ) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise TypeError(f"tokens must be a [batch, pos] tensor of token ids, got {type(tokens).__name__}")
        kwargs: dict[str, Any] = {"input_ids": tokens, "use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding
        if stop_at_layer is None:
            return self.original_model(**kwargs).logits  # type: ignore[no-any-return]
        if not 0 < stop_at_layer <= self.cfg.n_layers:
            raise ValueError(f"stop_at_layer must lie in [1, {self.cfg.n_layers}], got {stop_at_layer}")

        def stop(module: nn.Module, args: Any, output: Tensor) -> None:
            raise _Stop(output[0] if isinstance(output, tuple) else output)

        # registered last, so it sees the output after every other hook on that layer
        handle = self._layers[stop_at_layer - 1].register_forward_hook(stop)
        try:
            self.original_model.get_decoder()(**kwargs)
        except _Stop as s:
            return s.resid
        finally:
            handle.remove()
        raise RuntimeError(f"the forward never reached layer {stop_at_layer - 1}")


# --------------------------------------------------------------------------- from a bridge
def unwrap_bridge_modules(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """A plain HF module tree from one a TransformerBridge has wrapped, sharing every parameter.

    Each bridge component is replaced by the HF module it wraps; a module whose children change is
    copied shallowly (same parameters and buffers, its own children and hook registries), so the
    bridge's own tree is left as it is.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    original = module
    while "_original_component" in module._modules:
        inner = module._modules["_original_component"]
        assert inner is not None
        module = inner
    changed = {}
    for name, child in module._modules.items():
        if child is not None:
            plain = unwrap_bridge_modules(child, memo)
            if plain is not child:
                changed[name] = plain
    out = module
    if changed:
        out = copy.copy(module)
        out.__dict__["_modules"] = {**module._modules, **changed}
        for key, value in vars(module).items():  # own hook registries, not the original's
            if "hooks" in key and isinstance(value, dict):
                out.__dict__[key] = type(value)(value)
    memo[id(original)] = out
    return out


_NATIVE: "weakref.WeakKeyDictionary[Any, NativeModel]" = weakref.WeakKeyDictionary()


def native_model(model: LanguageModel) -> NativeModel:
    """The native twin of ``model``: itself if native, else (a TransformerBridge) a ``NativeModel``
    of its unwrapped HF model, sharing the bridge's parameters; made once per bridge.

    Hooks installed on the bridge do not act on its native twin, and the reverse.
    """
    if isinstance(model, NativeModel):
        return model
    if not is_bridge(model):
        raise TypeError(
            f"the native path needs a model that wraps a Hugging Face model (load_model(..., "
            f"backend='hf' or 'bridge')); {type(model).__name__} has converted weights of its own"
        )
    if model not in _NATIVE:
        hf = unwrap_bridge_modules(model.original_model)  # type: ignore[attr-defined]
        native = NativeModel(hf, model.tokenizer, getattr(model, "moia_name", None))
        native.cfg.n_ctx = int(getattr(model.cfg, "n_ctx", native.cfg.n_ctx) or native.cfg.n_ctx)
        _NATIVE[model] = native
    return _NATIVE[model]


def execution_model(model: LanguageModel, native: bool | None = None) -> LanguageModel:
    """The model a generation runs on: ``native_model(model)`` when ``native``, else ``model``.

    ``native=None`` is the default: ``NATIVE_BY_DEFAULT``, for a model that wraps an HF model and
    is not inside a hooks context of its own (``context_level > 0``: a caller's hooks on the bridge
    must see the run, and they would not on the native twin).
    """
    if native is None:
        if not (NATIVE_BY_DEFAULT and wraps_hf(model) and not getattr(model, "context_level", 0)):
            return model
        try:
            return native_model(model)
        except NativeUnsupportedError:
            return model  # an architecture the native path does not know runs on the bridge
    return native_model(model) if native else model
