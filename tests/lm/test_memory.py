"""The memory planner's arithmetic for given memory figures, and batches that halve on out-of-memory."""

import warnings

import pytest
import torch
from transformers import AutoConfig

from moia.lm.checkpoints import random_model_spec, text_config
from moia.lm.memory import GIB, ModelShape, plan_batch
from moia.trials.prompt import TrialPrompt
from moia.trials.runner import TrialRow, TrialRunner
from tests.fakes import FakeModel


def gemma3_27b() -> ModelShape:
    raw = dict(random_model_spec("google/gemma-3-27b-it")["config"])
    return ModelShape.of_config(
        text_config(AutoConfig.for_model(raw.pop("model_type"), **raw)), torch.bfloat16
    )


def test_gemma3_27b_shape_from_the_shipped_config():
    assert gemma3_27b() == ModelShape(
        n_layers=62,
        d_model=5376,
        d_mlp=21504,
        n_heads=32,
        n_kv_heads=16,
        d_head=128,
        d_vocab=262208,
        dtype_bytes=2,
    )


def test_plan_for_gemma3_27b_on_an_80_gib_card():
    """Written out by hand: 150 prompt + 100 new tokens, 54e9 bytes of weights still to load."""
    kv = 2 * 62 * 16 * 128 * (150 + 100) * 2  # keys and values, every layer, bf16
    act = 150 * (4 * 5376 + 3 * 21504) * 2 + 2 * 32 * 150 * 150 * 4 + 2 * 262208 * 4
    assert (kv, act) == (126_976_000, 33_662_464)
    budget = int((80 * GIB - 54_000_000_000 - GIB) * 0.9)
    plan = plan_batch(gemma3_27b(), 80 * GIB, 150, 100, weight_bytes=54_000_000_000)
    assert (plan.kv_bytes_per_row, plan.activation_bytes_per_row, plan.budget_bytes) == (kv, act, budget)
    assert plan.batch == budget // (kv + act) == 172
    # loaded already (free memory excludes the weights): 26 GiB free gives the same budget's order
    assert plan_batch(gemma3_27b(), 26 * GIB, 150, 100).batch == int((26 * GIB - GIB) * 0.9) // (kv + act)
    assert plan_batch(gemma3_27b(), 80 * GIB, 150, 100, weight_bytes=54_000_000_000, max_batch=40).batch == 40


def test_plan_grows_with_memory_and_shrinks_with_tokens():
    shape = gemma3_27b()
    assert (
        plan_batch(shape, 141 * GIB, 150, 100, 54 * 10**9).batch
        > plan_batch(shape, 80 * GIB, 150, 100, 54 * 10**9).batch
    )
    assert (
        plan_batch(shape, 80 * GIB, 150, 400, 54 * 10**9).batch
        < plan_batch(shape, 80 * GIB, 150, 100, 54 * 10**9).batch
    )


def test_plan_errors_name_the_figures():
    with pytest.raises(ValueError, match=r"not even one trial fits: 40.00 GiB free, 50.29 GiB of weights"):
        plan_batch(gemma3_27b(), 40 * GIB, 150, 100, weight_bytes=54_000_000_000)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        plan_batch(gemma3_27b(), 80 * GIB, 150, 0)


class ShortOfMemory(TrialRunner):
    """Generates 'reply <prompt text>' per row, and runs out of memory above ``fits`` rows."""

    def __init__(self, fits: int) -> None:
        super().__init__(FakeModel(), batch_size=64)
        self.fits, self.calls = fits, []

    def _generate(self, rows, *interventions):
        self.calls.append(len(rows))
        if len(rows) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [f"reply {r.prompt.text}" for r in rows]


def _rows(n):
    return [TrialRow(TrialPrompt(f"p{i}", 0, 1, 1, "moia", "", False, False)) for i in range(n)]


def test_out_of_memory_batch_halves_without_losing_trials():
    runner = ShortOfMemory(fits=3)
    with pytest.warns(RuntimeWarning) as caught:
        replies = runner.generate(_rows(10))
    assert [str(w.message) for w in caught] == [
        "out of memory at 10 trials per batch; retrying as 5 + 5",
        "out of memory at 5 trials per batch; retrying as 3 + 2",
        "out of memory at 5 trials per batch; retrying as 3 + 2",
    ]
    assert replies == [f"reply p{i}" for i in range(10)]
    assert runner.calls == [10, 5, 3, 2, 5, 3, 2]
    assert runner.rows_per_call == 3
    runner.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later batches are cut to the size that fitted: no more OOM
        assert runner.generate(_rows(7)) == [f"reply p{i}" for i in range(7)]
    assert runner.calls == [3, 3, 1]


def test_out_of_memory_at_one_row_is_raised():
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        ShortOfMemory(fits=0).generate(_rows(2))
