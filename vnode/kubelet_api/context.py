"""What the kubelet API may see of the agent: read-only views, no pod writes.

exec, attach, logs and port-forward find a container through `ContainerSource`, a narrow
interface the agent wiring implements (as virtual-kubelet's PodHandlerConfig), never
through pod-worker or runner attributes: the pod layer can change inside without the
streaming code noticing, and the API cannot reach state it has no business with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web


@dataclass(frozen=True)
class Launch:
    """How vnode started a container's server: the one port it listens on, where it runs,
    and the environment a command run "in" the container sees."""

    host: str  # the pod IP: the node's address
    port: int  # the port vnode launched the server on (the only one port-forward reaches)
    workdir: str
    env: dict[str, str]


class ContainerHandle(Protocol):
    """One container of a pod bound to this node. Methods, not fields: the answers change
    as the container restarts."""

    pod_ref: str  # "namespace/name", for messages
    pod_uid: str
    name: str

    def launch(self) -> Launch | None:
        """None until the container has been translated and admitted."""

    def instance(self) -> int | None:
        """The number of the instance started last (0 first, +1 per restart); None before."""

    def restart_count(self) -> int: ...

    def waiting_reason(self) -> str:
        """Why it is not running yet (the status' waiting reason), for messages."""

    def log_path(self, instance: int) -> Path: ...

    def alive(self, instance: int) -> bool:
        """Whether that instance's process still runs."""


class PodHandle(Protocol):
    pod_ref: str
    pod_uid: str

    def container(self, name: str) -> ContainerHandle | None: ...

    def launches(self) -> list[Launch]:
        """The launched servers of every container of the pod (port-forward's targets)."""


class ContainerSource(Protocol):
    def find_pod(self, namespace: str, name: str) -> PodHandle | None: ...


@dataclass(frozen=True)
class StreamLimits:
    """Time bounds on streaming connections, as the kubelet's."""

    idle_timeout: float = 4 * 3600.0  # --streaming-connection-idle-timeout: no frame either way this long -> closed
    creation_timeout: float = 30.0  # the kubelet's stream creation timeout (exec's streams, port-forward pairs)
    connect_timeout: float = 10.0  # port-forward's TCP connect to the pod
    stall_timeout: float = 30.0  # a port-forward stream whose pod side takes nothing this long, with its buffer full, is ended


@dataclass
class ApiContext:
    node_name: str
    pods: Any  # PodController: /pods and /healthz/syncloop
    supervisor: Any
    log_dir: Path | None  # vnode's own log directory, served read-only on /logs/
    config: dict[str, Any] = field(default_factory=dict)  # what /configz shows
    ready: Any = None  # callable -> list of problems (empty when healthy)
    metrics: Any = None  # prometheus CollectorRegistry served on /metrics
    probe_metrics: Any = None  # prometheus CollectorRegistry served on /metrics/probes (the prober's stats)
    exec_enabled: bool = True
    running: Any = None  # callable -> list[Instance]: the container instances running now
    state_dir: Path | None = None  # the agent's state dir: the node filesystem of /stats/summary
    store_usage: Any = None  # blocking callable -> diskusage.DirUsage of the model store (imageFs)
    containers: ContainerSource | None = None  # exec, attach, logs, port-forward
    streams: StreamLimits = field(default_factory=StreamLimits)


CTX_KEY = web.AppKey("ctx", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CTX_KEY]


def find_pod(request: web.Request) -> PodHandle:
    """The pod the URL names; 404 when it is not on this node or when the URL's {uid}
    segment names another incarnation of it (as the kubelet answers)."""
    ctx = context(request)
    ns, name = request.match_info["namespace"], request.match_info["pod"]
    pod = ctx.containers.find_pod(ns, name) if ctx.containers is not None else None
    if pod is None:
        raise web.HTTPNotFound(reason=f'pod "{name}" in namespace "{ns}" is not on node {ctx.node_name}')
    uid = request.match_info.get("uid")
    if uid and uid != pod.pod_uid:
        raise web.HTTPNotFound(reason=f'pod "{name}" in namespace "{ns}" with UID {uid} is not on node {ctx.node_name} '
                                      f"(it has UID {pod.pod_uid})")
    return pod
