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
