from prometheus_client import generate_latest

from vnode import event_metrics
from vnode.metrics import registry
from vnode.pods.admission import MemoryBudget
from vnode.pods.probe_stats import ProbeStats


class FakeStore:
    stored_bytes = None

    def progress(self):
        return {"ggml-org/gemma-3-270m-GGUF:Q4_K_M": (100, 400)}


class FakePods:
    workers = {}

    def phase_counts(self):
        return {"Pending": 1, "Running": 2, "Succeeded": 0, "Failed": 0, "Unknown": 0}


def test_download_progress_is_exported():
    text = generate_latest(registry(models=FakeStore(), pods=FakePods())).decode()
    assert 'vnode_model_download_bytes{model="ggml-org/gemma-3-270m-GGUF:Q4_K_M"} 100.0' in text
    assert 'vnode_model_download_size_bytes{model="ggml-org/gemma-3-270m-GGUF:Q4_K_M"} 400.0' in text
    assert "vnode_pod_workers 0.0" in text


def test_serving_certificate_expiry_is_exported_once_known():
    import datetime as dt

    from vnode.node.certs import ServingState

    serving = ServingState()
    assert "vnode_serving_certificate_expiry" not in generate_latest(registry(models=FakeStore(), pods=FakePods(), serving=serving)).decode()
    serving.not_after = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    text = generate_latest(registry(models=FakeStore(), pods=FakePods(), serving=serving)).decode()
    assert "vnode_serving_certificate_expiry_timestamp_seconds 1.7987616e+09" in text


def _value(reg, name, labels=None):
    return reg.get_sample_value(name, labels or {})


def test_pods_budget_store_probes_and_evictions_are_read_from_their_owners():
    store = FakeStore()
    budget = MemoryBudget(16 << 30)
    probes = ProbeStats()
    evictions = {"memory.available": 2}
    reg = registry(models=store, pods=FakePods(), budget=budget, probes=probes, evictions=lambda: evictions)
    assert _value(reg, "vnode_model_store_bytes") is None  # not measured yet: no made-up zero
    assert _value(reg, "vnode_pods", {"phase": "Running"}) == 2 and _value(reg, "vnode_pods", {"phase": "Failed"}) == 0
    assert _value(reg, "vnode_memory_budget_bytes") == 16 << 30
    assert _value(reg, "vnode_memory_budget_free_bytes") == 16 << 30

    store.stored_bytes = 5 << 30
    budget.reserve(("u1", "server"), 3 << 30, what="container server")
    probes.recorder({"metadata": {"name": "gemma", "namespace": "llm", "uid": "u1"}}, "server").record("Readiness", "failed", 1.0)
    evictions["memory.available"] += 1
    assert _value(reg, "vnode_model_store_bytes") == 5 << 30
    assert _value(reg, "vnode_memory_budget_used_bytes") == 3 << 30
    assert _value(reg, "vnode_memory_budget_free_bytes") == 13 << 30
    assert _value(reg, "vnode_probe_results_total", {"probe_type": "Readiness", "result": "failed"}) == 1
    assert _value(reg, "vnode_evictions_total", {"signal": "memory.available"}) == 3


def test_event_metrics_are_in_the_agents_registry():
    reg = registry(models=FakeStore(), pods=FakePods())
    before = _value(reg, "vnode_model_downloaded_bytes_total")
    event_metrics.MODEL_DOWNLOADED_BYTES.inc(1000)
    assert _value(reg, "vnode_model_downloaded_bytes_total") == before + 1000
    text = generate_latest(reg).decode()
    assert "# TYPE vnode_kubelet_api_request_duration_seconds histogram" in text
    assert "# TYPE vnode_model_download_duration_seconds histogram" in text
