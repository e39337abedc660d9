"""Compile interventions into one hook per hook point, and install them.

``fwd_hooks(model, *interventions)`` returns a plain TransformerLens ``fwd_hooks`` list; the
context manager ``intervene(model, *interventions)`` installs it through ``model.hooks`` (so
nested contexts remove only their own hooks, even after an exception).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .hooks import PositionState, SiteOp, _orthonormal, hook_name
from .kernels import PreparedIntervention, prepare_intervention, run_prepared


class SiteHook:
    """The single hook at one hook point: one fused op for everything that acts there.

    The op's constant operands (directions, weights, summed biases, scaled injection vectors) are
    stacked once here; a call only shifts the injection starts and runs the op.
    """

    def __init__(self, name: str, ops: list[SiteOp], state: PositionState, track: bool) -> None:
        self.name, self.state, self.track = name, state, track
        self.directions, self.weights = _merge_ablations(name, ops)
        fixed = [op.bias for op in ops if op.bias is not None and not op.bias.requires_grad]
        self.bias = torch.stack(fixed).sum(0) if fixed else None
        # a trainable bias (requires_grad) is read on every call so gradients flow and updates show
        self.live_biases = [
            (op.bias, op.bias_scale) for op in ops if op.bias is not None and op.bias.requires_grad
        ]
        self.injections = [op for op in ops if op.vectors is not None]
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
        )

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor:
        if self.track:
            self.state.on_forward(x.shape[1])
        prepared = self.prepared
        if prepared is not None and prepared.static is None and not self.extra:
            return x  # the position tracker alone: nothing to do to x
        if prepared is None:  # live biases: restack the (small) operands on every call
            bias = self.bias
            for live, scale in self.live_biases:
                term = scale * live.to(x.dtype)
                bias = term if bias is None else bias + term
            prepared = self._prepare(bias)
        starts = self._injection(self.injections[0], x) if self.injections else None
        out = run_prepared(x, prepared, starts)
        for op, extra in zip(self.injections[1:], self.extra, strict=True):
            out = run_prepared(out, extra, self._injection(op, x))
        return out

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


def _merge_ablations(name: str, ops: list[SiteOp]) -> tuple[Tensor | None, Tensor | None]:
    pairs = [
        (op.directions, op.weights) for op in ops if op.directions is not None and op.weights is not None
    ]
    if not pairs:
        return None, None
    if len(pairs) == 1:
        return pairs[0]
    rows = max((r.shape[0] for r, _ in pairs if r.dim() == 3), default=0)
    if rows:  # some are per row: give every set a batch dimension
        pairs = [
            (r if r.dim() == 3 else r.expand(rows, -1, -1), w if w.dim() == 2 else w.expand(rows, -1))
            for r, w in pairs
        ]
    r = torch.cat([r for r, _ in pairs], dim=-2)
    w = torch.cat([w for _, w in pairs], dim=-1)
    gram = r @ r.transpose(-1, -2)
    eye = torch.eye(r.shape[-2], dtype=gram.dtype, device=gram.device)
    if torch.allclose(gram, eye.expand_as(gram), atol=1e-4):
        return r, w
    if bool((w == 1).all()):  # ablate the span: exact whatever the overlap
        return _orthonormal(r).to(r.dtype), w
    raise ValueError(
        f"weighted ablations of non-orthogonal directions meet at {name}: their combination is "
        "ambiguous; orthogonalise the directions or use full weights"
    )


def compile_hooks(
    model: Any, interventions: tuple[Any, ...]
) -> tuple[list[tuple[str, SiteHook]], PositionState]:
    """Turn interventions into ``[(hook_name, SiteHook)]``, one per hook point, and their state."""
    by_name: dict[str, list[SiteOp]] = {}
    for intervention in interventions:
        if not hasattr(intervention, "site_ops"):
            raise TypeError(f"not an intervention: {intervention!r}")
        for name, op in intervention.site_ops(model):
            by_name.setdefault(name, []).append(op)
    state = PositionState()
    track = any(op.vectors is not None for ops in by_name.values() for op in ops)
    embed = hook_name(model, "embed")
    if track:
        by_name.setdefault(embed, [])
    hooks = [(name, SiteHook(name, ops, state, track and name == embed)) for name, ops in by_name.items()]
    return hooks, state


def fwd_hooks(
    model: Any, *interventions: Any, attention_mask: Tensor | None = None
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
    model: Any, *interventions: Any, attention_mask: Tensor | None = None
) -> Iterator[PositionState]:
    """Install the interventions as one hook per hook point for the duration of the block.

    Yields the ``PositionState`` the injection hooks read (``set_attention_mask`` on it changes the
    padding for later forwards). All hooks are removed on exit, also after an exception.
    """
    hooks, state = compile_hooks(model, interventions)
    state.set_attention_mask(attention_mask)
    with model.hooks(fwd_hooks=hooks):
        yield state
