"""``moia train-bias``: arguments, defaults, concept split and the summary table (PROTOCOL §5)."""

import pytest
import torch

from moia.training import TrainConfig


def test_cli_arguments(capsys):
    from moia.cli import build_parser
    from moia.cli.train import config_from_args, split_from_args

    parser = build_parser()
    argv = ["train-bias", "--out", "b.safetensors", "--epsilon", "none", "--layer", "0.5", "--steps", "3"]
    args = parser.parse_args(
        [*argv, "--n-train", "40", "--n-heldout", "15", "--injection-layers", "10", "0.6"]
    )
    cfg = config_from_args(args)
    assert (cfg.epsilon, cfg.layer, cfg.steps, cfg.injection_layers) == (None, 0.5, 3, (10, 0.6))
    assert (cfg.lr, cfg.batch_size, cfg.site, cfg.seed, cfg.control_prob) == (
        1e-3,
        8,
        "mlp_pre_norm",
        42,
        0.5,
    )
    train, held = split_from_args(args)
    assert (len(train), len(held)) == (40, 15) and set(train).isdisjoint(held)
    default = config_from_args(parser.parse_args(["train-bias", "--out", "b"]))
    assert default == TrainConfig()  # the CLI's defaults are the library's ([MOIA]'s)
    wide = parser.parse_args(["train-bias", "--out", "b", "--calibration-trials", *map(str, range(1, 31))])
    assert config_from_args(wide).calibration_trials == tuple(range(1, 31))
    with pytest.raises(SystemExit):
        parser.parse_args(["train-bias", "--out", "b", "--epsilon", "tiny"])
    assert "argument --epsilon: 'tiny' is neither a number nor 'none'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty concept split: 500 concepts with n_heldout=500"):
        split_from_args(parser.parse_args(["train-bias", "--out", "b", "--n-heldout", "500"]))
    with pytest.raises(ValueError, match="--n-train must be >= 1"):
        split_from_args(parser.parse_args(["train-bias", "--out", "b", "--n-train", "0"]))


def test_cli_summary_table():
    from moia.cli.train import summary
    from moia.directions.bias import BiasVector

    def r(k, n):
        return {"k": k, "n": n, "rate": k / n, "ci95": [0.0, 0.5]}

    arm = {
        "concept": {"detection": r(1, 10), "introspection": r(0, 10)},
        "random": {"detection": r(0, 10)},
        "fpr": r(0, 10),
    }
    bias = BiasVector(torch.ones(4), 1, "mlp_pre_norm", "tiny", 2, verification={
        "calibration": {"step": 4, "false_positives": 0, "n_controls": 10, "detected": 2, "n_injected": 8},
        "feasible": True,
        "held_out": {"held_out_trials": [11, 110], "n_controls": 100, "false_positives": 0,
                     "clopper_pearson_upper_95": 0.03, "replies_naming_concepts": 0},
        "max_abs_cos_train_vectors": {"max_abs_cos": 0.12, "n_vectors": 40},
        "evaluation": {"before": arm, "after": arm},
    })  # fmt: skip
    text = summary(bias)
    assert "held-out controls (trials 11-110): FPR 0/100, Clopper-Pearson 95% upper 3.0%" in text
    assert "detection (concept)" in text and "10.0% [0.0, 50.0] (n=10)" in text
