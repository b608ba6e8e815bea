"""Request latency by route family: every request is timed (refused ones too) under its family,
method and code; pod and namespace names never become label values."""

from prometheus_client import CollectorRegistry
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.kubelet_api.test_probe_metrics import app
from vnode.event_metrics import KUBELET_API_SECONDS
from vnode.kubelet_api.request_metrics import path_family

NAME = "vnode_kubelet_api_request_duration_seconds"


def test_families_are_a_fixed_set():
    assert path_family("/pods") == path_family("/pods/") == "/pods"
    assert path_family("/containerLogs/llm/gemma-7f9/server") == "/containerLogs"
    assert path_family("/exec/llm/gemma-7f9/u1/server") == "/exec"
    assert path_family("/metrics/resource") == "/metrics/resource"
    assert path_family("/metrics") == "/metrics"
    assert path_family("/metrics/nope") == "/metrics"
    assert path_family("/stats/summary") == "/stats/summary"
    assert path_family("/gemma-7f9/x") == path_family("/") == "other"


async def test_requests_are_timed_by_family_method_and_code():
    reg = CollectorRegistry()
    reg.register(KUBELET_API_SECONDS)

    def count(path: str, method: str, code: str) -> float:
        return reg.get_sample_value(f"{NAME}_count", {"path": path, "method": method, "code": code}) or 0.0

    wanted = [("/containerLogs", "GET", "404"), ("/healthz", "GET", "401"), ("other", "GET", "404"), ("/exec", "POST", "404")]
    before = {key: count(*key) for key in wanted}
    async with TestClient(TestServer(app())) as client:
        token = {"Authorization": "Bearer good"}
        assert (await client.get("/containerLogs/llm/gemma-7f9/server", headers=token)).status == 404
        assert (await client.get("/healthz")).status == 401
        assert (await client.get("/gemma-7f9/secret", headers=token)).status == 404
        assert (await client.post("/exec/llm/gemma-7f9/server?command=true", headers=token)).status == 404
    assert {key: count(*key) - before[key] for key in wanted} == dict.fromkeys(wanted, 1.0)
    labels = {value for metric in reg.collect() for sample in metric.samples for value in sample.labels.values()}
    assert not any("gemma" in value or "llm" in value for value in labels)
