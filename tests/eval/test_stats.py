"""Binomial intervals against closed forms, published values and brute-force inversion."""

import math

import pytest

from moia.eval.stats import binomial_cdf, clopper_pearson, clopper_pearson_upper, wilson_interval


def brute_force_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def brute_force_upper(k: int, n: int, tail: float, steps: int = 200_000) -> float:
    """Smallest grid p with P(X <= k) <= tail: the exact upper bound to within 1 / steps."""
    for step in range(steps + 1):
        p = step / steps
        if brute_force_cdf(k, n, p) <= tail:
            return p
    return 1.0


def brute_force_lower(k: int, n: int, tail: float, steps: int = 200_000) -> float:
    """Largest grid p with P(X >= k) <= tail."""
    for step in range(steps, -1, -1):
        p = step / steps
        if 1 - brute_force_cdf(k - 1, n, p) <= tail:
            return p
    return 0.0


def test_wilson_matches_closed_form_for_41_of_100():
    # Published value (e.g. statsmodels proportion_confint(41, 100, method="wilson")): 0.3187, 0.5080.
    lo, hi = wilson_interval(41, 100)
    assert lo == pytest.approx(0.31867, abs=1e-5)
    assert hi == pytest.approx(0.50799, abs=1e-5)


@pytest.mark.parametrize("k, n", [(0, 1), (0, 20), (3, 7), (20, 20), (500, 1000)])
def test_wilson_contains_estimate_and_stays_in_unit_interval(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    # z widens the interval.
    assert wilson_interval(5, 10, z=2.58)[0] < wilson_interval(5, 10)[0]


def test_binomial_cdf_matches_exact_sum():
    for k, n, p in [(0, 5, 0.3), (2, 5, 0.3), (7, 30, 0.11), (29, 30, 0.97)]:
        assert binomial_cdf(k, n, p) == pytest.approx(brute_force_cdf(k, n, p), rel=1e-12)
    assert binomial_cdf(3, 3, 0.5) == 1.0
    assert binomial_cdf(0, 4, 0.0) == 1.0
    assert binomial_cdf(2, 4, 1.0) == 0.0


@pytest.mark.parametrize("n", [1, 10, 100, 500])
def test_one_sided_upper_for_zero_successes_is_closed_form(n):
    assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-10)
    assert clopper_pearson_upper(0, n, alpha=0.01) == pytest.approx(1 - 0.01 ** (1 / n), abs=1e-10)


def test_two_sided_closed_forms_at_the_edges():
    n = 30
    lo, hi = clopper_pearson(0, n)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-10)
    lo, hi = clopper_pearson(n, n)
    assert lo == pytest.approx(0.025 ** (1 / n), abs=1e-10)
    assert hi == 1.0


def test_two_sided_matches_published_value_for_41_of_100():
    # R: binom.test(41, 100)$conf.int -> 0.3126200 0.5128558
    lo, hi = clopper_pearson(41, 100)
    assert lo == pytest.approx(0.3126200, abs=1e-6)
    assert hi == pytest.approx(0.5128558, abs=1e-6)


@pytest.mark.parametrize("k, n", [(1, 10), (4, 12), (9, 25)])
def test_exact_bounds_match_brute_force_inversion(k, n):
    tolerance = 1 / 200_000 + 1e-9
    assert clopper_pearson_upper(k, n) == pytest.approx(brute_force_upper(k, n, 0.05), abs=tolerance)
    lo, hi = clopper_pearson(k, n)
    assert hi == pytest.approx(brute_force_upper(k, n, 0.025), abs=tolerance)
    assert lo == pytest.approx(brute_force_lower(k, n, 0.025), abs=tolerance)


def test_one_sided_bound_is_tighter_than_two_sided_upper():
    assert clopper_pearson_upper(2, 40) < clopper_pearson(2, 40)[1]


def test_exact_edges():
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(7, 7) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: wilson_interval(5, 3), "k must be between 0 and n"),
        (lambda: wilson_interval(-1, 3), "k must be between 0 and n"),
        (lambda: wilson_interval(0, -2), "n must be >= 0"),
        (lambda: wilson_interval(1, 2, z=0.0), "z must be > 0"),
        (lambda: clopper_pearson(4, 3), "k must be between 0 and n"),
        (lambda: clopper_pearson(1, 3, alpha=1.5), "alpha must be strictly between 0 and 1"),
        (lambda: clopper_pearson_upper(-1, 3), "k must be between 0 and n"),
        (lambda: clopper_pearson_upper(0, -1), "n must be >= 0"),
        (lambda: clopper_pearson_upper(0, 3, alpha=0.0), "alpha must be strictly between 0 and 1"),
        (lambda: binomial_cdf(1, 3, 1.2), "p must be in"),
    ],
)
def test_bad_input_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_non_integer_counts_are_rejected():
    # without the test suite's type checker the functions' own message; with it, beartype's
    with pytest.raises(TypeError, match=r"k must be an int|parameter 'k'"):
        wilson_interval(1.5, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"n must be an int|parameter 'n'"):
        clopper_pearson_upper(0, 3.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the one rate record
def test_rate_reports_the_exact_one_sided_upper_bound():
    from moia.eval.stats import rate

    r = rate(0, 10)
    assert r["k"] == 0 and r["n"] == 10 and r["rate"] == 0.0
    assert r["upper95"] == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-9)  # 25.9%: 10 controls say little
    assert rate(0, 500)["upper95"] == pytest.approx(1 - 0.05 ** (1 / 500), abs=1e-9)  # 0.6%
    assert rate(7, 100)["upper95"] == pytest.approx(brute_force_upper(7, 100, 0.05), abs=1e-5)
    assert rate(0, 0)["rate"] is None and rate(0, 0)["upper95"] == 1.0
    assert "ci95_clustered" not in r


def test_clustered_interval_matches_the_exact_resampling_distribution():
    """25 concepts always detected and 25 never (10 trials each): a resampled pooled rate is
    X / 50 with X ~ Binomial(50, 1/2) concepts of the first kind, so the percentile interval is
    that distribution's 2.5% and 97.5% quantiles, 18/50 and 32/50. Wilson on the pooled 250/500
    ignores the clustering and is far narrower."""
    from moia.eval.stats import rate

    def quantile(q):
        cdf = 0.0
        for x in range(51):
            cdf += math.comb(50, x) / 2**50
            if cdf >= q:
                return x / 50
        return 1.0

    clusters = [(10, 10)] * 25 + [(0, 10)] * 25
    r = rate(250, 500, clusters=clusters, seed=3)
    lo, hi = r["ci95_clustered"]
    assert lo == pytest.approx(quantile(0.025), abs=0.03) and hi == pytest.approx(quantile(0.975), abs=0.03)
    assert hi - lo > 3 * (r["ci95"][1] - r["ci95"][0])
    assert r["clusters"] == 50 and rate(250, 500, clusters=clusters, seed=3) == r  # seeded
    # identical concepts: resampling them changes nothing
    assert rate(150, 500, clusters=[(3, 10)] * 50)["ci95_clustered"] == [0.3, 0.3]
    assert rate(3, 10, clusters=[(3, 10)])["ci95_clustered"] is None  # one cluster: no interval


def test_rate_clusters_must_add_up():
    from moia.eval.stats import clustered_interval, rate

    with pytest.raises(ValueError, match=r"clusters sum to \(k, n\) = \(3, 20\), not \(4, 20\)"):
        rate(4, 20, clusters=[(1, 10), (2, 10)])
    with pytest.raises(ValueError, match="clusters must be"):
        clustered_interval([(3, 2)])
