"""Who is asking, and may they: the kubelet's authentication and authorization.

Client certificates are verified by TLS against the configured client CA (but never
required: metrics-server and others send bearer tokens), tokens are checked with a
TokenReview, and every request is authorized with a SubjectAccessReview on the `nodes`
resource of this node, with the fine-grained subresource of the path and, when that is
denied, the `nodes/proxy` fallback — as the kubelet does since 1.33. Answers are cached
briefly (allowed 5 min, denied 30 s, as the kubelet's webhook defaults).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from vnode.kubeclient import ApiError, KubeClient

log = logging.getLogger(__name__)

ALLOW_TTL = 300.0
DENY_TTL = 30.0
TOKEN_TTL = 120.0

VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())


def subresources(path: str) -> tuple[str, ...]:
    """The nodes subresources that may authorize `path`, most specific first."""
    first = path.strip("/").split("/", 1)[0]
    specific = {
        "pods": "pods", "runningpods": "pods", "healthz": "healthz", "configz": "configz",
        "stats": "stats", "metrics": "metrics", "logs": "log", "spec": "spec",
    }.get(first)
    return (specific, "proxy") if specific else ("proxy",)


def user_from_certificate(peercert: dict | None) -> User | None:
    """CN is the user and O the groups, as the API server reads client certificates."""
    if not peercert:
        return None
    name, groups = None, []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
            elif key == "organizationName":
                groups.append(value)
    return User(name=name, groups=tuple(groups)) if name else None


class Authenticator:
    """Bearer tokens through TokenReview, with a short cache keyed by the token's hash."""

    def __init__(self, api: KubeClient, *, audiences: list[str] | None = None) -> None:
        self._api = api
        self._audiences = audiences
        self._cache: dict[str, tuple[float, User | None]] = {}

    async def token(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        spec: dict = {"token": token}
        if self._audiences:
            spec["audiences"] = self._audiences
        review = await self._api.create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = review.get("status") or {}
        user = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            user = User(
                name=info.get("username", ""),
                groups=tuple(info.get("groups") or ()),
                uid=info.get("uid", ""),
                extra=tuple((k, tuple(v)) for k, v in sorted((info.get("extra") or {}).items())),
            )
        self._cache[key] = (time.monotonic() + (TOKEN_TTL if user else DENY_TTL), user)
        if len(self._cache) > 4096:
            self._cache.clear()
        return user


class Authorizer:
    """SubjectAccessReview on nodes/<subresource> of this node, with a short cache."""

    def __init__(self, api: KubeClient, *, node_name: str) -> None:
        self._api, self._node = api, node_name
        self._cache: dict[tuple, tuple[float, bool, str]] = {}

    async def allowed(self, user: User, *, verb: str, subresource: str) -> tuple[bool, str]:
        key = (user, verb, subresource)
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1], hit[2]
        spec = {
            "user": user.name,
            "groups": list(user.groups),
            "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": subresource, "name": self._node},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        review = await self._api.create(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        status = review.get("status") or {}
        ok = bool(status.get("allowed"))
        reason = status.get("reason") or ""
        self._cache[key] = (time.monotonic() + (ALLOW_TTL if ok else DENY_TTL), ok, reason)
        if len(self._cache) > 4096:
            self._cache.clear()
        return ok, reason

    async def authorize(self, user: User, *, method: str, path: str) -> tuple[bool, str, str]:
        """(allowed, verb, the subresources tried) for a request."""
        verb = VERBS.get(method, "get")
        tried = subresources(path)
        for sub in tried:
            try:
                ok, _ = await self.allowed(user, verb=verb, subresource=sub)
            except ApiError as exc:
                log.warning("SubjectAccessReview failed: %s", exc.message)
                return False, verb, ",".join(tried)
            if ok:
                return True, verb, sub
        return False, verb, ",".join(tried)
