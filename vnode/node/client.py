"""Connecting to the API server with the node's credentials, and surviving when it is away.

The API server going away, or rejecting expired credentials, is an operating condition
for a node, not a bug: callers get one clear sentence per failure (`explain`) and a
jittered exponential `Backoff`, never a traceback loop.
"""

from __future__ import annotations

import asyncio
import random
import ssl

import aiohttp

from vnode.kubeclient import REQUEST_TIMEOUT, ApiError, ExecPluginError


def explain(exc: BaseException, *, server: str) -> str:
    """One sentence a person can act on, for any error talking to the API server."""
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return (
                f"the API server at {server} rejected the node's credentials (401 Unauthorized): "
                "the client certificate or token in the kubeconfig is expired, revoked or not signed by the cluster CA"
            )
        if exc.status == 403:
            return f"forbidden by the API server (403): {exc.message}"
        return f"API server answered {exc.status} {exc.reason}: {exc.message}"
    if isinstance(exc, ExecPluginError):
        return f"no credentials for the API server at {server}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS verification of the API server at {server} failed: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"API server unreachable at {server}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return f"API server at {server} did not answer within {REQUEST_TIMEOUT:.0f}s"
    if isinstance(exc, aiohttp.ClientError | ssl.SSLError | OSError):
        return f"connection to the API server at {server} failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: network trouble, timeouts, 5xx, 429, 401 (credentials may be
    rotated underneath us) and a failed exec credential plugin (its identity provider may be
    away). 4xx other than those mean our request is wrong."""
    if isinstance(exc, ExecPluginError):
        return True
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status in (401, 408, 429)
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError, OSError))


class Backoff:
    """Jittered exponential delays; `reset()` after a success."""

    def __init__(self, *, initial: float = 0.2, cap: float = 30.0, factor: float = 2.0) -> None:
        self.initial, self.cap, self.factor = initial, cap, factor
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        return delay * random.uniform(0.8, 1.2)


class Outage:
    """Tracks a run of failures so each distinct problem is logged once (with its retry
    delay) and recovery is logged once, instead of one warning per attempt."""

    def __init__(self, logger, what: str) -> None:
        self._log, self._what = logger, what
        self._last: str | None = None
        self._count = 0

    def failed(self, message: str, *, retry_in: float) -> None:
        self._count += 1
        if message != self._last:
            self._log.warning("%s failed: %s; retrying in %.1fs", self._what, message, retry_in)
            self._last = message
        else:
            self._log.debug("%s failed again (%d): %s", self._what, self._count, message)

    def recovered(self) -> None:
        if self._last is not None:
            self._log.info("%s succeeded again after %d failed attempts", self._what, self._count)
        self._last, self._count = None, 0
