"""One reading of the node and of every running container's process tree, shared by the
usage endpoints (/metrics/resource, /metrics/cadvisor, /stats/summary).

The containers come through the context's narrow `running` view (provider Instances),
never from pod-worker internals; reading is blocking (psutil), so handlers call
`rendered`, which reads and renders in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.registry import Collector

from vnode.kubelet_api.context import context
from vnode.provider.stats import Usage, node_usage, tree_usages
from vnode.provider.supervisor import Instance

T = TypeVar("T")


@dataclass(frozen=True)
class ContainerSample:
    inst: Instance
    usage: Usage

    @property
    def namespace(self) -> str:
        return self.inst.namespace

    @property
    def pod(self) -> str:
        return self.inst.pod_name

    @property
    def container(self) -> str:
        return self.inst.container

    @property
    def started_at(self) -> float:
        return self.inst.started_at


@dataclass(frozen=True)
class Snapshot:
    node: Usage
    containers: list[ContainerSample]
    errors: int = 0  # containers that could not be read (resource_scrape_error)


def take_snapshot(instances: list[Instance]) -> Snapshot:
    """Blocking: read the node and every running server's process tree."""
    pids = [inst.server_pid() for inst in instances]
    usages = tree_usages([pid for pid in pids if pid])
    samples, errors = [], 0
    for inst, pid in zip(instances, pids):
        usage = usages.get(pid) if pid else None
        if usage is None:
            errors += 1
            continue
        samples.append(ContainerSample(inst, usage))
    return Snapshot(node=node_usage(), containers=samples, errors=errors)


def running(request: web.Request) -> list[Instance]:
    """The container instances running now, as the context's narrow view gives them."""
    view = context(request).running
    return list(view()) if view is not None else []


async def rendered(request: web.Request, render: Callable[[Snapshot], T]) -> T:
    """A snapshot, made into a response body by `render`, both in a thread: with hundreds
    of containers the rendering alone would hold the loop for milliseconds."""
    instances = running(request)
    return await asyncio.to_thread(lambda: render(take_snapshot(instances)))


def prometheus_text(collector: Callable[[Snapshot], Collector]) -> Callable[[Snapshot], bytes]:
    """A renderer of one snapshot as Prometheus text through `collector(snapshot)`."""
    def render(snap: Snapshot) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector(snap))
        return generate_latest(registry)

    return render


def prometheus_handler(render: Callable[[Snapshot], bytes]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The GET handler that serves `render` of a fresh snapshot."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=await rendered(request, render), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
