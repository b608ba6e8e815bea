"""Many pods on one node (issue 14 §2), at a count an e2e run affords: PODS real
llama-server pods of the tiny model (vnode/provider/tinymodel.py) from the local hub, created
at once, probed, the agent restarted under them, and all deleted. bench/scale.py runs the
same phases at 100 pods and prints the numbers; here they are checked:
  - all Running and Ready, the model fetched, its header read and estimated once for all;
  - at steady state the agent stays under its RSS target and writes nothing to the pods;
  - an agent restart adopts every server: none restarted, same shim and server pids, no
    pod status written (Ready never flips to False, ContainerCreating never shows);
  - one DELETE of the collection leaves no pod, process, port or pod directory behind.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import psutil
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.e2e.conftest import ROOT, node_ready, namespace, wait_for
from vnode.cluster.build import ensure_llama_server
from vnode.cluster.processes import Proc, stop

if str(ROOT) not in sys.path:  # bench/ is scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.scale import LABEL, Scale, agent_args, containers, start_hub  # noqa: E402

NAME = "vnode-e2e-scale"
PODS = 10


def _stop_servers(cluster, node: str) -> None:
    """Whatever of the node's pods still runs after a failure: stopped by pid."""
    for c in containers(cluster, node).values():
        for pid in (c.get("server_pid"), c.get("shim_pid")):
            with contextlib.suppress(Exception):
                p = psutil.Process(pid)
                stop(Proc(name="scale leftover", pid=pid, create_time=p.create_time(), log="", cmd=[]))


def test_many_pods_ready_adopted_and_deleted(cluster, agents, request: pytest.FixtureRequest) -> None:
    state = cluster.state
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=state.admin_kubeconfig))
    with namespace(cluster, request, "scale") as ns:
        hub, url = start_hub(cluster)
        flags = agent_args(url, ensure_llama_server(), PODS)

        def start_agent() -> Proc:
            return agents.start(*flags, name=NAME, own_host=True)  # a Mac of its own: ports 18200+ are free there

        scale = None
        try:
            agent = start_agent()
            wait_for(lambda: node_ready(cluster, NAME), timeout=60, what=f"{NAME} Ready")
            wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=30, what="the default ServiceAccount")
            scale = Scale(cluster, core, NAME, ns, agent, start_agent, PODS, base_port=18200)

            created = scale.create(timeout=240)
            assert created["per_pod_s"]["ready_seen"]["n"] == PODS
            log = Path(scale.agent.log).read_text(errors="replace")
            # One download, one header fetch and one estimate for PODS pods of one model: a
            # Python child each per pod cost ~1.3 CPU-s per pod (13 s for 10), all of it here.
            assert log.count("model download started") == 1, log
            assert created["agent_cpu_s"] < 0.5 * PODS, f"agent and helpers used {created['agent_cpu_s']} CPU-s for {PODS} pods"
            time.sleep(3)
            steady = scale.footprint(12)  # more than one readiness period (10 s): every pod probed
            assert steady["rss_mib"]["max"] <= 150, steady
            assert steady["pod_writes_seen"] == 0, f"status written at steady state: {steady}"

            restart = scale.restart(settle=12, after_seconds=0)
            assert restart["adopted"] == PODS, restart
            assert restart["pods_restarted"] == [], restart
            assert restart["servers_changed"] == [], restart
            assert restart["pods_not_ready_after"] == [], restart
            assert restart["ready_flips_to_false"] == 0, f"an agent restart took pods out of their Services: {restart}"
            assert restart["pod_writes_seen_during_restart"] == 0, f"status rewritten by the restarted agent: {restart}"

            deleted = scale.delete(timeout=120)
            assert deleted["processes_left"] == [], deleted
            assert deleted["ports_left"] == [], deleted
            assert deleted["pod_dirs_left"] == 0, deleted
            events = scale.events()
            assert events["by_reason"].get("Started") == PODS, events
            assert events["by_reason"].get("Killing") == PODS, events
            assert events["objects"] <= 3 * PODS, f"event storm: {events}"
        finally:
            if scale is not None:
                scale.close()
            with contextlib.suppress(Exception):
                core.delete_collection_namespaced_pod(ns, label_selector=f"app={LABEL}", grace_period_seconds=0)
                wait_for(lambda: not core.list_namespaced_pod(ns, label_selector=f"app={LABEL}").items, timeout=60,
                         what="the scale pods deleted")
            agents.stop_all()
            _stop_servers(cluster, NAME)
            stop(hub)
            cluster.forget(hub)
            cluster.kubectl("delete", "node", NAME, check=False)
