"""Pods on the Mac node: an ordinary Deployment becomes a native llama-server serving the
real Gemma 3 270M model, reachable through a normal Service; bad specs fail visibly.

The model is served by a local Hugging Face-compatible server (tests/support/hfserver.py)
on the root end of the node's veth pair, so `-hf repo:quant` downloads for real.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml


from .conftest import CORRUPT_REPO, GATED_REPO, GATED_TOKEN, REPO, namespace, node_ready, serving_nodes, wait_for

NODE = "vnode-e2e-pods"


@pytest.fixture(scope="module")
def mac(cluster, hub):
    with serving_nodes(cluster, hub, [NODE]) as agents:
        yield agents


@pytest.fixture
def ns(cluster, mac, request):
    with namespace(cluster, request, "t") as name:
        yield name


def deployment(name: str, *, port: int, args: list[str] | None = None, image: str = "ghcr.io/ggml-org/llama.cpp:server",
               toleration: bool = True, node: str = NODE, probe: dict | None = None, host_port: bool = True,
               replicas: int = 1, recreate: bool = False) -> dict:
    pod_spec: dict = {
        "nodeSelector": {"llmkube.dev/accelerator": "metal", "kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "server", "image": image,
            "args": args if args is not None else ["-hf", f"{REPO}:Q4_K_M", "--port", str(port), "-c", "2048"],
            "ports": [{"containerPort": port, "name": "http", **({"hostPort": port} if host_port else {})}],
            "readinessProbe": probe or {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
        }],
    }
    if toleration:
        pod_spec["tolerations"] = [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": {"type": "Recreate"} if recreate else {"type": "RollingUpdate"},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
    }


def service(name: str, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": "http", "name": "http"}]}}


def apply(cluster, ns: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects))


def pods(cluster, ns: str, app: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout)["items"]


def one_pod(cluster, ns: str, app: str) -> dict:
    items = [p for p in pods(cluster, ns, app) if not p["metadata"].get("deletionTimestamp")]
    assert len(items) == 1, [p["metadata"]["name"] for p in items]
    return items[0]


def waiting_reason(pod: dict) -> tuple[str, str]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = cs.get("state", {}).get("waiting")
        if waiting:
            return waiting.get("reason", ""), waiting.get("message", "")
    return "", ""


def pod_ready(cluster, ns: str, app: str) -> dict | None:
    for pod in pods(cluster, ns, app):
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
            return pod
    return None


def complete(url: str, prompt: str = "The capital of France is", *, chat: bool = False, max_tokens: int = 8) -> dict:
    if chat:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        path = "/v1/chat/completions"
    else:
        body = {"prompt": prompt, "max_tokens": max_tokens}
        path = "/v1/completions"
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def server_pid(port: int) -> int | None:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "llama-server" and "--port" in cmd and cmd[cmd.index("--port") + 1] == str(port):
            return proc.pid
    return None


def test_deployment_serves_chat_through_its_service(cluster, ns):
    apply(cluster, ns, deployment("gemma", port=8080), service("gemma", 8080))
    pod = wait_for(lambda: pod_ready(cluster, ns, "gemma"), timeout=240, what="gemma pod Ready")
    node_ip = cluster.state.host.ns_ip
    assert pod["spec"]["nodeName"] == NODE and pod["status"]["podIP"] == node_ip
    cs = pod["status"]["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0 and cs["containerID"].startswith("vnode://")

    def endpoints() -> list:
        slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=gemma", "-o", "json").stdout)["items"]
        return [(a, p["port"]) for s in slices for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready")
                for a in e["addresses"] for p in s.get("ports") or []]

    assert (node_ip, 8080) in wait_for(endpoints, timeout=30, what="EndpointSlice with the node's address")
    answer = complete(f"http://{node_ip}:8080", chat=True)
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] > 0
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pod['metadata']['name']}").stdout
    assert "Started" in events, events


def test_without_toleration_the_scheduler_keeps_it_pending(cluster, ns):
    apply(cluster, ns, deployment("shy", port=8090, toleration=False))
    pod = wait_for(lambda: [p for p in pods(cluster, ns, "shy") if any(
        c["type"] == "PodScheduled" and c["status"] == "False" for c in p.get("status", {}).get("conditions", []))],
        timeout=30, what="Unschedulable")[0]
    assert pod["status"]["phase"] == "Pending" and "untolerated taint" in json.dumps(pod["status"]["conditions"])


@pytest.mark.parametrize(
    ("image", "args", "reason", "needle"),
    [
        ("nginx:1.27", None, "UnsupportedImage", "ghcr.io/ggml-org/llama.cpp:server"),
        (None, ["-hf", f"{REPO}:Q4_K_M", "--port", "8091", "--log-file", "/etc/passwd"], "ForbiddenFlag", "--log-file"),
        (None, ["-hf", "nobody/missing-GGUF:Q4_K_M", "--port", "8091"], "ModelNotFound", "nobody/missing-GGUF"),
        (None, ["--port", "8091"], "MissingModel", "-hf"),
    ],
)
def test_bad_specs_fail_with_a_reason(cluster, ns, image, args, reason, needle):
    kwargs = {"image": image} if image else {}
    apply(cluster, ns, deployment("bad", port=8091, args=args, **kwargs))
    got = wait_for(lambda: (r := waiting_reason(one_pod(cluster, ns, "bad")))[0] == reason and r, timeout=60, what=reason)
    assert needle in got[1], got


def test_exec_probe_is_refused(cluster, ns):
    apply(cluster, ns, deployment("probe", port=8092, probe={"exec": {"command": ["cat", "/etc/shadow"]}}))
    reason, message = wait_for(lambda: (r := waiting_reason(one_pod(cluster, ns, "probe")))[0] == "InvalidProbe" and r,
                               timeout=60, what="InvalidProbe")
    assert "exec" in message


def test_kill_9_restarts_the_server(cluster, ns):
    apply(cluster, ns, deployment("crashy", port=8093))
    wait_for(lambda: pod_ready(cluster, ns, "crashy"), timeout=240, what="Ready")
    pid = server_pid(8093)
    assert pid
    os.kill(pid, signal.SIGKILL)
    pod = wait_for(lambda: (p := pod_ready(cluster, ns, "crashy")) and p["status"]["containerStatuses"][0]["restartCount"] == 1 and p,
                   timeout=120, what="restarted and Ready")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["signal"] == 9
    assert server_pid(8093) not in (None, pid)


def test_a_signal_death_is_named_in_describe(cluster, ns):
    """SIGILL is what a server built for another CPU dies of: describe says so in words."""
    apply(cluster, ns, deployment("sigill", port=8096))
    pod = wait_for(lambda: pod_ready(cluster, ns, "sigill"), timeout=240, what="Ready")
    os.kill(server_pid(8096), signal.SIGILL)
    pod = wait_for(lambda: (p := one_pod(cluster, ns, "sigill"))["status"]["containerStatuses"][0].get("lastState", {}).get("terminated") and p,
                   timeout=120, what="the exit recorded")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["signal"]) == (132, 4)
    described = cluster.kubectl("describe", "pod", "-n", ns, pod["metadata"]["name"]).stdout
    assert "illegal instruction: the server binary uses CPU instructions this machine does not have" in described, described
    assert "Exit Code:    132" in described, described


def test_resource_metrics_through_the_api_server(cluster, ns):
    """What metrics-server scrapes, through the API server's node proxy: the serving pod's
    CPU and working set from its real process, memory within 10 % of the server's RSS."""
    from prometheus_client.parser import text_string_to_metric_families

    apply(cluster, ns, deployment("metered", port=8089))
    pod = wait_for(lambda: pod_ready(cluster, ns, "metered"), timeout=240, what="Ready")
    complete(f"http://{cluster.state.host.ns_ip}:8089")
    text = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/metrics/resource").stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    mine = {"container": "server", "pod": pod["metadata"]["name"], "namespace": ns}
    cpu = next(s.value for s in families["container_cpu_usage_seconds"].samples if s.labels == mine)
    mem = next(s.value for s in families["container_memory_working_set_bytes"].samples if s.labels == mine)
    rss = psutil.Process(server_pid(8089)).memory_info().rss
    assert cpu > 0 and abs(mem - rss) <= 0.10 * rss, (cpu, mem, rss)
    assert families["node_cpu_usage_seconds"].samples[0].value > 0
    assert families["resource_scrape_error"].samples[0].value == 0


def test_delete_stops_the_process_and_frees_the_port(cluster, ns):
    apply(cluster, ns, deployment("brief", port=8094))
    wait_for(lambda: pod_ready(cluster, ns, "brief"), timeout=240, what="Ready")
    pid = server_pid(8094)
    cluster.kubectl("delete", "deployment", "brief", "-n", ns)
    wait_for(lambda: not pods(cluster, ns, "brief"), timeout=60, what="pod gone")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert server_pid(8094) is None


def test_agent_restart_keeps_the_server(cluster, ns, mac):
    apply(cluster, ns, deployment("steady", port=8095))
    wait_for(lambda: pod_ready(cluster, ns, "steady"), timeout=240, what="Ready")
    pid = server_pid(8095)
    url = f"http://{cluster.state.host.ns_ip}:8095"
    mac.stop(mac.started[-1])
    assert server_pid(8095) == pid, "stopping the agent must not stop the server"
    assert complete(url)["usage"]["completion_tokens"] > 0, "the server keeps answering while the agent is away"
    mac.start(*mac.args, name=NODE)
    time.sleep(3)
    assert complete(url)["usage"]["completion_tokens"] > 0
    pod = wait_for(lambda: pod_ready(cluster, ns, "steady"), timeout=60, what="still Ready")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert server_pid(8095) == pid, "a restarted agent adopts the server: same pid, no reload"


def test_scale_and_rollout_on_one_mac(cluster, ns):
    apply(cluster, ns, deployment("scaled", port=8097, recreate=True))
    first = wait_for(lambda: pod_ready(cluster, ns, "scaled"), timeout=240, what="Ready")
    cluster.kubectl("scale", "deployment/scaled", "-n", ns, "--replicas=2")
    # One Mac, one hostPort: the scheduler keeps the second replica Pending, as on any node.
    pending = wait_for(lambda: [p for p in pods(cluster, ns, "scaled") if "free ports" in json.dumps(p["status"].get("conditions", []))],
                       timeout=30, what="second replica Unschedulable for its port")
    assert pending[0]["status"]["phase"] == "Pending"
    cluster.kubectl("scale", "deployment/scaled", "-n", ns, "--replicas=1")
    old_pid = server_pid(8097)
    cluster.kubectl("patch", "deployment/scaled", "-n", ns, "--type=json", "-p",
                    json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args",
                                 "value": ["-hf", f"{REPO}:Q4_K_M", "--port", "8097", "-c", "1024"]}]))
    new = wait_for(lambda: (p := pod_ready(cluster, ns, "scaled")) and p["metadata"]["name"] != first["metadata"]["name"] and p,
                   timeout=240, what="rolled-out pod Ready")
    assert "1024" in new["spec"]["containers"][0]["args"]
    assert server_pid(8097) not in (None, old_pid)
    cluster.kubectl("scale", "deployment/scaled", "-n", ns, "--replicas=0")
    wait_for(lambda: not pods(cluster, ns, "scaled"), timeout=60, what="scaled to zero")
    assert server_pid(8097) is None


def test_crashing_server_backs_off(cluster, ns):
    args = ["-hf", f"{REPO}:Q4_K_M", "--port", "8098", "--override-kv", "gemma3.context_length=int:-5"]
    apply(cluster, ns, deployment("crashing", port=8098, args=args))
    pod = wait_for(lambda: (p := one_pod(cluster, ns, "crashing")) and waiting_reason(p)[0] == "CrashLoopBackOff"
                   and p["status"]["containerStatuses"][0]["restartCount"] >= 2 and p, timeout=120, what="CrashLoopBackOff")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] != 0
    assert "back-off" in cs["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Running"


def test_port_clash_fails_the_second_pod(cluster, ns):
    apply(cluster, ns, deployment("first", port=8099, host_port=False))
    wait_for(lambda: pod_ready(cluster, ns, "first"), timeout=240, what="first Ready")
    apply(cluster, ns, deployment("second", port=8099, host_port=False))
    failed = wait_for(lambda: [p for p in pods(cluster, ns, "second") if p["status"].get("reason") == "PortConflict"],
                      timeout=60, what="PortConflict")
    assert failed[0]["status"]["phase"] == "Failed" and "first" in failed[0]["status"]["message"]


def test_a_port_below_the_pod_port_range_is_refused(cluster, ns):
    """Pods share the Mac's network: port 22 is its sshd's, and macOS lets any user bind it."""
    apply(cluster, ns, deployment("sshd", port=22, host_port=False))
    failed = wait_for(lambda: [p for p in pods(cluster, ns, "sshd") if p["status"].get("reason") == "PortNotAllowed"],
                      timeout=60, what="PortNotAllowed")
    assert failed[0]["status"]["phase"] == "Failed"
    described = cluster.kubectl("describe", "pod", "-n", ns, failed[0]["metadata"]["name"]).stdout
    assert "port 22 is outside the ports pods may use on this node (1024-65535, --pod-port-range)" in described


def test_checksum_mismatch_is_reported_and_retried(cluster, ns):
    apply(cluster, ns, deployment("corrupt", port=8100, args=["-hf", f"{CORRUPT_REPO}:Q4_K_M", "--port", "8100"]))
    reason, message = wait_for(lambda: (r := waiting_reason(one_pod(cluster, ns, "corrupt")))[0] == "ModelPullBackOff" and r,
                               timeout=120, what="ModelPullBackOff")
    assert "ChecksumMismatch" in message and "retrying" in message


def test_model_too_big_for_the_budget(cluster, ns, mac):
    small = "vnode-e2e-small"
    mac.start(*mac.args, "--memory-fraction=0.01", "--kubelet-port=10252", name=small)
    wait_for(lambda: node_ready(cluster, small), timeout=60, what=f"{small} Ready")
    try:
        hub_log = Path(cluster.state.directory) / "logs" / "hfserver.log"
        seen = len(hub_log.read_text().splitlines())
        apply(cluster, ns, deployment("huge", port=8101, node=small))
        failed = wait_for(lambda: [p for p in pods(cluster, ns, "huge") if p["status"].get("reason") == "InsufficientMemory"],
                          timeout=120, what="InsufficientMemory")
        message = failed[0]["status"]["message"]
        assert failed[0]["status"]["phase"] == "Failed" and "MiB" in message and "budget" in message
        assert "estimated from the model's header, before downloading it" in message, message
        assert server_pid(8101) is None, "nothing may be loaded for a pod that does not fit"
        # Refused on its header: the hub saw only Range requests for the front of the file.
        hits = [json.loads(line)["request"] for line in hub_log.read_text().splitlines()[seen:] if '"request"' in line]
        files = [h for h in hits if h["kind"] == "resolve" and h["method"] == "GET"]
        assert files and all((h["range"] or "").startswith("bytes=0-") for h in files), files
        store = Path(cluster.state.directory) / "agents" / small / "models"
        assert not [p for p in store.rglob("*.gguf*") if ".heads" not in p.parts], "the body was not downloaded"
    finally:
        cluster.kubectl("delete", "deployment", "huge", "-n", ns, "--wait=false", check=False)
        mac.stop(mac.started[-1])
        cluster.kubectl("delete", "node", small, check=False)


def test_exec_probe_runs_when_the_operator_allows_it(cluster, ns, mac):
    """With --allow-exec-probes the probe's command runs (in the container's environment) and
    drives readiness; a failing one keeps the pod unready with an Unhealthy event."""
    node = "vnode-e2e-execprobes"
    mac.start(*mac.args, "--allow-exec-probes", "--kubelet-port=10256", name=node)
    wait_for(lambda: node_ready(cluster, node), timeout=60, what=f"{node} Ready")
    try:
        probe = {"exec": {"command": ["sh", "-c", 'test "$PROBE_MARK" = ok']}, "periodSeconds": 1}
        good, bad = deployment("execok", port=8103, node=node, probe=probe), deployment("execbad", port=8104, node=node, probe=probe)
        good["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PROBE_MARK", "value": "ok"}]
        bad["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PROBE_MARK", "value": "no"}]
        apply(cluster, ns, good, bad)
        wait_for(lambda: pod_ready(cluster, ns, "execok"), timeout=180, what="Ready from an exec readiness probe")
        events = wait_for(lambda: (out := cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=Unhealthy",
                                                          "-o", "jsonpath={.items[*].message}").stdout) and out,
                          timeout=60, what="Unhealthy event of the failing exec probe")
        assert "Readiness probe failed: command exited 1" in events
        assert pod_ready(cluster, ns, "execbad") is None
    finally:
        cluster.kubectl("delete", "deployment", "execok", "execbad", "-n", ns, "--wait=false", check=False)
        # The agent stops the servers before the pods go: wait for that, then stop the agent.
        wait_for(lambda: not pods(cluster, ns, "execok") and not pods(cluster, ns, "execbad"), timeout=60, what="exec-probe pods gone")
        mac.stop(mac.started[-1])
        cluster.kubectl("delete", "node", node, check=False)


def test_gated_model_needs_the_token_from_a_secret(cluster, ns):
    args = ["-hf", f"{GATED_REPO}:Q4_K_M", "--port", "8102", "-c", "2048"]
    apply(cluster, ns, deployment("gated", port=8102, args=args))
    reason, message = wait_for(lambda: (r := waiting_reason(one_pod(cluster, ns, "gated")))[0] == "ModelPullBackOff" and r,
                               timeout=120, what="ModelPullBackOff for the gated repo")
    assert "GatedModel" in message and "HF_TOKEN" in message
    cluster.kubectl("create", "secret", "generic", "hf", "-n", ns, f"--from-literal=token={GATED_TOKEN}")
    with_token = deployment("gated", port=8102, args=args, recreate=True)
    with_token["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    apply(cluster, ns, with_token)
    pod = wait_for(lambda: pod_ready(cluster, ns, "gated"), timeout=240, what="gated model Ready with the Secret's token")
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pod['metadata']['name']}").stdout
    assert "PullingModel" in events, "download progress is reported as events"
    assert GATED_TOKEN not in json.dumps(pod), "the token must not leak into the pod's status"
    ours = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
            if "hfserver" not in " ".join(p.info["cmdline"] or [])]  # the test hub is told the token, vnode must not show it
    assert not [c for c in ours if GATED_TOKEN in c], "the token must not appear on any command line"


def test_readiness_gate_set_by_another_writer_makes_the_pod_ready(cluster, ns):
    """As the kubelet: Ready waits for the gate's condition, and a status update from
    another controller (a load balancer's) is noticed without any container change."""
    dep = deployment("gated", port=8106)
    dep["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": "example.com/load-balancer"}]
    apply(cluster, ns, dep)

    def gate_reason() -> dict | None:
        for pod in pods(cluster, ns, "gated"):
            conds = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
            if conds.get("ContainersReady", {}).get("status") == "True":
                return pod if conds["Ready"]["status"] == "False" and conds["Ready"].get("reason") == "ReadinessGatesNotReady" else None
        return None

    pod = wait_for(gate_reason, timeout=240, what="containers ready, Ready=False for the gate")
    patch = {"status": {"conditions": [{"type": "example.com/load-balancer", "status": "True"}]}}
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=strategic",
                    "-p", json.dumps(patch))
    ready = wait_for(lambda: pod_ready(cluster, ns, "gated"), timeout=20, what="Ready once the gate is True")
    assert {c["type"]: c["status"] for c in ready["status"]["conditions"]}["example.com/load-balancer"] == "True"


def test_active_deadline_can_be_shortened_while_running(cluster, ns):
    """As the kubelet: activeDeadlineSeconds counts from startTime, an update takes effect
    on the running pod, and the pod ends Failed with reason DeadlineExceeded."""
    template = deployment("bounded", port=8107)["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bounded", "labels": {"app": "bounded"}},
           "spec": {**template["spec"], "activeDeadlineSeconds": 3600, "restartPolicy": "Always"}}
    apply(cluster, ns, pod)
    wait_for(lambda: pod_ready(cluster, ns, "bounded"), timeout=240, what="Ready")
    pid = server_pid(8107)
    cluster.kubectl("patch", "pod", "bounded", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"activeDeadlineSeconds": 5}}))
    failed = wait_for(lambda: (p := pods(cluster, ns, "bounded")[0])["status"].get("phase") == "Failed" and p,
                      timeout=30, what="Failed after the shortened deadline")
    assert failed["status"]["reason"] == "DeadlineExceeded", failed["status"]
    assert "longer than the specified deadline" in failed["status"]["message"]
    wait_for(lambda: server_pid(8107) is None, timeout=15, what="the server stopped")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
