"""Pod phase and conditions by the kubelet's rules."""

from vnode.pods.status import ContainerView, pod_status

POD = {
    "metadata": {"uid": "u1", "namespace": "default", "name": "p", "generation": 1},
    "spec": {},
    "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
}


def status(*views, failed=None):
    return pod_status(POD, list(views), pod_ip="198.18.0.2", start_time="2026-01-01T00:00:01Z", failed=failed, now="2026-01-01T00:00:02Z")


def conds(s):
    return {c["type"]: c["status"] for c in s["conditions"]}


def test_waiting_container_is_pending_and_keeps_scheduler_condition():
    s = status(ContainerView(name="server", image="img"))
    assert s["phase"] == "Pending" and conds(s)["PodScheduled"] == "True" and conds(s)["Ready"] == "False"
    assert s["podIP"] == s["hostIP"] == "198.18.0.2"
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_running_and_ready():
    v = ContainerView(name="server", image="img", state={"running": {"startedAt": "x"}}, ready=True, started=True)
    s = status(v)
    assert s["phase"] == "Running" and conds(s)["Ready"] == "True" and conds(s)["ContainersReady"] == "True"
    assert s["reason"] is None


def test_crash_loop_stays_running_phase():
    v = ContainerView(name="server", image="img", state={"waiting": {"reason": "CrashLoopBackOff"}}, restart_count=2,
                      last_state={"terminated": {"exitCode": 1}})
    assert status(v)["phase"] == "Running"


def test_terminal_phases():
    ok = ContainerView(name="a", image="i", state={"terminated": {"exitCode": 0}}, will_restart=False)
    bad = ContainerView(name="b", image="i", state={"terminated": {"exitCode": 2}}, will_restart=False)
    assert status(ok)["phase"] == "Succeeded"
    assert status(ok, bad)["phase"] == "Failed"


def test_admission_failure_is_failed_with_reason():
    s = status(ContainerView(name="server", image="img"), failed=("InsufficientMemory", "needs 9 GiB"))
    assert s["phase"] == "Failed" and s["reason"] == "InsufficientMemory" and "9 GiB" in s["message"]


def test_evicted_pod_is_failed_with_a_disruption_target_condition():
    running = ContainerView(name="server", image="img", state={"running": {"startedAt": "x"}}, ready=True, started=True)
    message = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi."
    s = status(running, failed=("Evicted", message))
    assert (s["phase"], s["reason"], s["message"]) == ("Failed", "Evicted", message)
    target = next(c for c in s["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"], target["message"]) == ("True", "TerminationByKubelet", message)
    assert conds(s)["Ready"] == "False" and conds(s)["PodScheduled"] == "True"
    # Written once: a later status keeps its transition time and does not add a second one.
    again = pod_status({**POD, "status": {"conditions": s["conditions"]}}, [running], pod_ip="198.18.0.2", start_time="x",
                       failed=("Evicted", message), now="2026-01-01T00:09:00Z")
    targets = [c for c in again["conditions"] if c["type"] == "DisruptionTarget"]
    assert len(targets) == 1 and targets[0]["lastTransitionTime"] == "2026-01-01T00:00:02Z"
    assert not any(c["type"] == "DisruptionTarget" for c in status(running, failed=("InsufficientMemory", "x"))["conditions"])


def _gated(*gate_conditions: dict) -> dict:
    return {**POD, "spec": {"readinessGates": [{"conditionType": "example.com/lb"}]},
            "status": {"conditions": [*POD["status"]["conditions"], *gate_conditions]}}


def _ready_view() -> ContainerView:
    return ContainerView(name="server", image="img", state={"running": {"startedAt": "x"}}, ready=True, started=True)


def test_a_missing_readiness_gate_keeps_ready_false_with_the_kubelets_reason():
    s = pod_status(_gated(), [_ready_view()], pod_ip="198.18.0.2", start_time="t", now="t")
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert conds(s)["ContainersReady"] == "True" and ready["status"] == "False"
    assert ready["reason"] == "ReadinessGatesNotReady"
    assert ready["message"] == 'corresponding condition of pod readiness gate "example.com/lb" does not exist.'


def test_a_false_gate_is_named_and_a_true_one_makes_the_pod_ready():
    false = pod_status(_gated({"type": "example.com/lb", "status": "False"}), [_ready_view()], pod_ip="x", start_time="t", now="t")
    ready = next(c for c in false["conditions"] if c["type"] == "Ready")
    assert ready["message"] == 'the status of pod readiness gate "example.com/lb" is not "True", but False'
    true = pod_status(_gated({"type": "example.com/lb", "status": "True"}), [_ready_view()], pod_ip="x", start_time="t", now="t")
    assert conds(true)["Ready"] == "True" and conds(true)["example.com/lb"] == "True"
