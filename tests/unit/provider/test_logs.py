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
