"""Statistics for paired benchmark samples, standard library only.

A paired comparison (bench/pods.py's decode: a completion through vnode and one on a
llama-server started by hand, taken back to back) is summarised by the ratio of each pair.
Ratios are averaged on the log scale (so 0.95 and 1/0.95 cancel) and the 95 % interval is
Student's t-interval on the mean log-ratio, mapped back with exp: a geometric-mean ratio
and an interval that is symmetric in relative terms. A percentile bootstrap of the same
mean is offered as a cross-check that assumes no normality.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence


def t_cdf(x: float, df: float) -> float:
    """Student's t distribution function, by Simpson integration of the density from 0."""
    if df <= 0:
        raise ValueError("df must be positive")
    if x == 0:
        return 0.5
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(t: float) -> float:
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    a, n = abs(x), 2000  # even; the density is smooth, so this is exact to ~1e-12 here
    h = a / n
    s = pdf(0.0) + pdf(a) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    half = s * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def log_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    return [math.log(x / y) for x, y in zip(a, b)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): Student's t-interval for the mean of `values`."""
    n = len(values)
    if n < 2:
        raise ValueError("an interval needs at least 2 values")
    m = statistics.fmean(values)
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return m, m - half, m + half


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Geometric-mean ratio a/b over pairs with a t-interval on the log-ratios.

    `width` is the interval's full width relative to the ratio, (hi - lo) / ratio: 0.02
    means the ratio is known to about +-1 %."""
    lr = log_ratios(a, b)
    n = len(lr)
    out: dict = {"n": n, "confidence": confidence}
    if n == 0:
        return out
    out["ratio"] = math.exp(statistics.fmean(lr))
    out["median_pair_ratio"] = math.exp(statistics.median(lr))
    if n < 2:
        return out
    m, lo, hi = mean_ci(lr, confidence)
    out.update(lo=math.exp(lo), hi=math.exp(hi), sd_log=statistics.stdev(lr))
    out["width"] = (out["hi"] - out["lo"]) / out["ratio"]
    return out


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] = statistics.fmean, *,
                 confidence: float = 0.95, resamples: int = 5000, seed: int = 1) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over `values` (seeded: reproducible)."""
    if len(values) < 2:
        raise ValueError("an interval needs at least 2 values")
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(stat([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return stats[int(alpha * (resamples - 1))], stats[int(math.ceil((1 - alpha) * (resamples - 1)))]


def paired_ratio_bootstrap(a: Sequence[float], b: Sequence[float], **kw) -> tuple[float, float]:
    """Bootstrap interval of the geometric-mean ratio a/b over pairs."""
    lo, hi = bootstrap_ci(log_ratios(a, b), **kw)
    return math.exp(lo), math.exp(hi)


def quiet_pairs(pairs: Sequence[dict], limit: float, *, sides: Sequence[str] = ("a", "b"),
                key: str = "foreign_cores") -> list[dict]:
    """The pairs whose every side was taken while other processes used at most `limit` cores.

    A pair is {side: sample, ...}; a sample without `key` counts as quiet."""
    return [p for p in pairs if all((p[s].get(key) or 0.0) <= limit for s in sides)]


def settled(ci: dict, width: float, min_n: int = 2) -> bool:
    """The interval is known and narrower than `width` (relative, full width)."""
    return ci.get("n", 0) >= max(2, min_n) and "width" in ci and ci["width"] < width
