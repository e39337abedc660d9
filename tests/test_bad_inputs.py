"""Bad input, tried as a careful user would: each case is a clear error naming the argument and what
was expected, raised before any model work (one table; ``python -m tests.test_bad_inputs`` prints it)."""

import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import moia
from moia.core.compile import PositionState
from moia.core.linalg import orthonormal_rows
from moia.experiment.sweep import Sweep
from moia.lm.decoding import Sampling
from moia.training.config import TrainConfig


@dataclass(frozen=True)
class Case:
    what: str
    make: Callable[[Any], Any]  # called with the tiny model
    error: type[BaseException]
    message: str


def _fwd(*interventions: Any, mask: torch.Tensor | None = None) -> Callable[[Any], Any]:
    return lambda tiny: moia.fwd_hooks(tiny, *interventions, attention_mask=mask)


V = torch.randn(64, generator=torch.Generator().manual_seed(0))
RIGHT_PADDED = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])

CASES = [
    Case(
        "ablation layers=[True]",
        _fwd(moia.DirectionAblation(V, layers=[True])),
        TypeError,
        "neither a layer index",
    ),
    Case(
        "ablation layers=[18.9]",
        _fwd(moia.DirectionAblation(V, layers=[18.9])),
        ValueError,
        r"depth fraction 18.9",
    ),
    Case(
        "ablation layers out of range",
        _fwd(moia.DirectionAblation(V, layers=[5])),
        ValueError,
        "layer 5 out of range",
    ),
    Case(
        "injection start=2.7",
        lambda t: moia.ConceptInjection(V, 0, start=2.7),
        TypeError,
        "integer positions",
    ),
    Case(
        "injection start=-1",
        lambda t: moia.ConceptInjection(V, 0, start=-1),
        ValueError,
        "start must be >= 0",
    ),
    Case(
        "additive scale=nan",
        lambda t: moia.AdditiveVector(V, 0, scale=math.nan),
        ValueError,
        "scale must be a finite",
    ),
    Case(
        "additive scale=inf",
        lambda t: moia.AdditiveVector(V, 0, scale=math.inf),
        ValueError,
        "scale must be a finite",
    ),
    Case(
        "additive scale=1e39",
        _fwd(moia.AdditiveVector(V, 0, scale=1e39)),
        ValueError,
        "overflows torch.float32",
    ),
    Case(
        "additive NaN vector",
        lambda t: moia.AdditiveVector(V * math.nan, 0),
        ValueError,
        "vector contains NaN",
    ),
    Case(
        "additive vector of another d_model",
        _fwd(moia.AdditiveVector(torch.ones(65), 0)),
        ValueError,
        "d_model=64",
    ),
    Case(
        "zero-norm ablation direction", _fwd(moia.DirectionAblation(torch.zeros(64))), ValueError, "zero-norm"
    ),
    Case(
        "unknown site", lambda t: moia.AdditiveVector(V, 0, site="mlp"), ValueError, "unknown hook site 'mlp'"
    ),
    Case(
        "weighted ablation of collinear directions",
        _fwd(moia.DirectionAblation(torch.stack([V, 2 * V]), weights=0.5)),
        ValueError,
        "weighted ablation of linearly dependent directions",
    ),
    Case(
        "right-padded attention mask",
        _fwd(moia.ConceptInjection(V, 0, start=1), mask=RIGHT_PADDED),
        ValueError,
        r"rows \[0\] end in padding \(right-padded\)",
    ),
    Case(
        "not an intervention",
        lambda t: moia.fwd_hooks(t, "ablate"),
        TypeError,
        r"not an intervention|Intervention",
    ),
    Case("temperature=nan", lambda t: Sampling(math.nan), ValueError, "temperature must be a finite"),
    Case("temperature=inf", lambda t: Sampling(math.inf), ValueError, "temperature must be a finite"),
    Case("temperature=-1", lambda t: Sampling(-1.0), ValueError, "temperature must be >= 0"),
    Case("top_p=0", lambda t: Sampling(1.0, top_p=0.0), ValueError, r"top_p must lie in \(0, 1\]"),
    Case("top_k=0", lambda t: Sampling(1.0, top_k=0), ValueError, "top_k must be an integer >= 1"),
    Case("train control_prob=1.5", lambda t: TrainConfig(control_prob=1.5), ValueError, "control_prob=1.5"),
    Case(
        "train strengths=(-4,)", lambda t: TrainConfig(strengths=(-4.0,)), ValueError, r"strengths=\(-4.0,\)"
    ),
    Case("train lr=inf", lambda t: TrainConfig(lr=math.inf), ValueError, "lr=inf"),
    Case("train batch_size=0", lambda t: TrainConfig(batch_size=0), ValueError, "batch_size=0"),
    Case("train site=typo", lambda t: TrainConfig(site="mlp_pre"), ValueError, "site='mlp_pre'"),
    Case(
        "device=cuda without CUDA", lambda t: moia.load_model(device="cuda:7"), ValueError, "device 'cuda:7'"
    ),
    Case("device=tpu", lambda t: moia.load_model(device="tpu"), ValueError, "device 'tpu'"),
    Case(
        "load_model(empty folder)",
        lambda t: moia.load_model(tempfile.mkdtemp(prefix="moia-empty-")),
        ValueError,
        "the folder has no config.json; expected a Hugging Face model folder",
    ),
    Case(
        "per-row ablation, 3 rows for a batch of 2",
        lambda t: t.run_with_hooks(
            torch.randint(0, 100, (2, 5)),
            fwd_hooks=moia.fwd_hooks(
                t, moia.DirectionAblation(torch.randn(3, 2, 64), layers=[1], site="resid_post", per_row=True)
            ),
        ),
        ValueError,
        "per-row directions have 3 rows but the batch has 2",
    ),
    Case(
        "sweep samples=3, greedy",
        lambda t: Sweep(concepts=["Dust"], layers=[0], strengths=[1.0], trials=[1], samples=3).validate(2),
        ValueError,
        "samples=3 needs temperature > 0: greedy replies to one prompt are identical",
    ),
    Case(
        "backend=jax",
        lambda t: moia.load_model(backend="jax"),
        ValueError,
        "backend must be 'hooked', 'bridge' or 'hf', got 'jax'",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_is_a_clear_error(tiny, case):
    with pytest.raises(case.error, match=case.message):
        case.make(tiny)


def test_collinear_full_ablation_removes_exactly_the_span(tiny):
    """[r, r], [r, 2r] and two DirectionAblation(r) at one hook point all equal removing r alone;
    [r, s, r + s] equals removing span(r, s) (its orthonormal basis, computed independently)."""
    g = torch.Generator().manual_seed(1)
    r, s = torch.randn(64, generator=g), torch.randn(64, generator=g)
    x = torch.randn(2, 5, 64, generator=g)
    name = "blocks.0.hook_resid_post"

    def apply(*interventions: Any) -> torch.Tensor:
        hooks = dict(moia.fwd_hooks(tiny, *interventions))
        return hooks[name](x.clone())

    def remove_span(*vectors: torch.Tensor) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.stack(vectors).T.double())  # independent of moia's Gram-Schmidt
        return (x.double() - (x.double() @ q) @ q.T).float()

    def ablate(d: torch.Tensor) -> moia.DirectionAblation:
        return moia.DirectionAblation(d, layers=[0], site="resid_post")

    expected = remove_span(r)
    for out in (
        apply(ablate(torch.stack([r, r]))),
        apply(ablate(torch.stack([r, 2 * r]))),
        apply(ablate(r), ablate(r)),
        apply(ablate(r), ablate(-3 * r)),
    ):
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        apply(ablate(torch.stack([r, s, r + s]))), remove_span(r, s), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        apply(ablate(r), ablate(torch.stack([s, r - s]))), remove_span(r, s), atol=1e-5, rtol=0
    )
    basis, kept = orthonormal_rows(torch.stack([r, 2 * r, s]))
    assert kept.tolist() == [True, False, True] and float(basis[1].abs().max()) == 0.0


def test_a_trainable_vector_that_turns_nan_is_an_error(tiny):
    b = torch.nn.Parameter(torch.zeros(64))
    tokens = torch.randint(0, 100, (1, 4))
    with moia.intervene(tiny, moia.AdditiveVector(b, 0)):
        tiny(tokens)
        with torch.no_grad():
            b[3] = math.nan
        with pytest.raises(FloatingPointError, match="trainable vector .* holds NaN or inf"):
            tiny(tokens)


def test_masks_of_other_values_are_refused():
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        PositionState().set_attention_mask(torch.tensor([[0, 2]]))


def test_generate_refuses_token_ids_by_name():
    """Outside the test suite's type checker (which would catch it first), token ids passed as
    prompts are a TypeError naming the argument, not a torch error from deep inside."""
    import subprocess
    import sys

    code = "import moia, torch; moia.generate(None, torch.zeros(1, 5, dtype=torch.long))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert (
        "TypeError: prompts must be a string or a sequence of strings or chat message lists, got Tensor"
        in proc.stderr
    ), proc.stderr


if __name__ == "__main__":  # the table for notes: what was tried and what it says
    from tests.conftest import tiny as tiny_fixture

    tiny = tiny_fixture.__wrapped__()  # the same tiny model the tests get
    for case in CASES:
        try:
            case.make(tiny)
            print(f"| {case.what} | NO ERROR |", file=sys.stdout)
        except Exception as e:  # noqa: BLE001 (printing a table of whatever each case raises)
            print(f"| {case.what} | {type(e).__name__}: {str(e).splitlines()[0][:160]} |")
