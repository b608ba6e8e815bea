import asyncio
import datetime as dt

from vnode.provider.logs import LogOptions, instance_files, parse_line, read_existing, stream


def write(path, *records):
    path.write_bytes(b"".join(r.encode() + b"\n" for r in records))


def test_partial_records_join_and_tail(tmp_path):
    log = tmp_path / "0.log"
    write(log, "2026-01-01T00:00:01.000000001Z stdout F one", "2026-01-01T00:00:02.5Z stdout P tw",
          "2026-01-01T00:00:02.6Z stdout F o", "2026-01-01T00:00:03Z stderr F three")
    lines, offset = read_existing(log, LogOptions())
    assert lines == [b"one\n", b"two\n", b"three\n"] and offset == log.stat().st_size
    assert read_existing(log, LogOptions(tail_lines=1))[0] == [b"three\n"]
    stamped = read_existing(log, LogOptions(timestamps=True, tail_lines=1))[0]
    assert stamped == [b"2026-01-01T00:00:03Z three\n"]
    since = dt.datetime(2026, 1, 1, 0, 0, 2, tzinfo=dt.timezone.utc)
    assert read_existing(log, LogOptions(since=since))[0] == [b"two\n", b"three\n"]


def test_rotated_files_are_read_oldest_first(tmp_path):
    write(tmp_path / "1.log.2", "2026-01-01T00:00:01Z stdout F a")
    write(tmp_path / "1.log.1", "2026-01-01T00:00:02Z stdout F b")
    write(tmp_path / "1.log", "2026-01-01T00:00:03Z stdout F c")
    assert [p.name for p in instance_files(tmp_path / "1.log")] == ["1.log.2", "1.log.1", "1.log"]
    assert read_existing(tmp_path / "1.log", LogOptions())[0] == [b"a\n", b"b\n", b"c\n"]


def test_malformed_lines_are_skipped():
    assert parse_line(b"garbage") is None
    assert parse_line(b"2026-01-01T00:00:01Z stdout F ") == ("2026-01-01T00:00:01Z", "stdout", False, b"")


async def test_follow_streams_new_lines_and_ends(tmp_path):
    log = tmp_path / "0.log"
    write(log, "2026-01-01T00:00:01Z stdout F first")
    done = {"v": False}
    got = []

    async def consume():
        async for chunk in stream(log, LogOptions(limit_bytes=100), follow=True, finished=lambda: done["v"]):
            got.append(chunk)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    with open(log, "ab") as f:
        f.write(b"2026-01-01T00:00:02Z stdout F second\n")
    await asyncio.sleep(0.2)
    done["v"] = True
    await asyncio.wait_for(task, 2)
    assert got == [b"first\n", b"second\n"]


def _bytes_read() -> int:
    """What this process has read through read(2) so far (Linux's /proc/self/io rchar)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_tail_reads_only_the_end_of_a_big_log(tmp_path):
    """Three rotated files of 1.5 MB each: --tail=10 gives what a whole read would, and reads
    a few KiB instead of 4.5 MB. Lines made of P records cross block and file boundaries."""
    import os

    if not os.path.exists("/proc/self/io"):
        import pytest

        pytest.skip("needs /proc/self/io to count the bytes read")
    n = 0
    for name in ("1.log.2", "1.log.1", "1.log"):
        records = []
        while sum(map(len, records)) < 1_500_000:
            n += 1
            ts = f"2026-01-01T00:{n // 6000 % 60:02d}:{n // 100 % 60:02d}.{n:09d}Z"
            if n % 7 == 0:  # a long line in two records
                records.append(f"{ts} stdout P {'x' * 300}-{n}-")
            records.append(f"{ts} stdout F line {n} {'y' * 60}")
        write(tmp_path / name, *records)
    log = tmp_path / "1.log"
    with open(log, "ab") as f:
        f.write(b"2026-01-01T01:00:00Z stdout F still being writ")  # no newline yet: not read
    full, offset = read_existing(log, LogOptions())
    assert offset == log.stat().st_size - len(b"2026-01-01T01:00:00Z stdout F still being writ")
    for tail in (0, 1, 10, 1000):
        assert read_existing(log, LogOptions(tail_lines=tail)) == (full[len(full) - tail:], offset), tail
    before = _bytes_read()
    lines, _ = read_existing(log, LogOptions(tail_lines=10, timestamps=True))
    read = _bytes_read() - before
    assert len(lines) == 10 and lines[-1].split(b" ")[2] == f"{n}".encode()
    assert read < 256 * 1024, f"--tail=10 read {read} bytes of a 4.5 MB log"
    # Crossing into the older files still works: everything but the first line.
    assert read_existing(log, LogOptions(tail_lines=len(full) - 1))[0] == full[1:]


async def test_the_serving_line_is_noticed_as_it_is_written(tmp_path):
    import asyncio

    from vnode.provider.logs import wait_for_serving

    log = tmp_path / "0.log"
    early = b"2026-12-02T17:53:11.400000000Z stderr F main: HTTP server is listening, hostname: 198.18.0.2, port: 8080\n"
    task = asyncio.create_task(wait_for_serving(log, done=lambda: False, poll=0.01))
    await asyncio.sleep(0.05)
    log.write_bytes(early + b"2026-12-02T17:53:15.344915000Z stderr F srv  llama_server: model loaded\n")
    await asyncio.sleep(0.05)
    assert not task.done(), "listening before the model is loaded is not serving"
    with log.open("ab") as f:
        f.write(b"2026-12-02T17:53:15.345142000Z stderr F srv  llama_server: listening on http://198.18.0.2:8080\n")
    assert await asyncio.wait_for(task, 2) is True
    assert await wait_for_serving(tmp_path / "none.log", done=lambda: True) is False
