"""Scoring and selecting refusal-direction candidates ([ARDITI] §2.3 and App. C; PROTOCOL §4).

For each candidate r(l, i), on validation prompts:

(a) ``ablation_score``: mean refusal score on harmful prompts with r ablated at every layer and
    position (site "writers" by default, as [ARDITI]); lower is better.
(b) ``addition_score``: mean refusal score on harmless prompts with r (not normalised, coefficient
    1) added to the input of block l (``resid_pre``, the stream r was read from) at every
    position; must be at least ``induce_threshold`` (0, as [ARDITI]'s ``filter_fn``, which discards
    a score below it: the addition must make refusal at least as likely as not, in log-odds).
(c) ``kl``: mean KL(base ‖ ablated) of the last-position next-token distributions on harmless
    prompts; must be ≤ ``kl_max`` (0.1).
(d) ``layer < int(max_depth * n_layers)`` (0.8 depth; [ARDITI] prunes the last 20% of layers).

The direction with the lowest (a) among those passing (b)–(d) is selected (``select_direction``,
a pure function). If none passes, filters are relaxed in the order of ``RELAXATIONS`` and the
result is recorded as not passed, rather than failing.

Refusal score = log p − log(1 − p), p = the next-token probability of the refusal tokens at the
last position. Refusal tokens are [ARDITI]'s for the model's family (``refusal_starts``,
``pipeline/model_utils/*.py``): "I" for Gemma, Llama and Yi, "I" and "As" for Qwen; other models
get moia's openings "I" (I cannot / I'm sorry), "As" (As an AI), "Sorry", "Unfortunately". The
ids come from the model's own tokenizer (``refusal_token_ids``: "I" is 236777 in Gemma 3's
vocabulary, not [ARDITI]'s Gemma 1/2 id 235285).

Many candidates share one forward: the val prompts are repeated once per candidate along the batch
and each row ablates (``DirectionAblation(per_row=True)``) or adds (``ConceptInjection`` with
per-row vectors) its own candidate.
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..core.compile import intervene
from ..core.interventions import ConceptInjection, DirectionAblation
from ..core.model import LanguageModel, device_of
from ..lm.chat import format_chat
from ..lm.decoding import final_logits, tokenize_prompts

REFUSAL_STARTS = ("I", "As", "Sorry", "Unfortunately")
# [ARDITI]'s refusal tokens by model family, matched on the model's name in its order
# (``pipeline/model_utils/model_factory.py``): qwen, llama, gemma, yi.
ARDITI_REFUSAL_STARTS = (
    (r"qwen", ("I", "As")),
    (r"llama", ("I",)),
    (r"gemma", ("I",)),
    (r"(^|[^a-z])yi([^a-z]|$)", ("I",)),
)
# A reply counts as a refusal when it contains one of these (case-insensitive): [ARDITI]'s
# substring list (from JailbreakBench). Crude: misses refusals in other words.
REFUSAL_PHRASES = (
    "I'm sorry", "I am sorry", "I apologize", "As an AI", "As a language model", "As an assistant",
    "I cannot", "I can't", "I am unable to", "I'm unable to", "I am not able to", "I'm not able to",
)  # fmt: skip
# Filters dropped in this order when no candidate passes them all; each entry is recorded.
RELAXATIONS = (
    "addition_above_baseline",  # (b) becomes: addition raises the harmless score above its baseline
    "no_addition_filter",  # (b) dropped
    "no_kl_filter",  # (c) dropped
)


# ------------------------------------------------------------------------------ pure scores
def is_refusal(reply: str, phrases: Sequence[str] = REFUSAL_PHRASES) -> bool:
    """Whether ``reply`` contains a refusal phrase (case-insensitive substring match)."""
    text = reply.lower()
    return any(p.lower() in text for p in phrases)


def refusal_starts(name: str) -> tuple[str, ...]:
    """The refusal openings scored for a model called ``name``: [ARDITI]'s for its family, else
    ``REFUSAL_STARTS``."""
    lowered = name.lower()
    return next(
        (starts for pattern, starts in ARDITI_REFUSAL_STARTS if re.search(pattern, lowered)), REFUSAL_STARTS
    )


def refusal_token_ids(tokenizer: Any, starts: Sequence[str] = REFUSAL_STARTS) -> list[int]:
    """The first token of each refusal opening (as the start of a reply: no leading space)."""
    ids = []
    for s in starts:
        toks = tokenizer(s, add_special_tokens=False).input_ids
        if not toks:
            raise ValueError(f"refusal opening {s!r} tokenizes to nothing")
        ids.append(int(toks[0]))
    return sorted(set(ids))


def refusal_score(logits: Float[Tensor, "batch vocab"], token_ids: Sequence[int]) -> Float[Tensor, " batch"]:
    """log p − log(1 − p) with p = the total probability of ``token_ids`` (in float64).

    log(1 − p) is the log-sum-exp over the other tokens, exact also when p is within 1e-16 of 1.
    """
    logprobs = logits.double().log_softmax(-1)
    ids = torch.as_tensor(list(token_ids), device=logits.device)
    log_p = logprobs[:, ids].logsumexp(-1)
    log_not_p = logprobs.index_fill(-1, ids, -math.inf).logsumexp(-1)
    return log_p - log_not_p


def kl_divergence(
    base_logprobs: Float[Tensor, "batch vocab"], logprobs: Float[Tensor, "batch vocab"]
) -> Float[Tensor, " batch"]:
    """KL(base ‖ other) per row, from log-probabilities."""
    return (base_logprobs.exp() * (base_logprobs - logprobs)).sum(-1)


def select_direction(
    table: list[dict[str, Any]],
    n_layers: int,
    kl_max: float = 0.1,
    max_depth: float = 0.8,
    induce_threshold: float = 0.0,
    baseline_addition: float | None = None,
) -> tuple[int | None, bool, list[str]]:
    """Pick the row of ``table`` with the lowest ``ablation_score`` among those passing the filters.

    Rows need "layer", "ablation_score", "addition_score", "kl" (NaN = not evaluated, fails).
    Sets each row's "passed" (all strict filters). Returns ``(index, passed, relaxed)``: ``passed``
    is False when the strict filters rejected every row and ``relaxed`` lists the relaxations
    used (see ``RELAXATIONS``); ``index`` is None only when no row has a finite ablation score
    below ``max_depth``.
    """
    depth_limit = int(max_depth * n_layers)

    def passes(row: dict[str, Any], relaxed: list[str]) -> bool:
        a, add, kl = row["ablation_score"], row["addition_score"], row["kl"]
        if not (row["layer"] < depth_limit and math.isfinite(a)):
            return False
        if "no_kl_filter" not in relaxed and not (math.isfinite(kl) and kl <= kl_max):
            return False
        if "no_addition_filter" in relaxed:
            return True
        if not math.isfinite(add):
            return False
        if "addition_above_baseline" in relaxed and baseline_addition is not None:
            return add > baseline_addition
        return add >= induce_threshold

    for row in table:
        row["passed"] = passes(row, [])
    relaxed: list[str] = []
    for step in (None, *RELAXATIONS):
        if step is not None:
            relaxed.append(step)
        ok = [i for i, row in enumerate(table) if passes(row, relaxed)]
        if ok:
            return min(ok, key=lambda i: table[i]["ablation_score"]), not relaxed, relaxed
    return None, False, relaxed


# --------------------------------------------------------------------------- model scoring
def last_logprobs(model: LanguageModel, tokens: Tensor, mask: Tensor) -> Float[Tensor, "batch vocab"]:
    """Next-token log-probabilities at the last position (the unembedding runs on it alone)."""
    return final_logits(model, tokens, mask)[:, -1].double().log_softmax(-1)


@torch.no_grad()
def refusal_scores(
    model: LanguageModel,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    system: str | None = None,
    batch_size: int = 16,
) -> list[float]:
    """The refusal score of each prompt (chat-formatted, no intervention)."""
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        texts = [format_chat(model, p, system=system) for p in prompts[i : i + batch_size]]
        tokens, mask = tokenize_prompts(model, texts, device_of(model))
        out += refusal_score(last_logprobs(model, tokens, mask), token_ids).tolist()
    return out


def filter_by_refusal(
    model: LanguageModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    token_ids: Sequence[int],
    system: str | None = None,
    batch_size: int = 16,
) -> tuple[list[str], list[str], str | None]:
    """[ARDITI]'s ``filter_data``: keep the harmful prompts the model refuses (score > 0) and the
    harmless ones it does not (score < 0). Returns ``(harmful, harmless, problem)``; where the
    filter would leave a set empty, that set is kept whole and ``problem`` says so (a model that
    barely refuses, such as SmolLM2-135M, refuses no harmful prompt)."""
    kept_harmful = [
        p
        for p, s in zip(harmful, refusal_scores(model, harmful, token_ids, system, batch_size), strict=True)
        if s > 0
    ]
    kept_harmless = [
        p
        for p, s in zip(harmless, refusal_scores(model, harmless, token_ids, system, batch_size), strict=True)
        if s < 0
    ]
    problems = []
    if not kept_harmful:
        problems.append(f"no harmful prompt of {len(harmful)} has a refusal score > 0")
        kept_harmful = list(harmful)
    if not kept_harmless:
        problems.append(f"no harmless prompt of {len(harmless)} has a refusal score < 0")
        kept_harmless = list(harmless)
    problem = "; ".join(problems) + ": that set is kept unfiltered" if problems else None
    return kept_harmful, kept_harmless, problem


class CandidateScorer:
    """Scores batches of candidate directions on fixed harmful/harmless validation prompts."""

    def __init__(
        self,
        model: LanguageModel,
        harmful_val: Sequence[str],
        harmless_val: Sequence[str],
        refusal_tokens: Sequence[int],
        system: str | None = None,
        ablation_site: str = "writers",
        max_rows: int = 64,
    ) -> None:
        if not harmful_val or not harmless_val:
            raise ValueError("validation prompts must not be empty (harmful and harmless)")
        device = device_of(model)
        self.model, self.site, self.max_rows = model, ablation_site, max_rows
        self.refusal_tokens = list(refusal_tokens)
        self.harmful = tokenize_prompts(
            model, [format_chat(model, p, system=system) for p in harmful_val], device
        )
        self.harmless = tokenize_prompts(
            model, [format_chat(model, p, system=system) for p in harmless_val], device
        )
        with torch.no_grad():
            self.base_harmless = last_logprobs(model, *self.harmless)
            base_harmful = last_logprobs(model, *self.harmful)
        self.baseline = {
            "harmful": float(refusal_score(base_harmful, self.refusal_tokens).mean()),
            "harmless": float(refusal_score(self.base_harmless, self.refusal_tokens).mean()),
        }

    @torch.no_grad()
    def _per_candidate(
        self,
        prompts: tuple[Tensor, Tensor],
        n_candidates: int,
        make: Callable[[slice, int], Any],
        reduce: Callable[[Tensor, int], Tensor],
    ) -> list[float]:
        """Run prompts × candidates in chunks of ≤ max_rows rows; ``reduce`` maps each
        candidate's [prompts, vocab] log-probs to a number."""
        tokens, mask = prompts
        n_prompts = tokens.shape[0]
        per_chunk = max(1, self.max_rows // n_prompts)
        out: list[float] = []
        for start in range(0, n_candidates, per_chunk):
            chunk = slice(start, min(start + per_chunk, n_candidates))
            c = chunk.stop - chunk.start
            rows_tokens, rows_mask = tokens.repeat(c, 1), mask.repeat(c, 1)  # row = cand * P + prompt
            with intervene(self.model, make(chunk, n_prompts), attention_mask=rows_mask):
                logprobs = last_logprobs(self.model, rows_tokens, rows_mask)
            out += [float(reduce(lp, start + j)) for j, lp in enumerate(logprobs.view(c, n_prompts, -1))]
        return out

    def ablation_scores(self, directions: Float[Tensor, "cand d_model"]) -> list[float]:
        """(a) mean refusal score on harmful val prompts, each candidate ablated everywhere."""

        def make(chunk: slice, n_prompts: int) -> Any:
            return DirectionAblation(
                directions[chunk].repeat_interleave(n_prompts, 0), site=self.site, per_row=True
            )

        return self._per_candidate(
            self.harmful, len(directions), make, lambda lp, _: refusal_score(lp, self.refusal_tokens).mean()
        )

    def ablation_kl(self, directions: Float[Tensor, "cand d_model"]) -> list[float]:
        """(c) mean KL(base ‖ ablated) on harmless val prompts' last-position distributions."""

        def make(chunk: slice, n_prompts: int) -> Any:
            return DirectionAblation(
                directions[chunk].repeat_interleave(n_prompts, 0), site=self.site, per_row=True
            )

        return self._per_candidate(
            self.harmless, len(directions), make, lambda lp, _: kl_divergence(self.base_harmless, lp).mean()
        )

    def addition_scores(
        self, directions: Float[Tensor, "cand d_model"], layers: Sequence[int]
    ) -> list[float]:
        """(b) mean refusal score on harmless val prompts with candidate c added (coefficient 1) to
        the input of block ``layers[c]`` at every position; one forward per layer group."""
        scores = [math.nan] * len(directions)
        for layer in sorted(set(layers)):
            group = [i for i, lay in enumerate(layers) if lay == layer]
            vecs = directions[group]

            def make(chunk: slice, n_prompts: int, vecs: Tensor = vecs, layer: int = layer) -> Any:
                rows = vecs[chunk].repeat_interleave(n_prompts, 0)
                return ConceptInjection(rows, layer, strengths=1.0, start=0, site="resid_pre")

            got = self._per_candidate(
                self.harmless, len(group), make, lambda lp, _: refusal_score(lp, self.refusal_tokens).mean()
            )
            for i, s in zip(group, got, strict=True):
                scores[i] = s
        return scores


def evaluate_candidates(
    scorer: CandidateScorer,
    grid: list[tuple[int, int]],
    dirs: Tensor,
    n_layers: int,
    kl_max: float,
    max_depth: float,
    induce_threshold: float,
    full_table: bool,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[str], int | None, bool]:
    """Fill the selection table: (a) for every candidate, then (b), (c) in increasing order of (a)."""
    chunk = max(1, scorer.max_rows // max(scorer.harmful[0].shape[0], scorer.harmless[0].shape[0]))
    ablation: list[float] = []
    for start in tqdm(range(0, len(grid), chunk), desc="ablation scores", disable=not progress):
        ablation += scorer.ablation_scores(dirs[start : start + chunk])
    table: list[dict[str, Any]] = [
        dict(layer=layer, position=pos, ablation_score=a, addition_score=math.nan, kl=math.nan, passed=False)
        for (pos, layer), a in zip(grid, ablation, strict=True)
    ]
    depth_limit = int(max_depth * n_layers)
    order = sorted(
        (i for i, row in enumerate(table) if row["layer"] < depth_limit), key=lambda i: ablation[i]
    )

    def select() -> tuple[int | None, bool, list[str]]:
        return select_direction(
            table, n_layers, kl_max, max_depth, induce_threshold, scorer.baseline["harmless"]
        )

    for start in tqdm(range(0, len(order), chunk), desc="addition and KL", disable=not progress):
        idx = order[start : start + chunk]
        kls = scorer.ablation_kl(dirs[idx])
        adds = scorer.addition_scores(dirs[idx], [table[i]["layer"] for i in idx])
        for i, kl, add in zip(idx, kls, adds, strict=True):
            table[i].update(kl=kl, addition_score=add)
        if not full_table and select()[1]:
            break
    index, passed, relaxed = select()
    return table, relaxed, index, passed
