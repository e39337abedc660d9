"""How many trials fit in one batch: a memory plan from the model's shape and free device memory.

Per batch row, generation holds (all in the model's dtype unless noted):

- **KV cache**: 2 (keys, values) × layers × KV heads × head size × (prompt + new tokens) — the whole
  reply's cache, since every row may run to ``max_new_tokens``. Gemma 3's local layers keep their
  full cache too (moia's stepper uses one dynamic cache), so no sliding-window discount;
- **activations at the widest layer** during the prefill, the largest moment: per prompt token the
  residual stream, its normalised copy and the attention output (3 × d_model, + 1 for the
  injection's sum), the MLP's gate, up and activated tensors (3 × d_mlp); the attention scores and
  probabilities, [heads, prompt, prompt] in float32 (eager attention, as TransformerLens runs it);
  and the last position's logits in float32, twice (logits and the sampling distribution).

The batch is ``floor(budget / per-row bytes)`` where ``budget = (free - weights not yet loaded -
reserve) × headroom`` (reserve: 1 GiB for the CUDA context and allocator slack; headroom 0.9 for
fragmentation). The planner is an estimate; ``TrialRunner`` halves a batch that still runs out of
memory and retries it, so a plan that is too large costs time, never trials.
"""

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..core.model import LanguageModel, device_of

GIB = 1024**3
RESERVE_BYTES = GIB
HEADROOM = 0.9
CPU_BATCH = 32  # on CPU more rows do not add throughput (benchmarks/RESULTS.md: 10.6x at 32 rows)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, model: LanguageModel) -> "ModelShape":
        cfg = model.cfg
        n_heads = int(cfg.n_heads)
        dtype = getattr(cfg, "dtype", None) or next(model.parameters()).dtype
        return cls(
            n_layers=int(cfg.n_layers),
            d_model=int(cfg.d_model),
            d_mlp=int(cfg.d_mlp),
            n_heads=n_heads,
            n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
            d_head=int(cfg.d_head),
            d_vocab=int(cfg.d_vocab),
            dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        )

    @classmethod
    def of_config(cls, config: Any, dtype: torch.dtype) -> "ModelShape":
        """From a Hugging Face text config (no model needed: plan before loading)."""
        n_heads = int(config.num_attention_heads)
        return cls(
            n_layers=int(config.num_hidden_layers),
            d_model=int(config.hidden_size),
            d_mlp=int(config.intermediate_size),
            n_heads=n_heads,
            n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
            d_head=int(getattr(config, "head_dim", None) or config.hidden_size // n_heads),
            d_vocab=int(config.vocab_size),
            dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        )

    def kv_bytes_per_row(self, tokens: int) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.d_head * tokens * self.dtype_bytes

    def activation_bytes_per_row(self, prompt_tokens: int) -> int:
        per_token = (4 * self.d_model + 3 * self.d_mlp) * self.dtype_bytes
        scores = 2 * self.n_heads * prompt_tokens * prompt_tokens * 4
        logits = 2 * self.d_vocab * 4
        return prompt_tokens * per_token + scores + logits


@dataclass(frozen=True)
class MemoryPlan:
    """A batch size and the figures it came from (bytes)."""

    batch: int
    free_bytes: int
    weight_bytes: int
    budget_bytes: int
    kv_bytes_per_row: int
    activation_bytes_per_row: int

    @property
    def bytes_per_row(self) -> int:
        return self.kv_bytes_per_row + self.activation_bytes_per_row

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "bytes_per_row": self.bytes_per_row}


def plan_batch(
    shape: ModelShape,
    free_bytes: int,
    prompt_tokens: int,
    max_new_tokens: int,
    weight_bytes: int = 0,
    reserve_bytes: int = RESERVE_BYTES,
    headroom: float = HEADROOM,
    max_batch: int | None = None,
) -> MemoryPlan:
    """The largest batch whose KV cache and widest-layer activations fit in ``free_bytes``.

    Args:
        weight_bytes: weights still to be loaded into ``free_bytes`` (0 when the model is loaded,
            as free memory then already excludes them).
        max_batch: an upper bound (e.g. the number of trials left).
    Raises ``ValueError`` when not even one row fits, naming the figures.
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    budget = int((free_bytes - weight_bytes - reserve_bytes) * headroom)
    kv = shape.kv_bytes_per_row(prompt_tokens + max_new_tokens)
    act = shape.activation_bytes_per_row(prompt_tokens)
    if budget < kv + act:
        raise ValueError(
            f"not even one trial fits: {free_bytes / GIB:.2f} GiB free, {weight_bytes / GIB:.2f} GiB of "
            f"weights to load, {reserve_bytes / GIB:.2f} GiB reserve leave {max(budget, 0) / GIB:.2f} GiB "
            f"for a row that needs {(kv + act) / GIB:.3f} GiB"
        )
    batch = budget // (kv + act)
    if max_batch is not None:
        batch = min(batch, max(1, max_batch))
    return MemoryPlan(int(batch), int(free_bytes), int(weight_bytes), budget, kv, act)


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the CUDA driver's figure, or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def planned_batch_size(
    model: LanguageModel, prompt_tokens: int, max_new_tokens: int, max_batch: int | None = None
) -> MemoryPlan:
    """The plan for a loaded model on its own device. On CPU the batch is also capped at
    ``CPU_BATCH`` (throughput there stops growing with the batch; memory is rarely the limit)."""
    device = device_of(model)
    cap = max_batch if device.type == "cuda" else min(max_batch or CPU_BATCH, CPU_BATCH)
    return plan_batch(ModelShape.of(model), free_memory(device), prompt_tokens, max_new_tokens, max_batch=cap)


def auto_batch_size(model: LanguageModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """``CPU_BATCH`` on CPU; on a GPU, the planned batch (``planned_batch_size``)."""
    if device_of(model).type != "cuda":
        return CPU_BATCH
    return planned_batch_size(model, prompt_tokens, max_new_tokens).batch


def weight_bytes(model: LanguageModel) -> int:
    """Bytes of the model's parameters (what loading it takes, before any activation)."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))
