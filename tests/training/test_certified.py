"""The certified bias (PROTOCOL §5): D₀ and its splits, the exact bound and McNemar's test against
independently computed binomial tails, the surrogate, the infeasible path and resumption."""

import math
from fractions import Fraction

import pytest
import torch

from moia.eval.stats import binomial_sf, clopper_pearson_upper, mcnemar_exact
from moia.training.control import control_units, min_test_units, paraphrases, split_units
from moia.training.surrogate import margin_loss, target_kl, unlikelihood_loss
from tests.training.test_train import TINY, WORDS, tiny_tokens, tiny_vectors


# ------------------------------------------------------------------- exact binomial references
def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    """P(X <= k), X ~ Binomial(n, p), in exact rational arithmetic (the independent reference)."""
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


def test_binomial_sf_and_mcnemar_match_hand_computed_tails():
    # P(X >= 8 | 10, 1/2) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = 56 / 1024
    assert binomial_sf(8, 10, 0.5) == pytest.approx(56 / 1024, rel=1e-12)
    assert mcnemar_exact(8, 2) == pytest.approx(56 / 1024, rel=1e-12)
    assert mcnemar_exact(3, 0) == pytest.approx(1 / 8, rel=1e-12)  # three discordant, all one way
    assert mcnemar_exact(0, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 7) == pytest.approx(float(1 - exact_cdf(1, 9, Fraction(1, 2))), rel=1e-12)
    for k, n, p in ((3, 40, 0.1), (0, 299, 0.01), (17, 30, 0.6)):
        assert binomial_sf(k, n, p) == pytest.approx(float(1 - exact_cdf(k - 1, n, Fraction(p))), rel=1e-9)
    with pytest.raises(ValueError, match=r"only_new must be an int >= 0 \(got -1\)"):
        mcnemar_exact(-1, 2)


@pytest.mark.parametrize(("k", "n"), [(0, 299), (1, 299), (3, 300), (26, 40), (0, 10)])
def test_one_sided_clopper_pearson_solves_the_exact_tail(k, n):
    """The bound u is where P(X <= k | n, u) = alpha; checked with the exact rational CDF."""
    u = clopper_pearson_upper(k, n, 0.05)
    assert float(exact_cdf(k, n, Fraction(u))) == pytest.approx(0.05, abs=1e-9)
    assert float(exact_cdf(k, n, Fraction(u - 1e-6))) > 0.05 > float(exact_cdf(k, n, Fraction(u + 1e-6)))


def test_k_zero_bound_and_test_size():
    assert clopper_pearson_upper(0, 299, 0.05) == pytest.approx(1 - 0.05 ** (1 / 299), abs=1e-12)
    assert clopper_pearson_upper(0, 299, 0.05) <= 0.01 < clopper_pearson_upper(0, 298, 0.05)
    assert min_test_units(0.01, 0.05) == 299  # n >= ln(1/alpha) / epsilon, as the issue says
    assert min_test_units(0.05, 0.05) == 59
    with pytest.raises(ValueError, match="epsilon and alpha must lie in"):
        min_test_units(0.0, 0.05)


# ------------------------------------------------------------------------------ D₀ and splits
def test_paraphrase_family_has_the_original_wording_first():
    from moia.trials.prompt import ACKNOWLEDGEMENT, INTRO, QUESTION

    p = paraphrases()
    firsts = (p["preambles"][0], p["acknowledgements"][0], p["questions"][0])
    assert firsts == (INTRO, ACKNOWLEDGEMENT, QUESTION)
    assert len(p["preambles"]) * len(p["acknowledgements"]) * len(p["questions"]) >= 30
    assert all(q.count("Trial {n}") == 1 for q in p["questions"])


def test_splits_are_disjoint_random_and_sized():
    units = control_units("paraphrase")
    prompts = {(u.preamble, u.acknowledgement, u.question, u.trial) for u in units}
    assert len(units) == 4800 and len(prompts) == 4800
    s = split_units(units, 300, 299)
    ids = [{u.index for u in part} for part in (s.loss, s.calibration, s.test)]
    assert [len(x) for x in ids] == [4201, 300, 299]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    # random, not by trial-number range: every trial number 1-10 in every split
    for part in (s.calibration, s.test):
        assert {u.trial for u in part} == set(range(1, 11))
    assert split_units(units, 300, 299) == s  # seeded
    other = split_units(units, 300, 299, seed=0)
    assert {u.index for u in other.test} != ids[2]
    assert len(split_units(units, 300, 299, n_loss=50).loss) == 50
    with pytest.raises(ValueError, match=r"n_test must be an integer >= 1, got 0"):
        split_units(units, 300, 0)
    with pytest.raises(ValueError, match=r"D0 has 4800 units: 299 test \+ 4600 calibration leave -99"):
        split_units(units, 4600, 299)


def test_sampled_units_are_iid_draws():
    units = control_units("sampled", 400, seed=3)
    assert units == control_units("sampled", 400, seed=3) and units != control_units("sampled", 400, seed=4)
    counts = [sum(u.trial == t for u in units) for t in range(1, 11)]
    assert min(counts) > 20 and len({u.seed for u in units}) == 400  # roughly uniform trials
    with pytest.raises(ValueError, match="a sampled D0 needs n >= 1 units"):
        control_units("sampled")
    with pytest.raises(ValueError, match="unknown D0 kind 'greedy'"):
        control_units("greedy")


# ------------------------------------------------------------------------------- surrogate
def test_surrogate_terms_against_their_formulas():
    g = torch.Generator().manual_seed(0)
    first = torch.randn(3, 20, generator=g)
    aff, neg = [2, 5], [7]
    want = torch.nn.functional.softplus(1.5 + first[:, aff].logsumexp(-1) - first[:, 7])
    torch.testing.assert_close(margin_loss(first, aff, neg, 1.5), want)
    p_aff = first.softmax(-1)[:, aff].sum(-1)
    torch.testing.assert_close(unlikelihood_loss(first, aff), -torch.log1p(-p_aff))
    logits, ref = torch.randn(2, 5, 20, generator=g), torch.randn(2, 4, 20, generator=g)
    targets = [[1, 2, 3], [4, 5]]
    got = target_kl(logits, ref, targets)
    for i, t in enumerate(targets):  # row i's last len(t) + 1 positions but the last predict t
        a, b = logits[i, 4 - len(t) : 4], ref[i, 3 - len(t) : 3]
        kl = torch.nn.functional.kl_div(
            a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="sum"
        )
        torch.testing.assert_close(got[i], kl)


# ---------------------------------------------------------------- training on a fake D₀
class FakeFamily:
    """D₀ on the tiny model's token ids: unit u is a false positive under b when its fixed
    susceptibility s_u < base + gain * |b|, so b = 0 gives the base rate."""

    kind = "paraphrase"

    def __init__(self, base: float = 0.0, gain: float = 0.0) -> None:
        self.base, self.gain, self.calls = base, gain, 0

    def describe(self, n_units=None) -> str:
        return "fake D0 for tests"

    def unit_tokens(self, u):
        prefix = list(range(1, 11))
        prefix[3] = 70 + u.preamble
        return [*prefix, 11, 20 + u.trial, 12, 13], 10

    def false_positives(self, units, interventions=(), max_new_tokens=100, batch_size=16, injection=None):
        self.calls += 1
        norm = sum(float(a.vector.norm()) for a in interventions)
        norm += 0.0 if injection is None else injection[2]  # an injection acts like a bigger b
        flags = [(u.index * 0.6180339887) % 1 < self.base + self.gain * norm for u in units]
        return flags, ["Yes." if f else "No." for f in flags]


CERTIFIED = {
    **{k: v for k, v in TINY.items() if k != "verify_controls"},
    "epsilon": 0.05,
    "calibration_units": 120,
    "test_units": 60,
    "calibration_batch": 16,
    "unlikelihood_every": 2,
    "unlikelihood_units": 8,
    "eval_every": 2,
    "steps": 6,
}


def certified_train(model, family, **options):
    from moia.training import train_bias

    settings = {**CERTIFIED, **options}
    return train_bias(
        model, WORDS, vectors=tiny_vectors(), tokens=tiny_tokens(), family=family,
        answer_sets=([80, 81], [90, 91]), **settings,
    )  # fmt: skip


def test_feasible_run_is_certified_against_b0(tiny):
    bias = certified_train(tiny, FakeFamily(0.0, 0.02))
    v = bias.verification
    assert v["feasible"] is True and v["splits"]["test"] == 60 and v["splits"]["calibration"] == 120
    chosen = next(m for m in v["selection"]["measured"] if m["index"] == v["selection"]["index"])
    assert chosen["eligible"] and chosen["upper_bound"] <= 0.025  # ε' = ε / 2
    c = v["certification"]
    assert set(c) >= {"n", "false_positives", "upper_bound", "alpha", "epsilon", "units", "baseline"}
    assert c["n"] == 60 and c["baseline"]["false_positives"] == 0
    assert c["upper_bound"] == pytest.approx(clopper_pearson_upper(c["false_positives"], 60, 0.05))
    assert c["certified"] == (c["upper_bound"] <= 0.05)
    steps = [r for r in bias.history if r["type"] == "calibration"]
    assert [r["step"] for r in steps] == [0, 2, 4, 6]
    # each λ update saw a fresh calibration batch, all inside the calibration split
    batches = [tuple(r["calibration_units"]) for r in steps]
    assert len(set(batches)) == 4 and all(len(b) == 16 for b in batches)
    from moia.cli.train import summary

    text = summary(bias)
    assert "certification on 60 test units of D0 (fake D0 for tests)" in text
    assert f"b = 0: 0/60, upper bound {100 * c['baseline']['upper_bound']:.2f}%" in text


def test_random_direction_arm_counts_the_same_units(tiny):
    bias = certified_train(tiny, FakeFamily(0.0, 0.02), certify_random=True, steps=2)
    c = bias.verification["certification"]
    r = c["random_direction_injection"]
    assert (r["layer"], r["strength"], r["n"]) == (1, 5.0, 60)  # band [0, 1]: the middle; max strength
    test = [type("U", (), {"index": i})() for i in c["unit_indices"]]
    want = sum((u.index * 0.6180339887) % 1 < 0.02 * 5.0 for u in test)  # b = 0 plus the injection
    assert r["baseline_claims"] == want and r["claims"] >= want


def test_infeasible_is_an_answer(tiny):
    family = FakeFamily(0.3, 0.0)  # b = 0 already has a 30% FPR on D₀
    with pytest.warns(UserWarning, match="infeasible: no candidate's calibration upper bound"):
        bias = certified_train(tiny, family)
    v = bias.verification
    assert v["feasible"] is False and v["selection"]["baseline_infeasible"] is True
    assert v["certification"]["infeasible"] is True and v["certification"]["certified"] is False
    fprs = [m["fpr"] for m in v["selection"]["measured"]]
    chosen = next(m for m in v["selection"]["measured"] if m["index"] == v["selection"]["index"])
    assert chosen["fpr"] == min(fprs)  # the least-FPR iterate is reported, flagged
    assert v["certification"]["baseline"]["false_positives"] > 0
    assert v["multiplier"] > 0  # λ rose on the violated constraint


def test_certified_resume_gives_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    import moia.training.objective as objective

    whole = certified_train(
        tiny, FakeFamily(0.0, 0.05), checkpoint=tmp_path / "whole.ckpt", checkpoint_every=2
    )
    real, calls = objective.Objective.losses, []

    def crash_on_step_4(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(objective.Objective, "losses", crash_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        certified_train(tiny, FakeFamily(0.0, 0.05), checkpoint=tmp_path / "part.ckpt", checkpoint_every=2)
    monkeypatch.setattr(objective.Objective, "losses", real)
    resumed = certified_train(
        tiny, FakeFamily(0.0, 0.05), checkpoint=tmp_path / "part.ckpt", checkpoint_every=2, resume=True
    )
    torch.testing.assert_close(resumed.vector, whole.vector, atol=1e-6, rtol=0)
    assert resumed.history == whole.history
    assert resumed.verification["selection"] == whole.verification["selection"]
    assert resumed.verification["certification"] == whole.verification["certification"]


def test_moia_mode_certifies_the_last_iterate(tiny):
    family = FakeFamily(0.0, 0.05)
    bias = certified_train(tiny, family, mode="moia", epsilon=None)
    v = bias.verification
    assert "selection" not in v and v["multiplier"] == 0 and v["mode"] == "moia"
    assert not any(r["type"] == "calibration" for r in bias.history)  # no λ, no calibration
    c = v["certification"]
    want = sum((i * 0.6180339887) % 1 < 0.05 * float(bias.vector.norm()) for i in c["unit_indices"])
    assert float(bias.vector.norm()) > 0 and c["false_positives"] == want
    assert c["epsilon"] == 0.0 and c["certified"] is False  # ε = 0 cannot be certified


def test_certified_mode_needs_epsilon(tiny):
    with pytest.raises(ValueError, match="mode='certified' needs epsilon"):
        certified_train(tiny, FakeFamily(), epsilon=None)


def test_answer_token_sets_on_smollm2_tokenizer():
    """The surrogate's sets hold the first token of each answer word, and the two are disjoint."""
    from moia.training.surrogate import answer_token_sets
    from tests.conftest import cached_tokenizer
    from tests.fakes import FakeModel

    tok = cached_tokenizer("smollm2-135m-instruct")
    aff, neg = answer_token_sets(FakeModel(tokenizer=tok))
    first = {w: tok(w, add_special_tokens=False).input_ids[0] for w in ("Yes", " yes", "No", " no")}
    assert {first["Yes"], first[" yes"]} <= set(aff) and {first["No"], first[" no"]} <= set(neg)
    assert not set(aff) & set(neg)
    with pytest.raises(ValueError, match="share first tokens"):
        answer_token_sets(FakeModel(tokenizer=tok), affirmative=("Yes",), negative=("Yes",))
