"""deploy/kind/up.sh, which cannot run here (kind's node image cannot be pulled on the build
machine): it parses, names only files that exist, and, with docker, kind, kubectl, curl,
vnode and launchctl replaced by recording stand-ins on PATH, makes the calls a join needs.
Also: the placement-free example Deployment runs the same container as the Mac-only one."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kind" / "up.sh"

CLUSTER_INFO = """apiVersion: v1
kind: ConfigMap
metadata:
  name: cluster-info
  namespace: kube-public
  resourceVersion: "321"
data:
  jws-kubeconfig-abcdef: eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..sig
  kubeconfig: |
    apiVersion: v1
    clusters:
    - cluster:
        certificate-authority-data: LS0tLS1CRUdJTg==
        server: https://vnode-control-plane:6443
      name: ""
"""

# Each stand-in appends its argv to calls.log and answers what the script reads.
STANDINS = {
    "kind": 'case "$1" in get) ;; *) ;; esac',
    "kubectl": r'''case "$*" in
  *"config view"*) echo -n https://127.0.0.1:6443 ;;
  *"get configmap cluster-info"*) cat "$FIXTURES/cluster-info.yaml" ;;
  *"replace -f -"*) cat > "$FIXTURES/replaced.yaml" ;;
  *"get csr"*) echo "csr-abc 5s kubernetes.io/kubelet-serving system:node:studio <none> Pending" ;;
esac''',
    "docker": r'''case "$*" in
  *"kubeadm token create"*) echo "kubeadm join vnode-control-plane:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:1234 " ;;
  *"cat /etc/kubernetes/pki/ca.crt"*) echo "-----BEGIN CERTIFICATE-----" ;;
esac''',
    "curl": r'''n=$(cat "$FIXTURES/curl.count" 2>/dev/null || echo 0); echo $((n + 1)) > "$FIXTURES/curl.count"
if [ "$n" = 0 ]; then echo -n 000; exit 7; fi; echo -n 401''',
    "vnode": "",
    "launchctl": "",
    "sleep": "",
}


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_script_names_only_files_that_exist():
    text = SCRIPT.read_text()
    named = re.findall(r'"\$(?:repo|here)/([^"]+\.yaml)"', text)
    assert "manifests/bootstrap-rbac.yaml" in named and "manifests/node-client-rotation-rbac.yaml" in named
    assert "cluster.yaml" in named
    for rel in named:
        base = SCRIPT.parent if rel == "cluster.yaml" else REPO
        assert (base / rel).is_file(), rel
    for rel in re.findall(r"\bmanifests/[\w.-]+\.yaml", text):
        assert (REPO / rel).is_file(), rel
    config = yaml.safe_load((SCRIPT.parent / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["networking"]["apiServerAddress"] == "127.0.0.1"


def test_script_joins_with_stand_ins(tmp_path):
    bin_dir, fixtures, home = tmp_path / "bin", tmp_path / "fixtures", tmp_path / "home"
    for d in (bin_dir, fixtures, home):
        d.mkdir()
    (fixtures / "cluster-info.yaml").write_text(CLUSTER_INFO)
    for tool, body in STANDINS.items():
        path = bin_dir / tool
        path.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "$FIXTURES/calls.log"\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "FIXTURES": str(fixtures),
           "HOST_IP": "192.168.1.20", "NODE_NAME": "studio"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (fixtures / "calls.log").read_text().splitlines()
    state = home / ".local" / "state" / "vnode"

    assert f"kind create cluster --name vnode --config {SCRIPT.parent / 'cluster.yaml'}" in calls
    assert any(c.startswith("kubectl --context kind-vnode apply -f") and "bootstrap-rbac.yaml" in c
               and "node-client-rotation-rbac.yaml" in c for c in calls)
    replaced = yaml.safe_load((fixtures / "replaced.yaml").read_text())
    assert "server: https://127.0.0.1:6443\n" in replaced["data"]["kubeconfig"]
    assert replaced["metadata"]["resourceVersion"] == "321"  # a replace, not a blind overwrite
    assert ("vnode join https://127.0.0.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash "
            f"sha256:1234 --node-name studio --host-ip 192.168.1.20 --state-dir {state}") in calls  # it installs the service
    assert "kubectl --context kind-vnode certificate approve csr-abc" in calls
    assert "abcdef.0123456789abcdef" not in proc.stdout  # the token is not echoed
    # cluster-info is patched before the token exists, so the token signs the new content.
    patch = next(i for i, c in enumerate(calls) if "replace -f -" in c)
    token = next(i for i, c in enumerate(calls) if "kubeadm token create" in c)
    assert patch < token


def test_portable_example_runs_the_same_container():
    def template(name: str) -> dict:
        docs = yaml.safe_load_all((REPO / "manifests" / name).read_text())
        return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]

    mac, anywhere = template("llama-server-deployment.yaml"), template("llama-server-deployment-anywhere.yaml")
    assert anywhere["containers"] == mac["containers"]
    assert anywhere["tolerations"] == mac["tolerations"]
    assert "nodeSelector" in mac and "nodeSelector" not in anywhere
    assert os.path.basename(anywhere["containers"][0]["image"]) == "llama.cpp:server"
