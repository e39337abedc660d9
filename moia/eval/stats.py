"""Binomial confidence intervals for the rates the experiments report, in plain stdlib math.

PROTOCOL §3 reports every rate (detection, false positives, introspection, forced identification)
with a Wilson 95% interval and its n. PROTOCOL §5 verifies a trained bias vector's false-positive
rate on held-out controls with an exact binomial bound: ``clopper_pearson_upper`` is that bound
(one-sided, so a 95% bound uses all of alpha = 0.05 on the upper side), and ``clopper_pearson`` is the
usual two-sided exact interval (alpha / 2 on each side).

The exact bounds solve the binomial tail equations by bisection; the binomial CDF is summed from
log-pmf terms built with ``math.lgamma``, so there is no scipy dependency.
"""

import math
from collections.abc import Callable
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


def rate(k: int, n: int) -> dict[str, Any]:
    """The one rate record every report uses: ``{"k", "n", "rate", "ci95"}``, with the Wilson 95%
    interval; ``rate`` is None when n is 0 (JSON has no NaN)."""
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


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
