"""A user joins a Mac with the line `vnode cluster up` printed, as with `kubeadm join`: the
token finds and authenticates the cluster, the stock controllers approve and sign the node's
certificate, and `vnode run` with the written kubeconfig brings the node Ready. A wrong CA
hash, a wrong secret, a deleted token and an expired token are each refused, saying why."""

from __future__ import annotations

import datetime as dt
import json
import os
import plistlib
import re
import stat
import subprocess
import sys
from pathlib import Path

from vnode.cluster import bootstrap_tokens
from vnode.join.discovery import BootstrapToken

from .conftest import ROOT, node_ready, wait_for

NAME = "vnode-joined"
LAUNCHCTL = ROOT / "tests" / "support" / "launchctl"


def vnode_join(cluster, *extra: str, token: str | None = None, pin: str | None = None,
               home: Path | None = None) -> subprocess.CompletedProcess:
    """The printed `vnode join` line, run inside the "Mac" (the node's namespace), with changes.
    With `home`, this "Mac" has launchd: the recording launchctl stand-in is first on PATH."""
    argv = cluster.join_command(program=[*cluster.state.host.exec_prefix(), sys.executable, "-m", "vnode"])
    if token is not None:
        argv[argv.index("--token") + 1] = token
    if pin is not None:
        argv[argv.index("--discovery-token-ca-cert-hash") + 1] = pin
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if home is not None:
        env |= {"HOME": str(home), "PATH": f"{LAUNCHCTL}{os.pathsep}{env['PATH']}",
                "LAUNCHCTL_CALLS": str(home / "launchctl-calls"), "LAUNCHCTL_STATE": str(home / "launchd")}
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def printed_token(cluster) -> BootstrapToken:
    argv = cluster.join_command()
    token_id, secret = argv[argv.index("--token") + 1].split(".")
    return BootstrapToken(token_id, secret)


def signed_for(cluster, token_id: str) -> bool:
    cm = json.loads(cluster.kubectl("get", "configmap", "cluster-info", "-n", "kube-public", "-o", "json").stdout)
    return f"jws-kubeconfig-{token_id}" in (cm.get("data") or {})


def new_token(cluster, *, expires: dt.datetime | None = None) -> BootstrapToken:
    token = bootstrap_tokens.new_token()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(bootstrap_tokens.token_secret(token, expires=expires)))
    return token


def csrs_by(cluster, username: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "csr", "-o", "json").stdout)["items"]
    return [c for c in items if c["spec"].get("username") == username]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_join_with_the_printed_token_then_run_gets_the_node_ready(cluster, agents):
    state_dir = Path(cluster.state.directory) / "agents" / NAME
    kubeconfig = state_dir / "kubeconfig"
    token = printed_token(cluster)
    flags = (f"--node-name={NAME}", f"--state-dir={state_dir}", f"--kubeconfig-out={kubeconfig}")

    home = Path(cluster.state.directory) / "home-joined"
    home.mkdir()
    out = vnode_join(cluster, *flags, home=home)
    assert out.returncode == 0, out.stderr
    assert f"joined: the API server knows this Mac as system:node:{NAME}" in out.stdout, out.stdout
    assert f"--host-ip={cluster.state.host.ns_ip}" in out.stdout  # found on the route to the API server

    # ... and installed the node as a LaunchAgent running the printed `vnode run` line.
    printed = next(line.split() for line in out.stdout.splitlines() if line.strip().startswith("vnode run "))
    job = plistlib.loads((home / "Library" / "LaunchAgents" / "dev.llmkube.vnode.plist").read_bytes())
    assert job["ProgramArguments"][1:] == ["-m", "vnode", "run", *printed[2:], "--log-format=json"], job
    assert any(c.startswith("bootstrap gui/") for c in (home / "launchctl-calls").read_text().splitlines())
    assert "installed: LaunchAgent" in out.stdout
    pki = state_dir / "pki"
    current = pki / "kubelet-client-current.pem"
    assert mode(kubeconfig) == 0o600 and current.is_symlink() and mode(current.resolve()) == 0o600
    assert not (pki / "kubelet-client.key.tmp").exists()

    # The CSR was the bootstrap token's, approved by kube-controller-manager, not by a person.
    name = re.search(r"CSR (node-csr-[0-9a-f]+)", out.stdout)[1]
    csr = json.loads(cluster.kubectl("get", "csr", name, "-o", "json").stdout)
    assert csr["spec"]["username"] == f"system:bootstrap:{token.id}"
    assert "system:bootstrappers" in csr["spec"]["groups"]
    assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    approved = next(c for c in csr["status"]["conditions"] if c["type"] == "Approved")
    assert approved["reason"] == "AutoApproved", approved

    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)["status"]["userInfo"]
    assert who["username"] == f"system:node:{NAME}" and "system:nodes" in who["groups"]

    # The node runs with exactly the printed flags (the harness only picks the kubelet port):
    # its serving certificate from a kubelet-serving CSR, the API server's client certificate
    # verified against the cluster CA join wrote.
    assert (pki / "ca.crt").read_bytes() == (Path(cluster.state.directory) / "pki" / "ca.crt").read_bytes()
    agents.start(*printed[2:], name=NAME, kubeconfig=kubeconfig, serving_cert=False, client_ca=False)
    wait_for(lambda: node_ready(cluster, NAME), timeout=60, what=f"{NAME} Ready")
    serving = wait_for(lambda: [c["metadata"]["name"] for c in csrs_by(cluster, f"system:node:{NAME}")
                                if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"], timeout=60,
                       what="the kubelet-serving CSR")
    cluster.kubectl("certificate", "approve", serving[0])
    healthz = wait_for(lambda: (r := cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NAME}/proxy/healthz", check=False))
                       .returncode == 0 and r, timeout=60, what="the kubelet API through the API server")
    assert healthz.stdout.strip() == "ok", healthz

    # The same join again: nothing is asked for, nothing is written.
    before = (kubeconfig.read_bytes(), os.readlink(current), sorted(p.name for p in pki.iterdir()))
    requests = len(csrs_by(cluster, f"system:bootstrap:{token.id}"))
    again = vnode_join(cluster, *flags, home=home)
    assert again.returncode == 0, again.stderr
    assert "already joined" in again.stdout and "nothing changed" in again.stdout, again.stdout
    assert "already installed" in again.stdout, again.stdout
    assert (kubeconfig.read_bytes(), os.readlink(current), sorted(p.name for p in pki.iterdir())) == before
    assert len(csrs_by(cluster, f"system:bootstrap:{token.id}")) == requests
    cluster.kubectl("delete", "node", NAME)


def test_a_wrong_ca_hash_is_refused_naming_both_hashes(cluster, tmp_path):
    argv = cluster.join_command()
    real = argv[argv.index("--discovery-token-ca-cert-hash") + 1]
    wrong = "sha256:" + "0" * 64
    out = vnode_join(cluster, "--node-name=vnode-wrong-ca", f"--state-dir={tmp_path}", pin=wrong)
    assert out.returncode == 1, out.stdout
    assert real in out.stderr and wrong in out.stderr and "refusing to trust" in out.stderr, out.stderr
    assert not (tmp_path / "kubeconfig").exists() and not (tmp_path / "pki").exists()


def test_a_wrong_secret_is_refused(cluster, tmp_path):
    token = printed_token(cluster)
    out = vnode_join(cluster, "--node-name=vnode-wrong-secret", f"--state-dir={tmp_path}", token=f"{token.id}.{'0' * 16}")
    assert out.returncode == 1, out.stdout
    assert f"signature in the cluster-info ConfigMap at {cluster.state.server} for token id {token.id} does not verify" \
        in out.stderr, out.stderr
    assert "token" in out.stderr.split("does not verify")[1]
    assert not (tmp_path / "kubeconfig").exists()


def test_a_deleted_token_is_refused(cluster, tmp_path):
    token = new_token(cluster)
    wait_for(lambda: signed_for(cluster, token.id), timeout=30, what="the bootstrapsigner to sign cluster-info")
    cluster.kubectl("delete", "secret", f"bootstrap-token-{token.id}", "-n", "kube-system")
    wait_for(lambda: not signed_for(cluster, token.id), timeout=30, what="the signature of the deleted token to go")
    out = vnode_join(cluster, "--node-name=vnode-deleted-token", f"--state-dir={tmp_path}", "--discovery-timeout=3",
                     token=str(token))
    assert out.returncode == 1, out.stdout
    assert f"carries no signature for token id {token.id}: the token is wrong, expired or deleted" in out.stderr, out.stderr
    assert not (tmp_path / "kubeconfig").exists()


def test_an_expired_token_is_refused(cluster, tmp_path):
    expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=8)  # RFC 3339, whole seconds
    token = new_token(cluster, expires=expires)
    wait_for(lambda: signed_for(cluster, token.id), timeout=8, what="the bootstrapsigner to sign cluster-info")
    # Once it expires the tokencleaner deletes it and the bootstrapsigner takes its signature away.
    wait_for(lambda: not signed_for(cluster, token.id), timeout=60, what="the expired token's signature to go")
    assert dt.datetime.now(dt.timezone.utc) >= expires
    gone = cluster.kubectl("get", "secret", f"bootstrap-token-{token.id}", "-n", "kube-system", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    out = vnode_join(cluster, "--node-name=vnode-expired-token", f"--state-dir={tmp_path}", "--discovery-timeout=3",
                     token=str(token))
    assert out.returncode == 1, out.stdout
    assert f"carries no signature for token id {token.id}: the token is wrong, expired or deleted" in out.stderr, out.stderr
