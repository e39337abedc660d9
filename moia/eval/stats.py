"""Binomial confidence intervals for the rates the experiments report, in plain stdlib math.

PROTOCOL §3 reports every rate (detection, false positives, introspection, forced identification)
with a Wilson 95% interval and its n (``rate``), every false-positive rate with its exact one-sided
upper bound, and every injected rate with a concept-clustered bootstrap interval
(``clustered_interval``). PROTOCOL §5 verifies a trained bias vector's false-positive rate on
held-out controls with the same exact bound: ``clopper_pearson_upper`` (one-sided, so a 95% bound
uses all of alpha = 0.05 on the upper side); ``clopper_pearson`` is the usual two-sided exact
interval (alpha / 2 on each side).

``mcnemar_exact`` is the one-sided exact McNemar test of an increase on paired units (PROTOCOL §5).

The exact bounds solve the binomial tail equations by bisection; the binomial CDF is summed from
log-pmf terms built with ``math.lgamma``, so there is no scipy dependency.
"""

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

_BISECTION_TOLERANCE = 1e-13


def _check_counts(k: int, n: int) -> None:
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (got {value!r})")
    if n < 0:
        raise ValueError(f"n must be >= 0 (got n={n})")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n (got k={k}, n={n})")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be strictly between 0 and 1 (got alpha={alpha})")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; z = 1.96 gives 95%.

    n = 0 carries no information and returns (0.0, 1.0).
    """
    _check_counts(k, n)
    if not z > 0:
        raise ValueError(f"z must be > 0 (got z={z})")
    if n == 0:
        return 0.0, 1.0
    p_hat = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p_hat + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p_hat * (1 - p_hat) / n + z2 / (4 * n * n)) / denominator
    # Clamp rounding noise: the exact interval contains 0 when k = 0 and 1 when k = n.
    lo = 0.0 if k == 0 else max(0.0, centre - half_width)
    hi = 1.0 if k == n else min(1.0, centre + half_width)
    return lo, hi


def rate(k: int, n: int, clusters: Sequence[tuple[int, int]] | None = None, seed: int = 0) -> dict[str, Any]:
    """The one rate record every report uses (PROTOCOL §3).

    ``{"k", "n", "rate", "ci95", "upper95"}``: the Wilson 95% interval and the exact one-sided 95%
    upper bound (Clopper–Pearson; the bound a false-positive rate is reported with). ``rate`` is
    None when n is 0 (JSON has no NaN). With ``clusters`` — the (k, n) of each cluster, e.g. of
    each concept, summing to (k, n) — also ``"ci95_clustered"``: the percentile bootstrap over
    clusters (``clustered_interval``, seeded with ``seed``), None with fewer than two clusters.
    """
    lo, hi = wilson_interval(k, n)
    out: dict[str, Any] = {
        "k": k,
        "n": n,
        "rate": k / n if n else None,
        "ci95": [lo, hi],
        "upper95": clopper_pearson_upper(k, n),
    }
    if clusters is not None:
        clusters = [(int(a), int(b)) for a, b in clusters]
        total = (sum(a for a, _ in clusters), sum(b for _, b in clusters))
        if total != (k, n):
            raise ValueError(f"clusters sum to (k, n) = {total}, not ({k}, {n})")
        out["clusters"] = len(clusters)
        out["ci95_clustered"] = list(clustered_interval(clusters, seed=seed)) if len(clusters) > 1 else None
    return out


def clustered_interval(
    clusters: Sequence[tuple[int, int]], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of a pooled rate whose trials come in clusters (PROTOCOL §3).

    Trials of one concept share a vector and a prompt, so they are not independent; resampling
    whole clusters (with replacement, ``n_boot`` times, seeded) and pooling each resample's hits
    and trials gives an interval that widens where the rate varies between concepts.
    """
    if len(clusters) < 1 or any(not 0 <= k <= n or n < 1 for k, n in clusters):
        raise ValueError(f"clusters must be (k, n) pairs with 0 <= k <= n and n >= 1, got {clusters!r}")
    _check_alpha(1.0 - level)
    rng = random.Random(seed)
    rates = sorted(
        sum(k for k, _ in sample) / sum(n for _, n in sample)
        for sample in (rng.choices(clusters, k=len(clusters)) for _ in range(n_boot))
    )
    tail = (1.0 - level) / 2
    lo = rates[max(0, math.floor(tail * n_boot))]
    hi = rates[min(n_boot - 1, math.ceil((1.0 - tail) * n_boot) - 1)]
    return lo, hi


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    _check_counts(k, n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (got p={p})")
    if k == n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n_factorial = math.lgamma(n + 1)
    terms = (
        math.exp(log_n_factorial - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    )
    return min(1.0, math.fsum(terms))


def _bisect_decreasing(function: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] where a decreasing function of p crosses target."""
    lo, hi = 0.0, 1.0
    while hi - lo > _BISECTION_TOLERANCE:
        mid = 0.5 * (lo + hi)
        if function(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _upper_bound(k: int, n: int, tail: float) -> float:
    # The p at which seeing k or fewer successes has probability `tail`.
    if k == n:
        return 1.0
    return _bisect_decreasing(lambda p: binomial_cdf(k, n, p), tail)


def _lower_bound(k: int, n: int, tail: float) -> float:
    # The p at which seeing k or more successes has probability `tail`: P(X <= k - 1) = 1 - tail.
    if k == 0:
        return 0.0
    return _bisect_decreasing(lambda p: binomial_cdf(k - 1, n, p), 1.0 - tail)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) 1 - alpha interval, alpha / 2 in each tail.

    n = 0 returns (0.0, 1.0).
    """
    _check_counts(k, n)
    _check_alpha(alpha)
    if n == 0:
        return 0.0, 1.0
    return _lower_bound(k, n, alpha / 2), _upper_bound(k, n, alpha / 2)


def clopper_pearson_upper(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided exact (Clopper–Pearson) 1 - alpha upper bound: all of alpha in the upper tail.

    This is the bound PROTOCOL §5 asks for on a false-positive rate: with k = 0 false positives in n
    controls it equals 1 - alpha ** (1 / n) (about 3 / n for alpha = 0.05). n = 0 returns 1.0.
    """
    _check_counts(k, n)
    _check_alpha(alpha)
    if n == 0:
        return 1.0
    return _upper_bound(k, n, alpha)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed over the upper tail (no 1 - cdf cancellation)."""
    _check_counts(k, n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (got p={p})")
    if k == 0 or p == 1.0:
        return 1.0
    if p == 0.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n_factorial = math.lgamma(n + 1)
    terms = (
        math.exp(log_n_factorial - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k, n + 1)
    )
    return min(1.0, math.fsum(terms))


def mcnemar_exact(only_new: int, only_old: int) -> float:
    """One-sided exact McNemar p-value that the NEW condition raises a rate over the OLD one on the
    same units (PROTOCOL §5's certification compares b with b = 0 this way).

    Only discordant units carry information: ``only_new`` units are positive under the new
    condition alone, ``only_old`` under the old alone. Under no change each discordant unit is
    equally likely to fall either way, so the p-value is P(X >= only_new), X ~ Binomial(only_new +
    only_old, 1/2). No discordant unit gives 1.0.
    """
    for name, value in (("only_new", only_new), ("only_old", only_old)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (got {value!r})")
    n = only_new + only_old
    if n == 0:
        return 1.0
    return binomial_sf(only_new, n, 0.5)
