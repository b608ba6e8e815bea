"""The node's client certificate, renewed before it expires (the kubelet's certificate
manager with --rotate-certificates).

When the kubeconfig authenticates as this node (system:node:<name> in system:nodes) with a
client certificate, at a jittered 70-90 % of its life a new key and a
`kubernetes.io/kube-apiserver-client-kubelet` CSR for the same identity are sent,
authenticated with the current certificate. kube-controller-manager's csrapproving controller
approves it when group system:nodes may create certificatesigningrequests/selfnodeclient
(manifests/node-client-rotation-rbac.yaml). The pair is stored as the kubelet stores it:
`kubelet-client-<time>.pem` (certificate and key, owner-only) and the symlink
`kubelet-client-current.pem`, switched atomically; the kubeconfig is pointed at the symlink
once; then the live KubeClient switches to it. Nothing restarts: no pod, no watch.
Touches only its certificate directory and the kubeconfig's user entry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vnode.files import replace_private, write_private
from vnode.kubeclient import Credentials, KubeClient, KubeconfigError
from vnode.kubeconfig import certificate_facts
from vnode.node import certs

log = logging.getLogger(__name__)

SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
USAGES = ["digital signature", "client auth"]  # what csrapproving expects of an EC key
PREFIX = "kubelet-client"
CURRENT_SUFFIX = "-current.pem"
RETRY_SECONDS = 60.0
HINT_AFTER = 60.0  # csrapproving answers in a second; a minute without approval needs a person


@dataclass(frozen=True)
class PairStore:
    """`<prefix>-<UTC time>.pem` files holding certificate and key, and `<prefix>-current.pem`."""

    directory: Path
    prefix: str = PREFIX

    @property
    def current(self) -> Path:
        return self.directory / f"{self.prefix}{CURRENT_SUFFIX}"

    def update(self, cert_pem: bytes, key_pem: bytes) -> Path:
        """Write the pair (owner-only from creation), then switch the symlink to it in one
        rename; keep the previous pair, drop older ones. Blocking: call in a thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
        path, n = self.directory / f"{self.prefix}-{stamp}.pem", 0
        while path.exists():
            n += 1
            path = self.directory / f"{self.prefix}-{stamp}-{n}.pem"
        write_private(path, cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        previous = os.readlink(self.current) if self.current.is_symlink() else None
        link = self.directory / f".{self.current.name}.tmp"
        link.unlink(missing_ok=True)
        os.symlink(path.name, link)
        os.replace(link, self.current)
        keep = {path.name, os.path.basename(previous or "")}
        for old in self.directory.glob(f"{self.prefix}-[0-9]*.pem"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return path


def store_for(creds: Credentials, default_dir: Path) -> PairStore:
    """Where the pairs go: beside a `*-current.pem` the kubeconfig already names (the
    kubelet's layout, or a previous rotation), else vnode's own certificate directory."""
    f = creds.cert_file
    if f is not None and f == creds.key_file and f.name.endswith(CURRENT_SUFFIX) and len(f.name) > len(CURRENT_SUFFIX):
        return PairStore(f.parent, f.name[: -len(CURRENT_SUFFIX)])
    return PairStore(default_dir.absolute())


def not_rotatable(creds: Credentials, node_name: str) -> str | None:
    """Why these credentials are not a client certificate of this node to renew, or None."""
    if creds.exec is not None:
        return "the credentials come from an exec plugin, which renews them itself"
    if not creds.client_cert:
        return "the kubeconfig has no client certificate"
    if creds.kubeconfig is None:
        return "the credentials were not read from a kubeconfig"
    try:
        cn, orgs, _, _ = certificate_facts(creds.client_cert)
    except ValueError as exc:
        return f"the client certificate cannot be read ({exc})"
    if cn != f"system:node:{node_name}" or "system:nodes" not in orgs:
        return f"the client certificate is for {cn} ({', '.join(orgs) or 'no groups'}), not system:node:{node_name} in system:nodes"
    return None


def point_kubeconfig(kubeconfig: Path, *, user: str, pair: Path) -> None:
    """Make the kubeconfig's user `user` read certificate and key from `pair`; replaced in one
    rename, owner-only. Blocking: call in a thread."""
    target = kubeconfig.resolve()
    try:
        config = yaml.safe_load(target.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{kubeconfig} is no longer valid YAML: {exc}") from None
    entry = next((u for u in config.get("users") or [] if u.get("name") == user), None)
    if entry is None:
        raise KubeconfigError(f"{kubeconfig} has no user {user!r} any more")
    fields = entry.setdefault("user", {})
    fields.pop("client-certificate-data", None)
    fields.pop("client-key-data", None)
    fields["client-certificate"] = fields["client-key"] = str(pair)
    replace_private(target, yaml.safe_dump(config, sort_keys=False).encode())


def _writable(path: Path) -> bool:
    target = path.resolve()
    return os.access(target.parent, os.W_OK) and (not target.exists() or os.access(target, os.W_OK))


async def keep_fresh(api: KubeClient, *, node_name: str, cert_dir: Path, retry: float = RETRY_SECONDS,
                     poll: float = 2.0) -> None:
    """Run for the agent's lifetime: renew the node's client certificate before it expires.
    Returns at once (with one log line) when there is nothing this node can renew."""
    creds = api.credentials
    reason = not_rotatable(creds, node_name)
    if reason is not None:
        log.info("client certificate rotation off: %s", reason)
        return
    assert creds.kubeconfig is not None
    store = store_for(creds, cert_dir)
    if creds.cert_file != store.current and not await asyncio.to_thread(_writable, creds.kubeconfig):
        log.warning("client certificate rotation off: the kubeconfig %s cannot be rewritten to name the renewed "
                    "certificate; make it writable for vnode's user (the kubelet owns its kubeconfig likewise)", creds.kubeconfig)
        return
    while True:
        creds = api.credentials
        try:
            _, _, not_before, not_after = certificate_facts(creds.client_cert or b"")
        except ValueError:
            not_before = not_after = dt.datetime.now(dt.timezone.utc)
        deadline = certs.rotation_deadline(not_before, not_after)
        log.info("client certificate of system:node:%s valid until %s; renewal at %s", node_name,
                 not_after.isoformat(timespec="seconds"), deadline.isoformat(timespec="seconds"))
        await certs.sleep_until(deadline)
        if api.credentials.client_cert != creds.client_cert:
            continue  # replaced meanwhile (read again after a 401): plan from the new one
        try:
            await renew(api, node_name=node_name, store=store, poll=poll)
        except certs.CertificateDenied as exc:
            log.error("client certificate not renewed: %s; the current one expires %s; retrying in %.0fs",
                      exc, not_after.isoformat(timespec="seconds"), retry)
            await asyncio.sleep(retry)
        except (OSError, ValueError) as exc:  # KubeconfigError is a ValueError
            log.error("client certificate not renewed: %s; the current one expires %s; retrying in %.0fs",
                      exc, not_after.isoformat(timespec="seconds"), retry)
            await asyncio.sleep(retry)


async def renew(api: KubeClient, *, node_name: str, store: PairStore, poll: float = 2.0) -> Path:
    """One renewal: new key, CSR for the same identity, the issued pair stored and in use."""
    key = await asyncio.to_thread(ec.generate_private_key, ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(certs.node_subject(node_name)).sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM)
    name = f"vnode-client-{node_name}-{hashlib.sha256(pem).hexdigest()[:8]}"
    issued = await certs.request_certificate(
        api, name=name, request_pem=pem, signer=SIGNER, usages=USAGES, what="client certificate", poll=poll,
        hint_after=HINT_AFTER,
        hint=lambda: (f"client certificate request {name} is not approved yet: kube-controller-manager approves a node's "
                      "renewal when group system:nodes may create certificatesigningrequests/selfnodeclient "
                      f"(manifests/node-client-rotation-rbac.yaml); or run `kubectl certificate approve {name}`"),
    )
    path = await asyncio.to_thread(store.update, issued, certs.private_pem(key))
    creds = api.credentials
    if creds.cert_file != store.current or creds.key_file != store.current:
        assert creds.kubeconfig is not None
        await asyncio.to_thread(point_kubeconfig, creds.kubeconfig, user=creds.user, pair=store.current)
    if not await api.reload_credentials(why=f"client certificate renewed ({path.name})"):
        raise ValueError(f"the renewed certificate {path} is stored but the kubeconfig {creds.kubeconfig} does not yield it")
    return path
