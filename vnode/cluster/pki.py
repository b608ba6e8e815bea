"""The local cluster's PKI, made with `cryptography`: what kubeadm would make, no more.

Every identity a production cluster has is here with its real name and group, so that
RBAC, the Node authorizer and NodeRestriction judge vnode exactly as they would judge a
kubelet: cluster CA, API server serving cert, front-proxy CA and client, service-account
key, admin, controller-manager, scheduler, the node's client cert (system:node:<name>),
the API server's kubelet-client cert, and the node's serving cert.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.files import replace_private

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:
    """Owner-only from its creation (a re-issued key replaces the old file in one rename)."""
    replace_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class Authority:
    """A CA that can issue leaf certificates; loaded from disk if already made."""

    def __init__(self, cert: x509.Certificate, key, pair: Pair) -> None:
        self.cert, self.key, self.pair = cert, key, pair

    @classmethod
    def create(cls, directory: Path, stem: str, common_name: str, *, not_after: dt.datetime | None = None) -> Authority:
        pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
        if pair.cert.exists() and pair.key.exists():
            cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
            return cls(cert, key, pair)
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        name = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + 10 * VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(key, pair.key)
        _write_cert(cert, pair.cert)
        return cls(cert, key, pair)

    def issue(
        self,
        directory: Path,
        stem: str,
        *,
        common_name: str,
        orgs: tuple[str, ...] = (),
        client: bool = False,
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Pair:
        pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, orgs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                    content_commitment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), critical=False
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        _write_key(key, pair.key)
        _write_cert(cert, pair.cert)
        return pair


def service_account_key(directory: Path) -> Pair:
    """RSA key pair for signing service-account tokens (the API server wants PEM public+private)."""
    pair = Pair(directory / "sa.pub", directory / "sa.key")
    if pair.key.exists():
        return pair
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(key, pair.key)
    pair.cert.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pair


@dataclass(frozen=True)
class ClusterPKI:
    ca: Pair
    front_proxy_ca: Pair
    apiserver: Pair
    apiserver_kubelet_client: Pair
    front_proxy_client: Pair
    service_account: Pair
    admin: Pair
    controller_manager: Pair
    scheduler: Pair
    metrics_server: Pair


def make_cluster_pki(directory: Path, *, apiserver_ips: tuple[str, ...], service_ip: str, metrics_ips: tuple[str, ...]) -> ClusterPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority.create(directory, "ca", "vnode-local-ca")
    fp = Authority.create(directory, "front-proxy-ca", "vnode-local-front-proxy-ca")
    return ClusterPKI(
        ca=ca.pair,
        front_proxy_ca=fp.pair,
        apiserver=ca.issue(
            directory, "apiserver", common_name="kube-apiserver", server=True,
            dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"),
            ips=(*apiserver_ips, service_ip, "127.0.0.1"),
        ),
        apiserver_kubelet_client=ca.issue(
            directory, "apiserver-kubelet-client", common_name="kube-apiserver-kubelet-client",
            orgs=("system:masters",), client=True,
        ),
        front_proxy_client=fp.issue(directory, "front-proxy-client", common_name="front-proxy-client", client=True),
        service_account=service_account_key(directory),
        admin=ca.issue(directory, "admin", common_name="kubernetes-admin", orgs=("system:masters",), client=True),
        controller_manager=ca.issue(directory, "controller-manager", common_name="system:kube-controller-manager", client=True),
        scheduler=ca.issue(directory, "scheduler", common_name="system:kube-scheduler", client=True),
        metrics_server=ca.issue(
            directory, "metrics-server", common_name="metrics-server", client=True, server=True,
            dns=("metrics-server", "metrics-server.kube-system", "metrics-server.kube-system.svc", "localhost"),
            ips=(*metrics_ips, "127.0.0.1"),
        ),
    )


def node_credentials(directory: Path, *, node_name: str, node_ip: str, **validity) -> tuple[Pair, Pair]:
    """The node's client cert (system:node:<name> in system:nodes) and its serving cert,
    both signed by the cluster CA, as the kubelet's TLS bootstrap would end up with."""
    ca = Authority.create(directory, "ca", "vnode-local-ca")
    client = ca.issue(
        directory, f"node-{node_name}-client", common_name=f"system:node:{node_name}", orgs=("system:nodes",),
        client=True, **validity,
    )
    serving = ca.issue(
        directory, f"node-{node_name}-serving", common_name=f"system:node:{node_name}", orgs=("system:nodes",),
        server=True, dns=(node_name,), ips=(node_ip,),
    )
    return client, serving
