"""Memory budget: the seeds' anchors, smooth in between, safe below 16 GiB, overrides."""

import math

import pytest

from vnode.node.budget import MIN_OS_RESERVE_BYTES, allocatable_memory, budget_fraction

GiB = 1024**3
MiB = 1024**2


@pytest.mark.parametrize(
    ("gib", "fraction"),
    [(16, 0.67), (36, 0.67), (48, 0.75), (64, 0.75), (128, 0.90), (192, 0.90), (512, 0.90)],
)
def test_anchors(gib: int, fraction: float) -> None:
    assert budget_fraction(gib * GiB) == pytest.approx(fraction)


def test_interpolates_linearly_between_anchors() -> None:
    assert budget_fraction(42 * GiB) == pytest.approx(0.71)  # halfway 36 -> 48
    assert budget_fraction(96 * GiB) == pytest.approx(0.825)  # halfway 64 -> 128
    assert budget_fraction(24 * GiB) == pytest.approx(0.67)  # flat 16 -> 36


def test_monotonic_nondecreasing_and_bounded() -> None:
    sizes = [g * GiB // 4 for g in range(4, 4 * 300)]  # 1 GiB .. ~300 GiB in 256 MiB steps
    fractions = [budget_fraction(s) for s in sizes]
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert all(0.0 <= f <= 0.90 for f in fractions)
    # Allocatable bytes grow with the machine too.
    allocs = [allocatable_memory(s) for s in sizes]
    assert all(b >= a for a, b in zip(allocs, allocs[1:]))


def test_small_machines_keep_an_os_reserve() -> None:
    assert budget_fraction(8 * GiB) == pytest.approx(0.5)
    assert budget_fraction(12 * GiB) == pytest.approx(2 / 3)  # reserve still binds
    assert budget_fraction(13 * GiB) == pytest.approx(0.67)  # 1 - 4/13 > 0.67
    assert budget_fraction(4 * GiB) == 0.0
    assert budget_fraction(2 * GiB) == 0.0
    for gib in (5, 6, 8, 10, 11):
        total = gib * GiB
        assert total - allocatable_memory(total) >= MIN_OS_RESERVE_BYTES


def test_allocatable_is_whole_mib_rounded_down() -> None:
    assert allocatable_memory(64 * GiB) == 48 * GiB
    total = 36 * GiB
    got = allocatable_memory(total)
    assert got % MiB == 0
    assert total * 0.67 - MiB < got <= total * 0.67
    odd = 17_179_869_184 + 12_345  # not a MiB multiple
    assert allocatable_memory(odd, 1.0) == 16 * GiB


def test_override() -> None:
    assert allocatable_memory(64 * GiB, 0.5) == 32 * GiB
    assert allocatable_memory(64 * GiB, 1.0) == 64 * GiB
    # Operator's explicit choice bypasses the small-machine reserve.
    assert allocatable_memory(8 * GiB, 0.9) == int(8 * GiB * 0.9) // MiB * MiB


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, math.nan, math.inf, True])
def test_override_validation_names_the_flag(bad: float) -> None:
    with pytest.raises(ValueError, match="--memory-fraction"):
        allocatable_memory(64 * GiB, bad)


@pytest.mark.parametrize("total", [0, -1])
def test_non_positive_total_rejected(total: int) -> None:
    with pytest.raises(ValueError):
        budget_fraction(total)
    with pytest.raises(ValueError):
        allocatable_memory(total)
