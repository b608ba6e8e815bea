"""`vnode status`: the node, its pods, the memory budget and the model store, in one view.

Three sources, each optional, so the view still says what it can when one is missing: the
API server (the Node's conditions, the pods bound here: phase, restarts, what a container
waits for), the state directory (each container's port from its state file, the model
store's index) and the running agent's status file (memory estimates, the budget, running
downloads). A table on a terminal, JSON otherwise or with --json.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from vnode.provider.fetch import read_index
from vnode.provider.supervisor import Supervisor
from vnode.status import file as status_file

MiB = 1024**2
GiB = 1024**3
_PERCENT = re.compile(r"(\d+)%")


def bar(done: int, total: int, width: int = 20) -> str:
    """`[#######.............]  35%  102/290 MiB`; an unknown total shows the bytes only."""
    if total <= 0:
        return f"[{'?' * width}]  {done // MiB} MiB"
    share = min(max(done / total, 0.0), 1.0)
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%}  {done // MiB}/{total // MiB} MiB"


def _store(state_dir: Path) -> dict[str, Any]:
    """Blocking. The verified models of the store, by the files they take, largest first."""
    root = state_dir / "models"
    index = read_index(root)
    seen: dict[str, dict[str, Any]] = {}
    for entry in index["models"].values():
        name = entry.get("repo") or entry.get("url") or "?"
        paths = entry.get("paths") or [entry.get("path")]
        size = sum((index["files"].get(p) or {}).get("size") or 0 for p in paths if p)
        label = f"{name}/{entry.get('file')}" if entry.get("file") else name
        seen[label] = {"model": label, "bytes": size}
    models = sorted(seen.values(), key=lambda m: -m["bytes"])
    return {"path": str(root), "models": models, "bytes": sum(m["bytes"] for m in models)}


def _containers(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Blocking. pod uid -> container -> {port, instance} from the state files."""
    out: dict[str, dict[str, Any]] = {}
    for inst in Supervisor(state_dir).adopt():
        out.setdefault(inst.pod_uid, {})[inst.container] = {"port": inst.port, "instance": inst.instance}
    return out


def _agent(state_dir: Path) -> tuple[status_file.AgentStatus | None, bool]:
    status = status_file.read(state_dir)
    running = status is not None and psutil.pid_exists(status.pid)
    return status, running


async def _cluster(kubeconfig: Path, node_name: str) -> tuple[dict | None, list[dict], str | None]:
    from vnode.kubeclient import KubeClient

    try:
        api = KubeClient.from_kubeconfig(kubeconfig)
    except Exception as exc:  # noqa: BLE001 - shown, the rest of the view still works
        return None, [], f"{kubeconfig}: {exc}"
    try:
        node = await api.get(f"/api/v1/nodes/{node_name}")
        pods = (await api.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node_name}"))["items"]
        return node, pods, None
    except Exception as exc:  # noqa: BLE001
        return None, [], f"API server: {exc}"
    finally:
        await api.close()


def _pod_rows(pods: list[dict], ports: dict[str, dict[str, Any]], agent: status_file.AgentStatus | None) -> list[dict]:
    estimates = {(h.pod_uid, h.container): h.bytes for h in agent.holdings} if agent else {}
    rows = []
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        meta, status = pod["metadata"], pod.get("status") or {}
        statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
        for c in pod["spec"]["containers"]:
            s = statuses.get(c["name"], {})
            waiting = (s.get("state") or {}).get("waiting") or {}
            ready = next((x["status"] for x in status.get("conditions") or [] if x["type"] == "Ready"), "Unknown")
            rows.append({
                "namespace": meta["namespace"], "pod": meta["name"], "container": c["name"], "uid": meta["uid"],
                "phase": status.get("phase", "Pending"), "ready": ready == "True",
                "port": (ports.get(meta["uid"], {}).get(c["name"]) or {}).get("port"),
                "memory_estimate": estimates.get((meta["uid"], c["name"])), "restarts": s.get("restartCount", 0),
                "waiting": waiting.get("reason"), "message": waiting.get("message"),
                "terminating": bool(meta.get("deletionTimestamp")),
            })
    return rows


async def gather(*, kubeconfig: Path | None, node_name: str, state_dir: Path) -> dict[str, Any]:
    (agent, running), store, ports = await asyncio.gather(
        asyncio.to_thread(_agent, state_dir), asyncio.to_thread(_store, state_dir), asyncio.to_thread(_containers, state_dir))
    node, pods, problem = (await _cluster(kubeconfig, node_name)) if kubeconfig else (None, [], "no kubeconfig given")
    conditions = [{"type": c["type"], "status": c["status"], "reason": c.get("reason", ""), "message": c.get("message", "")}
                  for c in ((node or {}).get("status") or {}).get("conditions") or []]
    budget = None
    if agent is not None:
        budget = {"total": agent.budget_total, "used": agent.budget_used, "free": agent.budget_total - agent.budget_used}
    return {
        "node": {"name": node_name, "found": node is not None, "conditions": conditions,
                 "allocatable_memory": ((node or {}).get("status") or {}).get("allocatable", {}).get("memory")},
        "cluster_problem": problem,
        "agent": {"running": running, "pid": agent.pid if agent else None, "version": agent.version if agent else None,
                  "written_at": dt.datetime.fromtimestamp(agent.written_at, dt.UTC).isoformat(timespec="seconds")
                  if agent else None},
        "pods": _pod_rows(pods, ports, agent if running else None),
        "budget": budget,
        "downloads": [d.model_dump() for d in agent.downloads] if agent and running else [],
        "store": store,
    }


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f} MiB"


def render(view: dict[str, Any], say: Callable[[str], None]) -> None:
    node = view["node"]
    ready = next((c for c in node["conditions"] if c["type"] == "Ready"), None)
    state = ("Ready" if ready["status"] == "True" else f"NotReady ({ready['reason']})") if ready else "unknown"
    say(f"node {node['name']}: {state}" + (f"; allocatable memory {node['allocatable_memory']}" if node["allocatable_memory"] else ""))
    if view["cluster_problem"]:
        say(f"  (not from the API server: {view['cluster_problem']})")
    for c in node["conditions"]:
        if c["type"] != "Ready" and c["status"] != "False":
            say(f"  {c['type']}={c['status']}: {c['message']}")
    agent = view["agent"]
    say(f"agent: {'running, pid ' + str(agent['pid']) if agent['running'] else 'not running'}"
        + (f" (vnode {agent['version']}, status written {agent['written_at']})" if agent["pid"] else ""))
    if view["budget"]:
        b = view["budget"]
        say(f"memory budget: {_mib(b['used'])} used, {_mib(b['free'])} free of {_mib(b['total'])}")
    rows = view["pods"]
    if rows:
        head = ("POD", "CONTAINER", "PORT", "PHASE", "READY", "MEMORY", "RESTARTS", "NOTE")
        table = [head] + [(f"{r['namespace']}/{r['pod']}", r["container"], str(r["port"] or "-"),
                           "Terminating" if r["terminating"] else r["phase"], "yes" if r["ready"] else "no",
                           _mib(r["memory_estimate"]), str(r["restarts"]), _note(r)) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
        for row in table:
            say("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    else:
        say("no pods on this node")
    for d in view["downloads"]:
        say(f"downloading {d['model']}: {bar(d['done'], d['total'])}")
    store = view["store"]
    say(f"model store {store['path']}: {len(store['models'])} model(s), {store['bytes'] / GiB:.2f} GiB")
    for m in store["models"]:
        say(f"  {m['bytes'] / MiB:>10,.0f} MiB  {m['model']}")


def _note(row: dict[str, Any]) -> str:
    if row["waiting"] == "PullingModel" and row["message"] and (m := _PERCENT.search(row["message"])):
        return f"PullingModel {bar(int(m.group(1)), 100, width=10).split(']')[0]}] {m.group(1)}%"
    return row["waiting"] or ""


async def status(*, kubeconfig: Path | None, node_name: str, state_dir: Path, as_json: bool,
                 say: Callable[[str], None] = print) -> int:
    """0 when the node is Ready and the agent runs, 1 otherwise."""
    view = await gather(kubeconfig=kubeconfig, node_name=node_name, state_dir=state_dir)
    if as_json:
        say(json.dumps(view, indent=2))
    else:
        render(view, say)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in view["node"]["conditions"])
    return 0 if ready and view["agent"]["running"] else 1

