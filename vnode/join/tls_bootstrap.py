"""The kubelet's TLS bootstrap: from a bootstrap token to the node's own client certificate.

A new key (owner-only from its creation, kept as `kubelet-client.key.tmp` until the
certificate comes, so an interrupted join asks again with the same key and finds its CSR), a
`kubernetes.io/kube-apiserver-client-kubelet` CSR for system:node:<name> in system:nodes sent as
system:bootstrap:<token id>, approved by kube-controller-manager's csrapproving controller and
signed by its csrsigning. The pair is stored as the kubelet stores it (client_certs.PairStore,
which rotation renews in place) and a kubeconfig naming it is written, owner-only. Touches only
that certificate directory and that kubeconfig.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vnode.files import replace_private, write_private
from vnode.join.discovery import BootstrapToken, ClusterInfo, ca_hashes
from vnode.kubeclient import ApiError, Credentials, KubeClient, KubeconfigError, load_kubeconfig
from vnode.kubeconfig import certificate_facts, env_proxy, tls_context
from vnode.node import certs, identity
from vnode.node.client import explain
from vnode.node.client_certs import SIGNER, PairStore

TMP_KEY = "kubelet-client.key.tmp"
HINT_AFTER = 30.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class BootstrapError(RuntimeError):
    """No client certificate came of the bootstrap token (exit code 1)."""


# -- the request --------------------------------------------------------------------------

def load_or_make_key(path: Path) -> tuple[PrivateKey, bool]:
    """The key an interrupted join left at `path` (True), else a new EC P-256 key written there
    owner-only from its creation (False). Blocking: call in a thread."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                return key, True
        except ValueError:
            pass
        path.unlink()
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(path, certs.private_pem(key))
    return key, False


def usages_for(key: PrivateKey) -> list[str]:
    """What csrapproving accepts for a kubelet client certificate: key encipherment only for RSA."""
    return ["digital signature", "client auth", *(["key encipherment"] if isinstance(key, rsa.RSAPrivateKey) else [])]


def make_csr(key: PrivateKey, node_name: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(certs.node_subject(node_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_name(key: PrivateKey, node_name: str) -> str:
    """Derived from the key and the identity, as the kubelet names its CSR: the same key asks
    under the same name, so a join run again after an interruption finds its request."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki + b"|" + node_name.encode() + b"|" + ",".join(usages_for(key)).encode()).hexdigest()
    return f"node-csr-{digest[:32]}"


# -- the result ---------------------------------------------------------------------------

def node_kubeconfig(*, server: str, ca_pem: bytes, pair: Path, node_name: str) -> bytes:
    """The kubelet's kubeconfig after bootstrap: the CA embedded, certificate and key read from
    the pair file (the `-current.pem` symlink, so renewals need no rewrite)."""
    user = f"system:node:{node_name}"
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"client-certificate": str(pair), "client-key": str(pair)}}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "user": user}}],
        "current-context": "default-context",
    }
    return yaml.safe_dump(config, sort_keys=False).encode()


def write_node_kubeconfig(path: Path, data: bytes) -> None:
    """Owner-only from its creation, replaced in one rename. Blocking: call in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_private(path, data)


@dataclass(frozen=True)
class Existing:
    """A node kubeconfig already at the target path: fit to keep (`usable`), with what it holds
    or why it is not."""

    usable: bool
    text: str


def check_existing(path: Path, *, node_name: str, server: str, pins: frozenset[str]) -> Existing | None:
    """None if nothing is there. Usable when it loads, authenticates as system:node:<name> in
    system:nodes with an unexpired certificate, for `server`, and (with pins) its CA is pinned.
    Blocking: call in a thread."""
    if not path.exists():
        return None
    try:
        creds = load_kubeconfig(path, environ={})
    except KubeconfigError as exc:
        return Existing(False, str(exc).removeprefix("--kubeconfig: "))
    if not creds.client_cert:
        return Existing(False, "it has no client certificate")
    try:
        cn, orgs, _, not_after = certificate_facts(creds.client_cert)
    except ValueError as exc:
        return Existing(False, f"its client certificate cannot be read ({exc})")
    if cn != f"system:node:{node_name}" or "system:nodes" not in orgs:
        return Existing(False, f"its client certificate is for {cn} ({', '.join(orgs) or 'no groups'}), not "
                               f"system:node:{node_name} in system:nodes")
    if dt.datetime.now(dt.timezone.utc) >= not_after:
        return Existing(False, f"its client certificate expired at {not_after.isoformat(timespec='seconds')}")
    if creds.server != server:
        return Existing(False, f"it is for the API server {creds.server}, not {server}")
    if pins:
        if not creds.ca_pem:
            return Existing(False, "it names no CA to compare with --discovery-token-ca-cert-hash")
        try:
            found = ca_hashes(creds.ca_pem)
        except ValueError:
            return Existing(False, "its CA cannot be read")
        if not pins.intersection(found):
            return Existing(False, f"its CA ({', '.join(found)}) is not the pinned one")
    return Existing(True, f"the client certificate of system:node:{node_name} for {server}, valid until "
                          f"{not_after.isoformat(timespec='seconds')}")


# -- the exchange ---------------------------------------------------------------------------

def _bootstrap_client(info: ClusterInfo, token: BootstrapToken) -> KubeClient:
    return KubeClient(Credentials(server=info.server, ssl=tls_context(ca_pem=info.ca_pem, insecure=False), token=str(token),
                                  user=f"system:bootstrap:{token.id}", proxy=env_proxy(info.server, os.environ),
                                  ca_pem=info.ca_pem))


async def _check_token(api: KubeClient, token: BootstrapToken, say: Callable[[str], None]) -> None:
    """Ask who the token makes us before sending a CSR, so a refused token is named as such
    (the CSR wait would retry a 401 until it timed out)."""
    try:
        who = await identity.who_am_i(api)
    except ApiError as exc:
        if exc.status == 401:
            raise BootstrapError(
                f"the API server at {api.server} rejects the bootstrap token (401 Unauthorized): it has expired or was "
                "deleted meanwhile, or the API server does not accept bootstrap tokens (kube-apiserver "
                "--enable-bootstrap-token-auth)") from None
        if exc.status in (403, 404):  # an API server without SelfSubjectReview: the CSR will tell
            return
        raise BootstrapError(explain(exc, server=api.server)) from None
    except Exception as exc:  # noqa: BLE001 - network trouble, named for a person
        raise BootstrapError(explain(exc, server=api.server)) from None
    say(f"authenticated as {who.username} (groups {', '.join(who.groups)})")


async def bootstrap(info: ClusterInfo, token: BootstrapToken, *, node_name: str, cert_dir: Path, kubeconfig: Path,
                    timeout: float, say: Callable[[str], None]) -> dt.datetime:
    """Obtain system:node:<name>'s client certificate and write the kubeconfig; its expiry."""
    api = _bootstrap_client(info, token)
    try:
        await _check_token(api, token, say)
        await asyncio.to_thread(cert_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        key, reused = await asyncio.to_thread(load_or_make_key, cert_dir / TMP_KEY)
        name = csr_name(key, node_name)
        say(f"{'reusing the key of an interrupted join' if reused else 'new EC P-256 key'} {cert_dir / TMP_KEY}; "
            f"requesting a client certificate for system:node:{node_name} (CSR {name}, signer {SIGNER})")
        try:
            issued = await asyncio.wait_for(certs.request_certificate(
                api, name=name, request_pem=make_csr(key, node_name), signer=SIGNER, usages=usages_for(key),
                what="client certificate", poll=1.0, hint_after=HINT_AFTER,
                hint=lambda: (f"CSR {name} is not approved yet: kube-controller-manager approves it when group "
                              "system:bootstrappers may create certificatesigningrequests/nodeclient "
                              f"(manifests/bootstrap-rbac.yaml); or `kubectl certificate approve {name}`"),
            ), timeout)
        except TimeoutError:
            raise BootstrapError(
                f"CSR {name} was not approved and signed within {timeout:.0f}s: kube-controller-manager's csrapproving "
                "controller approves it when group system:bootstrappers may create certificatesigningrequests/nodeclient "
                f"(kubectl apply -f manifests/bootstrap-rbac.yaml), or approve it yourself (`kubectl certificate approve "
                f"{name}`); its csrsigning controller needs --cluster-signing-cert-file and key") from None
        except certs.CertificateMismatch as exc:
            raise BootstrapError(str(exc)) from None
        except certs.CertificateDenied as exc:
            raise BootstrapError(f"{exc} (group system:bootstrappers needs the ClusterRole system:node-bootstrapper: "
                                 "manifests/bootstrap-rbac.yaml)") from None
    finally:
        await api.close()
    store = PairStore(cert_dir)
    pair = await asyncio.to_thread(store.update, issued, certs.private_pem(key))
    data = node_kubeconfig(server=info.server, ca_pem=info.ca_pem, pair=store.current, node_name=node_name)
    await asyncio.to_thread(write_node_kubeconfig, kubeconfig, data)
    await asyncio.to_thread((cert_dir / TMP_KEY).unlink, missing_ok=True)
    say(f"client certificate issued: {pair} (current: {store.current}); kubeconfig {kubeconfig}")
    return x509.load_pem_x509_certificate(issued).not_valid_after_utc


async def confirm_identity(kubeconfig: Path, *, node_name: str) -> identity.Identity:
    """Who the written kubeconfig makes us, asked of the API server: it must be the node."""
    try:
        api = KubeClient(await asyncio.to_thread(load_kubeconfig, kubeconfig))
    except KubeconfigError as exc:
        raise BootstrapError(f"the kubeconfig just written cannot be used: {exc}") from None
    try:
        who = await identity.who_am_i(api)
    except Exception as exc:  # noqa: BLE001 - named for a person
        raise BootstrapError(f"the new kubeconfig {kubeconfig} does not work: {explain(exc, server=api.server)}") from None
    finally:
        await api.close()
    trouble = identity.problem(who, node_name=node_name, kubeconfig=str(kubeconfig))
    if trouble is not None:
        raise BootstrapError(trouble)
    return who
