"""The download child: resolve a pod's model, fetch it resumably into the store, verify it.

Run as `python -m vnode.provider.fetch --json '<request>'` by ModelStore (models.py) so the
agent's event loop never blocks, the agent never imports huggingface_hub, and a pod deleted
mid-download can stop its download with a signal. It speaks JSON lines on stdout. The store
index helpers at the top are stdlib-only and shared with the agent; huggingface_hub is
imported lazily, and only by the child.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

# Store layout (root = ModelStore.root):
#   index.json                             {"models": {key: entry}, "files": {relpath: {sha256, size}}},
#                                          written only after a verified download (atomic replace)
#   hf/<org>/<name>/<commit>/<repo path>   verified files; split parts side by side, as llama.cpp wants
#   hf/.../<repo path>.incomplete          partial download, resumed with Range by the next child
#   url/<sha256(url)[:16]>/<basename>      --model-url downloads
#   .locks/                                flock files: one per file being written, one for the index
#   .hf/                                   HF_HOME of the child (huggingface_hub writes nothing there today)
# Index keys (source_key): "hf|<repo>|<revision>|quant:<QUANT>" / "|file:<path>" / "|default", "url|<url>".
#
# Protocol: request = argv --json {"source": ModelSource fields, "store", "endpoint", "offline"},
# token in env VNODE_HF_TOKEN. One JSON object per stdout line: {"event": "resolved"|"progress"|
# "waiting"|"verifying"|"done"|"error", ...}; "done" and exit 0, or "error" {reason, message} and exit 1.

__all__ = [
    "DEFAULT_QUANT",
    "FetchError",
    "INDEX_NAME",
    "choose_files",
    "lookup",
    "main",
    "read_index",
    "source_key",
]

INDEX_NAME = "index.json"
HEADER_FIRST_BYTES = 4 << 20  # a 262k-token vocabulary makes a header of about 7 MiB
HEADER_MAX_BYTES = 64 << 20
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf picks when no quant is given
GGUF_MAGIC = b"GGUF"
PROGRESS_INTERVAL = 0.25  # seconds between progress lines (~4 per second)
HASH_CHUNK = 4 << 20
TOKEN_ENV = "VNODE_HF_TOKEN"
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

Emit = Callable[[dict[str, Any]], None]


class FetchError(Exception):
    """A failure with a reason the pod layer can show (ModelNotFound, GatedModel, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------------------
# Store index (stdlib only: the agent reads it too)
# --------------------------------------------------------------------------------------


def source_key(source: dict[str, Any]) -> str:
    """The index key of a request: (repo, revision, quant/file) for hf, the URL for url."""
    if source.get("kind") == "url":
        return f"url|{source.get('url')}"
    if source.get("file"):
        selector = f"file:{source['file']}"
    elif source.get("quant"):
        selector = f"quant:{source['quant'].upper()}"
    else:
        selector = "default"
    return f"hf|{source.get('repo')}|{source.get('revision') or 'main'}|{selector}"


def read_index(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(root) / INDEX_NAME).read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("version", 1)
    data.setdefault("models", {})
    data.setdefault("files", {})
    return data


def _entry_present(root: Path, entry: dict[str, Any], index: dict[str, Any]) -> bool:
    """Every part of the entry is on disk with the size it had when it was verified."""
    for rel in entry.get("paths") or [entry.get("path")]:
        if not rel:
            return False
        record = index["files"].get(rel) or {}
        try:
            if (root / rel).stat().st_size != record.get("size"):
                return False
        except OSError:
            return False
    return True


def lookup(root: Path, source: dict[str, Any], index: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The index entry of an already downloaded and verified model, if it is still on disk."""
    root = Path(root)
    index = read_index(root) if index is None else index
    entry = index["models"].get(source_key(source))
    if entry and _entry_present(root, entry, index):
        return entry
    return None


@contextlib.contextmanager
def _flock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _record(root: Path, keys: list[str], entry: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
    """Add a verified model to the index (read-modify-write under a lock, atomic replace)."""
    with _flock(root / ".locks" / "index.lock"):
        index = read_index(root)
        index["files"].update(files)
        for key in keys:
            index["models"][key] = entry
        tmp = root / f".{INDEX_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, root / INDEX_NAME)


# --------------------------------------------------------------------------------------
# Choosing files in a repository (like llama.cpp's -hf repo:quant)
# --------------------------------------------------------------------------------------


def _is_model_gguf(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and "mmproj" not in base


def _split_index(name: str) -> int:
    m = _SPLIT.match(name)
    return int(m["index"]) if m else 1


def _parts(name: str) -> list[str]:
    m = _SPLIT.match(name)
    if not m:
        return [name]
    return [f"{m['prefix']}-{i:05d}-of-{m['count']}{m['ext']}" for i in range(1, int(m["count"]) + 1)]


def _match_quant(names: list[str], quant: str) -> list[str]:
    q = re.escape(quant.lower())
    exact = [n for n in names if re.search(rf"(^|[^a-z0-9]){q}([^a-z0-9_]|$)", n.lower())]
    return exact or [n for n in names if quant.lower() in n.lower()]


def _listing(ggufs: list[str], names: list[str]) -> str:
    if ggufs:
        shown = sorted({_parts(n)[0] for n in ggufs})
        more = f" (+{len(shown) - 30} more)" if len(shown) > 30 else ""
        return "available .gguf files: " + ", ".join(shown[:30]) + more
    return "it has no .gguf files" + (f" (files: {', '.join(sorted(names)[:10])})" if names else "")


def choose_files(names: list[str], *, quant: str | None, file: str | None, where: str) -> list[str]:
    """The files to download: the chosen model file first, then its other split parts.

    quant matches case-insensitively, a whole token first ("Q4_K" does not pick "Q4_K_M" when a
    Q4_K file exists), else as a substring; no quant prefers Q4_K_M, else the first .gguf;
    mmproj files are never picked. Raises FetchError(ModelNotFound) listing what is there.
    """
    available = set(names)
    ggufs = sorted(n for n in names if _is_model_gguf(n))
    if file:
        if file not in available:
            raise FetchError("ModelNotFound", f"{file} is not in {where}; {_listing(ggufs, names)}")
        chosen = file
    else:
        if quant:
            matches = _match_quant(ggufs, quant)
            if not matches:
                raise FetchError("ModelNotFound", f"no .gguf file for quant {quant} in {where}; {_listing(ggufs, names)}")
        else:
            matches = _match_quant(ggufs, DEFAULT_QUANT) or ggufs
            if not matches:
                raise FetchError("ModelNotFound", f"no .gguf model file in {where}; {_listing(ggufs, names)}")
        chosen = min(matches, key=lambda n: (_split_index(n) != 1, n.count("/"), n))
    parts = _parts(chosen)
    missing = [p for p in parts if p not in available]
    if missing:
        raise FetchError("ModelNotFound", f"split model {parts[0]} in {where} lacks parts: {', '.join(missing)}")
    return parts


# --------------------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------------------


class _Progress:
    """Aggregate byte counts over all parts; print at most one line per PROGRESS_INTERVAL.

    "downloaded" is how much of the model is in the store, "received" how much of that this
    child read from the network (not the kept part of a resumed file, nor a part already there).
    """

    def __init__(self, emit: Emit, total: int) -> None:
        self.emit = emit
        self.total = total
        self.base = 0  # bytes of parts already finished
        self.received = 0
        self.last = 0.0

    def update(self, file: str, file_bytes: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.emit({"event": "progress", "downloaded": self.base + file_bytes, "total": self.total, "file": file,
                       "received": self.received})

    def finish(self, file: str, size: int) -> None:
        self.update(file, size, force=True)
        self.base += size


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _safe_rel(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FetchError("ModelNotFound", f"refusing unsafe file name {name!r}")
    return name


class _Fetcher:
    def __init__(self, req: dict[str, Any], emit: Emit) -> None:
        self.source: dict[str, Any] = req["source"]
        self.root = Path(req["store"]).resolve()
        self.endpoint: str | None = (req.get("endpoint") or None) and req["endpoint"].rstrip("/")
        self.offline = bool(req.get("offline"))
        self.token: str | None = os.environ.get(TOKEN_ENV) or None
        self.emit = emit

    # -- entry point -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        kind = self.source.get("kind")
        if kind not in ("hf", "url"):
            raise FetchError("ModelNotFound", f"the child downloads hf and url sources, not {kind!r}")
        hit = lookup(self.root, self.source)
        if hit is not None:
            return self._done(hit, cached=True)
        if self.offline:
            return self._offline()
        with self._hub_errors():
            return self._hf() if kind == "hf" else self._url()

    def header(self) -> dict[str, Any]:
        """The front of the model's first file (its GGUF header), fetched with Range requests
        before anything else, so the agent can estimate the memory and refuse a model too big
        for the node before downloading gigabytes. "header": null when there is nothing to
        fetch (the model is in the store, offline) or the header cannot be read this way."""
        self.root.mkdir(parents=True, exist_ok=True)
        if lookup(self.root, self.source) is not None or self.offline or self.source.get("kind") not in ("hf", "url"):
            return {"event": "done", "header": None}
        with self._hub_errors():
            if self.source["kind"] == "hf":
                from huggingface_hub import hf_hub_url

                repo, _, commit, _, plan = self._resolve_hf()
                url, total = hf_hub_url(repo, plan[0][0], revision=commit, endpoint=self.endpoint), sum(p[3] or 0 for p in plan)
                headers = self._headers(send_token=True)
            else:
                url = self.source.get("url") or ""
                headers = self._headers(send_token=self._is_hub(url))
                total = self._probe(url, headers)[1] or 0
        if not total:
            return {"event": "done", "header": None, "why": "the model's size is not known"}
        dest = self.root / ".heads" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".gguf")
        dest.parent.mkdir(parents=True, exist_ok=True)
        why = self._prefix(url, headers, dest)
        if why:
            dest.unlink(missing_ok=True)
            return {"event": "done", "header": None, "why": why}
        return {"event": "done", "header": str(dest), "total": total}

    def _prefix(self, url: str, headers: dict[str, str], dest: Path) -> str | None:
        """Fetch growing prefixes of `url` into `dest` until its GGUF header parses; None, or why not."""
        import httpx2
        from huggingface_hub.utils import get_session

        from vnode.provider.estimate import EstimateError, read_gguf_header

        session = get_session()
        want = HEADER_FIRST_BYTES
        while want <= HEADER_MAX_BYTES:
            try:
                with session.stream("GET", url, headers={**headers, "Range": f"bytes=0-{want - 1}"}, timeout=30) as r:
                    if r.status_code not in (200, 206):
                        return f"the server answered HTTP {r.status_code} to a Range request"
                    got = 0
                    with open(dest, "wb") as f:
                        for chunk in r.iter_bytes():
                            f.write(chunk[: want - got])
                            got += len(chunk)
                            if got >= want:
                                break  # a server that ignores Range: stop reading, close
            except httpx2.HTTPError as e:
                return f"{type(e).__name__}: {e}"
            try:
                read_gguf_header(dest)
                return None
            except EstimateError as e:
                if e.reason != "HeaderIncomplete" or dest.stat().st_size < want:
                    return e.message
            want *= 4
        return f"the GGUF header is larger than {HEADER_MAX_BYTES >> 20} MiB"

    def _done(self, entry: dict[str, Any], *, cached: bool) -> dict[str, Any]:
        return {
            "event": "done",
            "path": str(self.root / entry["path"]),
            "sha256": entry["sha256"],
            "size": entry["size"],
            "files": [str(self.root / p) for p in entry.get("paths") or [entry["path"]]],
            "cached": cached,
        }

    # -- offline -----------------------------------------------------------------------

    def _offline(self) -> dict[str, Any]:
        src = self.source
        index = read_index(self.root)
        what = src.get("url") if src.get("kind") == "url" else f"{src.get('repo')}@{src.get('revision') or 'main'}"
        if src.get("kind") == "hf":
            # The exact request is not indexed; apply the -hf rules to the files this repo
            # revision has in the store (e.g. no quant given, Q4_K_M downloaded earlier).
            rev = src.get("revision") or "main"
            entries = sorted(
                (
                    e
                    for e in index["models"].values()
                    if e.get("kind") == "hf"
                    and e.get("repo") == src.get("repo")
                    and rev in (e.get("revision"), e.get("commit"))
                    and _entry_present(self.root, e, index)
                ),
                key=lambda e: -int(e.get("verified_at", 0)),  # the newest commit first
            )
            known = sorted({n for e in entries for n in e.get("files", [])})
            try:
                parts = choose_files(known, quant=src.get("quant"), file=src.get("file"), where=what)
            except FetchError:
                parts = []
            for e in entries:
                if parts and e.get("file") == parts[0]:
                    return self._done(e, cached=True)
            have = f"; the store has {', '.join(known)}" if known else ""
            asked = f"{what} (quant={src.get('quant')}, file={src.get('file')})"
            raise FetchError("OfflineMissing", f"{asked} is not in the model store and offline mode is on{have}")
        raise FetchError("OfflineMissing", f"{what} is not in the model store and offline mode is on")

    # -- hf ----------------------------------------------------------------------------

    def _resolve_hf(self) -> tuple[str, str, str, list[str], list[tuple[str, str, str | None, int | None]]]:
        """(repo, revision, commit, files, plan of (name, store path, sha256, size)) of an -hf source."""
        from huggingface_hub import HfApi, constants

        src = self.source
        repo = src.get("repo") or ""
        revision = src.get("revision") or "main"
        if not _REPO.match(repo) or ".." in repo:
            raise FetchError("ModelNotFound", f"invalid repository id {repo!r}")
        where = f"{repo}@{revision}"
        api = HfApi(endpoint=self.endpoint, token=self.token or False, library_name="vnode")
        info = self._retry(
            lambda: api.model_info(
                repo,
                revision=revision,
                files_metadata=True,  # siblings with size and lfs.sha256
                token=self.token or False,
                timeout=constants.HF_HUB_ETAG_TIMEOUT * 3,
            )
        )
        commit = info.sha or revision
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            commit = re.sub(r"[^\w.-]", "_", commit)
        siblings = {s.rfilename: s for s in info.siblings or []}
        names = choose_files(list(siblings), quant=src.get("quant"), file=src.get("file"), where=where)
        plan = []
        for name in names:
            s = siblings[name]
            size = s.lfs.size if s.lfs else s.size
            sha = s.lfs.sha256.lower() if s.lfs and s.lfs.sha256 else None
            rel = f"hf/{repo}/{commit}/{_safe_rel(name)}"
            plan.append((name, rel, sha, size))
        return repo, revision, commit, names, plan

    def _hf(self) -> dict[str, Any]:
        from huggingface_hub import hf_hub_url

        src = self.source
        repo, revision, commit, names, plan = self._resolve_hf()
        total = sum(p[3] or 0 for p in plan)
        self.emit({"event": "resolved", "repo": repo, "revision": revision, "commit": commit, "files": names, "total": total})
        headers = self._headers(send_token=True)
        progress = _Progress(self.emit, total)
        records: dict[str, dict[str, Any]] = {}
        for name, rel, sha, size in plan:
            url = hf_hub_url(repo, name, revision=commit, endpoint=self.endpoint)
            digest, real_size = self._download(url, rel, sha, size, headers, progress, display=name)
            records[rel] = {"sha256": digest, "size": real_size, "repo": repo, "commit": commit, "file": name}
        first = plan[0][1]
        entry = {
            "kind": "hf",
            "repo": repo,
            "revision": revision,
            "commit": commit,
            "file": names[0],
            "files": names,
            "path": first,
            "paths": [p[1] for p in plan],
            "sha256": records[first]["sha256"],
            "size": records[first]["size"],
            "total_size": sum(r["size"] for r in records.values()),
            "verified_at": int(time.time()),
        }
        keys = {source_key(src)}
        for rev in (revision, commit):
            keys.add(source_key({"kind": "hf", "repo": repo, "revision": rev, "file": names[0]}))
        _record(self.root, sorted(keys), entry, records)
        return self._done(entry, cached=False)

    # -- url ---------------------------------------------------------------------------

    def _url(self) -> dict[str, Any]:
        url = self.source.get("url") or ""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise FetchError("ModelNotFound", f"unsupported model URL {url!r}")
        name = unquote(parsed.path.rsplit("/", 1)[-1]) or "model.gguf"
        name = re.sub(r"[^\w.+-]", "_", name).lstrip(".") or "model.gguf"
        rel = f"url/{hashlib.sha256(url.encode()).hexdigest()[:16]}/{name}"
        headers = self._headers(send_token=self._is_hub(url))
        sha, size = self._probe(url, headers)
        progress = _Progress(self.emit, size or 0)
        digest, real_size = self._download(url, rel, sha, size, headers, progress, display=name)
        entry = {
            "kind": "url",
            "url": url,
            "file": name,
            "files": [name],
            "path": rel,
            "paths": [rel],
            "sha256": digest,
            "size": real_size,
            "total_size": real_size,
            "sha256_verified": sha is not None,  # False: the server gave no sha256, ours is recorded
            "verified_at": int(time.time()),
        }
        _record(self.root, [source_key(self.source)], entry, {rel: {"sha256": digest, "size": real_size, "url": url}})
        return self._done(entry, cached=False)

    def _is_hub(self, url: str) -> bool:
        host = urlparse(url).netloc
        hub = urlparse(self.endpoint or "https://huggingface.co").netloc
        return host == hub or host == "huggingface.co" or host.endswith(".huggingface.co")

    def _probe(self, url: str, headers: dict[str, str]) -> tuple[str | None, int | None]:
        """HEAD the URL (following redirects by hand, keeping each hop's headers) for sha256 and size."""
        from huggingface_hub.utils import get_session

        session = get_session()
        sha = size = None
        hop_headers = dict(headers)
        for _ in range(10):
            r = self._retry(lambda: session.head(url, headers=hop_headers, follow_redirects=False, timeout=30))
            for h in ("X-Linked-Etag", "ETag"):
                tag = (r.headers.get(h) or "").removeprefix("W/").strip('"').lower()
                if sha is None and _SHA256.match(tag):
                    sha = tag
            if size is None and r.headers.get("X-Linked-Size", "").isdigit():
                size = int(r.headers["X-Linked-Size"])
            if r.is_redirect and r.headers.get("location"):
                nxt = urljoin(url, r.headers["location"])
                if urlparse(nxt).netloc != urlparse(url).netloc:
                    hop_headers.pop("authorization", None)
                url = nxt
                continue
            if r.status_code in (405, 501):  # no HEAD: download without an expected checksum
                return sha, size
            if r.status_code >= 400:
                self._raise_status(r.status_code, url, r.headers.get("X-Error-Code"))
            if size is None and r.headers.get("Content-Length", "").isdigit():
                size = int(r.headers["Content-Length"]) or None
            return sha, size
        raise FetchError("DownloadFailed", f"too many redirects for {url}")

    # -- download one file ---------------------------------------------------------------

    def _download(
        self, url: str, rel: str, sha: str | None, size: int | None, headers: dict[str, str], progress: _Progress, *, display: str
    ) -> tuple[str, int]:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = self.root / ".locks" / (hashlib.sha256(rel.encode()).hexdigest()[:32] + ".lock")
        with _flock(lock, on_wait=lambda: self.emit({"event": "waiting", "file": display})):
            if dest.exists():
                known = read_index(self.root)["files"].get(rel) or {}
                real = dest.stat().st_size
                if known.get("size") == real and known.get("sha256") and (sha is None or known["sha256"] == sha):
                    progress.finish(display, real)
                    return known["sha256"], real
                digest = _sha256_file(dest)
                if sha is None or digest == sha:
                    progress.finish(display, real)
                    return digest, real
                dest.unlink()  # a stale or damaged copy: fetch it again
            part = dest.with_name(dest.name + ".incomplete")
            self._check_space(part, size, display)
            for attempt in (1, 2):
                resumed = self._stream(url, part, headers, size, progress, display)
                self.emit({"event": "verifying", "file": display})
                digest = _sha256_file(part)
                if sha is not None and digest != sha:
                    part.unlink(missing_ok=True)
                    if resumed and attempt == 1:
                        continue  # the kept prefix may be the bad part: once more from scratch
                    raise FetchError(
                        "ChecksumMismatch",
                        f"{display}: downloaded sha256 {digest} but the source lists {sha}; the file was deleted",
                    )
                break
            with open(part, "rb") as f:
                magic = f.read(4)
            if magic != GGUF_MAGIC:  # llama-server could not load it anyway (e.g. an HTML error page)
                part.unlink(missing_ok=True)
                raise FetchError("InvalidModel", f"{display} is not a GGUF file (starts with {magic!r}); it was deleted")
            real = part.stat().st_size
            os.replace(part, dest)
            progress.finish(display, real)
            return digest, real

    def _stream(
        self, url: str, part: Path, headers: dict[str, str], size: int | None, progress: _Progress, display: str
    ) -> bool:
        """GET url into part, resuming from its current length with Range; True if it resumed."""
        import httpx2
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session, hf_raise_for_status

        session = get_session()
        timeout = httpx2.Timeout(float(constants.HF_HUB_DOWNLOAD_TIMEOUT), connect=10.0)
        resumed = False
        retries = 5
        while True:
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have > size:
                part.unlink()
                have = 0
            if size is not None and have == size:
                return resumed
            req_headers = dict(headers)
            if have:
                req_headers["Range"] = f"bytes={have}-"
            try:
                with session.stream("GET", url, headers=req_headers, timeout=timeout) as r:
                    if r.status_code == 416 and have:
                        part.unlink()  # our partial is not a prefix of what the server has
                        continue
                    if r.status_code >= 500 or r.status_code in (408, 429):
                        raise httpx2.RemoteProtocolError(f"the server answered HTTP {r.status_code}")
                    if r.status_code >= 400:
                        r.read()
                        hf_raise_for_status(r)
                    if r.status_code == 206 and _range_start(r.headers.get("Content-Range")) != have:
                        part.unlink(missing_ok=True)  # not the range we asked for: start over
                        raise httpx2.RemoteProtocolError(f"asked for bytes from {have}, got {r.headers.get('Content-Range')}")
                    append = have > 0 and r.status_code == 206
                    resumed = resumed or append
                    if not append:
                        have = 0
                    if size is None and not progress.total:
                        length = r.headers.get("Content-Length", "")
                        progress.total = progress.base + have + int(length) if length.isdigit() else 0
                    progress.update(display, have, force=True)
                    with open(part, "ab" if append else "wb", buffering=0) as f:  # a full disk fails the write, not a close
                        for chunk in r.iter_bytes():
                            _write(f, chunk, part, display, have, size)
                            have += len(chunk)
                            progress.received += len(chunk)
                            progress.update(display, have)
                            retries = 5
                if size is None or have >= size:
                    return resumed
                raise httpx2.RemoteProtocolError(f"body ended at {have} of {size} bytes")
            except (httpx2.TransportError, httpx2.RemoteProtocolError) as e:
                retries -= 1
                if retries < 0:
                    raise FetchError("DownloadFailed", f"{display}: {type(e).__name__}: {e}") from e
                time.sleep(1)

    def _check_space(self, part: Path, size: int | None, display: str) -> None:
        """Refuse a file the store's disk cannot hold before fetching it (its size is known
        from the hub or a HEAD), rather than filling the disk and failing at the end."""
        if not size:
            return
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(part.parent).free
        if size - have > free:
            raise FetchError(
                "InsufficientStorage",
                f"{display} needs {(size - have) >> 20} MiB more but the model store's disk ({self.root}) has "
                f"{free >> 20} MiB free; free space there or move the store (--state-dir)")

    # -- helpers -----------------------------------------------------------------------

    def _headers(self, *, send_token: bool) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        from vnode import __version__

        token = self.token if send_token else None
        return build_hf_headers(token=token or False, library_name="vnode", library_version=__version__)

    def _retry(self, call: Callable[[], Any], attempts: int = 3) -> Any:
        """Retry transport errors and 5xx answers a few times; other errors go straight up."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(attempts):
            try:
                return call()
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if status < 500 or attempt == attempts - 1:
                    raise
            except httpx2.TransportError:
                if attempt == attempts - 1:
                    raise
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _raise_status(self, status: int, what: str, error_code: str | None) -> None:
        if error_code == "GatedRepo" or status in (401, 403):
            raise FetchError("GatedModel", self._gated_message(what, status))
        if status == 404:
            raise FetchError("ModelNotFound", f"{what} answered 404 Not Found")
        raise FetchError("DownloadFailed", f"{what} answered HTTP {status}")

    def _gated_message(self, what: str, status: int | None) -> str:
        if self.token:
            why = f"the token was refused (HTTP {status}); make sure it belongs to an account that accepted the model's terms"
        else:
            why = "a token is needed"
        return (
            f"{what} is gated or private: {why}. Give the container env HF_TOKEN from a Secret "
            "(env[].valueFrom.secretKeyRef)"
        )

    @contextlib.contextmanager
    def _hub_errors(self) -> Iterator[None]:
        """Translate huggingface_hub and network errors into FetchError reasons."""
        import httpx2
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        src = self.source
        what = src.get("url") if src.get("kind") == "url" else src.get("repo")
        try:
            yield
        except FetchError:
            raise
        except GatedRepoError as e:  # before RepositoryNotFoundError: it is a subclass
            raise FetchError("GatedModel", self._gated_message(what, _status(e))) from e
        except RevisionNotFoundError as e:
            raise FetchError("ModelNotFound", f"{what}: revision {src.get('revision')!r} not found") from e
        except EntryNotFoundError as e:
            raise FetchError("ModelNotFound", f"{what}: file not found ({_first_line(e)})") from e
        except RepositoryNotFoundError as e:
            if _status(e) == 401 and not self.token:
                raise FetchError(
                    "ModelNotFound",
                    f"repository {what} not found (if it is private or gated, a token is needed: env HF_TOKEN from a Secret)",
                ) from e
            raise FetchError("ModelNotFound", f"repository {what} not found") from e
        except OfflineModeIsEnabled as e:
            raise FetchError("OfflineMissing", str(e)) from e
        except HfHubHTTPError as e:
            status = _status(e)
            if status in (401, 403):
                raise FetchError("GatedModel", self._gated_message(what, status)) from e
            if status == 404:
                raise FetchError("ModelNotFound", f"{what}: not found ({_first_line(e)})") from e
            raise FetchError("DownloadFailed", f"{what}: {_first_line(e)}") from e
        except httpx2.HTTPError as e:
            raise FetchError("DownloadFailed", f"{what}: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise FetchError("DownloadFailed", f"{what}: {e}") from e


def _write(f: Any, chunk: bytes, part: Path, display: str, have: int, size: int | None) -> None:
    """Append to the partial file; a full disk removes it (it could not be finished, and it
    would keep the node under DiskPressure) and says so."""
    try:
        f.write(chunk)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        part.unlink(missing_ok=True)
        total = f" of {size >> 20} MiB" if size else ""
        raise FetchError("InsufficientStorage",
                         f"the model store's disk filled up while downloading {display} ({have >> 20} MiB{total}); the "
                         "partial file was removed; free space there or move the store (--state-dir)") from None


def _status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return next((line for line in text.splitlines() if line.strip()), text)


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _configure_env(req: dict[str, Any]) -> None:
    """Point huggingface_hub at the right hub before it is imported (it reads env at import)."""
    env = os.environ
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(name, None)  # only the request's token (VNODE_HF_TOKEN) is ever sent
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_XET"] = "1"  # plain HTTP: resumable with Range, and we verify sha256 ourselves
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    env["HF_HOME"] = str(Path(req["store"]) / ".hf")
    if req.get("endpoint"):
        env["HF_ENDPOINT"] = req["endpoint"].rstrip("/")
    if req.get("offline"):
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)


def _watch_parent() -> None:
    """Exit if the agent dies: nobody would read our output, and a restarted agent resumes."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnode.provider.fetch", description=__doc__)
    parser.add_argument("--json", required=True, help="the request: {source, store, endpoint, offline}")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            proto.write(json.dumps(event) + "\n")
            proto.flush()

    # SIGTERM unwinds normally (files closed and flushed, partial data kept for resume).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        req = json.loads(args.json)
        _configure_env(req)
        _watch_parent()
        fetcher = _Fetcher(req, emit)
        emit(fetcher.header() if req.get("header") else fetcher.run())
        return 0
    except FetchError as e:
        emit({"event": "error", "reason": e.reason, "message": e.message})
        return 1
    except Exception as e:  # a bug or an unexpected library error: still a clean protocol answer
        emit({"event": "error", "reason": "DownloadFailed", "message": f"{type(e).__name__}: {e}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
