"""How much of the Mac's memory the Node offers to pods (allocatable memory).

Apple Silicon memory is unified: the same RAM serves macOS, the GPU (Metal buffers for the
weights and KV cache) and everything else, so the whole of it can never go to models. The
fractions come from the seeds' table (16 GB 67 %, 36 GB 67 %, 48 GB 75 %, 64 GB 75 %,
128 GB+ 90 %): a large Mac keeps its fixed OS overhead in a smaller share. Between anchors
the fraction is interpolated linearly, so a 96 GB Mac neither jumps nor falls back.
Below 16 GB the table's 0.67 would starve macOS, so there at least 4 GiB stays with the OS.
"""

from __future__ import annotations

import math

__all__ = ["MIN_OS_RESERVE_BYTES", "allocatable_memory", "budget_fraction"]

GiB = 1024**3
MiB = 1024**2
MIN_OS_RESERVE_BYTES = 4 * GiB

# (GiB, fraction), ascending; flat before the first and after the last anchor.
_ANCHORS: tuple[tuple[float, float], ...] = (
    (16, 0.67),
    (36, 0.67),
    (48, 0.75),
    (64, 0.75),
    (128, 0.90),
)


def _interpolate(gib: float) -> float:
    if gib <= _ANCHORS[0][0]:
        return _ANCHORS[0][1]
    for (x0, y0), (x1, y1) in zip(_ANCHORS, _ANCHORS[1:]):
        if gib <= x1:
            return y0 + (y1 - y0) * (gib - x0) / (x1 - x0)
    return _ANCHORS[-1][1]


def budget_fraction(total_bytes: int) -> float:
    """Default share of physical memory that is allocatable to pods.

    Small machines (below about 12 GiB) get less than 0.67 so that macOS keeps at least
    MIN_OS_RESERVE_BYTES: an 8 GiB Mac gets 0.5, a 4 GiB machine 0.0 (nothing to offer).
    """
    if total_bytes <= 0:
        raise ValueError(f"total memory must be positive, got {total_bytes}")
    fraction = _interpolate(total_bytes / GiB)
    reserve_cap = max(0.0, 1 - MIN_OS_RESERVE_BYTES / total_bytes)
    return min(fraction, reserve_cap)


def allocatable_memory(total_bytes: int, fraction: float | None = None) -> int:
    """Allocatable bytes, rounded down to a whole MiB (a clean Node quantity, `…Mi`).

    An explicit fraction (from --memory-fraction) is the operator's call and is applied
    as given, without the small-machine OS reserve.
    """
    if fraction is None:
        fraction = budget_fraction(total_bytes)
    elif isinstance(fraction, bool) or not (0 < fraction <= 1) or not math.isfinite(fraction):
        raise ValueError(f"--memory-fraction must be in (0, 1], got {fraction!r}")
    if total_bytes <= 0:
        raise ValueError(f"total memory must be positive, got {total_bytes}")
    return int(total_bytes * fraction) // MiB * MiB
