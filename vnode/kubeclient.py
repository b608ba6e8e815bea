"""A small asyncio client for the Kubernetes REST API, speaking plain dicts.

Why not kubernetes_asyncio: importing it loads ~2,000 generated model classes (about
38 MiB of RSS, more than half of the agent's budget), while vnode keeps API objects as
plain dicts anyway (see ARCHITECTURE.md). What vnode needs is small: load a kubeconfig
with client-certificate or token credentials, send JSON, turn a Status into an error.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

REQUEST_TIMEOUT = 15.0
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used (missing, malformed, unsupported credentials)."""


class ApiError(Exception):
    """The API server answered with an error Status."""

    def __init__(self, status: int, reason: str, message: str, body: dict | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body or {}


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None
    user: str


def _material(entry: dict, key: str, base: Path, scratch: Path) -> str | None:
    """A path for `key` or `key-data` (written to a private scratch file), else None."""
    if entry.get(f"{key}-data"):
        path = scratch / key
        path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        path.chmod(0o600)
        return str(path)
    if entry.get(key):
        path = Path(os.path.expanduser(entry[key]))
        return str(path if path.is_absolute() else base / path)
    return None


def load_kubeconfig(path: Path, *, context: str | None = None) -> Credentials:
    """Read a kubeconfig the way kubectl does for the parts a node uses."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise KubeconfigError(f"--kubeconfig: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"--kubeconfig: {path} is not valid YAML: {exc}") from None

    def named(kind: str, name: str) -> dict:
        for item in config.get(kind) or []:
            if item.get("name") == name:
                return item.get(kind[:-1]) or {}
        raise KubeconfigError(f"--kubeconfig: {path} has no {kind[:-1]} named {name!r}")

    ctx_name = context or config.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"--kubeconfig: {path} has no current-context")
    ctx = named("contexts", ctx_name)
    cluster = named("clusters", ctx.get("cluster", ""))
    user = named("users", ctx.get("user", ""))
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError(
            f"--kubeconfig: {path} uses an exec/auth-provider plugin; a node authenticates with its own "
            "client certificate (system:node:<name>) or a token"
        )
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"--kubeconfig: cluster {ctx.get('cluster')!r} in {path} has no server")
    base = path.resolve().parent
    scratch = Path(tempfile.mkdtemp(prefix="vnode-kubeconfig-"))
    try:
        ca = _material(cluster, "certificate-authority", base, scratch)
        cert = _material(user, "client-certificate", base, scratch)
        key = _material(user, "client-key", base, scratch)
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl: ssl.SSLContext | bool = False
        else:
            context_ssl = ssl.create_default_context(cafile=ca)
        if cert and key:
            if context_ssl is False:
                context_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context_ssl.check_hostname, context_ssl.verify_mode = False, ssl.CERT_NONE
            context_ssl.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeconfigError(f"--kubeconfig: credentials in {path} cannot be loaded: {exc}") from None
    finally:
        for item in scratch.iterdir():
            item.unlink()
        scratch.rmdir()
    token = user.get("token")
    if not token and user.get("tokenFile"):
        try:
            token = Path(user["tokenFile"]).read_text().strip()
        except OSError as exc:
            raise KubeconfigError(f"--kubeconfig: tokenFile {user['tokenFile']}: {exc.strerror}") from None
    return Credentials(server=server.rstrip("/"), ssl=context_ssl, token=token, user=ctx.get("user", ""))


class KubeClient:
    """JSON over one aiohttp session. Paths are API paths ("/api/v1/nodes/x")."""

    def __init__(self, credentials: Credentials, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.credentials = credentials
        self.server = credentials.server
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        headers = {"Accept": "application/json", "User-Agent": "vnode"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=credentials.ssl, limit=16)
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, *, context: str | None = None) -> KubeClient:
        if not path.is_file():
            raise KubeconfigError(f"--kubeconfig: {path} does not exist or is not a file")
        return cls(load_kubeconfig(path, context=context))

    async def close(self) -> None:
        await self._session.close()

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
        headers = {"Content-Type": content_type} if data is not None else None
        async with self._session.request(method, url, data=data, headers=headers, timeout=self._timeout) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _error(resp.status, resp.reason or "", text)
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

    async def watch(self, path: str, *, timeout_seconds: int = 300, **params: Any) -> AsyncIterator[dict]:
        """Watch events ({"type", "object"}) until the server ends the stream.

        An ERROR event is raised as ApiError (410 Gone means: list again)."""
        query = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds, **params}
        url = self.server + path + "?" + urlencode(query)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total, sock_read=timeout_seconds + 30)
        async with self._session.get(url, timeout=timeout) as resp:
            if resp.status >= 400:
                raise _error(resp.status, resp.reason or "", await resp.text())
            async for line in _lines(resp.content):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), status.get("reason") or "", status.get("message") or "", status)
                yield event


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
