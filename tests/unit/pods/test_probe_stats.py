"""The prober's stats in the kubelet's shape: prober_probe_total by result with the pod's UID,
prober_probe_duration_seconds without it and without failed attempts, series gone with the pod."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vnode.metrics import probe_registry
from vnode.pods.probe_stats import FAILED, SUCCESSFUL, UNKNOWN, ProbeStats


def _pod(name: str, uid: str, namespace: str = "llm") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid}}


def _families(stats: ProbeStats) -> dict:
    text = generate_latest(probe_registry(stats)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counts_and_durations_with_the_kubelets_labels():
    stats = ProbeStats()
    gemma = stats.recorder(_pod("gemma", "u1"), "server")
    gemma.record("Readiness", FAILED, 1.0)
    gemma.record("Readiness", SUCCESSFUL, 0.03)
    gemma.record("Readiness", SUCCESSFUL, 0.2)
    gemma.record("Liveness", UNKNOWN, 0.001)
    families = _families(stats)

    counts = {(s.labels["probe_type"], s.labels["result"]): s.value for s in families["prober_probe"].samples}
    assert counts == {("Readiness", "failed"): 1, ("Readiness", "successful"): 2, ("Liveness", "unknown"): 1}
    sample = families["prober_probe"].samples[0]
    assert sample.name == "prober_probe_total"
    assert set(sample.labels) == {"probe_type", "result", "container", "pod", "namespace", "pod_uid"}
    assert (sample.labels["container"], sample.labels["pod"], sample.labels["namespace"], sample.labels["pod_uid"]) == \
        ("server", "gemma", "llm", "u1")

    hist = families["prober_probe_duration_seconds"].samples
    assert {frozenset(s.labels) - {"le"} for s in hist} == {frozenset({"probe_type", "container", "pod", "namespace"})}
    ready = {s.labels.get("le"): s.value for s in hist if s.labels["probe_type"] == "Readiness" and s.name.endswith("_bucket")}
    assert ready["0.025"] == 0 and ready["0.05"] == 1 and ready["0.25"] == 2 and ready["+Inf"] == 2  # the failure is not timed
    (total,) = [s.value for s in hist if s.labels["probe_type"] == "Readiness" and s.name.endswith("_sum")]
    assert abs(total - 0.23) < 1e-9


def test_a_deleted_pods_series_go_away_the_node_totals_stay():
    live = {"u1", "u2"}
    stats = ProbeStats(live=lambda: live)
    stats.recorder(_pod("gemma", "u1"), "server").record("Startup", SUCCESSFUL, 0.01)
    stats.recorder(_pod("qwen", "u2"), "server").record("Startup", SUCCESSFUL, 0.01)
    assert {s.labels["pod"] for s in _families(stats)["prober_probe"].samples} == {"gemma", "qwen"}

    live.discard("u1")
    families = _families(stats)
    assert {s.labels["pod"] for s in families["prober_probe"].samples} == {"qwen"}
    assert {s.labels["pod"] for s in families["prober_probe_duration_seconds"].samples} == {"qwen"}
    assert stats.totals() == {("Startup", "successful"): 2}


def test_gone_pods_are_forgotten_even_if_nobody_scrapes():
    live = {"u1"}
    stats = ProbeStats(live=lambda: live)
    stats.recorder(_pod("gemma", "u1"), "server").record("Readiness", SUCCESSFUL, 0.01)
    live = {"u2"}
    stats.recorder(_pod("qwen", "u2"), "server")
    assert not stats._results and not stats._timings
