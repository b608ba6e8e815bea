"""Standard cluster tooling on Mac nodes: `kubectl top` through the real metrics-server,
an HPA that scales a model across two Macs, and a PodDisruptionBudget that `kubectl
drain` honours while a client following the EndpointSlice sees no failed request.

Each Mac is a node of its own in its own network namespace (its own InternalIP), so
replicas with the same hostPort spread across them as on real Macs.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.support.endpoints import EndpointClient

from .conftest import REPO, namespace, serving_nodes, wait_for
from .test_pods import apply, deployment, pods

MACS = ("vnode-mac-a", "vnode-mac-b")


@pytest.fixture(scope="module")
def macs(cluster, hub):
    with serving_nodes(cluster, hub, MACS, own_host=True) as agents:
        yield agents


@pytest.fixture
def ns(cluster, macs, request):
    with namespace(cluster, request, "tooling") as name:
        yield name
    for mac in MACS:
        cluster.kubectl("uncordon", mac, check=False)


def spread(name: str, *, port: int, replicas: int = 1, cpu: str | None = None, grace: int | None = None) -> dict:
    """A Gemma Deployment that may run on either Mac (one replica per Mac: hostPort).

    Both "Macs" share this machine's cores: one thread per server keeps two busy servers
    from spinning against each other (ggml's threads busy-wait), as separate Macs would."""
    dep = deployment(name, port=port, replicas=replicas,
                     args=["-hf", f"{REPO}:Q4_K_M", "--port", str(port), "-c", "2048", "-t", "1"])
    spec = dep["spec"]["template"]["spec"]
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    spec["nodeSelector"] = {"llmkube.dev/accelerator": "metal"}
    if cpu:
        spec["containers"][0]["resources"] = {"requests": {"cpu": cpu}}
    return dep


def service(name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": "http", "name": "http"}]}}


def ready_pods(cluster, ns: str, app: str) -> list[dict]:
    out = []
    for pod in pods(cluster, ns, app):
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            out.append(pod)
    return out


def host_ip(cluster, node: str) -> str:
    return cluster.state.host_for(node).ns_ip


def server_pid_on(ip: str, port: int) -> int | None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "llama-server" and f"{port}" in cmd and ip in cmd:
            return proc.pid
    return None


def top(cluster, *args: str) -> list[list[str]]:
    out = cluster.kubectl("top", *args, "--no-headers", check=False)
    if out.returncode != 0:
        return []
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


def millicores(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def mebibytes(text: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(text[:-2]) * units[text[-2:]]


def test_kubectl_top_shows_the_serving_pod(cluster, ns):
    mac = MACS[0]
    dep = spread("topped", port=8120)
    dep["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] = mac
    apply(cluster, ns, dep, service("topped", 8120))
    pod = wait_for(lambda: (r := ready_pods(cluster, ns, "topped")) and r[0], timeout=240, what="topped Ready")
    name = pod["metadata"]["name"]
    ready_at = time.monotonic()
    with EndpointClient(cluster, ns, "topped", workers=1, max_tokens=4):  # some CPU to show
        node_row = wait_for(lambda: [r for r in top(cluster, "node", mac) if r[0] == mac and millicores(r[1]) > 0],
                            timeout=60, what="kubectl top node with CPU")[0]
        pod_row = wait_for(lambda: [r for r in top(cluster, "pod", "-n", ns) if r[0] == name and millicores(r[1]) > 0],
                           timeout=60, what="kubectl top pod with CPU")[0]
    assert time.monotonic() - ready_at <= 60 + 15, "metrics reach kubectl top within a scrape or two"
    assert mebibytes(node_row[3]) > 0, node_row
    raw = json.loads(cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}").stdout)
    rss = psutil.Process(server_pid_on(host_ip(cluster, mac), 8120)).memory_info().rss
    reported = mebibytes(pod_row[2]) * 2**20
    assert abs(reported - rss) <= 0.10 * rss, (pod_row, rss)
    assert raw["containers"][0]["name"] == "server" and raw["containers"][0]["usage"]["memory"].endswith("Ki")


def test_kubelet_metric_endpoints_through_the_api_server(cluster, ns):
    """What Prometheus' kubelet scrape and dashboards read, through the node proxy, for a
    serving pod: /stats/summary, /metrics/cadvisor and /metrics/probes."""
    from prometheus_client.parser import text_string_to_metric_families

    mac = MACS[1]
    dep = spread("scraped", port=8123)
    dep["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] = mac
    apply(cluster, ns, dep)
    pod = wait_for(lambda: (r := ready_pods(cluster, ns, "scraped")) and r[0], timeout=240, what="scraped Ready")
    name, proxy = pod["metadata"]["name"], f"/api/v1/nodes/{mac}/proxy"

    summary = json.loads(cluster.kubectl("get", "--raw", f"{proxy}/stats/summary").stdout)
    assert summary["node"]["nodeName"] == mac and summary["node"]["memory"]["workingSetBytes"] > 0
    assert summary["node"]["fs"]["capacityBytes"] > 0 and summary["node"]["runtime"]["imageFs"]["usedBytes"] > 100 * 2**20
    mine = next(p for p in summary["pods"] if p["podRef"]["name"] == name)
    container = mine["containers"][0]
    assert mine["podRef"] == {"name": name, "namespace": ns, "uid": pod["metadata"]["uid"]}
    assert container["name"] == "server" and container["memory"]["workingSetBytes"] > 50 * 2**20
    assert container["cpu"]["usageCoreNanoSeconds"] > 0 and container["logs"]["usedBytes"] > 0

    cadvisor = {f.name: f for f in text_string_to_metric_families(cluster.kubectl("get", "--raw", f"{proxy}/metrics/cadvisor").stdout)}
    for family in ("container_cpu_usage_seconds", "container_memory_working_set_bytes", "container_memory_rss",
                   "container_start_time_seconds", "container_last_seen"):
        samples = [x for x in cadvisor[family].samples if x.labels.get("pod") == name and x.labels.get("container") == "server"]
        assert samples and samples[0].labels["namespace"] == ns, family

    def probes_counted() -> bool:
        text = cluster.kubectl("get", "--raw", f"{proxy}/metrics/probes").stdout
        return any(x.value > 0 and x.labels.get("pod") == name and x.labels.get("probe_type") == "Readiness"
                   and x.labels.get("result") == "successful"
                   for f in text_string_to_metric_families(text) if f.name == "prober_probe" for x in f.samples)

    wait_for(probes_counted, timeout=10, what="prober_probe_total for the pod's readiness probe")


def test_hpa_scales_across_two_macs(cluster, ns):
    apply(cluster, ns, spread("elastic", port=8121, cpu="250m"), service("elastic", 8121))
    wait_for(lambda: ready_pods(cluster, ns, "elastic"), timeout=240, what="elastic Ready")
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "elastic"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "elastic"},
            "minReplicas": 1, "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
            },
        },
    }
    apply(cluster, ns, hpa)
    start = time.monotonic()
    with EndpointClient(cluster, ns, "elastic", workers=2, max_tokens=32) as load:
        both = wait_for(lambda: len(r := ready_pods(cluster, ns, "elastic")) == 2 and r, timeout=240, what="a second replica Ready")
        scaled_after = time.monotonic() - start
    assert {p["spec"]["nodeName"] for p in both} == set(MACS), "the replicas spread across the Macs"
    assert load.served > 0
    wait_for(lambda: len(pods(cluster, ns, "elastic")) == 1, timeout=180, what="back to one replica after the load stops")
    status = json.loads(cluster.kubectl("get", "hpa", "elastic", "-n", ns, "-o", "json").stdout)["status"]
    assert status["desiredReplicas"] == 1, status
    print(f"HPA: second replica Ready {scaled_after:.0f}s after the load started")


def test_drain_respects_the_budget_and_fails_no_request(cluster, ns):
    apply(cluster, ns, spread("steady", port=8122, replicas=2, grace=30), service("steady", 8122))
    apply(cluster, ns, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "steady"},
                        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "steady"}}}})
    wait_for(lambda: len(ready_pods(cluster, ns, "steady")) == 2, timeout=240, what="two replicas Ready")
    first, second = MACS
    with EndpointClient(cluster, ns, "steady") as client:
        wait_for(lambda: len(client.ok) == 2, timeout=30, what="requests served by both Macs")
        started = time.monotonic()
        client.mark(f"drain {first}")
        cluster.kubectl("drain", first, "--ignore-daemonsets", "--timeout=120s", timeout=150)
        drained = time.monotonic() - started
        assert [p["spec"]["nodeName"] for p in ready_pods(cluster, ns, "steady")] == [second]
        refused = cluster.kubectl("drain", second, "--ignore-daemonsets", "--timeout=15s", check=False, timeout=60)
        assert refused.returncode != 0 and "disruption budget" in refused.stderr, refused.stderr
        assert len(ready_pods(cluster, ns, "steady")) == 1, "the budget kept the last replica"
        cluster.kubectl("uncordon", first)
        wait_for(lambda: {p["spec"]["nodeName"] for p in ready_pods(cluster, ns, "steady")} == set(MACS),
                 timeout=240, what="the replacement Ready on the uncordoned Mac")
        client.mark(f"drain {second}")
        cluster.kubectl("drain", second, "--ignore-daemonsets", "--timeout=120s", timeout=150)
        time.sleep(2)
    assert not client.failed, "\n".join(client.timeline)
    assert client.served > 20, client.ok
    node = json.loads(cluster.kubectl("get", "node", second, "-o", "json").stdout)
    assert node["spec"].get("unschedulable") is True
    print(f"drain of {first}: {drained:.1f}s; requests served {dict(client.ok)}, failed {len(client.failed)}")


def test_discovery_and_namespace_deletion_stay_healthy(cluster, macs):
    """A registered metrics API must not break discovery, or namespaces stop deleting."""
    resources = cluster.kubectl("api-resources", "--api-group=metrics.k8s.io", "-o", "name")
    assert {"nodes.metrics.k8s.io", "pods.metrics.k8s.io"} <= set(resources.stdout.split()), resources.stdout
    assert "unable to retrieve" not in resources.stderr, resources.stderr
    cluster.kubectl("create", "namespace", "tooling-short-lived")
    cluster.kubectl("delete", "namespace", "tooling-short-lived", "--wait=true", "--timeout=60s", timeout=90)
