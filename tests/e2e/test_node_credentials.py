"""A user gives a Mac its node identity through a CSR (deploy/node-credentials.sh) and
joins it with exactly those credentials."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .conftest import node_ready, wait_for

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "node-credentials.sh"


def test_csr_issued_credentials_join_the_node(cluster, agents):
    name = "vnode-e2e-csr"
    state = cluster.state
    env = {**os.environ, "KUBECONFIG": state.admin_kubeconfig, "PATH": f"{Path(state.kubectl).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(SCRIPT), name], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    state.node_kubeconfig(name).write_text(out.stdout)

    csr = json.loads(cluster.kubectl("get", "csr", f"vnode-{name}", "-o", "json").stdout)
    assert csr["spec"]["username"] == "kubernetes-admin"
    assert {"type": "Approved"}.items() <= csr["status"]["conditions"][0].items()

    agents.start(name=name)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=state.node_kubeconfig(name))
    user = json.loads(who.stdout)["status"]["userInfo"]
    assert user["username"] == f"system:node:{name}" and "system:nodes" in user["groups"]
    cluster.kubectl("delete", "node", name)
