"""What the Node object says about this Mac: labels, taints, capacity, conditions, nodeInfo.

Pure functions from host facts to plain dicts, so the whole Node shape is unit-testable
without an API server. Condition reasons follow the kubelet's, because dashboards and
runbooks already match on them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from vnode import __version__
from vnode.node.budget import allocatable_memory
from vnode.provider.host import HostFacts, Pressure

ACCELERATOR_LABEL = "llmkube.dev/accelerator"
ACCELERATOR_VALUE = "metal"
MACHINE_ID_ANNOTATION = "llmkube.dev/machine-id"
CHIP_LABEL = "llmkube.dev/chip"

KUBELET_VERSION = f"v{__version__}-vnode"
RUNTIME_VERSION = f"vnode://{__version__}"


def kube_time(moment: dt.datetime) -> str:
    """RFC 3339 at second precision in UTC, as metav1.Time serialises."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity_bytes(n: int) -> str:
    """Bytes as a Kubernetes quantity in Ki, the unit the kubelet reports memory in."""
    return f"{n // 1024}Ki"


@dataclass(frozen=True)
class NodeIdentity:
    """What the operator chose for this node (from Settings), apart from what the host is."""

    name: str
    host_ip: str
    kubelet_port: int
    max_pods: int
    register_taint: bool
    memory_fraction: float | None
    extra_labels: dict[str, str] = field(default_factory=dict)


def labels(identity: NodeIdentity, facts: HostFacts) -> dict[str, str]:
    out = {
        "kubernetes.io/os": facts.os,
        "kubernetes.io/arch": facts.architecture,
        "kubernetes.io/hostname": identity.name,
        "beta.kubernetes.io/os": facts.os,
        "beta.kubernetes.io/arch": facts.architecture,
        ACCELERATOR_LABEL: ACCELERATOR_VALUE,
    }
    if facts.chip:
        out[CHIP_LABEL] = label_value(facts.chip)
    out.update(identity.extra_labels)
    return out


def label_value(text: str) -> str:
    """Squeeze free text ("Apple M2 Max") into a valid label value ("Apple-M2-Max")."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.strip())
    cleaned = cleaned.strip("-_.")[:63].strip("-_.")
    return cleaned


def taints(identity: NodeIdentity) -> list[dict[str, str]]:
    if not identity.register_taint:
        return []
    return [{"key": ACCELERATOR_LABEL, "value": ACCELERATOR_VALUE, "effect": "NoSchedule"}]


def resources(identity: NodeIdentity, facts: HostFacts) -> tuple[dict[str, str], dict[str, str]]:
    """capacity and allocatable: memory capacity is the unified memory, allocatable the budget."""
    capacity = {
        "cpu": str(facts.cpu_count),
        "memory": quantity_bytes(facts.memory_bytes),
        "pods": str(identity.max_pods),
    }
    allocatable = dict(capacity)
    allocatable["memory"] = quantity_bytes(allocatable_memory(facts.memory_bytes, identity.memory_fraction))
    return capacity, allocatable


def node_info(facts: HostFacts, *, boot_id: str = "") -> dict[str, str]:
    return {
        "machineID": facts.machine_id,
        "systemUUID": facts.machine_id,
        "bootID": boot_id,
        "kernelVersion": facts.kernel_version,
        "osImage": facts.os_image,
        "containerRuntimeVersion": RUNTIME_VERSION,
        "kubeletVersion": KUBELET_VERSION,
        "operatingSystem": facts.os,
        "architecture": facts.architecture,
    }


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class MemoryCondition:
    """MemoryPressure as the eviction manager decided it (pods/eviction.py), which owns
    the condition as the kubelet's does; `detail` says why while it is True."""

    pressure: bool
    detail: str = ""


def memory_condition(memory: MemoryCondition) -> Condition:
    if memory.pressure:
        return Condition("MemoryPressure", "True", "KubeletHasInsufficientMemory",
                         f"vnode has insufficient memory available: {memory.detail}" if memory.detail
                         else "vnode has insufficient memory available")
    return Condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "vnode has sufficient memory available")


def conditions(
    pressure: Pressure | None, *, not_ready: list[str], pressure_error: str = "", memory: MemoryCondition | None = None
) -> list[Condition]:
    """The four kubelet conditions. `not_ready` lists problems that make the node unfit;
    pressure None (the host could not be read) makes the pressure conditions Unknown.
    `memory`, when the eviction manager runs, decides MemoryPressure instead of the host."""
    if pressure is None:
        out = [
            Condition(kind, "Unknown", "HostFactsUnavailable", f"vnode could not read the host's state: {pressure_error}")
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
    else:
        out = _pressure_conditions(pressure)
    if memory is not None:
        out[0] = memory_condition(memory)
    if not_ready:
        out.append(Condition("Ready", "False", "KubeletNotReady", "; ".join(not_ready)))
    else:
        out.append(Condition("Ready", "True", "KubeletReady", "vnode is posting ready status"))
    return out


def _pressure_conditions(pressure: Pressure) -> list[Condition]:
    # While there is no pressure the message is constant, as the kubelet's is: live numbers
    # in it would turn every status computation into a write to the API server.
    return [
        Condition("MemoryPressure", "True", "KubeletHasInsufficientMemory", f"memory pressure: {pressure.memory_detail}")
        if pressure.memory
        else Condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "vnode has sufficient memory available"),
        Condition("DiskPressure", "True", "KubeletHasDiskPressure", f"disk pressure: {pressure.disk_detail}")
        if pressure.disk
        else Condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "vnode has no disk pressure"),
        Condition("PIDPressure", "True", "KubeletHasInsufficientPID", f"PID pressure: {pressure.pid_detail}")
        if pressure.pid
        else Condition("PIDPressure", "False", "KubeletHasSufficientPID", "vnode has sufficient PID available"),
    ]


def condition_dicts(
    current: list[Condition], previous: list[dict] | None, *, now: dt.datetime
) -> list[dict[str, str]]:
    """Serialise conditions; lastTransitionTime moves only when the status flips."""
    before = {c.get("type"): c for c in (previous or [])}
    stamp = kube_time(now)
    out = []
    for cond in current:
        old = before.get(cond.type)
        transition = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": transition or stamp,
            }
        )
    return out


def addresses(identity: NodeIdentity, facts: HostFacts) -> list[dict[str, str]]:
    return [
        {"type": "InternalIP", "address": identity.host_ip},
        {"type": "Hostname", "address": identity.name},
    ]


NODE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")


def condition_fingerprint(status: dict) -> tuple:
    """vnode's conditions as (type, status, reason), in a fixed order: what is compared with
    the API server's copy, which another writer (the node lifecycle controller) may change."""
    found = {c.get("type"): (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []}
    return tuple(found.get(kind, (kind, None, None)) for kind in NODE_CONDITIONS)


def status_fingerprint(status: dict) -> tuple:
    """What must be reported at once when it changes. Heartbeat times and messages are
    left out (a pressure message carries live numbers); they ride on the periodic report."""
    return (
        condition_fingerprint(status),
        tuple(sorted(status.get("capacity", {}).items())),
        tuple(sorted(status.get("allocatable", {}).items())),
        tuple((a["type"], a["address"]) for a in status.get("addresses", [])),
        tuple(sorted(status.get("nodeInfo", {}).items())),
        status.get("daemonEndpoints", {}).get("kubeletEndpoint", {}).get("Port"),
    )


def node_status(
    identity: NodeIdentity,
    facts: HostFacts,
    pressure: Pressure | None,
    *,
    previous_conditions: list[dict] | None,
    not_ready: list[str],
    now: dt.datetime,
    pressure_error: str = "",
    memory: MemoryCondition | None = None,
    boot_id: str = "",
) -> dict:
    capacity, allocatable = resources(identity, facts)
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": condition_dicts(
            conditions(pressure, not_ready=not_ready, pressure_error=pressure_error, memory=memory), previous_conditions, now=now
        ),
        "addresses": addresses(identity, facts),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": identity.kubelet_port}},
        "nodeInfo": node_info(facts, boot_id=boot_id),
    }


def new_node(identity: NodeIdentity, facts: HostFacts) -> dict:
    """The Node body for the first registration (taints can only be set here)."""
    annotations = {MACHINE_ID_ANNOTATION: facts.machine_id}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": identity.name, "labels": labels(identity, facts), "annotations": annotations},
        "spec": {"taints": taints(identity)},
    }
