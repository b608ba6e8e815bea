"""The kubelet-compatible HTTPS server: TLS, authentication and authorization for every
path, and the routes. Handlers live one family per module (health, pods, logs, ...).

Errors are answered as metav1.Status JSON with the right code; a handler's unexpected
exception becomes a 500 with a Status, never a traceback to the client or a dead loop.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from vnode.kubelet_api import exec as exec_api
from vnode.kubelet_api import probe_metrics, request_metrics
from vnode.kubelet_api import cadvisor_metrics, health, logs, metrics, pods, portforward, resource_metrics, stats_summary
from vnode.kubelet_api.auth import Authenticator, Authorizer, User, user_from_certificate
from vnode.kubelet_api.context import CTX_KEY, ApiContext

log = logging.getLogger(__name__)

# The authenticated User, for handlers that log or audit who asked (RequestKey: aiohttp >= 3.13).
USER_KEY = web.RequestKey("user", User) if hasattr(web, "RequestKey") else "vnode.user"


def status_response(code: int, message: str, *, reason: str | None = None) -> web.Response:
    reasons = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
               500: "InternalError", 501: "NotImplemented", 503: "ServiceUnavailable"}
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason or reasons.get(code, "Unknown"), "code": code}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


def tls_context(*, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(client_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # certificates authenticate, tokens work too
    # The API server's SPDY upgrade needs HTTP/1.1, not h2.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Trouble:
    """One log line when reviews start failing and one when they work again, not one per
    request: metrics-server alone asks every 15 s for as long as the API server is away."""

    def __init__(self) -> None:
        self.failing: str | None = None

    def failed(self, what: str, exc: BaseException) -> None:
        if self.failing is None:
            log.warning("%s failed: %s; requests that need it get 503 until the API server answers again", what,
                        str(exc) or type(exc).__name__)  # a timeout says nothing itself
        self.failing = what

    def worked(self) -> None:
        if self.failing is not None:
            log.info("%s works again", self.failing)
            self.failing = None


def _middleware(authn: Authenticator, authz: Authorizer, *, anonymous: bool):
    trouble = _Trouble()

    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        user = None
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport else None
        user = user_from_certificate(peercert)
        header = request.headers.get("Authorization", "")
        if user is None and header.lower().startswith("bearer "):
            try:
                user = await authn.token(header[7:].strip())
            except Exception as exc:  # noqa: BLE001 - the API server may be away: not the client's fault
                trouble.failed("TokenReview", exc)
                return status_response(503, "cannot verify the token now: the API server is unreachable")
        if user is None:
            if not anonymous:
                return status_response(401, "Unauthorized")
            user = User(name="system:anonymous", groups=("system:unauthenticated",))
        try:
            ok, verb, sub = await authz.authorize(user, method=request.method, path=request.path)
        except Exception as exc:  # noqa: BLE001
            trouble.failed("SubjectAccessReview", exc)
            return status_response(503, "cannot authorize the request now: the API server is unreachable")
        trouble.worked()
        if not ok:
            return status_response(
                403, f"Forbidden (user={user.name}, verb={verb}, resource=nodes, subresource(s)=[{sub}])"
            )
        request[USER_KEY] = user
        return await handler(request)

    return auth


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and not exc.text.startswith("{"):
            return status_response(exc.status, exc.reason or exc.text or "error")
        raise
    except ConnectionError:  # the client went away: nothing to answer
        raise
    except Exception:
        log.exception("kubelet API handler for %s %s failed", request.method, request.path)
        return status_response(500, "internal error in vnode; see the agent's log")


def build_app(ctx: ApiContext, *, authn: Authenticator, authz: Authorizer, anonymous: bool = False) -> web.Application:
    app = web.Application(middlewares=[request_metrics.timing, _errors, _middleware(authn, authz, anonymous=anonymous)],
                          client_max_size=1024 * 1024)
    app[CTX_KEY] = ctx
    health.add_routes(app)
    pods.add_routes(app)
    logs.add_routes(app)
    metrics.add_routes(app)
    probe_metrics.add_routes(app)
    resource_metrics.add_routes(app)
    cadvisor_metrics.add_routes(app)
    stats_summary.add_routes(app)
    exec_api.add_routes(app)
    portforward.add_routes(app)
    return app


class KubeletServer:
    """Owns the listening socket; `run()` serves until cancelled, then closes gracefully."""

    def __init__(self, app: web.Application, *, host: str, port: int, tls: ssl.SSLContext) -> None:
        self._app, self._host, self._port, self._tls = app, host, port, tls
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls, reuse_address=True)
        await site.start()
        log.info("kubelet API listening on https://%s:%d", self._host, self._port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
