"""The kubelet API's serving certificate: from a CSR the cluster signs, or self-signed.

A `kubernetes.io/kubelet-serving` CSR is never auto-approved, so vnode asks once, logs
the exact `kubectl certificate approve` command, and waits (without holding up the node
or its pods). The certificate is kept in the state directory and reused while it is
valid for this node's name and address; self-signed only when asked for explicitly,
because the API server (with --kubelet-certificate-authority) will rightly refuse it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.kubeclient import ApiError, KubeClient

log = logging.getLogger(__name__)

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


class CertificateDenied(RuntimeError):
    pass


def _subject(node_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])


def _sans(node_name: str, host_ip: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.DNSName(node_name), x509.IPAddress(ipaddress.ip_address(host_ip))])


def usable(cert_path: Path, *, node_name: str, host_ip: str, min_left: float = 0.1) -> bool:
    """The certificate exists, names this node and address, and has >10% of its life left."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if ipaddress.ip_address(host_ip) not in sans.get_values_for_type(x509.IPAddress):
        return False
    if node_name not in sans.get_values_for_type(x509.DNSName):
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    now = dt.datetime.now(dt.timezone.utc)
    return now < end - (end - start) * min_left


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return key


def self_signed(directory: Path, *, node_name: str, host_ip: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "serving-self-signed.crt", directory / "serving-self-signed.key"
    if usable(cert_path, node_name=node_name, host_ip=host_ip):
        return cert_path, key_path
    key = _key(key_path)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_subject(node_name)).issuer_name(_subject(node_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(_sans(node_name, host_ip), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


async def from_csr(api: KubeClient, directory: Path, *, node_name: str, host_ip: str, poll: float = 2.0) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster; waits for an admin's approval."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "serving.crt", directory / "serving.key"
    if usable(cert_path, node_name=node_name, host_ip=host_ip):
        return cert_path, key_path
    key = await asyncio.to_thread(_key, key_path)
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(_subject(node_name))
        .add_extension(_sans(node_name, host_ip), critical=False).sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    name = f"vnode-serving-{node_name}-{hashlib.sha256(pem).hexdigest()[:8]}"
    body = {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": "kubernetes.io/kubelet-serving",
                 "usages": ["digital signature", "server auth"]},
    }
    try:
        await api.create(CSRS, body)
    except ApiError as exc:
        if exc.status != 409:
            raise
    log.warning("the kubelet API waits for its serving certificate: approve it with `kubectl certificate approve %s`", name)
    while True:
        current = await api.get(f"{CSRS}/{name}")
        status = current.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
                raise CertificateDenied(f"serving certificate request {name} was {cond['type'].lower()}: {cond.get('message', '')}")
        if status.get("certificate"):
            cert_path.write_bytes(base64.b64decode(status["certificate"]))
            log.info("serving certificate issued (CSR %s)", name)
            return cert_path, key_path
        await asyncio.sleep(poll)
