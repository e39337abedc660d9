"""The optimisation loop of bias training: AdamW on b, dual ascent on λ, checkpoints (PROTOCOL §5).

See ``moia.training.train`` for the objective and the choice of the returned iterate. This module runs
it: step ``s`` (0-based) trains on batch ``s`` of the epoch plan, the calibration runs before the
first step, after every ``eval_every``-th and after the last, and a checkpoint (``moia.training.checkpoint``)
is written after every ``checkpoint_every``-th step and after the last, once that step's
calibration is recorded. A resumed run therefore repeats exactly what an uninterrupted one does.
"""

import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.interventions import AdditiveVector
from ..core.model import LanguageModel, d_model, model_name, n_layers
from ..directions.bias import BiasVector
from ..directions.concepts import ConceptVectors
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Example, TrialTokens, make_batch
from .loss import target_losses
from .objective import Objective


@dataclass
class FitResult:
    """The returned iterate, the last one, and how the run went."""

    bias: Tensor
    final: Tensor
    best: dict[str, Any] | None
    feasible: bool | None  # None: no calibration (or unconstrained)
    multiplier: float
    history: list[dict[str, Any]]
    steps: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    candidate_biases: list[Tensor] = field(default_factory=list)


def _key(record: dict[str, Any]) -> tuple:
    """Order of iterates: feasible first; among feasible, detection, introspection, later step;
    among infeasible, lower FPR first."""
    n = max(record["n_injected"], 1)
    return (
        record["feasible"],
        0.0 if record["feasible"] else -record["fpr"],
        record["detected"] / n,
        record["identified"] / n,
        record["step"],
    )


class _Run:
    """Mutable state of one run; ``state()`` / ``restore()`` map it to a checkpoint."""

    def __init__(self, model: LanguageModel, cfg: TrainConfig, run_config: dict[str, Any]) -> None:
        param = next(model.parameters())
        self.bias = torch.nn.Parameter(torch.zeros(d_model(model), device=param.device))
        self.opt = torch.optim.AdamW([self.bias], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.multiplier, self.step = 0.0, 0
        self.best: dict[str, Any] | None = None
        self.best_bias: Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.config = run_config
        self.candidates: list[dict[str, Any]] = []  # D₀ mode: the iterate at each calibration
        self.candidate_biases: list[Tensor] = []
        self.fp_units: list[int] = []  # D₀ loss units whose sampled reply was a false positive

    def state(self) -> TrainState:
        return TrainState(
            self.step,
            self.bias.detach().clone(),
            self.opt.state_dict(),
            self.multiplier,
            self.config,
            self.best,
            self.best_bias,
            self.history,
            self.candidates,
            [c.clone() for c in self.candidate_biases],
            list(self.fp_units),
        )

    def restore(self, state: TrainState, path: Any) -> None:
        if state.config != self.config:
            diff = sorted(
                k for k in set(state.config) | set(self.config) if state.config.get(k) != self.config.get(k)
            )
            raise ValueError(
                f"checkpoint {path} was written with different settings ({', '.join(diff)}); "
                "use the same settings to resume, or start afresh without resume"
            )
        with torch.no_grad():
            self.bias.copy_(state.bias.to(self.bias.device))
        self.opt.load_state_dict(state.optimizer)
        self.step, self.multiplier = state.step, state.multiplier
        self.best, self.history = state.best, state.history
        self.best_bias = None if state.best_bias is None else state.best_bias.to(self.bias.device)
        self.candidates, self.fp_units = state.candidates, state.fp_units
        self.candidate_biases = [c.to(self.bias.device) for c in state.candidate_biases]


def fit(
    model: LanguageModel,
    plan: Callable[[int], list[Example]],
    tokens: TrialTokens,
    vectors: ConceptVectors,
    cfg: TrainConfig,
    layer: int,
    calibrator: Callable[[Tensor], dict[str, Any]] | None,
    checkpoint: Any = None,
    resume: bool = False,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    objective: Objective | None = None,
) -> FitResult:
    """Run the loop; ``plan(epoch)`` gives that epoch's examples in order.

    ``objective`` (the certified mode, PROTOCOL §5) replaces [MOIA]'s control cross-entropy by the
    decision-focused surrogate, adds the unlikelihood rows it samples every K steps, aims λ at
    ``objective.target`` (ε′) and keeps every calibrated iterate as a candidate.
    """
    run = _Run(model, cfg, run_config if run_config is not None else cfg.to_json())
    path = pathlib.Path(checkpoint) if checkpoint is not None else None
    last_saved: int | None = None
    if resume and path is not None and path.exists():
        run.restore(load_checkpoint(path, model), path)
        last_saved = run.step
    epochs: dict[int, list[Example]] = {}

    def batch_for(step: int) -> list[Example]:
        per_epoch = math.ceil(len(epochs.setdefault(0, plan(0))) / cfg.batch_size)
        epoch, index = divmod(step, per_epoch)
        examples = epochs.setdefault(epoch, plan(epoch))
        return examples[index * cfg.batch_size : (index + 1) * cfg.batch_size]

    total = cfg.steps or math.ceil(len(epochs.setdefault(0, plan(0))) / cfg.batch_size)
    total = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    constrained = cfg.epsilon is not None and calibrator is not None

    target = cfg.epsilon if objective is None else objective.target

    def calibrate() -> None:
        at_event = getattr(calibrator, "at_event", None)
        if at_event is not None:  # a fresh calibration batch per event, the same after a resume
            at_event(sum(r["type"] == "calibration" for r in run.history))
        counts = calibrator(run.bias.detach())  # type: ignore[misc]
        fpr = counts["false_positives"] / max(counts["n_controls"], 1)
        feasible = cfg.epsilon is None or fpr <= cfg.epsilon
        record = {"type": "calibration", "step": run.step, **counts, "fpr": fpr, "feasible": feasible}
        record["multiplier"] = run.multiplier
        if run.best is None or _key(record) >= _key(run.best):
            run.best, run.best_bias = record, run.bias.detach().clone()
        if constrained:
            run.multiplier = max(0.0, run.multiplier + cfg.dual_lr * (fpr - target))  # type: ignore[operator]
        record["multiplier_after"] = run.multiplier
        run.history.append(record)
        if objective is not None:
            run.candidates.append({k: record[k] for k in ("step", "fpr", "n_controls", "false_positives")})
            run.candidate_biases.append(run.bias.detach().clone())

    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    bar = tqdm(total=total, initial=run.step, desc="train-bias", disable=not progress)
    try:
        if run.step == 0 and calibrator is not None and not run.history:
            calibrate()
        while run.step < total:
            examples = batch_for(run.step)
            if objective is not None:
                if objective.sampler is not None and run.step % cfg.unlikelihood_every == 0:
                    found = objective.sampler(run.bias.detach(), run.step)
                    run.fp_units = [*run.fp_units, *found][-64:]
                examples = examples + objective.unlikely_rows(run.fp_units, run.step)
            batch = make_batch(examples, tokens, vectors)
            bias = AdditiveVector(run.bias, layer, site=cfg.site)
            if objective is None:
                sums, counts = target_losses(model, batch, bias, cfg.loss_path)
                n_tokens = counts.sum()
                injected = sums[batch.injected.to(sums.device)].sum() / n_tokens
                control = sums[~batch.injected.to(sums.device)].sum() / n_tokens
            else:
                injected, control = objective.losses(model, batch, bias, cfg)
            loss = injected + (cfg.control_weight + run.multiplier) * control
            if not torch.isfinite(loss):
                raise FloatingPointError(_nan_message(loss, run.step + 1, cfg.lr, path, last_saved))
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            if not torch.isfinite(run.bias).all():
                raise FloatingPointError(
                    _nan_message(run.bias.sum(), run.step + 1, cfg.lr, path, last_saved, "b")
                )
            run.step += 1
            run.history.append(
                {
                    "type": "step",
                    "step": run.step,
                    "loss": loss.item(),
                    "injected_loss": injected.item(),
                    "control_loss": control.item(),
                    "multiplier": run.multiplier,
                }
            )
            last = run.step == total
            if calibrator is not None and (last or (cfg.eval_every and run.step % cfg.eval_every == 0)):
                calibrate()
            if path is not None and (last or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0)):
                save_checkpoint(path, run.state(), model)
                last_saved = run.step
            fprs = [r["fpr"] for r in run.history if r["type"] == "calibration"]
            shown = {"fpr": f"{fprs[-1]:.2f}"} if fprs else {}  # the latest calibration FPR
            bar.set_postfix(loss=f"{loss.item():.3f}", lam=f"{run.multiplier:.2f}", **shown)
            bar.update(1)
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    final = run.bias.detach().clone()
    if not constrained or run.best_bias is None or run.best is None:  # the last iterate, as [MOIA]
        latest = [r for r in run.history if r["type"] == "calibration" and r["step"] == run.step]
        return FitResult(
            final,
            final,
            latest[-1] if latest else None,
            None,
            run.multiplier,
            run.history,
            run.step,
            run.candidates,
            run.candidate_biases,
        )
    return FitResult(
        run.best_bias,
        final,
        run.best,
        run.best["feasible"],
        run.multiplier,
        run.history,
        run.step,
        run.candidates,
        run.candidate_biases,
    )


def _nan_message(
    value: Tensor, step: int, lr: float, path: Any, last_saved: int | None, what: str = "loss"
) -> str:
    where = (
        f"the last good checkpoint is {path} (step {last_saved}); resume from it with a smaller lr"
        if path is not None and last_saved is not None
        else "no checkpoint had been written yet"
    )
    return f"non-finite {what} ({value.item()}) at step {step} with lr={lr}: training stopped; {where}"


def bias_file(
    model: LanguageModel,
    site: str,
    bias: Tensor,
    bias_layer: int,
    band: list[int],
    run_config: dict[str, Any],
    result: "FitResult",
    verification: dict[str, Any],
) -> BiasVector:
    """The trained bias as the file moia writes: the vector, where it acts, the run's settings, the
    verification and the loss history (both trainers, ``train`` and ``constrained``, end here)."""
    meta = {
        **run_config,
        "bias_layer": bias_layer,
        "injection_layer_indices": band,
        "steps_run": result.steps,
    }
    return BiasVector(
        vector=bias.detach().float().cpu(),
        layer=bias_layer,
        site=site,
        model_name=model_name(model),
        n_layers=n_layers(model),
        config=meta,
        verification=verification,
        history=result.history,
    )
