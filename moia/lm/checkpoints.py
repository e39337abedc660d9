"""Hugging Face checkpoints beyond the embedded models: hub-cache snapshots, the language model of a
multimodal checkpoint, and random-weight models of real shapes.

- **Hub names** (``google/gemma-3-27b-it``) resolve to their snapshot in the local Hugging Face cache
  (``$HF_HOME/hub``); nothing is downloaded. A name that is not in the cache is an error that says so.
- **Multimodal checkpoints**: MoIA's model, Gemma3-27B-IT, is ``Gemma3ForConditionalGeneration``
  (text + vision). moia loads only its language model, as ``Gemma3ForCausalLM``: the checkpoint's
  text weights are renamed onto the causal-LM layout while loading and the vision tower's are never
  read, so a 27B checkpoint costs the text model's memory (54 GB in bfloat16), loaded straight onto
  the target device in the target dtype.
- **Random weights** (``random:google/gemma-3-27b-it``): the architecture from a config shipped in
  ``moia/data/configs/`` (written from the public ``config.json``; each file names its source; or
  ``random:spec.json``, a file of the same form) and
  random initial weights, built directly on the target device (no CPU copy first), so throughput can
  be measured where weights cannot be fetched. Its tokenizer is an embedded model's, named in the
  config file (``tokenizer_note`` says precisely what stands in for the real one).
"""

import json
import logging
import pathlib
from importlib import resources
from typing import Any

import torch

RANDOM_PREFIX = "random:"

# The language model inside a multimodal checkpoint: its causal-LM class, and the renames from the
# checkpoint's keys (hub layout and transformers >= 5 layout) to that class's.
TEXT_MODELS = {
    "Gemma3ForConditionalGeneration": (
        "Gemma3ForCausalLM",
        {
            r"^language_model\.model\.": "model.",
            r"^model\.language_model\.": "model.",
            r"^language_model\.lm_head\.": "lm_head.",
        },
    ),
}


def hub_snapshot(name: str) -> pathlib.Path | None:
    """The local snapshot folder of hub repo ``name`` in the Hugging Face cache, or None if the name
    is not a repo id or the repo is not cached (nothing is downloaded)."""
    if name.count("/") != 1 or name.startswith((".", "/")) or pathlib.Path(name).exists():
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        path = pathlib.Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        return None
    return path if (path / "config.json").exists() else None


def _quiet_transformers() -> Any:
    """transformers' loading report lists every skipped vision weight; keep errors only."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return previous


def load_hf_directory(
    path: str | pathlib.Path, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)`` from a local model folder, in eval mode, on ``device`` in ``dtype``.

    A multimodal checkpoint (``TEXT_MODELS``) loads as its language model only; any text weight the
    checkpoint lacks is an error (the tied unembedding excepted), never a silent random init.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = pathlib.Path(path)
    config = AutoConfig.from_pretrained(path)
    placement: dict[str, Any] = {}
    if device is not None and torch.device(device).type != "cpu":
        placement["device_map"] = str(device)  # straight onto the device, no CPU copy
    architecture = (getattr(config, "architectures", None) or [""])[0]
    previous = _quiet_transformers()
    try:
        if architecture in TEXT_MODELS:
            class_name, renames = TEXT_MODELS[architecture]
            text_config = config.get_text_config()
            text_config.architectures = [class_name]
            hf, info = getattr(transformers, class_name).from_pretrained(
                path,
                config=text_config,
                dtype=dtype,
                key_mapping=renames,
                output_loading_info=True,
                **placement,
            )
            missing = [k for k in info["missing_keys"] if not k.startswith("lm_head.")]
            if missing:
                raise ValueError(
                    f"{path}: the {architecture} checkpoint lacks language-model weights {missing[:5]} "
                    f"({len(missing)} in all); is it a complete checkpoint?"
                )
        else:
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement)
    finally:
        transformers.utils.logging.set_verbosity(previous)
    tok = AutoTokenizer.from_pretrained(path)
    return hf.eval(), tok


# ------------------------------------------------------------------------------- random weights
def _configs() -> dict[str, dict[str, Any]]:
    folder = resources.files("moia") / "data" / "configs"
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            spec = json.loads(entry.read_text(encoding="utf-8"))
            out[spec["name"]] = spec
    return out


def random_model_names() -> list[str]:
    """The names ``random:NAME`` accepts (configs shipped in ``moia/data/configs``)."""
    return sorted(_configs())


def random_model_spec(name: str) -> dict[str, Any]:
    """The shipped config file of ``name`` (with or without the ``random:`` prefix), or the spec in
    a JSON file of the same form (``random:path/to/spec.json``: name, tokenizer, config)."""
    bare = name.removeprefix(RANDOM_PREFIX)
    if bare.endswith(".json") and pathlib.Path(bare).is_file():
        spec = json.loads(pathlib.Path(bare).read_text(encoding="utf-8"))
        missing = {"name", "tokenizer", "config"} - set(spec)
        if missing:
            raise ValueError(f"random model spec {bare}: missing keys {sorted(missing)}")
        return dict(spec)
    specs = _configs()
    if bare not in specs:
        raise ValueError(f"no shipped config for random model {bare!r}: expected one of {sorted(specs)}")
    return specs[bare]


def text_config(config: Any) -> Any:
    """The config of the causal LM moia loads: a multimodal config's text config, renamed."""
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if architecture in TEXT_MODELS:
        text = config.get_text_config()
        text.architectures = [TEXT_MODELS[architecture][0]]
        return text
    return config


def random_hf_model(
    name: str, dtype: torch.dtype = torch.float32, device: torch.device | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """``(hf_model, tokenizer)`` of ``random:NAME``: the shipped architecture with random weights.

    The weights are created and initialised on ``device`` itself (torch's device context), in
    ``dtype``, so a 27B-shaped model never passes through CPU memory. ``seed`` makes them repeatable
    on one device type.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import load_hf

    spec = random_model_spec(name)
    raw = dict(spec["config"])
    model_type = raw.pop("model_type")
    config = text_config(AutoConfig.for_model(model_type, **raw))
    config.name_or_path = RANDOM_PREFIX + spec["name"]
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _, tok = load_hf(spec["tokenizer"], tokenizer_only=True)
    if spec.get("chat_template"):
        template = resources.files("moia") / "data" / spec["chat_template"]
        tok.chat_template = template.read_text(encoding="utf-8")
    if len(tok) > config.vocab_size:
        raise ValueError(f"{name}: tokenizer of {len(tok)} tokens exceeds the vocabulary {config.vocab_size}")
    logging.getLogger(__name__).info("%s: random weights; tokenizer: %s", name, spec["tokenizer_note"])
    return hf.eval(), tok
