"""Layer indices and depth fractions, the same everywhere (PROTOCOL §2, "Layers")."""

import pytest
import torch

import moia
from moia.core.layers import layer_list, resolve_layer, resolve_layers


def test_depth_fractions_truncate_as_moia_does():
    assert resolve_layer(62, 0.6) == 37 and resolve_layer(62, 0.4) == 24  # not 25: int(24.8)
    assert resolve_layer(30, 0.6) == 18 and resolve_layer(18, 0.6) == 10
    # a depth written as l / n gives layer l back, whatever float rounding does to l / n * n
    assert all(resolve_layer(n, layer / n) == layer for n in range(1, 130) for layer in range(n))
    assert resolve_layers(30, [0.6, 18, 0.61]) == [18]
    assert layer_list(30, [20, 0.1]) == [20, 3]


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        ([True], TypeError, "True is neither a layer index"),
        ([18.9], ValueError, r"depth fraction 18.9 must lie in \[0, 1\)"),
        ([1.0], ValueError, r"depth fraction 1.0 must lie in \[0, 1\)"),
        (["3"], TypeError, "'3' is neither a layer index"),
        ([1, 0.9], ValueError, r"layer\(s\) \[1\] given more than once"),  # 0.9 of 2 layers is layer 1
    ],
)
def test_bad_layers(tiny, layers, error, message):
    with pytest.raises(error, match=message):
        moia.fwd_hooks(tiny, moia.DirectionAblation(torch.randn(64), layers=layers, site="resid_post"))


def test_ablation_layers_as_depth_fractions_hook_the_right_layer(tiny):
    """``layers=[0.6]`` is depth 0.6 (layer 1 of 2), not ``int(0.6)`` = layer 0."""
    hooks = moia.fwd_hooks(tiny, moia.DirectionAblation(torch.randn(64), layers=[0.6], site="resid_post"))
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_post"]
    inj = moia.fwd_hooks(tiny, moia.ConceptInjection(torch.randn(64), 0.5, start=1))
    assert "blocks.1.hook_resid_post" in [name for name, _ in inj]


@pytest.mark.parametrize("start", [2.7, 2.0, [1, 2.5], True])
def test_injection_start_must_be_integer_positions(start):
    with pytest.raises(TypeError, match="start must be integer positions"):
        moia.ConceptInjection(torch.randn(64), 0, start=start)
