"""A stand-in for the Hugging Face Hub, so download, resume, checksum and auth paths run for real offline.

It answers what huggingface_hub 2.4 asks of a hub over plain HTTP (TEST_CLUSTER.md, "Hugging Face
downloads"), with knobs for tests: gated repos, corrupted bodies, throttling, a request log.
In-process: `async with HubServer({repo: {name: bytes|path}}) as url`; standalone, e.g. bound to a
network-namespace address: `python -m tests.support.hfserver --repo org/name=PATH --host H --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["Hit", "HubServer", "main"]

FileData = bytes | str | Path
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Hit:
    """One request the server saw."""

    method: str
    kind: str  # "info", "tree", "resolve" or "other"
    repo: str | None
    file: str | None
    range: str | None
    authorized: bool  # an Authorization header was sent
    status: int


class HubServer:
    """Serves {repo: {filename: bytes or path}} like huggingface.co does.

    Knobs (plain attributes, change them any time, even mid-download):
      gated     {repo: token}: the repo's files answer 401 (no token) / 403 (wrong token) with
                X-Error-Code: GatedRepo unless `Authorization: Bearer <token>` is sent; with
                gate_api the /api endpoints are gated too (the real hub shows gated metadata).
      corrupt   set of file names (or "*") served with one byte flipped; headers keep the true sha256.
      throttle  bytes per second for file bodies (None: full speed).
      requests  list of Hit, in arrival order; count() sums them up.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, FileData]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gated: Mapping[str, str] | None = None,
        gate_api: bool = False,
        corrupt: Iterable[str] = (),
        throttle: int | None = None,
    ) -> None:
        self.repos: dict[str, dict[str, FileData]] = {r: dict(files) for r, files in repos.items()}
        self.host = host
        self.port = port
        self.gated: dict[str, str] = dict(gated or {})
        self.gate_api = gate_api
        self.corrupt: set[str] = set(corrupt)
        self.throttle = throttle
        self.requests: list[Hit] = []
        self.on_request: Callable[[Hit], None] | None = None  # the process prints each one (its request log)
        self.url: str | None = None
        self._sha: dict[tuple[str, str], str] = {}
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when port=0
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # -- helpers for tests -----------------------------------------------------------------

    def commit(self, repo: str) -> str:
        return hashlib.sha1(f"commit:{repo}".encode()).hexdigest()

    def count(self, kind: str = "resolve", *, method: str | None = "GET", file: str | None = None) -> int:
        return sum(
            1
            for h in self.requests
            if h.kind == kind and (method is None or h.method == method) and (file is None or h.file == file)
        )

    def sha256(self, repo: str, name: str) -> str:
        key = (repo, name)
        if key not in self._sha:
            data = self.repos[repo][name]
            h = hashlib.sha256()
            if isinstance(data, bytes):
                h.update(data)
            else:
                with open(data, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            self._sha[key] = h.hexdigest()
        return self._sha[key]

    def size(self, repo: str, name: str) -> int:
        data = self.repos[repo][name]
        return len(data) if isinstance(data, bytes) else os.path.getsize(data)

    # -- routing ---------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        kind, repo, rev, rest = "other", None, None, None
        if path.startswith("/api/models/"):
            tail = path[len("/api/models/") :]
            kind, repo = "info", tail
            for marker, k in (("/revision/", "info"), ("/tree/", "tree")):
                if marker in tail:
                    repo, after = tail.split(marker, 1)
                    rev, _, rest = after.partition("/")
                    kind = k
                    break
        elif "/resolve/" in path:
            repo, after = path[1:].split("/resolve/", 1)
            rev, _, rest = after.partition("/")
            kind = "resolve"
        if request.method not in ("GET", "HEAD") or kind == "other":
            response: web.StreamResponse = _error(404, "EntryNotFound" if kind != "other" else None, "Not found")
        else:
            try:
                if kind == "info":
                    response = await self._info(request, repo or "", rev)
                elif kind == "tree":
                    response = await self._tree(request, repo or "", rev or "main", rest or "")
                else:
                    response = await self._resolve(request, repo or "", rev or "main", rest or "")
            except _Answer as a:
                response = a.response
        self.requests.append(
            Hit(
                method=request.method,
                kind=kind,
                repo=repo,
                file=rest if kind == "resolve" else None,
                range=request.headers.get("Range"),
                authorized="Authorization" in request.headers,
                status=response.status,
            )
        )
        if self.on_request is not None:
            self.on_request(self.requests[-1])
        return response

    def _check(self, request: web.Request, repo: str, rev: str | None, *, api: bool) -> None:
        if repo not in self.repos:
            raise _Answer(_error(404, "RepoNotFound", "Repository not found"))
        token = self.gated.get(repo)
        if token is not None and (self.gate_api or not api):
            sent = request.headers.get("Authorization", "")
            if sent != f"Bearer {token}":
                status = 403 if sent else 401
                message = f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. Please log in."
                raise _Answer(_error(status, "GatedRepo", message))
        if rev is not None and rev not in ("main", self.commit(repo)):
            raise _Answer(_error(404, "RevisionNotFound", f"Invalid rev id: {rev}"))

    def _lfs(self, repo: str, name: str) -> dict:
        return {"sha256": self.sha256(repo, name), "size": self.size(repo, name), "pointerSize": 134}

    async def _info(self, request: web.Request, repo: str, rev: str | None) -> web.StreamResponse:
        self._check(request, repo, rev, api=True)
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for name in sorted(self.repos[repo]):
            entry: dict = {"rfilename": name}
            if blobs:
                lfs = await asyncio.to_thread(self._lfs, repo, name)
                entry.update(size=lfs["size"], blobId=_git_oid(lfs), lfs=lfs)
            siblings.append(entry)
        body = {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0] if "/" in repo else None,
            "sha": self.commit(repo),
            "private": False,
            "gated": "manual" if repo in self.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": siblings,
        }
        return web.json_response(body)

    async def _tree(self, request: web.Request, repo: str, rev: str, under: str) -> web.StreamResponse:
        self._check(request, repo, rev, api=True)
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        entries, dirs = [], set()
        for name in sorted(self.repos[repo]):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if not recursive and "/" in rest:
                d = prefix + rest.split("/", 1)[0]
                if d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
                continue
            lfs = await asyncio.to_thread(self._lfs, repo, name)
            entries.append(
                {
                    "type": "file",
                    "oid": _git_oid(lfs),
                    "size": lfs["size"],
                    "path": name,
                    "lfs": {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]},
                }
            )
        if prefix and not entries:
            return _error(404, "EntryNotFound", f"{under} does not exist on {rev}")
        return web.json_response(entries)

    async def _resolve(self, request: web.Request, repo: str, rev: str, name: str) -> web.StreamResponse:
        self._check(request, repo, rev, api=False)
        if name not in self.repos[repo]:
            return _error(404, "EntryNotFound", f"{name} does not exist on {rev}")
        sha = await asyncio.to_thread(self.sha256, repo, name)
        size = self.size(repo, name)
        headers = {
            "X-Repo-Commit": self.commit(repo),
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(size),
            "ETag": f'"{sha}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end = 0, size - 1
        status = 200
        wanted = request.headers.get("Range")
        if wanted:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(size - int(m.group(2)), 0)
                if start >= size or start > end:
                    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", **headers})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        flip = size // 2 if (name in self.corrupt or "*" in self.corrupt) else -1
        data = self.repos[repo][name]
        try:
            with open(data, "rb") if not isinstance(data, bytes) else contextlib.nullcontext() as f:
                pos = start
                while pos <= end:
                    n = min(_CHUNK, end - pos + 1)
                    if self.throttle:
                        n = min(n, max(1024, self.throttle // 10))
                    if isinstance(data, bytes):
                        chunk = data[pos : pos + n]
                    else:
                        f.seek(pos)
                        chunk = f.read(n)
                    if pos <= flip < pos + len(chunk):
                        b = bytearray(chunk)
                        b[flip - pos] ^= 0xFF
                        chunk = bytes(b)
                    await response.write(chunk)
                    pos += len(chunk)
                    if self.throttle:
                        await asyncio.sleep(len(chunk) / self.throttle)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (a cancelled download)
        return response


class _Answer(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _error(status: int, code: str | None, message: str) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)


def _git_oid(lfs: dict) -> str:
    """The git blob id of the LFS pointer file, as the hub reports for LFS files."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{lfs['sha256']}\nsize {lfs['size']}\n".encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


def _parse_repos(values: list[str]) -> dict[str, dict[str, FileData]]:
    repos: dict[str, dict[str, FileData]] = {}
    for value in values:
        repo, sep, path = value.partition("=")
        if not sep or not repo or not path:
            raise SystemExit(f"--repo wants org/name=PATH, got {value!r}")
        p = Path(path)
        files = repos.setdefault(repo, {})
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    files[f.relative_to(p).as_posix()] = f
        elif p.is_file():
            files[p.name] = p
        else:
            raise SystemExit(f"{path} does not exist")
    return repos


async def _serve(server: HubServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Hash every file before announcing the URL, so the first metadata request is not slow.
    await asyncio.gather(*(asyncio.to_thread(server.sha256, r, n) for r, files in server.repos.items() for n in files))
    url = await server.start()
    print(json.dumps({"url": url, "repos": {r: sorted(f) for r, f in server.repos.items()}}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def start_hub(directory: Path, host: str, files: Mapping[str, tuple[str, Path]], *, log: Path,
              args: Iterable[str] = (), name: str = "hfserver", timeout: float = 30.0):
    """This module as a process of its own on `host` (a test cluster's address), serving
    each repo of `files` ({repo: (file name, path)}) from a directory under `directory` that
    links to the file; extra command-line `args` for the knobs (--corrupt, --gated,
    --throttle). Returns (Proc, URL) once the hub answers; the caller stops the Proc. Shared
    by the e2e fixtures, the conformance runner and the benchmarks."""
    import sys
    import time
    import urllib.request

    from vnode.cluster.local import free_port
    from vnode.cluster.processes import start, stop

    repo_args: list[str] = []
    for repo, (filename, path) in files.items():
        repo_dir = directory / repo
        repo_dir.mkdir(parents=True, exist_ok=True)
        link = repo_dir / filename
        if link.resolve() != Path(path).resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(path)
        repo_args += ["--repo", f"{repo}={repo_dir}"]
    port = free_port(host)
    root = Path(__file__).resolve().parents[2]
    proc = start(name, [sys.executable, "-m", "tests.support.hfserver", "--host", host, "--port", str(port), *repo_args, *args],
                 log=log, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    url = f"http://{host}:{port}"
    first = next(iter(files))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/api/models/{first}", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"the hub server did not come up within {timeout:.0f}s; see {log}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.hfserver", description=__doc__)
    parser.add_argument("--repo", action="append", default=[], help="org/name=PATH (a file, or a directory of files); repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--gated", action="append", default=[], help="org/name=TOKEN: gate the repo behind that token")
    parser.add_argument("--gate-api", action="store_true", help="gate the /api endpoints of gated repos too")
    parser.add_argument("--throttle", type=int, default=None, help="bytes per second for file bodies")
    parser.add_argument("--corrupt", action="append", default=[], help="file name to serve corrupted ('*' for all)")
    args = parser.parse_args(argv)
    if not args.repo:
        parser.error("at least one --repo is needed")
    gated = dict(g.split("=", 1) for g in args.gated)
    server = HubServer(
        _parse_repos(args.repo),
        host=args.host,
        port=args.port,
        gated=gated,
        gate_api=args.gate_api,
        corrupt=args.corrupt,
        throttle=args.throttle,
    )
    server.on_request = lambda hit: print(json.dumps({"request": asdict(hit)}), flush=True)
    asyncio.run(_serve(server))


if __name__ == "__main__":
    main()
