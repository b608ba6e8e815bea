"""A full model store: a file the disk cannot hold is refused before it is fetched, and a
disk that fills up during the download removes the partial file and says so."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from vnode.provider import fetch

Usage = namedtuple("Usage", "total used free")


def _fetcher(tmp_path: Path) -> fetch._Fetcher:
    return fetch._Fetcher({"source": {"kind": "url", "url": "http://x/m.gguf"}, "store": str(tmp_path)}, emit=lambda e: None)


def test_a_file_larger_than_the_free_space_is_refused_up_front(tmp_path: Path, monkeypatch):
    part = tmp_path / "m.gguf.incomplete"
    part.write_bytes(b"x" * (10 << 20))  # 10 MiB already here count
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 30, 0, 50 << 20))
    _fetcher(tmp_path)._check_space(part, 60 << 20, "m.gguf")  # 50 MiB more, 50 MiB free: fits
    with pytest.raises(fetch.FetchError) as err:
        _fetcher(tmp_path)._check_space(part, 61 << 20, "m.gguf")
    assert err.value.reason == "InsufficientStorage"
    assert "needs 51 MiB more" in err.value.message and "50 MiB free" in err.value.message


def test_a_disk_that_fills_up_removes_the_partial_file(tmp_path: Path):
    part = tmp_path / "m.gguf.incomplete"
    part.write_bytes(b"GGUF")

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(fetch.FetchError) as err:
        fetch._write(Full(), b"more", part, "m.gguf", 3 << 20, 10 << 20)
    assert err.value.reason == "InsufficientStorage" and "(3 MiB of 10 MiB)" in err.value.message
    assert not part.exists()

    class Broken:
        def write(self, data):
            raise OSError(errno.EIO, "I/O error")

    part.write_bytes(b"GGUF")
    with pytest.raises(OSError):
        fetch._write(Broken(), b"more", part, "m.gguf", 0, None)
    assert part.exists(), "other errors keep the partial file for resume"
