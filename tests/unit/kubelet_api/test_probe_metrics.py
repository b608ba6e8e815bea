"""GET /metrics/probes through the real app (authn, authz, routing): the prober's registry
from the context, in Prometheus text, and a 404 when the agent gives none."""

from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from vnode.kubelet_api.auth import User
from vnode.kubelet_api.context import ApiContext
from vnode.kubelet_api.server import build_app
from vnode.metrics import probe_registry
from vnode.pods.probe_stats import SUCCESSFUL, ProbeStats


class Authn:
    async def token(self, token: str) -> User | None:
        return User(name="system:serviceaccount:monitoring:prometheus") if token == "good" else None


class Authz:
    async def authorize(self, user: User, *, method: str, path: str) -> tuple[bool, str, str]:
        return True, "get", "metrics"


def app(**ctx):
    context = ApiContext(node_name="mac", pods=SimpleNamespace(workers={}), supervisor=None, log_dir=None, **ctx)  # type: ignore[arg-type]
    return build_app(context, authn=Authn(), authz=Authz())  # type: ignore[arg-type]


async def test_serves_the_probers_series():
    stats = ProbeStats()
    stats.recorder({"metadata": {"name": "gemma", "namespace": "llm", "uid": "u1"}}, "server").record("Readiness", SUCCESSFUL, 0.01)
    async with TestClient(TestServer(app(probe_metrics=probe_registry(stats)))) as client:
        resp = await client.get("/metrics/probes", headers={"Authorization": "Bearer good"})
        text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert ('prober_probe_total{container="server",namespace="llm",pod="gemma",pod_uid="u1",probe_type="Readiness",'
            'result="successful"} 1.0') in text
    assert 'prober_probe_duration_seconds_count{container="server",namespace="llm",pod="gemma",probe_type="Readiness"} 1.0' in text


async def test_not_found_without_a_registry():
    async with TestClient(TestServer(app())) as client:
        resp = await client.get("/metrics/probes", headers={"Authorization": "Bearer good"})
    assert resp.status == 404
