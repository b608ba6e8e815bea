"""The node's own credentials over time: its client certificate runs out while it serves a
model, vnode renews it through a CSR the cluster approves by itself, and the node stays
Ready and the pod keeps answering past the first certificate's expiry, with no restart.
And who vnode runs as is checked: an admin's kubeconfig is warned about, or refused.

The module has a control plane of its own whose signer issues 3-minute certificates
(--cluster-signing-duration), so that renewals of cluster-signed certificates come round
within the test too; the session's cluster is shared and keeps the default year.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from vnode.cluster.build import ensure_llama_server
from vnode.cluster.local import LocalCluster, write_kubeconfig

from .conftest import Agents, node_ready, wait_for
from .test_pods import apply, complete, deployment, pod_ready, server_pid, service

NODE = "vnode-e2e-clientcert"
SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
LIFE = dt.timedelta(seconds=200)  # the first certificate's; renewal due 140-180 s in, expiry at 200 s
PORT = 8181


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Overrides the session's cluster for this module (and the `hub` it serves models from)."""
    if os.geteuid() != 0:
        pytest.fail("the e2e tests need root to create the node's network namespace")
    local = LocalCluster(tmp_path_factory.mktemp("rotation-cluster"), node_name=NODE, metrics=False, signing_duration="3m")
    try:
        local.up()
        yield local
    finally:
        local.down()


def renewal_csrs(cluster: LocalCluster, name: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "csr", "-o", "json").stdout)["items"]
    return [c for c in items if c["spec"]["signerName"] == SIGNER and c["spec"]["username"] == f"system:node:{name}"]


def whoami(cluster: LocalCluster, kubeconfig: Path) -> subprocess.CompletedProcess:
    return cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig, check=False)


def test_an_admin_kubeconfig_is_warned_about_and_with_require_refused(cluster):
    name = "vnode-e2e-admin"
    admin = cluster.state.admin_kubeconfig
    agents = Agents(cluster)
    command = cluster.agent_command(f"--kubeconfig={admin}", "--require-node-identity", "--kubelet-port=10270", node_name=name)
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert ("refusing to start (--require-node-identity): the kubeconfig "
            f"{admin} authenticates as kubernetes-admin (groups: system:masters, system:authenticated), "
            f"not as this node's identity system:node:{name} in group system:nodes") in refused.stderr, refused.stderr
    assert cluster.kubectl("get", "node", name, check=False).returncode != 0, "nothing registered as someone else"

    proc = agents.start(f"--kubeconfig={admin}", "--kubelet-port=10271", name=name)
    try:
        wait_for(lambda: "authenticates as kubernetes-admin" in Path(proc.log).read_text(), timeout=60, what="the warning")
        log = Path(proc.log).read_text()
        assert "WARNING" in log and "--require-node-identity refuses to start in this case" in log
        assert "client certificate rotation off: the client certificate is for kubernetes-admin" in log
        wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready all the same")
    finally:
        agents.stop_all()
        cluster.kubectl("delete", "node", name, check=False)


def test_client_certificate_is_renewed_while_the_node_serves(cluster, hub, tmp_path):
    state = cluster.state
    agents = Agents(cluster)
    now = dt.datetime.now(dt.timezone.utc)
    expiry = now + LIFE - dt.timedelta(seconds=20)
    kubeconfig = agents.credentials(NODE, not_before=now - dt.timedelta(seconds=20), not_after=expiry)
    pki_dir = Path(state.directory) / "pki"
    original = tmp_path / "original.yaml"  # the first certificate alone, to show the API server refuses it later
    write_kubeconfig(original, server=state.server, ca=pki_dir / "ca.crt", cert=pki_dir / f"node-{NODE}-client.crt",
                     key=pki_dir / f"node-{NODE}-client.key", user=f"system:node:{NODE}")
    first_serial = x509.load_pem_x509_certificate((pki_dir / f"node-{NODE}-client.crt").read_bytes()).serial_number

    proc = agents.start(f"--hf-endpoint={hub}", f"--llama-server={ensure_llama_server()}", name=NODE)
    try:
        wait_for(lambda: node_ready(cluster, NODE), timeout=60, what=f"{NODE} Ready")
        cluster.kubectl("create", "namespace", "rotation")
        apply(cluster, "rotation", deployment("gemma", port=PORT, node=NODE), service("gemma", PORT))
        pod = wait_for(lambda: pod_ready(cluster, "rotation", "gemma"), timeout=240, what="gemma pod Ready")
        url = f"http://{state.host_for(NODE).ns_ip}:{PORT}"
        server = server_pid(PORT)
        assert server and complete(url)["choices"]
        assert renewal_csrs(cluster, NODE) == [] and time.time() < expiry.timestamp(), "renewed too early, or the pod was slow"

        # Through the first certificate's expiry and on until a cluster-signed one was renewed as well.
        not_ready, failed, answered_after = [], [], 0
        deadline = expiry + dt.timedelta(seconds=40)
        while dt.datetime.now(dt.timezone.utc) < deadline or (len(renewal_csrs(cluster, NODE)) < 2 and time.time() < expiry.timestamp() + 150):
            if not node_ready(cluster, NODE):
                not_ready.append(dt.datetime.now(dt.timezone.utc).isoformat())
            try:
                complete(url, max_tokens=2)
                answered_after += time.time() > expiry.timestamp()
            except OSError as exc:
                failed.append(str(exc))
            time.sleep(2)
        assert not not_ready, f"NotReady at {not_ready}; agent log:\n{proc.log_tail(40)}"
        assert not failed and answered_after > 5, failed

        csrs = renewal_csrs(cluster, NODE)
        assert len(csrs) >= 2, f"renewals: {[c['metadata']['name'] for c in csrs]}; agent log:\n{proc.log_tail(40)}"
        for csr in csrs:  # approved by kube-controller-manager (selfnodeclient), nobody ran `kubectl certificate approve`
            approved = next(c for c in csr["status"]["conditions"] if c["type"] == "Approved")
            assert approved["reason"] == "AutoApproved" and csr["status"].get("certificate"), csr["status"]
            assert csr["spec"]["usages"] == ["digital signature", "client auth"]

        # The first certificate is dead; the node's kubeconfig names the renewed one, for a restart too.
        refused = whoami(cluster, original)
        assert refused.returncode != 0 and "Unauthorized" in refused.stderr, refused.stderr
        me = json.loads(whoami(cluster, kubeconfig).stdout)["status"]["userInfo"]
        assert me["username"] == f"system:node:{NODE}" and "system:nodes" in me["groups"]
        current = Path(state.directory) / "agents" / NODE / "pki" / "kubelet-client-current.pem"
        user = next(u["user"] for u in yaml.safe_load(kubeconfig.read_text())["users"])
        assert user["client-certificate"] == user["client-key"] == str(current)
        cert = x509.load_pem_x509_certificate(current.read_bytes())
        assert cert.serial_number != first_serial and cert.not_valid_after_utc > expiry
        assert stat.S_IMODE(current.resolve().stat().st_mode) == 0o600

        # Nothing restarted: the same agent, the same server process, a heartbeat after the expiry.
        assert proc.alive()
        pod_now = pod_ready(cluster, "rotation", "gemma")
        assert pod_now and pod_now["metadata"]["uid"] == pod["metadata"]["uid"]
        assert pod_now["status"]["containerStatuses"][0]["restartCount"] == 0 and server_pid(PORT) == server
        lease = json.loads(cluster.kubectl("get", "lease", "-n", "kube-node-lease", NODE, "-o", "json").stdout)
        assert dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00")) > expiry
        wait_for(lambda: Path(proc.log).read_text().count("client certificate renewed") >= 2, timeout=30,
                 what="the second renewal in use")  # its CSR may be issued a poll before the agent takes it
        log = Path(proc.log).read_text()
        assert "reloaded the credentials" in log
        assert "401 Unauthorized" not in log, "no request was refused on the way"
    finally:
        agents.stop_all()
        cluster.kubectl("delete", "namespace", "rotation", "--wait=false", check=False)
        cluster.kubectl("delete", "node", NODE, check=False)
