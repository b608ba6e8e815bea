"""A small asyncio client for the Kubernetes REST API, speaking plain dicts.

Why not kubernetes_asyncio: importing it loads ~2,000 generated model classes (about
38 MiB of RSS, more than half of the agent's budget), while vnode keeps API objects as
plain dicts anyway (see ARCHITECTURE.md). What vnode needs is small: credentials from a
kubeconfig (vnode/kubeconfig.py), JSON over HTTPS, a Status turned into an error.

Credentials change under a running agent: the node's certificate is rotated
(node/client_certs.py), a tokenFile is rewritten by whoever issues it, an exec plugin's
credential expires. Each set gets its own aiohttp session: after a switch new requests use
the new one, while requests and watches already under way finish on the old session, which
is closed once idle. A 401 or 403 makes the client read its credentials again (at most every
RELOAD_SECONDS) and, if they changed, retry once, as client-go's transports do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from vnode.kubeconfig import (
    Credentials,
    ExecPluginError,
    KubeconfigError,
    describe_change,
    load_kubeconfig,
    read_token_file,
    run_exec_plugin,
    with_exec_result,
)

__all__ = ["ApiError", "Credentials", "ExecPluginError", "KubeClient", "KubeconfigError", "load_kubeconfig"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 15.0
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
RELOAD_SECONDS = 10.0  # after a rejection, the kubeconfig is read again at most this often
TOKEN_FILE_SECONDS = 60.0  # a tokenFile is read again this often (client-go's period)
REJECTED = {401: "401 Unauthorized", 403: "403 Forbidden"}


class ApiError(Exception):
    """The API server answered with an error Status."""

    def __init__(self, status: int, reason: str, message: str, body: dict | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body or {}


class _Link:
    """One aiohttp session for one set of credentials, with the requests using it counted."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.session = aiohttp.ClientSession(headers={"Accept": "application/json", "User-Agent": "vnode"},
                                             connector=aiohttp.TCPConnector(ssl=credentials.ssl, limit=16))
        # Per request, not a session default: aiohttp merges session defaults into a CONNECT's
        # proxy headers, and would send the bearer token to the proxy.
        self.auth = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        self.options: dict[str, Any] = {}
        if credentials.tls_server_name:
            self.options["server_hostname"] = credentials.tls_server_name
        if credentials.proxy:
            self.options["proxy"] = credentials.proxy
            if credentials.proxy_headers:
                self.options["proxy_headers"] = dict(credentials.proxy_headers)
        self.users = 0
        self.retired = False


class KubeClient:
    """JSON over aiohttp. Paths are API paths ("/api/v1/nodes/x")."""

    def __init__(self, credentials: Credentials, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._base = credentials  # as the kubeconfig says; with an exec plugin, before it ran
        self._exec_ran = False
        self._exec_expires: dt.datetime | None = None
        self._lock = asyncio.Lock()  # one reload or plugin run at a time
        self._retired: set[_Link] = set()
        self._closers: set[asyncio.Task] = set()
        self._last_reload = -math.inf
        self._token_read = time.monotonic()
        self._told_unchanged: str | None = None  # the fingerprint whose "unchanged" was logged
        self._link = _Link(credentials)

    @classmethod
    def from_kubeconfig(cls, path: Path, *, context: str | None = None) -> KubeClient:
        """Read on the loop on purpose: once, at start-up, before anything else runs, and a
        kubeconfig with its certificates is a few kilobytes."""
        if not path.is_file():
            raise KubeconfigError(f"--kubeconfig: {path} does not exist or is not a file")
        return cls(load_kubeconfig(path, context=context))

    @property
    def credentials(self) -> Credentials:
        """The credentials new requests are sent with."""
        return self._link.credentials

    @property
    def server(self) -> str:
        return self._link.credentials.server

    async def close(self) -> None:
        for link in (self._link, *self._retired):
            await link.session.close()
        self._retired.clear()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    # -- switching credentials -----------------------------------------------------------
    def use(self, credentials: Credentials) -> None:
        """Send new requests with `credentials`; what runs with the old ones finishes there."""
        old, self._link = self._link, _Link(credentials)
        old.retired = True
        if old.users:
            self._retired.add(old)
        else:
            self._close_later(old)

    async def reload_credentials(self, *, why: str) -> bool:
        """Read the kubeconfig (and the files it names) again; switch if anything changed."""
        async with self._lock:
            return await self._reload_locked(why=why, loud=True)

    def _acquire(self) -> _Link:
        link = self._link
        link.users += 1
        return link

    def _release(self, link: _Link) -> None:
        link.users -= 1
        if link.retired and link.users == 0 and link in self._retired:
            self._retired.discard(link)
            self._close_later(link)

    def _close_later(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(link.session.close(), name="kubeclient-close-session")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _fresh(self) -> None:
        """Before a request: an exec credential run for the first time or expired, a tokenFile
        due to be read again."""
        if self._base.exec is not None:
            if not self._exec_ran or (self._exec_expires is not None and _now() >= self._exec_expires):
                async with self._lock:
                    if not self._exec_ran or (self._exec_expires is not None and _now() >= self._exec_expires):
                        await self._run_exec_locked(why=None)
            return
        token_file = self._link.credentials.token_file
        if token_file is None or time.monotonic() - self._token_read < TOKEN_FILE_SECONDS:
            return
        self._token_read = time.monotonic()
        try:
            token = await asyncio.to_thread(read_token_file, token_file)
        except KubeconfigError as exc:  # as client-go: the last token read stays in use
            log.debug("%s; keeping the token read before", exc)
            return
        if token != self._link.credentials.token:
            await self.reload_credentials(why=f"tokenFile {token_file} changed")

    async def _rejected(self, link: _Link, status: int) -> bool:
        """The API server refused what `link` sent (401/403): True if other credentials are
        in use now, so the request is worth sending once more."""
        if link is not self._link:
            return True  # switched meanwhile (another request's reload, a rotation)
        async with self._lock:
            if link is not self._link:
                return True
            why = f"the API server answered {REJECTED[status]}"
            if self._base.exec is not None:
                if status != 401:
                    return False
                return await self._run_exec_locked(why=why)
            if time.monotonic() - self._last_reload < RELOAD_SECONDS:
                return False
            return await self._reload_locked(why=why, loud=status == 401)

    async def _reload_locked(self, *, why: str, loud: bool) -> bool:
        self._last_reload = time.monotonic()
        current = self._link.credentials
        if current.kubeconfig is None:
            return False
        self._token_read = time.monotonic()
        try:
            fresh = await asyncio.to_thread(load_kubeconfig, current.kubeconfig, context=current.context)
        except KubeconfigError as exc:
            log.warning("%s; reading the credentials again failed, keeping the current ones: %s", why, exc)
            return False
        # With a plugin, what the kubeconfig said is compared, not what the plugin gave.
        known = self._base if self._base.exec is not None else current
        if fresh.fingerprint == known.fingerprint:
            if loud and self._told_unchanged != known.fingerprint:
                log.warning("%s; the credentials in %s are unchanged on disk", why, current.kubeconfig)
                self._told_unchanged = known.fingerprint
            return False
        self._base = fresh
        if fresh.exec is not None:  # a plugin (new or changed): it runs before the next request
            self._exec_ran = False
            log.info("%s; the exec plugin in %s changed and runs again", why, current.kubeconfig)
            return True
        self.use(fresh)
        log.info("%s; reloaded the credentials from %s: %s", why, current.kubeconfig, describe_change(current, fresh))
        return True

    async def _run_exec_locked(self, *, why: str | None) -> bool:
        plugin = self._base.exec
        assert plugin is not None
        result = await run_exec_plugin(plugin)
        fresh = await asyncio.to_thread(with_exec_result, self._base, result)
        first = not self._exec_ran
        self._exec_ran, self._exec_expires = True, result.expires
        changed = fresh.fingerprint != self._link.credentials.fingerprint
        if changed:
            self.use(fresh)
        until = f", valid until {result.expires.isoformat()}" if result.expires else ""
        kind = "client certificate" if result.cert_pem else "token"
        if why is not None:
            log.info("%s; exec plugin %s ran again: %s %s%s", why, plugin.command, "a new" if changed else "the same", kind, until)
        elif first:
            log.info("exec plugin %s gave a %s%s", plugin.command, kind, until)
        else:
            log.debug("exec plugin %s renewed the %s%s", plugin.command, kind, until)
        return changed

    # -- requests -------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict:
        url = self.server + path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        retried = False
        while True:
            await self._fresh()
            link = self._acquire()
            try:
                async with link.session.request(method, url, data=data, headers={**headers, **link.auth},
                                                timeout=self._timeout, **link.options) as resp:
                    status, reason, text = resp.status, resp.reason or "", await resp.text()
            finally:
                self._release(link)
            # Refused before anything was done (authentication, authorization): safe to send again.
            if status in REJECTED and not retried and await self._rejected(link, status):
                retried = True
                continue
            if status >= 400:
                raise _error(status, reason, text)
            return json.loads(text) if text else {}

    async def get(self, path: str, **params: Any) -> dict:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: dict) -> dict:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: dict) -> dict:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, *, content_type: str = STRATEGIC) -> dict:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str, body: dict | None = None) -> dict:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, *, timeout_seconds: int = 300, on_open: Callable[[], None] | None = None,
                    **params: Any) -> AsyncIterator[dict]:
        """Watch events ({"type", "object"}) until the server ends the stream.

        An ERROR event is raised as ApiError (410 Gone means: list again). `on_open` is called
        once the server accepted the watch (an idle watch may send nothing for a minute). A
        watch started before a credential switch goes on with the old session until it ends."""
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds, **params}
        url = self.server + path + "?" + urlencode(query)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total, sock_read=timeout_seconds + 30)
        retried = False
        while True:
            await self._fresh()
            link = self._acquire()
            try:
                async with link.session.get(url, headers=link.auth, timeout=timeout, **link.options) as resp:
                    status = resp.status
                    if status >= 400:
                        reason, text = resp.reason or "", await resp.text()
                    else:
                        if on_open is not None:
                            on_open()
                        async for line in _lines(resp.content):
                            event = json.loads(line)
                            if event.get("type") == "ERROR":
                                st = event.get("object") or {}
                                raise ApiError(int(st.get("code") or 500), st.get("reason") or "", st.get("message") or "", st)
                            yield event
                        return
            finally:
                self._release(link)
            if status in REJECTED and not retried and await self._rejected(link, status):
                retried = True
                continue
            raise _error(status, reason, text)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited JSON lines of any length (readline() caps lines at 64 KiB)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line


def _error(status: int, reason: str, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return ApiError(status, (body.get("reason") if isinstance(body, dict) else None) or reason, message or text.strip()[:300], body)
