"""/metrics/cadvisor: the container_* series with cadvisor's labels (cpu="total" on the CPU
counter, a non-empty image as kube-prometheus-stack's rules select), millisecond
timestamps, a scrape error for a vanished server, served on the route."""

import asyncio
import json
import subprocess
import sys
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from vnode.kubelet_api import cadvisor_metrics
from vnode.kubelet_api.cadvisor_metrics import render
from vnode.kubelet_api.context import CTX_KEY, ApiContext
from vnode.kubelet_api.snapshot import ContainerSample, Snapshot
from vnode.provider.stats import Usage
from vnode.provider.supervisor import Instance

IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
WANTED = {"container_cpu_usage_seconds", "container_memory_working_set_bytes", "container_memory_rss",
          "container_start_time_seconds", "container_last_seen", "container_scrape_error"}


def _instance(name: str, *, pid_path: str = "", instance: int = 0) -> Instance:
    return Instance(pod_uid="u-" + name, namespace="ns", pod_name=name, container="server", instance=instance, shim_pid=1,
                    shim_start=0.0, started_at=1_700_000_000.0, port=8080, host="198.18.0.2", log_path="", exit_path="",
                    pid_path=pid_path, args=[], image=IMAGE)


def test_series_labels_and_timestamps():
    now = time.time()
    usage = Usage(timestamp=now, cpu_seconds=12.5, working_set_bytes=3 << 30, rss_bytes=400 << 20)
    node = Usage(timestamp=now, cpu_seconds=100.0, working_set_bytes=8 << 30, rss_bytes=8 << 30)
    text = render(Snapshot(node=node, containers=[ContainerSample(_instance("gemma", instance=2), usage)], errors=1)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert WANTED <= set(families), set(families)
    base = {"container": "server", "pod": "gemma", "namespace": "ns", "image": IMAGE,
            "id": "/vnode/podu-gemma/server/2", "name": "u-gemma/server/2"}
    (cpu,) = families["container_cpu_usage_seconds"].samples
    assert cpu.labels == {**base, "cpu": "total"} and cpu.value == 12.5
    for name, value in (("container_memory_working_set_bytes", 3 << 30), ("container_memory_rss", 400 << 20),
                        ("container_start_time_seconds", 1_700_000_000.0), ("container_last_seen", int(now))):
        (sample,) = families[name].samples
        assert sample.labels == base and sample.value == value, name
    assert families["container_scrape_error"].samples[0].value == 1
    # cadvisor, as the kubelet serves it, stamps usage samples in milliseconds
    line = next(line for line in text.splitlines() if line.startswith("container_cpu_usage_seconds_total{"))
    assert int(line.rsplit(" ", 1)[1]) == int(now * 1000)
    assert "# TYPE container_cpu_usage_seconds_total counter" in text


async def test_route_serves_a_real_process(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", "x = bytearray(32 << 20)\nwhile True: pass"])
    try:
        await asyncio.sleep(0.5)
        pid_path = tmp_path / "0.pid.json"
        pid_path.write_text(json.dumps({"pid": server.pid}))
        ctx = ApiContext(node_name="mac-1", pods=None, supervisor=None, log_dir=None,
                         running=lambda: [_instance("gemma", pid_path=str(pid_path))])
        app = web.Application()
        app[CTX_KEY] = ctx
        cadvisor_metrics.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/metrics/cadvisor")
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    finally:
        server.kill()
        server.wait()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (rss,) = families["container_memory_rss"].samples
    assert rss.value > 32 << 20 and rss.labels["image"] == IMAGE
    assert families["container_cpu_usage_seconds"].samples[0].value > 0.1
    assert families["container_scrape_error"].samples[0].value == 0
