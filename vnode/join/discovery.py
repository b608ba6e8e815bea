"""Discovery as `kubeadm join` does it: trusting an API server from a bootstrap token and a CA hash.

Nothing is trusted at first, so the cluster-info ConfigMap (kube-public) is read anonymously
without verifying TLS. Its kubeconfig is believed only if the detached JWS that
kube-controller-manager's bootstrapsigner keeps beside it (`jws-kubeconfig-<token id>`, HS256
keyed by the token's secret) verifies, and its CA only if the CA's public-key hash is pinned.
Then the ConfigMap is read again over TLS verified with that CA and must say the same. Reads only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vnode.kubeclient import ApiError, Credentials, KubeClient
from vnode.kubeconfig import env_proxy, tls_context
from vnode.node.client import Backoff, explain, is_transient

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
JWS_PREFIX = "jws-kubeconfig-"
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
PIN_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


class JoinInputError(ValueError):
    """A flag's value is unusable; the message names the flag (exit code 2)."""


class DiscoveryError(RuntimeError):
    """The API server cannot be trusted, or cannot be asked (exit code 1)."""


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"


@dataclass(frozen=True)
class ClusterInfo:
    """What discovery established: the API server the cluster names, and its CA bundle."""

    server: str
    ca_pem: bytes


# -- input -----------------------------------------------------------------------------

def parse_token(text: str) -> BootstrapToken:
    match = TOKEN_RE.match(text.strip())
    if not match:
        # The value is a secret, or meant to be one: its shape is described, never echoed.
        raise JoinInputError(
            f"--token: expected a bootstrap token <6 of [a-z0-9]>.<16 of [a-z0-9]> as `kubeadm token create` prints "
            f"(e.g. abcdef.0123456789abcdef), got {len(text)} characters that are not one")
    return BootstrapToken(match[1], match[2])


def parse_pins(values: Iterable[str]) -> frozenset[str]:
    pins = set()
    for value in values:
        match = PIN_RE.match(value.strip().lower())
        if not match:
            raise JoinInputError(f"--discovery-token-ca-cert-hash: expected sha256:<64 hex digits> (the SHA-256 of the CA "
                                 f"certificate's SubjectPublicKeyInfo, as `kubeadm init` prints it), got {value!r}")
        pins.add(f"sha256:{match[1]}")
    return frozenset(pins)


def parse_server(text: str) -> str:
    """`https://host:port` (or kubeadm's bare `host:port`), without a trailing slash."""
    raw = text.strip()
    url = urlsplit(raw if "://" in raw else f"https://{raw}")
    if url.scheme != "https":
        raise JoinInputError(f"API server {text!r}: must be https:// (bootstrap tokens and pinning need TLS)")
    try:
        url.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise JoinInputError(f"API server {text!r}: the port is not a number") from None
    if not url.hostname or url.path not in ("", "/") or url.query or url.fragment:
        raise JoinInputError(f"API server {text!r}: expected https://HOST[:PORT], e.g. https://192.0.2.1:6443")
    return f"https://{url.netloc}"


# -- what is verified -----------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ca_cert_hash(cert: x509.Certificate) -> str:
    """kubeadm's pin: sha256:<hex of the SHA-256 of the certificate's SubjectPublicKeyInfo DER>."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _mac(signing_input: str, token: BootstrapToken) -> bytes:
    return hmac.new(token.secret.encode(), signing_input.encode(), hashlib.sha256).digest()


def sign_detached(content: str, token: BootstrapToken) -> str:
    """The detached JWS (RFC 7515 appendix F: `header..signature`) the bootstrapsigner computes:
    HS256 over the content, keyed by the token secret, with the token id as `kid`."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token.id}, separators=(",", ":")).encode())
    return f"{header}..{_b64url(_mac(f'{header}.{_b64url(content.encode())}', token))}"


def verify_detached(jws: str, content: str, token: BootstrapToken) -> str | None:
    """None if `jws` is a valid HS256 signature of `content` by `token`, else why not."""
    parts = jws.strip().split(".")
    if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
        return "it is not a detached JWS (header..signature)"
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        return "its header or signature is not valid base64url JSON"
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return f"its algorithm is {header.get('alg') if isinstance(header, dict) else None!r}, not HS256"
    if "kid" in header and header["kid"] != token.id:
        return f"it was made for token id {header['kid']!r}"
    if not hmac.compare_digest(signature, _mac(f"{parts[0]}.{_b64url(content.encode())}", token)):
        return "the signature does not match: the token's secret is wrong"
    return None


def parse_cluster_kubeconfig(text: str, *, where: str) -> ClusterInfo:
    """The server and CA of the kubeconfig in cluster-info: the current context's cluster, or
    the only one (kubeadm writes one cluster named "" and no contexts)."""
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"the kubeconfig in {where} is not valid YAML: {exc}") from None
    clusters = config.get("clusters") if isinstance(config, dict) else None
    if not isinstance(clusters, list) or not clusters:
        raise DiscoveryError(f"the kubeconfig in {where} has no clusters")
    entry = None
    current = config.get("current-context")
    if current:
        ctx = next((c.get("context") or {} for c in config.get("contexts") or [] if c.get("name") == current), {})
        entry = next((c for c in clusters if c.get("name") == ctx.get("cluster")), None)
    if entry is None:
        if len(clusters) != 1:
            raise DiscoveryError(f"the kubeconfig in {where} has {len(clusters)} clusters and no current context naming one")
        entry = clusters[0]
    cluster = entry.get("cluster") or {}
    server, ca_data = cluster.get("server"), cluster.get("certificate-authority-data")
    if not server:
        raise DiscoveryError(f"the kubeconfig in {where} names no server")
    if not ca_data:
        raise DiscoveryError(f"the kubeconfig in {where} carries no certificate-authority-data, so there is no CA to pin")
    try:
        ca_pem = base64.b64decode(ca_data, validate=True)
        x509.load_pem_x509_certificates(ca_pem)
    except (ValueError, binascii.Error):
        raise DiscoveryError(f"the certificate-authority-data in {where} is not a base64 PEM certificate bundle") from None
    return ClusterInfo(server=str(server).rstrip("/"), ca_pem=ca_pem)


def ca_hashes(ca_pem: bytes) -> list[str]:
    return [ca_cert_hash(c) for c in x509.load_pem_x509_certificates(ca_pem)]


def check_pins(ca_pem: bytes, pins: frozenset[str], *, server: str) -> str:
    """The pinned hash the CA bundle matches; DiscoveryError naming both sides if none does."""
    found = ca_hashes(ca_pem)
    for value in found:
        if value in pins:
            return value
    raise DiscoveryError(
        f"the cluster CA that {server} publishes in cluster-info has public-key hash {', '.join(found)}, but "
        f"--discovery-token-ca-cert-hash pins {', '.join(sorted(pins))}: refusing to trust this API server (a wrong hash, "
        "or not the cluster you meant; ask its admin for the hash `kubeadm init` or `vnode cluster up` printed)")


# -- asking -----------------------------------------------------------------------------

def _client(server: str, *, ca_pem: bytes | None) -> KubeClient:
    ssl_ctx = False if ca_pem is None else tls_context(ca_pem=ca_pem, insecure=False)
    return KubeClient(Credentials(server=server, ssl=ssl_ctx, token=None, user="system:anonymous",
                                  proxy=env_proxy(server, os.environ), ca_pem=ca_pem))


def _refusal(exc: BaseException, *, server: str, verified: bool) -> str:
    if isinstance(exc, ApiError) and exc.status == 404:
        return (f"the API server at {server} has no cluster-info ConfigMap in kube-public: it is not set up for joining "
                "with a bootstrap token (`kubeadm init` creates it; so does `vnode cluster up`)")
    if isinstance(exc, ApiError) and exc.status in (401, 403):
        return (f"the API server at {server} refuses to show the cluster-info ConfigMap to anonymous requests "
                f"({exc.status} {exc.reason}): it needs anonymous authentication (kube-apiserver's default) and the Role and "
                "RoleBinding kubeadm:bootstrap-signer-clusterinfo (manifests/bootstrap-rbac.yaml)")
    why = explain(exc, server=server)
    if verified:
        return f"reading cluster-info again over TLS verified with the pinned CA failed: {why}"
    return why


async def fetch_cluster_info(server: str, *, ca_pem: bytes | None, deadline: float,
                             ready: Callable[[dict], bool] = lambda _: True) -> dict:
    """The ConfigMap's data, once `ready(data)` holds or the deadline (loop time) passes: then the
    last data read. Network trouble and 5xx are retried until the deadline; other answers end it."""
    api = _client(server, ca_pem=ca_pem)
    loop, backoff = asyncio.get_running_loop(), Backoff(initial=0.5, cap=5.0)
    try:
        while True:
            try:
                data = (await api.get(CLUSTER_INFO)).get("data") or {}
            except Exception as exc:  # noqa: BLE001 - sorted into retry or refusal
                final = (isinstance(exc, ApiError) and exc.status == 401
                         or isinstance(exc, aiohttp.ClientConnectorCertificateError))  # will not get better
                if final or not is_transient(exc) or loop.time() >= deadline:
                    raise DiscoveryError(_refusal(exc, server=server, verified=ca_pem is not None)) from None
            else:
                if ready(data) or loop.time() >= deadline:
                    return data
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, deadline - loop.time())))
    finally:
        await api.close()


async def discover(server: str, token: BootstrapToken, pins: frozenset[str], *, timeout: float,
                   say: Callable[[str], None]) -> ClusterInfo:
    """kubeadm's token discovery; `pins` empty means the CA check is skipped (the unsafe flag)."""
    key = JWS_PREFIX + token.id
    deadline = asyncio.get_running_loop().time() + timeout
    say(f"reading the cluster-info ConfigMap from {server} (TLS not verified yet); waiting up to {timeout:.0f}s for its "
        f"signature for token id {token.id}")
    data = await fetch_cluster_info(server, ca_pem=None, deadline=deadline, ready=lambda d: bool(d.get(key)))
    content = data.get("kubeconfig")
    where = f"the cluster-info ConfigMap at {server}"
    if not content:
        raise DiscoveryError(f"{where} has no kubeconfig key: this API server is not set up for joining with a bootstrap token")
    if not data.get(key):
        raise DiscoveryError(
            f"{where} carries no signature for token id {token.id}: the token is wrong, expired or deleted "
            "(kube-controller-manager's bootstrapsigner signs cluster-info with every valid token and removes the signature "
            "of expired and deleted ones); create a new token (`kubeadm token create --print-join-command`)")
    problem = verify_detached(data[key], content, token)
    if problem is not None:
        raise DiscoveryError(f"the signature in {where} for token id {token.id} does not verify ({problem}): refusing to "
                             "trust this API server; check the token")
    info = parse_cluster_kubeconfig(content, where=where)
    if pins:
        matched = check_pins(info.ca_pem, pins, server=server)
        say(f"the signature verifies with the token and the cluster CA matches the pinned {matched}")
    else:
        say(f"the signature verifies with the token; the cluster CA ({', '.join(ca_hashes(info.ca_pem))}) is NOT checked "
            "(--discovery-token-unsafe-skip-ca-verification)")
    again = await fetch_cluster_info(server, ca_pem=info.ca_pem, deadline=deadline)
    if again.get("kubeconfig") != content:
        raise DiscoveryError(f"{where} read again over verified TLS differs from the first reading: refusing to trust it")
    return info
