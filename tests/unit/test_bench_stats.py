"""bench/stats.py: the paired-ratio interval bench/pods.py reports for decode parity."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.stats import (  # noqa: E402
    bootstrap_ci,
    mean_ci,
    paired_ratio_bootstrap,
    paired_ratio_ci,
    quiet_pairs,
    settled,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (1000, 1.9623)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_cdf_and_quantile_are_consistent():
    assert t_cdf(0.0, 5) == 0.5
    assert t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-9)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7))


def test_mean_ci_by_hand():
    # mean 3, sd sqrt(2.5), n 5: half-width t(0.975, 4) * sd / sqrt(5) = 2.7764 * 0.7071 = 1.9632
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert m == 3
    assert hi - m == pytest.approx(1.9632, abs=1e-3)
    assert m - lo == pytest.approx(hi - m)


def test_paired_ratio_is_geometric_mean_with_log_t_interval():
    vnode = [40.0, 39.0, 41.0, 38.0, 40.5, 39.5]
    hand = [40.4, 39.8, 41.2, 38.9, 40.6, 40.1]
    ci = paired_ratio_ci(vnode, hand)
    lr = [math.log(a / b) for a, b in zip(vnode, hand)]
    half = 2.5706 * statistics.stdev(lr) / math.sqrt(6)  # t(0.975, 5)
    assert ci["n"] == 6
    assert ci["ratio"] == pytest.approx(math.exp(statistics.fmean(lr)))
    assert ci["lo"] == pytest.approx(math.exp(statistics.fmean(lr) - half), rel=1e-4)
    assert ci["hi"] == pytest.approx(math.exp(statistics.fmean(lr) + half), rel=1e-4)
    assert ci["lo"] < ci["ratio"] < ci["hi"] < 1.0  # vnode slower in every pair: the interval excludes 1
    assert ci["width"] == pytest.approx((ci["hi"] - ci["lo"]) / ci["ratio"])


def test_paired_ratio_is_symmetric_and_unit_free():
    a, b = [10.0, 12.0, 11.0, 9.0], [11.0, 11.5, 10.0, 9.5]
    ab, ba = paired_ratio_ci(a, b), paired_ratio_ci(b, a)
    assert ab["ratio"] * ba["ratio"] == pytest.approx(1.0)
    assert ab["lo"] * ba["hi"] == pytest.approx(1.0)
    scaled = paired_ratio_ci([x * 3 for x in a], [x * 3 for x in b])
    assert scaled["ratio"] == pytest.approx(ab["ratio"]) and scaled["width"] == pytest.approx(ab["width"])


def test_interval_narrows_with_more_pairs_and_settles():
    noise = [0.03, -0.02, 0.01, -0.03, 0.02, -0.01]
    few = paired_ratio_ci([40 * math.exp(e) for e in noise], [40.0] * 6)
    many = paired_ratio_ci([40 * math.exp(e) for e in noise * 8], [40.0] * 48)
    assert many["width"] < few["width"]
    assert not settled(few, 0.02)
    assert settled(many, 0.02)
    assert many["lo"] < 1.0 < many["hi"]


def test_degenerate_inputs():
    assert paired_ratio_ci([], []) == {"n": 0, "confidence": 0.95}
    one = paired_ratio_ci([2.0], [1.0])
    assert one["ratio"] == 2.0 and "lo" not in one and not settled(one, 1.0)
    same = paired_ratio_ci([5.0, 5.0, 5.0], [5.0, 5.0, 5.0])
    assert same["ratio"] == same["lo"] == same["hi"] == 1.0
    with pytest.raises(ValueError):
        paired_ratio_ci([1.0, 2.0], [1.0])


def test_bootstrap_roughly_agrees_with_t_interval():
    noise = [0.03, -0.02, 0.01, -0.03, 0.02, -0.01, 0.015, -0.005] * 3
    a, b = [40 * math.exp(e - 0.01) for e in noise], [40.0] * len(noise)
    ci = paired_ratio_ci(a, b)
    lo, hi = paired_ratio_bootstrap(a, b)
    assert lo < ci["ratio"] < hi
    assert lo == pytest.approx(ci["lo"], abs=0.005) and hi == pytest.approx(ci["hi"], abs=0.005)
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=3) == bootstrap_ci([1.0, 2.0, 3.0], seed=3)


def test_quiet_pairs_drops_pairs_with_either_side_contended():
    pairs = [
        {"a": {"foreign_cores": 0.05}, "b": {"foreign_cores": 0.10}},
        {"a": {"foreign_cores": 0.30}, "b": {"foreign_cores": 0.01}},
        {"a": {"foreign_cores": 0.02}, "b": {"foreign_cores": 0.16}},
        {"a": {}, "b": {"foreign_cores": 0.15}},
    ]
    assert quiet_pairs(pairs, 0.15) == [pairs[0], pairs[3]]
    named = [{"vnode": p["a"], "hand": p["b"]} for p in pairs]
    assert quiet_pairs(named, 0.2, sides=("vnode", "hand")) == [named[0], named[2], named[3]]
