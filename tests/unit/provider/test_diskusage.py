"""Filesystem and directory usage as FsStats wants it: allocated bytes like `du`, each inode
once, symlinks not followed, a name filter for log files, the filesystem's size from statvfs."""

import os
import shutil

from vnode.provider.diskusage import dir_usage, filesystem, path_usage


def _blocks(path) -> int:
    return os.lstat(path).st_blocks * 512


def test_tree_counts_allocated_blocks_and_each_inode_once(tmp_path):
    root = tmp_path / "sandbox"
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a" * 10_000)
    (root / "sub" / "b").write_bytes(b"b" * 100_000)
    os.link(root / "a", root / "sub" / "a-again")  # a hard link: the same inode
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * 1_000_000)
    (root / "link").symlink_to(outside)  # never followed: its target is not ours
    got = path_usage(root)
    want = sum(_blocks(p) for p in (root, root / "sub", root / "a", root / "sub" / "b", root / "link"))
    assert got.bytes == want and got.bytes >= 110_000
    assert got.inodes == 5  # root, sub, a (once), b, the symlink itself
    assert got.bytes < 1_000_000


def test_match_counts_only_matching_files(tmp_path):
    cdir = tmp_path / "containers" / "server"
    cdir.mkdir(parents=True)
    for name, size in (("0.log", 3000), ("0.log.1", 5000), ("1.log", 7000), ("state.json", 90_000)):
        (cdir / name).write_bytes(b"l" * size)
    got = path_usage(cdir, match=lambda n: ".log" in n)
    assert got.inodes == 3
    assert got.bytes == sum(_blocks(cdir / n) for n in ("0.log", "0.log.1", "1.log"))


def test_a_single_file_and_a_missing_path(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 50_000)
    assert path_usage(f).bytes == _blocks(f) and path_usage(f).inodes == 1
    assert path_usage(tmp_path / "gone") is None
    assert filesystem(tmp_path / "gone") is None
    assert dir_usage(tmp_path / "gone").used is None


def test_filesystem_matches_disk_usage(tmp_path):
    fs, du = filesystem(tmp_path), shutil.disk_usage(tmp_path)
    assert fs.capacity_bytes == du.total
    assert abs(fs.available_bytes - du.free) < 64 << 20  # the disk is shared: allow for others writing
    assert 0 < fs.used_bytes <= fs.capacity_bytes
    assert fs.inodes is None or 0 <= fs.inodes_free <= fs.inodes
