"""/metrics/resource in the kubelet's format: the series metrics-server reads, millisecond
timestamps, values from a real process tree, a vanished server counted as a scrape error."""

import json
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from vnode.kubelet_api.resource_metrics import render
from vnode.kubelet_api.snapshot import take_snapshot
from vnode.provider.supervisor import Instance

WANTED = {"container_cpu_usage_seconds", "container_memory_working_set_bytes", "container_start_time_seconds",
          "node_cpu_usage_seconds", "node_memory_working_set_bytes", "pod_cpu_usage_seconds",
          "pod_memory_working_set_bytes", "resource_scrape_error"}


def _instance(tmp_path, pid: int, name: str) -> Instance:
    pid_path = tmp_path / f"{name}.pid.json"
    pid_path.write_text(json.dumps({"pid": pid}))
    return Instance(pod_uid="u-" + name, namespace="ns", pod_name=name, container="server", instance=0, shim_pid=1,
                    shim_start=0.0, started_at=1_700_000_000.0, port=8080, host="198.18.0.2", log_path="",
                    exit_path="", pid_path=str(pid_path), args=[])


def test_series_timestamps_and_values(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", "x = bytearray(32 << 20)\nwhile True: pass"])
    try:
        time.sleep(0.5)
        gone = subprocess.Popen(["true"])
        gone.wait()
        snap = take_snapshot([_instance(tmp_path, server.pid, "gemma"), _instance(tmp_path, gone.pid, "gone")])
    finally:
        server.kill()
        server.wait()
    text = render(snap).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert WANTED <= set(families), set(families)
    (cpu,) = families["container_cpu_usage_seconds"].samples
    assert cpu.labels == {"container": "server", "pod": "gemma", "namespace": "ns"} and cpu.value > 0.1
    (mem,) = families["container_memory_working_set_bytes"].samples
    assert mem.value > 32 << 20
    assert families["container_start_time_seconds"].samples[0].value == 1_700_000_000.0
    assert families["pod_memory_working_set_bytes"].samples[0].value == mem.value
    assert families["resource_scrape_error"].samples[0].value == 1  # the vanished server
    # the kubelet writes timestamps in milliseconds
    line = next(l for l in text.splitlines() if l.startswith("container_cpu_usage_seconds_total{"))
    assert abs(int(line.rsplit(" ", 1)[1]) / 1000 - time.time()) < 60
    assert "# TYPE node_cpu_usage_seconds_total counter" in text
