"""The mood ring: read directions off the residual stream at every token while a model writes.

``MoodRing(vectors, layer)`` is a read-only intervention (PROTOCOL §8). Passed to ``moia.generate``
or ``moia.intervene`` like the others, it records for every row and every token -- prompt and
generated -- the projection of ``hook_resid_post`` at its layer onto each unit vector:

- ``ring.raw[i]``: Tensor[n_tokens_i, k], row i's unpadded tokens in order;
- ``ring.readings[i]``: the same as z-scores against a ``Calibration`` (mean and spread of the
  projections over neutral text);
- ``ring.tokens[i]``: row i's token ids, prompt then generated (set by the decoding engine).

It never changes an activation and costs no extra pass over x: its coefficients x·Eᵀ are computed
by the fused op of its hook point (``moia.kernels``), beside whatever ablation, bias or injection
acts there, from the op's *input* (what the layer wrote, before the interventions at the same hook
point; interventions at earlier layers do show in it). Which position each coefficient belongs to
(left padding, a shared prefix, one-token decode steps) comes from ``PositionState``.

Any direction set works: emotion vectors, a refusal direction, a user's probe -- an object with
``names``, ``layer`` and ``vectors`` [k, d_model], or a tensor with ``layer=`` (and ``names=``).
The ring holds the sequence it saw last: a forward that starts a new sequence (several new tokens
at offset 0) clears it.
"""

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from ..io import load_tensors, model_metadata, save_tensors
from .interventions import SiteOp, finite_tensor
from .layers import resolve_layer
from .model import LanguageModel, d_model, device_of
from .sites import check_site, hook_name

CALIBRATION_KIND = "moodring_calibration"


@runtime_checkable
class DirectionSet(Protocol):
    """What the ring reads: named directions at one layer (``EmotionVectors`` is one)."""

    names: Sequence[str]
    layer: int | float
    vectors: Tensor  # [k, d_model], any norm


@dataclass(frozen=True)
class Calibration:
    """Mean and standard deviation of each direction's projection over neutral text (the zero and
    the unit of a z-score), with how many tokens they come from."""

    mean: Tensor  # [k]
    std: Tensor  # [k]
    n_tokens: int = 0
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(
                f"calibration mean and std must both be [k], got {tuple(self.mean.shape)} and "
                f"{tuple(self.std.shape)}"
            )
        if not bool(torch.isfinite(self.mean).all()) or not bool((self.std > 0).all()):
            raise ValueError(f"calibration std must be > 0 and finite everywhere, got {self.std.tolist()}")

    @classmethod
    def from_raw(cls, raw: Sequence[Tensor], names: Sequence[str] = ()) -> "Calibration":
        """Mean and std (over every token of every sequence) of raw projections [n_i, k]."""
        rows = [r for r in raw if r.shape[0] > 0]
        if not rows:
            raise ValueError("calibration needs at least one token of neutral text")
        flat = torch.cat([r.double() for r in rows])
        if flat.shape[0] < 2:
            raise ValueError("calibration needs at least two tokens (a spread from one is undefined)")
        return cls(flat.mean(0).float(), flat.std(0).float(), int(flat.shape[0]), tuple(names))

    def z(self, raw: Float[Tensor, "n k"]) -> Float[Tensor, "n k"]:
        return (raw - self.mean) / self.std

    def save(
        self, path: str | pathlib.Path, model: LanguageModel, meta: dict[str, Any] | None = None
    ) -> None:
        save_tensors(
            path,
            CALIBRATION_KIND,
            {"mean": self.mean, "std": self.std},
            {**model_metadata(model), "names": list(self.names), "n_tokens": self.n_tokens, **(meta or {})},
        )

    @classmethod
    def load(cls, path: str | pathlib.Path, model: LanguageModel | None = None) -> "Calibration":
        import json

        tensors, meta = load_tensors(path, CALIBRATION_KIND, model)
        return cls(tensors["mean"], tensors["std"], int(meta["n_tokens"]), tuple(json.loads(meta["names"])))


class MoodRing:
    """Record the projection of ``hook_resid_post`` onto unit directions at every token (PROTOCOL §8).

    Args:
        vectors: a direction set (``names``, ``layer``, ``vectors`` [k, d_model]), or a tensor
            [k, d_model] / [d_model] (then ``layer`` is required). Any norm; the ring reads onto
            each direction normalised to unit length (not orthogonalised: each reading is that
            direction's own projection).
        layer: layer index or depth fraction (overrides the set's own layer).
        calibration: a ``Calibration`` or a ``(mean, std)`` pair of [k] tensors; without one,
            ``readings`` is an error until ``ring.calibration`` is set.
        names: one name per direction (default: the set's names, else "0", "1", ...).
        site: the hook site read (default ``resid_post``, the decoder layer's output).
    """

    def __init__(
        self,
        vectors: DirectionSet | Tensor | Any,
        layer: int | float | None = None,
        calibration: Calibration | tuple[Any, Any] | None = None,
        names: Sequence[str] | None = None,
        site: str = "resid_post",
    ) -> None:
        self.site = check_site(site, name="MoodRing site")
        if isinstance(vectors, DirectionSet):
            layer = vectors.layer if layer is None else layer
            names = list(vectors.names) if names is None else names
            vectors = vectors.vectors
        v = finite_tensor(vectors, "vectors").float()
        v = v[None, :] if v.dim() == 1 else v
        if v.dim() != 2 or v.shape[0] == 0:
            raise ValueError(f"vectors must be [k, d_model] with k >= 1 or [d_model], got {tuple(v.shape)}")
        norms = v.norm(dim=-1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError(f"vectors: direction {int((norms[:, 0] == 0).nonzero()[0])} has zero norm")
        self.unit = v / norms  # [k, d_model] on the CPU; cast per model in site_ops
        if layer is None:
            raise ValueError("layer is required when vectors is a tensor (a layer index or depth fraction)")
        resolve_layer(10**9, layer, "MoodRing layer")  # type and form now; range when compiled
        self.layer = layer
        self.names = [str(n) for n in (range(v.shape[0]) if names is None else names)]
        if len(self.names) != v.shape[0]:
            raise ValueError(f"names has {len(self.names)} entries for {v.shape[0]} directions")
        self.calibration = calibration  # type: ignore[assignment]
        self.clear()

    # ------------------------------------------------------------------ configuration
    @property
    def calibration(self) -> Calibration | None:
        return self._calibration

    @calibration.setter
    def calibration(self, value: Calibration | tuple[Any, Any] | None) -> None:
        if value is not None and not isinstance(value, Calibration):
            if not (isinstance(value, tuple) and len(value) == 2):
                raise TypeError(f"calibration must be a Calibration or a (mean, std) pair, got {value!r}")
            mean, std = (finite_tensor(t, "calibration").float().reshape(-1) for t in value)
            value = Calibration(mean, std, names=tuple(self.names))
        if value is not None and value.mean.shape[0] != self.k:
            raise ValueError(f"calibration has {value.mean.shape[0]} entries for {self.k} directions")
        self._calibration = value

    @property
    def k(self) -> int:
        return int(self.unit.shape[0])

    def site_ops(self, model: LanguageModel) -> list[tuple[str, SiteOp]]:
        if self.unit.shape[-1] != d_model(model):
            raise ValueError(
                f"vectors have d_model={self.unit.shape[-1]}, but the model has d_model={d_model(model)}"
            )
        readout = self.unit.to(device_of(model), model.cfg.dtype).contiguous()
        return [(hook_name(model, self.site, self.layer), SiteOp(readout=readout, reader=self))]

    # ------------------------------------------------------------------ recording
    def clear(self) -> None:
        """Forget what was recorded."""
        self._chunks: list[tuple[int, Tensor, Tensor | None]] = []
        self._raw: list[Tensor] | None = None
        self._tokens: list[list[int]] | None = None
        self._prompt_lengths: list[int] | None = None

    def record(self, coeffs: Float[Tensor, "batch pos k"], offset: int, mask: Tensor | None) -> None:
        """Called by the hook at every forward (``moia.core.interventions.Reader``)."""
        if offset == 0:
            self.clear()
        elif not self._chunks:
            raise ValueError(
                "MoodRing: a forward continued a sequence whose start the ring did not see; install the "
                "ring before the sequence's first forward"
            )
        self._chunks.append((offset, coeffs, mask))  # kept on the device: no sync per decode step
        self._raw = None

    def finish(self, prompts: list[list[int]], generated: list[list[int]]) -> None:
        """Attach each row's token ids (``moia.core.interventions.Recorder``, called by the decoding
        engine) and drop what was fed after a row stopped."""
        raw = self._assemble()
        if len(prompts) != len(raw) or len(generated) != len(raw):
            raise ValueError(
                f"the ring recorded {len(raw)} rows, but finish got {len(prompts)} prompts and "
                f"{len(generated)} generations"
            )
        tokens = [list(p) + list(g) for p, g in zip(prompts, generated, strict=True)]
        for i, (r, t) in enumerate(zip(raw, tokens, strict=True)):
            if r.shape[0] < len(t):
                raise ValueError(
                    f"row {i}: the ring saw {r.shape[0]} positions but the row has {len(t)} tokens"
                )
        self._raw = [r[: len(t)] for r, t in zip(raw, tokens, strict=True)]
        self._tokens = tokens
        self._prompt_lengths = [len(p) for p in prompts]

    def _assemble(self) -> list[Tensor]:
        """Each row's coefficients at its real (unpadded) positions, in order, on the CPU."""
        if self._raw is not None:
            return self._raw
        if not self._chunks:
            return []
        batch = max(c.shape[0] for _, c, _ in self._chunks)
        parts, real = [], []
        for offset, c, mask in self._chunks:
            if c.shape[0] != batch:
                if c.shape[0] != 1:
                    raise ValueError(f"the ring saw batches of {c.shape[0]} and {batch} rows in one sequence")
                c = c.expand(batch, -1, -1)  # a shared prefix, run once at batch 1
            keep = torch.ones(c.shape[:2], dtype=torch.bool)
            if mask is not None and offset < mask.shape[1]:
                width = min(c.shape[1], mask.shape[1] - offset)
                keep[:, :width] = mask[:, offset : offset + width].bool().cpu()
            parts.append(c.float().cpu())
            real.append(keep)
        full, keep_all = torch.cat(parts, dim=1), torch.cat(real, dim=1)
        self._raw = [full[i][keep_all[i]] for i in range(batch)]
        return self._raw

    # ------------------------------------------------------------------ results
    @property
    def raw(self) -> list[Tensor]:
        """Per row: Tensor[n_tokens, k], the projection onto each unit direction, in token order."""
        return self._assemble()

    @property
    def readings(self) -> list[Tensor]:
        """Per row: Tensor[n_tokens, k], the projections as z-scores against the calibration."""
        if self._calibration is None:
            raise ValueError(
                "MoodRing has no calibration: pass calibration= or set ring.calibration "
                "(moia.analysis.calibrate reads one from neutral text)"
            )
        return [self._calibration.z(r) for r in self.raw]

    @property
    def tokens(self) -> list[list[int]]:
        """Per row: the token ids, prompt then generated (set by ``moia.generate``, or ``finish``)."""
        if self._tokens is None:
            raise ValueError(
                "MoodRing has no token ids: they are set by moia.generate / generate_tokens; with your own "
                "forwards call ring.finish(prompt_ids, generated_ids)"
            )
        return self._tokens

    @property
    def prompt_lengths(self) -> list[int]:
        """Per row: how many of ``tokens`` are the prompt (the rest were generated)."""
        if self._prompt_lengths is None:
            self.tokens  # noqa: B018 (raises the explanation)
        assert self._prompt_lengths is not None
        return self._prompt_lengths

    def __repr__(self) -> str:
        return f"MoodRing({self.k} directions {self.names}, layer={self.layer}, site={self.site!r})"
