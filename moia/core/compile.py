"""Compile interventions into one hook per hook point, and install them.

``fwd_hooks(model, *interventions)`` returns a plain TransformerLens ``fwd_hooks`` list;
``intervene(model, *interventions)`` installs it for a ``with`` block at a new context level, as
TransformerLens' ``model.hooks`` does (nested contexts remove only their own hooks, also after an
exception). Compiling stacks each distinct op once, however many hook points share it.

Positions. ``ConceptInjection(start=...)`` counts positions of each *unpadded* prompt. A shared
``PositionState`` turns them into positions of the tensor a hook sees: it adds the row's left
padding (from the attention mask) and subtracts the position of the tensor's first token, which it
tracks from the embedding hook — a forward of several tokens starts a new sequence, a forward of one
token continues the previous one (cached decoding). ``moia.lm.decoding`` drives it explicitly.

Readouts (``SiteOp.readout``: the mood ring) are more coefficients of the same fused op; the hook
hands them, with the offset and the attention mask from ``PositionState``, to each op's ``Reader``.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..kernels import PreparedIntervention, apply_prepared, prepare_intervention, run_prepared, uses_kernel
from .interventions import Intervention, Reader, SiteOp
from .linalg import orthonormal_rows
from .model import LanguageModel
from .sites import hook_name, hook_point


@dataclass
class PositionState:
    """Where the tensor a hook sees sits in each row's unpadded sequence."""

    pad: Tensor | None = None  # (B,) left padding per row, on the model's device
    mask: Tensor | None = None  # (B, width) the attention mask itself (readouts drop its padding)
    prompt_lengths: Tensor | None = None  # (B,) unpadded prompt lengths, for checking starts
    offset: int = 0  # padded position of x[:, 0]
    seen: int = 0  # tokens processed in the current sequence
    manual: bool = False  # True while the decoding engine drives the state

    def set_attention_mask(self, attention_mask: Tensor | None) -> None:
        """Take each row's padding from a [batch, pos] mask (1 = token, 0 = padding).

        Padding comes before a row's tokens (left padding), or after a prefix that every row
        shares (``generate_shared_prefix``: an injection there must start after the padding).
        """
        if attention_mask is None:
            self.pad = self.prompt_lengths = self.mask = None
            return
        mask = attention_mask.to(torch.int64)
        if mask.dim() != 2:
            raise ValueError(f"attention_mask must be [batch, pos], got shape {tuple(mask.shape)}")
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (tokens)")
        if mask.shape[1] and not bool(mask[:, -1].all()):
            rows = (mask[:, -1] == 0).nonzero()[:, 0].tolist()
            raise ValueError(
                f"attention_mask rows {rows} end in padding (right-padded): moia counts positions from "
                "each row's first token, so padding must come before the tokens (left padding)"
            )
        self.prompt_lengths = mask.sum(-1)
        self.pad = mask.shape[-1] - self.prompt_lengths
        self.mask = mask
        self.seen = 0

    def on_forward(self, q_len: int) -> None:
        """Called once per forward (from the embedding hook) with its number of new positions."""
        if not self.manual and q_len > 1:  # several new tokens: a new sequence
            self.seen = 0
        self.offset = self.seen
        self.seen += q_len


class SiteHook:
    """The single hook at one hook point: one fused op for everything that acts there.

    The op's constant operands (directions, weights, summed biases, scaled injection vectors) are
    stacked once here; a call only shifts the injection starts and runs the op.
    """

    directions: Tensor | None
    weights: Tensor | None
    bias: Tensor | None
    live_biases: list[tuple[Tensor, float]]
    injections: list[SiteOp]
    prepared: PreparedIntervention | None
    extra: list[PreparedIntervention]
    readers: list[tuple[Reader, int]]  # (reader, its number of coefficients)
    readout: Tensor | None

    def __init__(
        self, name: str, ops: list[SiteOp], state: PositionState, track: bool, like: "SiteHook | None" = None
    ) -> None:
        self.name, self.state, self.track = name, state, track
        self.run: Any = None  # the op's runner, chosen on the first call (kernel or twin)
        if like is not None:  # the same ops at another hook point: share what was stacked there
            self.directions, self.weights, self.bias = like.directions, like.weights, like.bias
            self.live_biases, self.injections = like.live_biases, like.injections
            self.prepared, self.extra = like.prepared, like.extra
            self.readers, self.readout = like.readers, like.readout
            return
        self.directions, self.weights = merge_ablations(name, ops)
        fixed = [op.bias for op in ops if op.bias is not None and not op.bias.requires_grad]
        self.bias = torch.stack(fixed).sum(0) if fixed else None
        # a trainable bias (requires_grad) is read on every call so gradients flow and updates show
        self.live_biases = [
            (op.bias, op.bias_scale) for op in ops if op.bias is not None and op.bias.requires_grad
        ]
        self.injections = [op for op in ops if op.vectors is not None]
        self.readers = []
        readouts = []
        for op in ops:
            if op.readout is None:
                continue
            if op.reader is None:
                raise ValueError(f"a readout at {name} has no reader to hand its coefficients to")
            self.readers.append((op.reader, op.readout.shape[0]))
            readouts.append(op.readout)
        self.readout = torch.cat(readouts) if readouts else None
        self.prepared = None if self.live_biases else self._prepare(self.bias)
        self.extra = [
            prepare_intervention(vectors=op.vectors, strengths=op.strengths) for op in self.injections[1:]
        ]

    def _prepare(self, bias: Tensor | None) -> PreparedIntervention:
        first = self.injections[0] if self.injections else None
        return prepare_intervention(
            self.directions,
            self.weights,
            bias,
            first.vectors if first else None,
            first.strengths if first else None,
            self.readout,
        )

    def __call__(self, x: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        if self.track:
            self.state.on_forward(x.shape[1])
        prepared = self.prepared
        if prepared is not None and prepared.is_identity and prepared.readout is None and not self.extra:
            return x  # the position tracker alone: nothing to do to x
        rows = (
            self.directions.shape[0] if self.directions is not None and self.directions.dim() == 3 else None
        )
        if rows is not None and rows != x.shape[0]:
            raise ValueError(
                f"DirectionAblation at {self.name}: per-row directions have {rows} rows "
                f"but the batch has {x.shape[0]}"
            )
        if prepared is None:  # live biases: restack the (small) operands on every call
            bias = self.bias
            for live, scale in self.live_biases:
                if not bool(torch.isfinite(live).all()):
                    raise FloatingPointError(f"the trainable vector at {self.name} holds NaN or inf")
                term = scale * live.to(x.dtype)
                bias = term if bias is None else bias + term
            prepared = self._prepare(bias)
        starts = self._injection(self.injections[0], x) if self.injections else None
        coeffs = None
        if self.readout is not None:
            coeffs = torch.empty((*x.shape[:2], self.readout.shape[0]), dtype=torch.float32, device=x.device)
        if self.run is None:
            self.run = run_prepared if uses_kernel(x, prepared) else apply_prepared
        out = self.run(x, prepared, starts, coeffs)
        for op, extra in zip(self.injections[1:], self.extra, strict=True):
            out = run_prepared(out, extra, self._injection(op, x))
        if coeffs is not None:
            self._hand_out(coeffs)
        return out

    def _hand_out(self, coeffs: Tensor) -> None:
        """Each reader gets its own columns, with where they sit in the sequence."""
        column = 0
        for reader, m in self.readers:
            reader.record(coeffs[..., column : column + m], self.state.offset, self.state.mask)
            column += m

    def _injection(self, op: SiteOp, x: Tensor) -> Tensor:
        """The op's starts in x's coordinates, after checking the batch and the prompt lengths."""
        assert op.vectors is not None and op.strengths is not None and op.starts is not None
        batch = x.shape[0]
        n = op.vectors.shape[0]
        if n not in (1, batch):
            raise ValueError(
                f"ConceptInjection at {self.name}: per-row vectors/strengths/start have {n} rows "
                f"but the batch has {batch}"
            )
        state = self.state
        if state.pad is not None and state.pad.shape[0] != batch:
            raise ValueError(f"attention_mask has {state.pad.shape[0]} rows but the batch has {batch}")
        starts = op.starts.expand(batch)
        if state.offset == 0:  # a sequence's first forward: check starts lie inside the prompts
            lengths = state.prompt_lengths if state.prompt_lengths is not None else x.shape[1]
            too_far = starts >= torch.as_tensor(lengths, device=starts.device)
            if bool(too_far.any()):
                raise ValueError(
                    f"start {starts[too_far].tolist()} lies beyond the prompt "
                    f"(lengths {torch.as_tensor(lengths).reshape(-1).tolist()})"
                )
        shift = -state.offset if state.pad is None else state.pad - state.offset
        return starts + shift


def merge_ablations(name: str, ops: list[SiteOp]) -> tuple[Tensor | None, Tensor | None]:
    """One (directions, weights) pair for every ablation at a hook point.

    Sets that are mutually orthogonal are concatenated as they are. Full ablations that overlap
    are re-orthonormalised with rank detection: removing the span of their union is exact whatever
    the overlap (a repeated direction is removed once). Weighted ablations that overlap have no
    single meaning and are an error.
    """
    pairs = [
        (op.directions, op.weights) for op in ops if op.directions is not None and op.weights is not None
    ]
    if not pairs:
        return None, None
    if len(pairs) == 1:
        return pairs[0]
    rows = max((r.shape[0] for r, _ in pairs if r.dim() == 3), default=0)
    if rows:  # some are per row: give every set a batch dimension
        if any(r.dim() == 3 and r.shape[0] != rows for r, _ in pairs):
            raise ValueError(f"per-row ablations at {name} disagree on the batch size")
        pairs = [
            (r if r.dim() == 3 else r.expand(rows, -1, -1), w if w.dim() == 2 else w.expand(rows, -1))
            for r, w in pairs
        ]
    r = torch.cat([r for r, _ in pairs], dim=-2)
    w = torch.cat([w for _, w in pairs], dim=-1)
    gram = (r @ r.transpose(-1, -2)).double()
    eye = torch.eye(r.shape[-2], dtype=gram.dtype, device=gram.device)
    live = (r.norm(dim=-1) > 0).double()  # zero rows (dropped dependents) are orthogonal to all
    if torch.allclose(gram, (eye * live.unsqueeze(-1)).expand_as(gram), atol=1e-4):
        return r, w
    if bool((w == 1).all()):
        basis, _ = orthonormal_rows(r)
        return basis.to(r.dtype), w
    raise ValueError(
        f"weighted ablations of non-orthogonal directions meet at {name}: their combination is "
        "ambiguous; orthogonalise the directions or use full weights"
    )


def compile_hooks(
    model: LanguageModel, interventions: Sequence[Intervention]
) -> tuple[list[tuple[str, SiteHook]], PositionState]:
    """Turn interventions into ``[(hook_name, SiteHook)]``, one per hook point, and their state."""
    by_name: dict[str, list[SiteOp]] = {}
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise TypeError(
                f"not an intervention: {intervention!r} (expected DirectionAblation, AdditiveVector, "
                "ConceptInjection, or an object with site_ops(model))"
            )
        for name, op in intervention.site_ops(model):
            by_name.setdefault(name, []).append(op)
    state = PositionState()
    track = any(op.vectors is not None or op.readout is not None for ops in by_name.values() for op in ops)
    embed = hook_name(model, "embed")
    if track:
        by_name.setdefault(embed, [])
    hooks: list[tuple[str, SiteHook]] = []
    stacked: dict[tuple[int, ...], SiteHook] = {}
    for name, ops in by_name.items():
        key = tuple(id(op) for op in ops)  # e.g. one shared ablation at every writer of every layer
        hook = SiteHook(name, ops, state, track and name == embed, like=stacked.get(key))
        stacked.setdefault(key, hook)
        hooks.append((name, hook))
    return hooks, state


@contextmanager
def installed(model: LanguageModel, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Add ``hooks`` ([(hook name, fn)]) for the block; on exit remove exactly these, also after an
    exception.

    Hook points are looked up once per model (``hook_point``) and the hooks added to them directly,
    at a new context level as TransformerLens' ``hooks`` does -- not through ``model.hooks``, which
    on the bridge rebuilds ``hook_dict`` for every hook (about a second for 60 hooks).
    """
    if not hasattr(model, "context_level"):  # a protocol-only model: its own hooks context
        with model.hooks(fwd_hooks=list(hooks)):
            yield
        return
    points = [(hook_point(model, name), fn) for name, fn in hooks]
    level = int(getattr(model, "context_level")) + 1  # noqa: B009 (not in the protocol)
    model.context_level = level  # type: ignore[attr-defined]
    try:
        for point, fn in points:
            point.add_hook(fn, dir="fwd", level=level)
        yield
    finally:
        for point in {id(p): p for p, _ in points}.values():
            point.remove_hooks(dir="fwd", level=level)
        model.context_level = level - 1  # type: ignore[attr-defined]


def fwd_hooks(
    model: LanguageModel, *interventions: Intervention, attention_mask: Tensor | None = None
) -> list[tuple[str, SiteHook]]:
    """A plain ``fwd_hooks`` list for ``model.run_with_hooks`` / ``model.hooks(...)``.

    ``attention_mask`` ([batch, pos], left padding) tells position-dependent injections how far
    each row is shifted.
    """
    hooks, state = compile_hooks(model, interventions)
    state.set_attention_mask(attention_mask)
    return hooks


@contextmanager
def intervene(
    model: LanguageModel, *interventions: Intervention, attention_mask: Tensor | None = None
) -> Iterator[PositionState]:
    """Install the interventions as one hook per hook point for the duration of the block.

    Yields the ``PositionState`` the injection hooks read (``set_attention_mask`` on it changes the
    padding for later forwards). All hooks are removed on exit, also after an exception.
    """
    hooks, state = compile_hooks(model, interventions)
    state.set_attention_mask(attention_mask)
    with installed(model, hooks):
        yield state
