"""What `kubeadm init` sets up so machines can join with a token, for the local cluster.

The cluster-info ConfigMap in kube-public (a kubeconfig with the server and CA, which
kube-controller-manager's bootstrapsigner signs with every token), and a bootstrap token
Secret as `kubeadm token create` makes it. Objects only: local.py applies them with kubectl.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import string

import yaml

from vnode.join.discovery import BootstrapToken

ALPHABET = string.ascii_lowercase + string.digits
TTL = dt.timedelta(hours=24)  # kubeadm's default
EXTRA_GROUP = "system:bootstrappers:kubeadm:default-node-token"


def new_token() -> BootstrapToken:
    return BootstrapToken("".join(secrets.choice(ALPHABET) for _ in range(6)),
                          "".join(secrets.choice(ALPHABET) for _ in range(16)))


def token_secret(token: BootstrapToken, *, expires: dt.datetime | None = None, ttl: dt.timedelta = TTL,
                 description: str = "bootstrap token for `vnode join`, made by `vnode cluster up`") -> dict:
    """The Secret the API server's bootstrap authenticator, the bootstrapsigner and the
    tokencleaner read: bootstrap-token-<id> in kube-system."""
    when = expires or dt.datetime.now(dt.timezone.utc) + ttl
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token.id}", "namespace": "kube-system"},
        "stringData": {
            "description": description, "token-id": token.id, "token-secret": token.secret,
            "expiration": when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
            "auth-extra-groups": EXTRA_GROUP,
        },
    }


def cluster_info(*, server: str, ca_pem: bytes) -> dict:
    """kubeadm's cluster-info: one cluster named "" with the server and the CA, no users."""
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "", "cluster": {"certificate-authority-data": base64.b64encode(ca_pem).decode(), "server": server}}],
        "contexts": [], "current-context": "", "preferences": {}, "users": [],
    }
    return {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": yaml.safe_dump(kubeconfig, sort_keys=False)},
    }
