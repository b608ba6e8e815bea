"""Reading containers' logs: the CRI-format files the shim writes, for `kubectl logs`.

Each line is `<RFC3339Nano> <stdout|stderr> <F|P> <text>` (P: a partial line continued by
the next record). Files rotate as N.log, N.log.1, ... per container instance N; the
previous instance's files are kept for `--previous`. Reads run in a thread; following
polls the file every 50 ms and ends when the instance has exited and nothing is left.
`--tail` reads backwards from the end, block by block, only as far as its lines reach:
`kubectl logs --tail=10` of a server that logged gigabytes reads a few KiB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

FOLLOW_POLL = 0.05
TAIL_BLOCK = 64 * 1024  # bytes read per step backwards


@dataclass(frozen=True)
class LogOptions:
    tail_lines: int | None = None
    since: dt.datetime | None = None
    timestamps: bool = False
    limit_bytes: int | None = None


def parse_time(text: str) -> dt.datetime | None:
    """RFC 3339 with up to nanoseconds (Python keeps microseconds)."""
    try:
        if text.endswith("Z"):
            text = text[:-1]
        if "." in text:
            head, frac = text.split(".", 1)
            text = f"{head}.{frac[:6]}"
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def parse_line(raw: bytes) -> tuple[str, str, bool, bytes] | None:
    """(timestamp, stream, partial, text) of one CRI record, or None if malformed."""
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    text = parts[3] if len(parts) == 4 else b""
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), parts[2] == b"P", text


def instance_files(log_path: Path) -> list[Path]:
    """An instance's files, oldest first (N.log.4 ... N.log.1, N.log)."""
    rotated = sorted(
        (p for p in log_path.parent.glob(log_path.name + ".*") if p.suffix.lstrip(".").isdigit()),
        key=lambda p: int(p.suffix.lstrip(".")), reverse=True,
    )
    return rotated + ([log_path] if log_path.exists() else [])


def _render(records: list[tuple[str, str, bool, bytes]], opts: LogOptions) -> list[bytes]:
    """Join partial records into lines, filter by time, format."""
    lines: list[bytes] = []
    pending = b""
    for ts, _stream, partial, text in records:
        if opts.since is not None:
            when = parse_time(ts)
            if when is not None and when < opts.since:
                pending = b""
                continue
        pending += text
        if partial:
            continue
        lines.append((ts.encode() + b" " if opts.timestamps else b"") + pending + b"\n")
        pending = b""
    if pending:
        lines.append(pending)
    return lines


def read_existing(log_path: Path, opts: LogOptions) -> tuple[list[bytes], int]:
    """Lines already written (after tail/since), and the offset where following continues."""
    files = instance_files(log_path)
    offset = _complete_end(log_path) if log_path in files else 0
    ends = {path: offset if path == log_path else path.stat().st_size for path in files}
    if opts.tail_lines is not None:
        records = _tail_records(files, ends, max(opts.tail_lines, 0))
    else:
        records = []
        for path in files:
            with open(path, "rb") as f:
                data = f.read(ends[path])
            records += [parsed for raw in data.split(b"\n") if (parsed := parse_line(raw))]
    lines = _render(records, opts)
    if opts.tail_lines is not None:
        lines = list(deque(lines, maxlen=max(opts.tail_lines, 0)))
    return lines, offset


def _complete_end(path: Path) -> int:
    """The offset just past the file's last newline (a line being written is not read yet)."""
    with open(path, "rb") as f:
        pos = f.seek(0, 2)
        while pos > 0:
            size = min(TAIL_BLOCK, pos)
            pos -= size
            f.seek(pos)
            cut = f.read(size).rfind(b"\n")
            if cut >= 0:
                return pos + cut + 1
    return 0


def _lines_backwards(path: Path, end: int) -> Iterator[bytes]:
    """The lines of the file's first `end` bytes, last first, without their newlines,
    read TAIL_BLOCK at a time from the end."""
    with open(path, "rb") as f:
        pos, rest = end, b""
        while pos > 0:
            size = min(TAIL_BLOCK, pos)
            pos -= size
            f.seek(pos)
            parts = (f.read(size) + rest).split(b"\n")
            rest = parts[0]  # may go on in the block before
            yield from reversed(parts[1:])
        yield rest


def _tail_records(files: list[Path], ends: dict[Path, int], n: int) -> list[tuple[str, str, bool, bytes]]:
    """The records of the last n lines, newest file first, stopping at the full record
    (F) that ends line n+1 from the end: everything before it is not needed."""
    picked: list[tuple[str, str, bool, bytes]] = []
    finals = 0
    for path in reversed(files):
        for raw in _lines_backwards(path, ends[path]):
            record = parse_line(raw)
            if record is None:
                continue
            if not record[2]:
                finals += 1
                if finals > n:
                    return picked[::-1]
            picked.append(record)
    return picked[::-1]


class _Budget:
    """limitBytes across a whole response: lines are cut at the limit, then nothing more."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit

    def take(self, line: bytes) -> bytes | None:
        if self._left is None:
            return line
        if self._left <= 0:
            return None
        line = line[: self._left]
        self._left -= len(line)
        return line


async def stream(
    log_path: Path, opts: LogOptions, *, follow: bool, finished: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """Yield log output; with `follow`, keep going until `finished()` and the file is drained."""
    lines, offset = await asyncio.to_thread(read_existing, log_path, opts)
    budget = _Budget(opts.limit_bytes)
    for line in lines:
        if (line := budget.take(line)) is None:
            return
        yield line
    if not follow:
        return
    follow_opts = LogOptions(timestamps=opts.timestamps)
    pending = b""
    while True:
        done = finished()
        try:
            size = log_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:  # rotated: continue from the start of the new file
            offset = 0
        if size > offset:
            data = await asyncio.to_thread(_read_from, log_path, offset)
            cut = data.rfind(b"\n") + 1
            offset += cut
            records = [p for raw in data[:cut].splitlines() if (p := parse_line(raw))]
            for line in _render(records, follow_opts):
                if line.endswith(b"\n"):
                    line, pending = pending + line, b""
                else:
                    pending += line
                    continue
                if (line := budget.take(line)) is None:
                    return
                yield line
            continue
        if done:
            return
        await asyncio.sleep(FOLLOW_POLL)


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(4 * 1024 * 1024)


# llama-server's line once the model is loaded and requests are answered ("srv llama_server:
# listening on http://..." / "main: server is listening on http://... - starting the main
# loop"); its earlier "HTTP server is listening, hostname: ..." comes before the model loads.
SERVING = re.compile(rb"listening on https?://")


async def wait_for_serving(log_path: Path, *, done: Callable[[], bool], poll: float = FOLLOW_POLL) -> bool:
    """Until the instance's log says the server serves (True), or `done()` (False). Reads
    only what was appended since the last look, in a thread; the shim's log rotates only
    past megabytes, long after a server has started."""
    offset, rest = 0, b""
    while not done():
        try:
            chunk = await asyncio.to_thread(_read_from, log_path, offset)
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if any(SERVING.search(line) for line in lines):
            return True
        if not chunk:
            await asyncio.sleep(poll)
    return False
