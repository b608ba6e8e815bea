"""The local cluster's metrics-server objects and flags: as its release manifest, with the
Service backed by this host and TLS to kubelets verified."""

from __future__ import annotations

import base64
from pathlib import Path

from vnode.cluster import metrics_server


def test_the_apiservice_trusts_the_cluster_ca_and_points_at_the_host():
    objects = {o["kind"]: o for o in metrics_server.manifests(endpoint_ip="198.18.0.1", port=4443, ca_bundle=b"PEM")}
    api = objects["APIService"]["spec"]
    assert api["service"] == {"name": "metrics-server", "namespace": "kube-system", "port": 443}
    assert base64.b64decode(api["caBundle"]) == b"PEM" and not api.get("insecureSkipTLSVerify")
    eps = objects["EndpointSlice"]
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "metrics-server"
    assert eps["endpoints"][0]["addresses"] == ["198.18.0.1"] and eps["ports"][0]["port"] == 4443
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == 4443 and "selector" not in objects["Service"]["spec"]


def test_rbac_lets_it_read_node_metrics_and_delegate_auth():
    objects = metrics_server.manifests(endpoint_ip="198.18.0.1", port=4443, ca_bundle=b"PEM")
    role = next(o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "system:metrics-server")
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in role["rules"]
    bound = {o["roleRef"]["name"] for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")}
    assert bound == {"system:metrics-server", "system:auth-delegator", "extension-apiserver-authentication-reader"}


def test_kubelets_are_scraped_at_their_internal_ip_with_tls_verified(tmp_path: Path):
    cmd = metrics_server.command(Path("/bin/metrics-server"), kubeconfig=tmp_path / "k", bind="198.18.0.1", port=4443,
                                 cert=tmp_path / "c", key=tmp_path / "k2", ca=tmp_path / "ca.crt")
    assert f"--kubelet-certificate-authority={tmp_path / 'ca.crt'}" in cmd
    assert "--kubelet-preferred-address-types=InternalIP" in cmd and "--kubelet-use-node-status-port" in cmd
    assert not any("insecure" in arg for arg in cmd)


def test_the_token_kubeconfig_is_private(tmp_path: Path):
    path = metrics_server.token_kubeconfig(tmp_path / "ms.yaml", server="https://198.18.0.1:6443", ca=tmp_path / "ca", token="t")
    assert path.stat().st_mode & 0o777 == 0o600 and "token: t" in path.read_text()
