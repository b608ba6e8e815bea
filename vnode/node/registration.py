"""Creating the Node, or adopting the one this machine registered before.

A Node name is a claim on a machine: if the existing Node carries another machine's ID,
this agent refuses to take it over (two Macs heartbeating one Node would corrupt every
pod on it) unless the operator says --force.
"""

from __future__ import annotations

import logging

from vnode.kubeclient import ApiError, KubeClient
from vnode.node.status import MACHINE_ID_ANNOTATION, NodeIdentity, labels, new_node
from vnode.provider.host import HostFacts

log = logging.getLogger(__name__)


class TakeoverRefused(RuntimeError):
    """The Node exists and belongs to another machine."""


def owner_machine_id(node: dict) -> str | None:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return annotations.get(MACHINE_ID_ANNOTATION) or ((node.get("status") or {}).get("nodeInfo") or {}).get("machineID") or None


def label_patch(existing: dict, wanted: dict[str, str]) -> dict[str, str]:
    """Only labels vnode owns that differ; labels others added are left alone."""
    current = (existing.get("metadata") or {}).get("labels") or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v}


async def register(api: KubeClient, identity: NodeIdentity, facts: HostFacts, *, force: bool) -> dict:
    """Create the Node, or reconcile and adopt an existing one. Returns the Node."""
    body = new_node(identity, facts)
    try:
        created = await api.create("/api/v1/nodes", body)
        log.info("registered node %s", identity.name, extra={"node": identity.name})
        return created
    except ApiError as exc:
        if exc.status != 409:
            raise
    existing = await api.get(f"/api/v1/nodes/{identity.name}")
    owner = owner_machine_id(existing)
    if owner and owner != facts.machine_id:
        if not force:
            raise TakeoverRefused(
                f"node {identity.name} is registered by another machine (machine ID {owner}, this machine is "
                f"{facts.machine_id}); choose another --node-name, delete that Node, or pass --force to take it over"
            )
        log.warning("taking over node %s from machine %s (--force)", identity.name, owner)
    patch: dict = {"metadata": {}}
    changed_labels = label_patch(existing, labels(identity, facts))
    if changed_labels:
        patch["metadata"]["labels"] = changed_labels
    if owner != facts.machine_id:
        patch["metadata"]["annotations"] = {MACHINE_ID_ANNOTATION: facts.machine_id}
    if patch["metadata"]:
        existing = await api.patch(f"/api/v1/nodes/{identity.name}", patch)
    log.info("adopted existing node %s", identity.name, extra={"node": identity.name})
    return existing
