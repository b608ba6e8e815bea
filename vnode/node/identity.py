"""Who the kubeconfig makes vnode: asked of the API server with a SelfSubjectReview.

A node should be system:node:<name> in group system:nodes, so that the Node authorizer and
NodeRestriction confine it to its own Node, Lease and pods. Given an admin's kubeconfig
instead, vnode would work just as well, as cluster-admin, and nobody would notice: so it
says so, and with --require-node-identity refuses to start. Reads only; changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain, is_transient

log = logging.getLogger(__name__)

REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
NODES_GROUP = "system:nodes"


class IdentityRefused(RuntimeError):
    """--require-node-identity and the credentials are not the node's (or cannot be checked)."""


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...]


async def who_am_i(api: KubeClient) -> Identity:
    review = await api.create(REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    info = (review.get("status") or {}).get("userInfo") or {}
    return Identity(username=str(info.get("username") or ""), groups=tuple(info.get("groups") or ()))


def problem(identity: Identity, *, node_name: str, kubeconfig: str) -> str | None:
    """Why `identity` is not this node's, in one sentence a person can act on; None if it is."""
    expected = f"system:node:{node_name}"
    if identity.username == expected and NODES_GROUP in identity.groups:
        return None
    groups = ", ".join(identity.groups) or "none"
    return (f"the kubeconfig {kubeconfig} authenticates as {identity.username or 'nobody'} (groups: {groups}), not as this "
            f"node's identity {expected} in group {NODES_GROUP}, so the Node authorizer and NodeRestriction do not confine "
            f"vnode to its own objects; give it the node's own credentials (`vnode join` with a bootstrap token, or "
            f"deploy/node-credentials.sh {node_name})")


async def check(api: KubeClient, *, node_name: str, kubeconfig: str, require: bool) -> None:
    """Ask until the API server answers (retrying as the other controllers do), then warn, or
    with `require` raise IdentityRefused, when the identity is not the node's."""
    outage, backoff = Outage(log, "identity check (SelfSubjectReview)"), Backoff(cap=30.0)
    while True:
        try:
            identity = await who_am_i(api)
            break
        except Exception as exc:  # noqa: BLE001 - sorted into retry or a verdict below
            if is_transient(exc):
                delay = backoff.next_delay()
                outage.failed(explain(exc, server=api.server), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            why = ("the API server has no authentication.k8s.io/v1 SelfSubjectReview (Kubernetes before 1.28)"
                   if isinstance(exc, ApiError) and exc.status == 404 else explain(exc, server=api.server))
            if require:
                raise IdentityRefused(f"refusing to start (--require-node-identity): cannot check who the kubeconfig "
                                      f"{kubeconfig} authenticates as: {why}") from None
            log.warning("cannot check who the kubeconfig %s authenticates as: %s", kubeconfig, why)
            return
    outage.recovered()
    trouble = problem(identity, node_name=node_name, kubeconfig=kubeconfig)
    if trouble is None:
        log.info("authenticated as %s (group %s)", identity.username, NODES_GROUP)
        return
    if require:
        raise IdentityRefused(f"refusing to start (--require-node-identity): {trouble}")
    log.warning("%s; --require-node-identity refuses to start in this case", trouble)
