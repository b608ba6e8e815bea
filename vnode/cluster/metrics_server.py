"""metrics-server for the local cluster, set up as its release manifest does, minus the pod.

There is no container runtime here, so metrics-server runs as a host process on the root
end of the node's veth pair. Everything else is the release manifest's: a ServiceAccount
whose token it authenticates with, its RBAC, a Service (with a hand-written EndpointSlice
instead of a selector) and the `v1beta1.metrics.k8s.io` APIService. It scrapes kubelets
at their InternalIP and node status port with TLS verified against the cluster CA
(never --kubelet-insecure-tls).

A registered APIService whose backend is down breaks discovery and so namespace deletion;
`stop()` removes the APIService before the process, and `LocalCluster.down()` takes the
whole API server with it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from vnode.cluster import processes
from vnode.cluster.processes import Proc

NAMESPACE = "kube-system"
NAME = "metrics-server"
APISERVICE = "v1beta1.metrics.k8s.io"
METRIC_RESOLUTION = "15s"  # the release manifest's; metrics-server's minimum is 10s

Kubectl = Callable[..., object]  # LocalCluster.kubectl


def manifests(*, endpoint_ip: str, port: int, ca_bundle: bytes) -> list[dict]:
    """The release manifest's objects, with the Service backed by this host's address."""
    labels = {"k8s-app": NAME}
    sa = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels}},
        # A long-lived token the token controller fills in: the process outlives any
        # projected token it could be handed at start.
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {"name": f"{NAME}-token", "namespace": NAMESPACE, "labels": labels,
                      "annotations": {"kubernetes.io/service-account.name": NAME}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:aggregated-metrics-reader",
                      "labels": {**labels, "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                                 "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                                 "rbac.authorization.k8s.io/aggregate-to-view": "true"}},
         "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"system:{NAME}", "labels": labels},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{NAME}-auth-reader", "namespace": NAMESPACE, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
         "subjects": [sa]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{NAME}:system:auth-delegator", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": [sa]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"system:{NAME}", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"system:{NAME}"},
         "subjects": [sa]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
         "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{NAME}-host", "namespace": NAMESPACE,
                      "labels": {**labels, "kubernetes.io/service-name": NAME,
                                 "endpointslice.kubernetes.io/managed-by": "vnode-local-cluster"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [endpoint_ip], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE, "labels": labels},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                  "caBundle": base64.b64encode(ca_bundle).decode()}},
    ]


def token_kubeconfig(path: Path, *, server: str, ca: Path, token: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "vnode-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": NAME, "user": {"token": token}}],
        "contexts": [{"name": NAME, "context": {"cluster": "vnode-local", "user": NAME}}],
        "current-context": NAME,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(binary: Path, *, kubeconfig: Path, bind: str, port: int, cert: Path, key: Path, ca: Path) -> list[str]:
    return [
        str(binary), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={bind}", f"--secure-port={port}",
        f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
        f"--kubelet-certificate-authority={ca}", "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port", f"--metric-resolution={METRIC_RESOLUTION}", "--v=1",
    ]


def apply(kubectl: Kubectl, objects: list[dict]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects, sort_keys=False))


def wait_token(kubectl: Kubectl, *, timeout: float) -> str:
    """The token the token controller writes into the ServiceAccount's Secret."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = kubectl("-n", NAMESPACE, "get", "secret", f"{NAME}-token", "-o", "json", check=False)
        if proc.returncode == 0:
            token = (json.loads(proc.stdout).get("data") or {}).get("token")
            if token:
                return base64.b64decode(token).decode()
        time.sleep(0.25)
    raise TimeoutError(f"the token controller did not fill secret {NAMESPACE}/{NAME}-token within {timeout:.0f}s")


def available(kubectl: Kubectl) -> tuple[bool, str]:
    """Whether the API server's aggregator reports the APIService Available, and why not."""
    proc = kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, proc.stderr.strip()
    for cond in json.loads(proc.stdout).get("status", {}).get("conditions", []):
        if cond.get("type") == "Available":
            return cond.get("status") == "True", f"{cond.get('reason')}: {cond.get('message', '')}"
    return False, "no Available condition yet"


def wait_available(kubectl: Kubectl, proc: Proc, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"metrics-server exited during start-up; last lines of {proc.log}:\n{proc.log_tail()}")
        ok, why = available(kubectl)
        if ok:
            return
        time.sleep(0.5)
    raise TimeoutError(f"APIService {APISERVICE} not Available after {timeout:.0f}s ({why}); see {proc.log}")


def stop(kubectl: Kubectl, proc: Proc) -> None:
    """Unregister first, so discovery never points at a backend that is gone."""
    kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", "--wait=false", check=False)
    processes.stop(proc)
