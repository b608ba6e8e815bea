"""Filesystem and directory usage, for the FsStats of /stats/summary (node, image store, logs).

A filesystem's size, free space and inodes come from statvfs; what a file or directory
takes comes from a walk that adds up allocated blocks, as `du` does (not apparent sizes),
counts each inode once, never follows a symlink and never leaves the filesystem.
Blocking (a directory walk): callers run it in a thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Filesystem:
    """The filesystem holding a path."""

    capacity_bytes: int
    available_bytes: int  # free to unprivileged users
    used_bytes: int  # by everything on it
    inodes: int | None  # None where the filesystem has no fixed inode table
    inodes_free: int | None


@dataclass(frozen=True)
class PathUsage:
    """What a file or a directory tree takes on its filesystem."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class DirUsage:
    """A path's usage together with its filesystem's size (one FsStats)."""

    filesystem: Filesystem | None
    used: PathUsage | None


def filesystem(path: str | os.PathLike[str]) -> Filesystem | None:
    """statvfs of the filesystem holding `path`; None when `path` does not exist."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    inodes = int(st.f_files) or None
    return Filesystem(
        capacity_bytes=int(st.f_blocks * st.f_frsize),
        available_bytes=int(st.f_bavail * st.f_frsize),
        used_bytes=int((st.f_blocks - st.f_bfree) * st.f_frsize),
        inodes=inodes,
        inodes_free=int(st.f_ffree) if inodes is not None else None,
    )


def _allocated(st: os.stat_result) -> int:
    blocks = getattr(st, "st_blocks", None)
    return int(blocks) * 512 if blocks is not None else int(st.st_size)


def path_usage(path: str | os.PathLike[str], *, match: Callable[[str], bool] | None = None) -> PathUsage | None:
    """Allocated bytes and inodes of `path` (a file, or a directory and everything below it).

    With `match`, only files whose name it accepts are counted (directories are still
    walked, but not counted themselves). None when `path` does not exist.
    """
    try:
        top = os.lstat(path)
    except OSError:
        return None
    seen: set[tuple[int, int]] = set()
    total = inodes = 0

    def count(st: os.stat_result) -> None:
        nonlocal total, inodes
        key = (st.st_dev, st.st_ino)
        if key not in seen:  # hard links: one inode, counted once
            seen.add(key)
            total += _allocated(st)
            inodes += 1

    if not stat.S_ISDIR(top.st_mode):
        if match is None or match(Path(path).name):
            count(top)
        return PathUsage(bytes=total, inodes=inodes)
    if match is None:
        count(top)
    stack = [os.fspath(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue  # removed or unreadable while we walked
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != top.st_dev:
                    continue  # another filesystem mounted below: not ours to count
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    if match is None:
                        count(st)
                elif match is None or match(entry.name):
                    count(st)
    return PathUsage(bytes=total, inodes=inodes)


def dir_usage(path: str | os.PathLike[str], *, match: Callable[[str], bool] | None = None) -> DirUsage:
    """`path`'s usage and its filesystem's size, read together."""
    return DirUsage(filesystem=filesystem(path), used=path_usage(path, match=match))
