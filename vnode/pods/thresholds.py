"""Eviction thresholds as the kubelet spells them: `memory.available<100Mi`, `10%`, `1m30s`.

Parsed once from the flags into plain numbers (bytes or a share of capacity, seconds), so
the eviction manager compares integers and config.py rejects a bad flag at start-up with
the kubelet's own rules and wording. memory.available is the only signal: disk and PID
pressure are node conditions on the Mac, not reasons to evict.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MEMORY_AVAILABLE = "memory.available"
SIGNALS = (MEMORY_AVAILABLE,)
# The kubelet's other signals: named in the error, so a pasted kubelet config fails clearly.
KUBELET_ONLY_SIGNALS = (
    "allocatableMemory.available", "nodefs.available", "nodefs.inodesFree", "imagefs.available",
    "imagefs.inodesFree", "containerfs.available", "containerfs.inodesFree", "pid.available",
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE])?$")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ThresholdError(ValueError):
    """A threshold, grace period or minimum reclaim the kubelet would refuse too."""


# --------------------------------------------------------------------------- quantities


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity ("100Mi", "1.5G", "2e9", "512") as an exact number."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ThresholdError(f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ThresholdError(f"invalid quantity {text!r}") from None
    suffix = match.group(2) or ""
    if suffix in _BINARY:
        return number * (1024 ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


def quantity_bytes(text: str) -> int:
    """A quantity of bytes, rounded up to a whole byte as the API's Value() does."""
    return math.ceil(parse_quantity(text))


def format_bytes(n: int) -> str:
    """Bytes as the API server prints a binary quantity: "80Mi", "1536Ki", "83886081";
    below 1024 in decimal form ("500", "1k")."""
    if n == 0:
        return "0"
    if -1024 < n < 1024:
        return f"{n // 1000}k" if n % 1000 == 0 else str(n)
    exponent = 0
    while n % 1024 == 0 and exponent < 6:
        n //= 1024
        exponent += 1
    return f"{n}{['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'][exponent]}"


# --------------------------------------------------------------------------- durations


def parse_duration(text: str | float | int) -> float:
    """Seconds from a Go duration ("5m", "1m30s", "300ms") or a plain number of seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip()
        try:
            value = float(raw)
        except ValueError:
            value = _go_duration(raw)
    if value < 0 or math.isnan(value) or math.isinf(value):
        raise ThresholdError(f"invalid duration {text!r}: must be a positive value")
    return value


def _go_duration(raw: str) -> float:
    if raw[:1] in ("-", "+"):
        return (-1.0 if raw[0] == "-" else 1.0) * _go_duration(raw[1:])
    pos, total = 0, 0.0
    while pos < len(raw):
        match = _DURATION_PART.match(raw, pos)
        if match is None:
            raise ThresholdError(f'time: invalid duration "{raw}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not raw:
        raise ThresholdError('time: invalid duration ""')
    return total


def format_duration(seconds: float) -> str:
    """Go's spelling: 300 -> "5m0s", 90 -> "1m30s", 2.5 -> "2.5s", 0.3 -> "300ms"."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}"
    if minutes:
        return f"{int(minutes)}m{secs_text}"
    return secs_text


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Amount:
    """A threshold value or minimum reclaim: bytes, or a share of the signal's capacity."""

    text: str
    bytes: int | None = None
    fraction: float | None = None

    def of(self, capacity: int) -> int:
        return self.bytes if self.bytes is not None else int(capacity * (self.fraction or 0.0))

    def display(self, capacity: int) -> str:
        """The quantity as the kubelet prints it in messages."""
        if self.bytes is not None and not self.text.rstrip().endswith(("k", "M", "G", "T", "P", "E")):
            return format_bytes(self.bytes)
        return self.text if self.bytes is not None else format_bytes(self.of(capacity))


@dataclass(frozen=True)
class Threshold:
    """`signal < value`, acted on after `grace_seconds` (0: a hard threshold); once met it
    stays met until the signal is `min_reclaim` above the value."""

    signal: str
    value: Amount
    grace_seconds: float = 0.0
    min_reclaim: Amount | None = None
    soft: bool = False

    @property
    def kind(self) -> str:
        return "soft" if self.soft else "hard"

    def limit(self, capacity: int, *, with_reclaim: bool = False) -> int:
        extra = self.min_reclaim.of(capacity) if with_reclaim and self.min_reclaim else 0
        return self.value.of(capacity) + extra

    def describe(self) -> str:
        grace = f", grace period {format_duration(self.grace_seconds)}" if self.soft else ""
        reclaim = f", minimum reclaim {self.min_reclaim.text}" if self.min_reclaim else ""
        return f"{self.kind} {self.signal}<{self.value.text}{grace}{reclaim}"


def parse_statements(value: str | dict | None, *, sep: str) -> dict[str, str]:
    """"memory.available<100Mi,nodefs.available<10%" (sep "<") or "memory.available=1m30s"
    (sep "=") as the kubelet's map flags take them; a mapping (config file) passes through."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    out: dict[str, str] = {}
    for item in str(value).split(","):
        if not item.strip():
            continue
        key, found, val = item.partition(sep)
        if not found:
            raise ThresholdError(f"malformed pair {item.strip()!r}, expect signal{sep}value")
        out[key.strip()] = val.strip()
    return out


def format_statements(statements: dict[str, str], *, sep: str) -> str:
    return ",".join(f"{k}{sep}{v}" for k, v in sorted(statements.items()))


def _check_signal(signal: str) -> None:
    if signal in SIGNALS:
        return
    if signal in KUBELET_ONLY_SIGNALS:
        raise ThresholdError(f"eviction signal {signal} is not supported on the Mac node: only {', '.join(SIGNALS)} "
                             "(disk and PID pressure are reported as node conditions, without evictions)")
    raise ThresholdError(f"unsupported eviction signal {signal}")


def _percentage(signal: str, text: str, *, what: str) -> float:
    try:
        value = float(text[:-1]) / 100
    except ValueError:
        raise ThresholdError(f"invalid {what} percentage for {signal}: {text!r}") from None
    return value


def parse_threshold_value(signal: str, text: str) -> Amount | None:
    """One threshold value; None for "0%" and "100%", which the kubelet ignores."""
    _check_signal(signal)
    if text.endswith("%"):
        if text in ("0%", "100%"):
            return None
        share = _percentage(signal, text, what="eviction")
        if share < 0:
            raise ThresholdError(f"eviction percentage threshold {signal} must be >= 0%: {text}")
        if share > 1:
            raise ThresholdError(f"eviction percentage threshold {signal} must be <= 100%: {text}")
        return Amount(text=text, fraction=share)
    amount = parse_quantity(text)
    if amount <= 0:
        raise ThresholdError(f"eviction threshold {signal} must be positive: {text}")
    return Amount(text=text, bytes=math.ceil(amount))


def parse_min_reclaim(signal: str, text: str) -> Amount:
    _check_signal(signal)
    if text.endswith("%"):
        share = _percentage(signal, text, what="minimum reclaim")
        if share <= 0:
            raise ThresholdError(f"eviction percentage minimum reclaim {signal} must be positive: {text}")
        return Amount(text=text, fraction=share)
    amount = parse_quantity(text)
    if amount < 0:
        raise ThresholdError(f"negative eviction minimum reclaim specified for {signal}")
    return Amount(text=text, bytes=math.ceil(amount))


def parse_thresholds(
    *,
    hard: str | dict | None,
    soft: str | dict | None = None,
    soft_grace_period: str | dict | None = None,
    minimum_reclaim: str | dict | None = None,
) -> list[Threshold]:
    """The four kubelet flags -> thresholds, hard ones first. A soft threshold needs a
    grace period; grace periods and reclaims for signals without a threshold are checked
    and otherwise unused, as in the kubelet."""
    graces = {}
    for signal, text in parse_statements(soft_grace_period, sep="=").items():
        _check_signal(signal)
        graces[signal] = parse_duration(text)
    reclaims = {s: parse_min_reclaim(s, t) for s, t in parse_statements(minimum_reclaim, sep="=").items()}
    out: list[Threshold] = []
    for signal, text in parse_statements(hard, sep="<").items():
        value = parse_threshold_value(signal, text)
        if value is not None:
            out.append(Threshold(signal=signal, value=value, min_reclaim=reclaims.get(signal)))
    for signal, text in parse_statements(soft, sep="<").items():
        value = parse_threshold_value(signal, text)
        if value is None:
            continue
        if signal not in graces:
            raise ThresholdError(f"grace period must be specified for the soft eviction threshold {signal}")
        out.append(Threshold(signal=signal, value=value, grace_seconds=graces[signal], min_reclaim=reclaims.get(signal), soft=True))
    return out
