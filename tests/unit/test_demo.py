"""`vnode demo` explains a pod that does not become Ready: reason, last exit, last logs."""

import json
import subprocess

from vnode import demo

CRASHING = {"items": [{
    "metadata": {"name": "gemma-abc"},
    "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                        "message": "containers with unready status: [server]"}],
        "containerStatuses": [{
            "name": "server", "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 132, "signal": 4, "reason": "Error",
                                         "message": "illegal instruction: the server binary uses CPU instructions this machine does not have"}},
        }],
    },
}]}


class Cluster:
    def __init__(self, pods: dict) -> None:
        self.pods, self.calls = pods, []

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args[:2] == ("get", "pods"):
            out = json.dumps(self.pods)
        elif args[0] == "logs":
            out = "main: loading model\nllama_server: initializing ...\n"
        elif args[:2] == ("get", "events"):
            out = "BackOff   Back-off restarting failed container server\n"
        else:
            out = ""
        return subprocess.CompletedProcess(args, 0, out, "")


def test_crash_loop_is_explained():
    cluster = Cluster(CRASHING)
    text = demo.explain_pods(cluster)
    assert "pod gemma-abc: phase Running" in text
    assert "waiting, CrashLoopBackOff: back-off 40s" in text
    assert "last exit: code 132, signal 4 (SIGILL): illegal instruction" in text and "restarts 3" in text
    assert "vnode doctor" in text
    assert "llama_server: initializing ..." in text and "of the previous run" in text
    assert any(c[0] == "logs" and "--previous" in c for c in cluster.calls)
    assert "Back-off restarting failed container" in text


def test_waiting_for_a_crash_loop_gives_up_early():
    assert demo._hopeless(Cluster(CRASHING))
    healthy = json.loads(json.dumps(CRASHING))
    healthy["items"][0]["status"]["containerStatuses"][0]["restartCount"] = 0
    assert not demo._hopeless(Cluster(healthy))


def test_no_pod_at_all():
    assert demo.explain_pods(Cluster({"items": []})) == "no pod with label app=gemma exists"
