"""Files that hold secrets (private keys, kubeconfigs): created owner-only and replaced whole.

The mode is given to os.open when the file is created, so a key is never readable by others,
not even between a write and a chmod; a replacement is written beside the target and renamed
over it, so a reader sees the old content or the new, never half of either. Blocking: call
from a thread when on the event loop, unless the file is small and the call rare.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600


def write_private(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) readable by its owner only, write and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with an owner-only file holding `data`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash: O_EXCL below must create it anew
    try:
        write_private(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
