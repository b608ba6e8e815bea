"""Agent side of the model store: turn a pod's ModelSource into a verified local GGUF file.

Downloads run in a killable child process (`python -m vnode.provider.fetch`, see fetch.py) so
the agent's event loop never blocks and never imports huggingface_hub; pods asking for the
same model share one child, and when every one of them gives up the child is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnode import event_metrics
from vnode.provider import fetch as _fetch
from vnode.provider.diskusage import DirUsage, dir_usage
from vnode.provider.spec import ModelSource
from vnode.provider.subproc import communicate, python_child_env

__all__ = ["GGUF_MAGIC", "ModelError", "ModelStore", "ProgressCallback"]

log = logging.getLogger(__name__)
HEADER_TIMEOUT = 60.0  # resolving the repository and a few MiB of Range requests

GGUF_MAGIC = b"GGUF"
ProgressCallback = Callable[[int, int], None]
_CHILD_ENV_DROP = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", _fetch.TOKEN_ENV, "HF_HUB_OFFLINE")


class ModelError(Exception):
    """Why a model could not be made local.

    reason is one of ModelNotFound, GatedModel, ChecksumMismatch, DownloadFailed, OfflineMissing,
    InvalidModel (a downloaded file that is not a GGUF) or InvalidModelPath (a "path" source
    outside the store, or not a GGUF file); message is for people (kubectl describe).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _Download:
    key: str
    label: str
    future: asyncio.Future[Path]
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    waiters: int = 0
    callbacks: list[ProgressCallback] = field(default_factory=list)
    downloaded: int = 0
    received: int = 0  # from the network in this child (downloaded also counts resumed and reused bytes)
    total: int = 0


class ModelStore:
    """The node's model directory, the index of verified files in it, and running downloads."""

    kill_grace = 5.0  # seconds between SIGTERM and SIGKILL for a download child

    def __init__(
        self,
        root: Path,
        *,
        endpoint: str | None = None,
        offline: bool = False,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root).expanduser().resolve()  # the child reports resolved paths too
        self.endpoint = endpoint
        self.offline = offline
        self.python = python
        self._downloads: dict[str, _Download] = {}
        self._closed = False
        self.stored_bytes: int | None = None  # what the store takes on disk, as last measured (watch_size)
        self._changed = asyncio.Event()  # a download ended: measure again

    # -- public --------------------------------------------------------------------------

    async def ensure(
        self,
        source: ModelSource,
        *,
        token: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """The local path of the model (the first part of a split model), downloading if needed.

        Raises ModelError. Cancelling the call detaches from the download; the child is
        killed once no caller waits for it any more (its partial file stays for resume).
        """
        if self._closed:
            raise ModelError("DownloadFailed", "the model store is closed")
        if source.kind == "path":
            return await asyncio.to_thread(self._check_path, source)
        src = source.model_dump()
        entry = await asyncio.to_thread(_fetch.lookup, self.root, src)
        if entry is not None:
            return self.root / entry["path"]
        key = _fetch.source_key(src)
        if token:
            # Different tokens may see different things (gated repos): separate downloads.
            key += "|" + hashlib.sha256(token.encode()).hexdigest()[:12]
        dl = self._downloads.get(key)
        if dl is None:
            dl = self._start(key, source, token)
        dl.waiters += 1
        if on_progress is not None:
            dl.callbacks.append(on_progress)
            if dl.downloaded or dl.total:
                _call(on_progress, dl.downloaded, dl.total)
        try:
            return await asyncio.shield(dl.future)
        finally:
            dl.waiters -= 1
            if on_progress is not None:
                with contextlib.suppress(ValueError):
                    dl.callbacks.remove(on_progress)
            if dl.waiters == 0 and not dl.future.done():
                # Every caller was cancelled: stop the child (shielded, so a second cancel
                # cannot leave it running).
                await asyncio.shield(self._abort(dl))

    async def header(self, source: ModelSource, *, token: str | None = None,
                     timeout: float = HEADER_TIMEOUT) -> tuple[Path, int] | None:
        """The GGUF header of a model that is not in the store yet, fetched with Range
        requests, and the size of all its files: enough to estimate its memory before the
        download. None when the model is local or the header cannot be had that way (the
        estimate then waits for the download, as before)."""
        if self._closed or source.kind == "path" or self.offline:
            return None
        if await asyncio.to_thread(_fetch.lookup, self.root, source.model_dump()) is not None:
            return None  # in the store: the estimate reads the file itself
        request = {"source": source.model_dump(), "store": str(self.root), "endpoint": self.endpoint,
                   "offline": self.offline, "header": True}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-m", "vnode.provider.fetch", "--json", json.dumps(request), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._child_env(token))
            out, _ = await communicate(proc, timeout)
        except (OSError, TimeoutError) as exc:
            log.info("model header not fetched (%s): estimating after the download", exc, extra={"model": _label(source)})
            return None
        done = next((e for line in out.splitlines() if (e := _event(line)) and e.get("event") == "done"), None)
        if not done or not done.get("header"):
            why = (done or {}).get("why") or next((e.get("message") for line in out.splitlines() if (e := _event(line))
                                                   and e.get("event") == "error"), None)
            if why:
                log.info("model header not fetched (%s): estimating after the download", why, extra={"model": _label(source)})
            return None
        return Path(done["header"]), int(done["total"])

    def progress(self) -> dict[str, tuple[int, int]]:
        """Running downloads: label (repo:quant, repo/file or URL) -> (downloaded, total) bytes; total 0 = unknown."""
        return {dl.label: (dl.downloaded, dl.total) for dl in self._downloads.values()}

    def disk_usage(self) -> DirUsage:
        """Blocking (a walk of the store): the store's filesystem and what the store takes on
        it, partial downloads included; the image filesystem of /stats/summary."""
        return dir_usage(self.root)

    async def measure_size(self) -> int:
        """Measure what the store takes on disk (a walk, in a thread) into stored_bytes."""
        usage = await asyncio.to_thread(self.disk_usage)
        self.stored_bytes = usage.used.bytes if usage.used is not None else 0  # None: no store directory yet
        return self.stored_bytes

    async def watch_size(self, *, interval: float = 60.0) -> None:
        """Keep stored_bytes current until cancelled: after each download, and every
        `interval` seconds for files removed or added by hand."""
        while True:
            self._changed.clear()
            try:
                await self.measure_size()
            except Exception as exc:  # noqa: BLE001 - a metric must never stop the agent (its TaskGroup)
                log.warning("cannot measure the model store %s: %s", self.root, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)

    async def close(self) -> None:
        """Stop every running download; callers still waiting get ModelError(DownloadFailed)."""
        self._closed = True
        downloads = list(self._downloads.values())
        for dl in downloads:
            if not dl.future.done():
                dl.future.set_exception(ModelError("DownloadFailed", "the model store was closed"))
        await asyncio.gather(*(self._abort(dl) for dl in downloads), return_exceptions=True)

    # -- internals -----------------------------------------------------------------------

    def _check_path(self, source: ModelSource) -> Path:
        if not source.path:
            raise ModelError("ModelNotFound", "a path model source without a path")
        path = Path(source.path)
        if not path.is_absolute():
            path = self.root / path
        real, root = path.resolve(), self.root.resolve()
        if not real.is_relative_to(root):
            raise ModelError("InvalidModelPath", f"{path} is outside the model store {self.root}")
        try:
            with open(real, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise ModelError("ModelNotFound", f"{path} does not exist") from None
        except IsADirectoryError:
            raise ModelError("InvalidModelPath", f"{path} is a directory, not a GGUF file") from None
        except OSError as e:
            raise ModelError("ModelNotFound", f"{path}: {e}") from None
        if magic != GGUF_MAGIC:
            raise ModelError("InvalidModelPath", f"{path} is not a GGUF file (starts with {magic!r})")
        return path

    def _start(self, key: str, source: ModelSource, token: str | None) -> _Download:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Path] = loop.create_future()
        # Mark failures as retrieved: if every waiter left, nobody reads them.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        dl = _Download(key=key, label=_label(source), future=future)
        self._downloads[key] = dl
        dl.task = asyncio.create_task(self._run(dl, source, token), name=f"model-download {dl.label}")
        return dl

    def _child_env(self, token: str | None) -> dict[str, str]:
        env = python_child_env({k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP})
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        env["HF_HUB_DISABLE_XET"] = "1"
        if self.endpoint:
            env["HF_ENDPOINT"] = self.endpoint
        if self.offline:
            env["HF_HUB_OFFLINE"] = "1"
        if token:
            env[_fetch.TOKEN_ENV] = token  # not in argv: ps shows argv to every user
        return env

    async def _run(self, dl: _Download, source: ModelSource, token: str | None) -> None:
        request = {
            "source": source.model_dump(),
            "store": str(self.root),
            "endpoint": self.endpoint,
            "offline": self.offline,
        }
        proc: asyncio.subprocess.Process | None = None
        stderr_tail: deque[str] = deque(maxlen=20)
        drain: asyncio.Task[None] | None = None
        started = time.monotonic()
        try:
            spawn = asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    self.python,
                    "-m",
                    "vnode.provider.fetch",
                    "--json",
                    json.dumps(request),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self._child_env(token),
                )
            )
            try:
                proc = await asyncio.shield(spawn)
            except asyncio.CancelledError:
                # Cancelled while the child was being started: get hold of it to stop it.
                with contextlib.suppress(Exception):
                    proc = await spawn
                raise
            dl.proc = proc
            log.info("model download started", extra={"model": dl.label, "pid": proc.pid})
            assert proc.stdout is not None and proc.stderr is not None
            drain = asyncio.create_task(_drain(proc.stderr, stderr_tail))
            done: dict[str, Any] | None = None
            error: dict[str, Any] | None = None
            while line := await proc.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    log.debug("model download: unparsable line %r", line[:200])
                    continue
                kind = event.get("event")
                if kind == "progress":
                    dl.downloaded, dl.total = int(event.get("downloaded", 0)), int(event.get("total", 0))
                    received = int(event.get("received", 0))
                    if received > dl.received:
                        event_metrics.MODEL_DOWNLOADED_BYTES.inc(received - dl.received)
                        dl.received = received
                    for callback in list(dl.callbacks):
                        _call(callback, dl.downloaded, dl.total)
                elif kind == "done":
                    done = event
                elif kind == "error":
                    error = event
            rc = await proc.wait()
            await drain
            if dl.future.done():
                return
            if done is not None and rc == 0:
                log.info("model ready", extra={"model": dl.label, "path": done["path"], "sha256": done.get("sha256")})
                dl.future.set_result(Path(done["path"]))
                result = None if done.get("cached") else "success"  # cached: another child got it first
            elif error is not None:
                dl.future.set_exception(ModelError(str(error.get("reason", "DownloadFailed")), str(error.get("message", ""))))
                result = "failure"
            else:
                tail = " | ".join(stderr_tail) or "no output"
                dl.future.set_exception(ModelError("DownloadFailed", f"the download process exited with {rc}: {tail}"))
                result = "failure"
            if result is not None:
                event_metrics.MODEL_DOWNLOAD_SECONDS.labels(result=result).observe(time.monotonic() - started)
        except asyncio.CancelledError:
            if proc is not None:
                await _stop(proc, self.kill_grace)
                log.info("model download stopped", extra={"model": dl.label, "pid": proc.pid})
            if not dl.future.done():
                dl.future.cancel()
            raise
        except OSError as e:  # could not start the child
            if not dl.future.done():
                dl.future.set_exception(ModelError("DownloadFailed", f"cannot start the download process: {e}"))
        finally:
            self._changed.set()
            if drain is not None and not drain.done():
                drain.cancel()
            if self._downloads.get(dl.key) is dl:
                del self._downloads[dl.key]

    async def _abort(self, dl: _Download) -> None:
        if self._downloads.get(dl.key) is dl:
            del self._downloads[dl.key]
        if dl.task is not None:
            if not dl.task.done():
                dl.task.cancel()
            await asyncio.wait({dl.task})


def _label(source: ModelSource) -> str:
    if source.kind == "url":
        return str(source.url)
    what = source.repo or ""
    if source.file:
        what += f"/{source.file}"
    elif source.quant:
        what += f":{source.quant}"
    return what if source.revision == "main" else f"{what}@{source.revision}"


def _call(callback: ProgressCallback, downloaded: int, total: int) -> None:
    try:
        callback(downloaded, total)
    except Exception:
        log.exception("model progress callback failed")


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


async def _drain(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            tail.append(text[:500])
            log.debug("model download: %s", text)


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after grace seconds; always reaps the child."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()
