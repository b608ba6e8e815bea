"""The kubelet API's serving certificate: from a CSR the cluster signs, or self-signed,
kept fresh while the agent runs.

A `kubernetes.io/kubelet-serving` CSR is never auto-approved, so vnode asks once, logs
the exact `kubectl certificate approve` command, and waits (without holding up the node
or its pods). The certificate is kept in the state directory and reused while it is
valid for this node's name and address; self-signed only when asked for explicitly,
because the API server (with --kubelet-certificate-authority) will rightly refuse it.

Rotation follows the kubelet's certificate manager: at a jittered point 70-90 % into the
certificate's life a new key and CSR are made; the old certificate serves until the new
one is issued, then the live TLS context takes it (new connections get it, open streams
keep theirs). Certificates given as files are reloaded when the files change.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.files import replace_private
from vnode.kubeclient import ApiError, KubeClient
from vnode.node.client import Backoff, Outage, explain, is_transient

log = logging.getLogger(__name__)

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
HINT_EVERY = 3600.0  # repeat the approve command while waiting, so it is not lost in old logs


class CertificateDenied(RuntimeError):
    pass


class CertificateMismatch(CertificateDenied):
    """The signer returned a certificate other than the one requested."""


def node_subject(node_name: str) -> x509.Name:
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


def _key(path: Path, *, fresh: bool = False) -> ec.EllipticCurvePrivateKey:
    """The EC key already at `path` unless `fresh` (rotation makes a new key, as the kubelet
    does), else a new one. Not written here: _install writes it together with its certificate."""
    if not fresh and path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key
    return ec.generate_private_key(ec.SECP256R1())


def self_signed(directory: Path, *, node_name: str, host_ip: str, renew: bool = False) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "serving-self-signed.crt", directory / "serving-self-signed.key"
    if not renew and usable(cert_path, node_name=node_name, host_ip=host_ip):
        return cert_path, key_path
    key = _key(key_path, fresh=renew)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(node_subject(node_name)).issuer_name(node_subject(node_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(_sans(node_name, host_ip), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _install(key, cert.public_bytes(serialization.Encoding.PEM), cert_path, key_path)
    return cert_path, key_path


def _install(key: ec.EllipticCurvePrivateKey, cert_pem: bytes, cert_path: Path, key_path: Path) -> None:
    """Write key and certificate through temporary files and renames: never half a pair on disk.
    The key's file is owner-only from its creation (files.replace_private)."""
    replace_private(key_path, private_pem(key))
    cert_tmp = cert_path.with_suffix(".crt.tmp")
    cert_tmp.write_bytes(cert_pem)
    os.replace(cert_tmp, cert_path)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


async def from_csr(api: KubeClient, directory: Path, *, node_name: str, host_ip: str, poll: float = 2.0,
                   renew: bool = False) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster; waits for an admin's approval. With renew,
    a new key and CSR even if the current certificate is still good (rotation)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "serving.crt", directory / "serving.key"
    if not renew and usable(cert_path, node_name=node_name, host_ip=host_ip):
        return cert_path, key_path
    key = await asyncio.to_thread(_key, key_path, fresh=renew)
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(node_subject(node_name))
        .add_extension(_sans(node_name, host_ip), critical=False).sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    name = f"vnode-serving-{node_name}-{hashlib.sha256(pem).hexdigest()[:8]}"
    issued = await request_certificate(
        api, name=name, request_pem=pem, signer="kubernetes.io/kubelet-serving",
        usages=["digital signature", "server auth"], what="serving certificate", poll=poll,
        hint=lambda: f"the kubelet API waits for its serving certificate: approve it with `kubectl certificate approve {name}`",
    )
    await asyncio.to_thread(_install, key, issued, cert_path, key_path)
    return cert_path, key_path


async def request_certificate(api: KubeClient, *, name: str, request_pem: bytes, signer: str, usages: list[str], what: str,
                              hint: Callable[[], str], hint_after: float = 0.0, poll: float = 2.0) -> bytes:
    """Create the CertificateSigningRequest `name` and wait until it is issued; the PEM.

    Shared by the serving certificate and the node's client certificate (client_certs.py).
    Waiting may take days: the API server going away meanwhile is retried (one log line per
    distinct problem), a CSR deleted or cleaned up unapproved is asked for again, and only a
    refusal that retrying cannot fix (denied, forbidden) ends the wait, as CertificateDenied.
    `hint` (what to do about a CSR nobody approves) is logged after `hint_after` seconds and
    then every HINT_EVERY."""
    body = {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": base64.b64encode(request_pem).decode(), "signerName": signer, "usages": usages},
    }
    outage, backoff = Outage(log, f"{what} request"), Backoff(cap=30.0)
    created = False
    loop = asyncio.get_running_loop()
    hinted = loop.time() + hint_after - HINT_EVERY
    while True:
        try:
            if not created:
                try:
                    await api.create(CSRS, body)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                created = True
            current = await api.get(f"{CSRS}/{name}")
        except Exception as exc:  # noqa: BLE001 - sorted into retry or refusal below
            if isinstance(exc, ApiError) and exc.status == 404 and created:
                log.warning("%s request %s is gone (deleted, or cleaned up unapproved); asking again", what, name)
                created = False
                continue
            if not is_transient(exc):
                raise CertificateDenied(f"cannot request a {what}: {explain(exc, server=api.server)}") from None
            delay = backoff.next_delay()
            outage.failed(explain(exc, server=api.server), retry_in=delay)
            await asyncio.sleep(delay)
            continue
        outage.recovered()
        backoff.reset()
        status = current.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
                raise CertificateDenied(f"{what} request {name} was {cond['type'].lower()}: {cond.get('message', '')}")
        if status.get("certificate"):
            issued = base64.b64decode(status["certificate"])
            check_issued(issued, request_pem=request_pem, what=f"{what} issued for CSR {name}")
            log.info("%s issued (CSR %s)", what, name)
            return issued
        if loop.time() - hinted >= HINT_EVERY:
            log.warning("%s", hint())
            hinted = loop.time()
        await asyncio.sleep(poll)


def _names(ext: x509.Extensions) -> set[str]:
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)} | {
        f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}


def check_issued(cert_pem: bytes, *, request_pem: bytes, what: str) -> x509.Certificate:
    """The certificate a signer returned is the one asked for: the CSR's key, its subject
    and every name it requested, and valid now. A signer may add names, not drop them; a
    certificate that fails is never installed (CertificateDenied says which part is wrong)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertificateMismatch(f"the {what} is not a PEM certificate: {exc}") from None
    csr = x509.load_pem_x509_csr(request_pem)
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateMismatch(f"the {what} is not for the key vnode made; not installed")
    if cert.subject != csr.subject:
        raise CertificateMismatch(f"the {what} names {cert.subject.rfc4514_string()}, not {csr.subject.rfc4514_string()} "
                                "as requested; not installed")
    missing = _names(csr.extensions) - _names(cert.extensions)
    if missing:
        raise CertificateMismatch(f"the {what} lacks the requested names {', '.join(sorted(missing))}; not installed")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc - dt.timedelta(minutes=5) <= now < cert.not_valid_after_utc:
        raise CertificateMismatch(f"the {what} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC); not installed")
    return cert


# -- keeping it fresh --

Renewer = Callable[[], Awaitable[tuple[Path, Path]]]


@dataclass
class ServingState:
    """What is being served now, for the agent's metrics."""

    not_after: dt.datetime | None = None

RETRY_SECONDS = 300.0
FILE_CHECK_SECONDS = 60.0


def validity(cert_path: Path) -> tuple[dt.datetime, dt.datetime]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def rotation_deadline(not_before: dt.datetime, not_after: dt.datetime, rng: random.Random | None = None) -> dt.datetime:
    """As the kubelet's certificate manager: a random point 70-90 % into the life, so a fleet
    of nodes issued together does not renew together."""
    jitter = 0.7 + 0.2 * (rng or random).random()
    return not_before + (not_after - not_before) * jitter


async def keep_fresh(ctx: ssl.SSLContext, cert: Path, key: Path, *, renew: Renewer | None, state: ServingState | None = None,
                     file_check: float = FILE_CHECK_SECONDS, retry: float = RETRY_SECONDS) -> None:
    """Run for the server's lifetime: rotate through `renew` before expiry, or (renew None:
    certificates the operator manages) reload the files when they change."""
    state = state or ServingState()
    if renew is None:
        with contextlib.suppress(OSError, ValueError):
            state.not_after = (await asyncio.to_thread(validity, cert))[1]
        await _watch_files(ctx, cert, key, every=file_check, state=state)
        return
    while True:
        try:
            not_before, not_after = await asyncio.to_thread(validity, cert)
            state.not_after = not_after
        except (OSError, ValueError) as exc:  # deleted or damaged under us: the live context still serves
            log.warning("serving certificate %s cannot be read (%s); requesting a new one now", cert, exc)
            not_before = not_after = _now()
        deadline = rotation_deadline(not_before, not_after)
        log.debug("serving certificate valid until %s; rotation at %s", not_after.isoformat(), deadline.isoformat())
        await sleep_until(deadline)
        log.info("serving certificate: %s of its life used; requesting a new one",
                 "all" if _now() >= not_after else f"{(_now() - not_before) / (not_after - not_before):.0%}")
        try:
            cert, key = await renew()
        except CertificateDenied as exc:
            log.error("serving certificate not rotated: %s; the current one expires %s; retrying in %.0fs",
                      exc, not_after.isoformat(), retry)
            await asyncio.sleep(retry)
            continue
        except (ApiError, OSError, aiohttp.ClientError) as exc:
            log.warning("serving certificate not rotated: %s; retrying in %.0fs", exc, retry)
            await asyncio.sleep(retry)
            continue
        try:
            load(ctx, cert, key, state)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("the new serving certificate cannot be loaded (%s); still serving the previous one; retrying in %.0fs", exc, retry)
            await asyncio.sleep(retry)


def load(ctx: ssl.SSLContext, cert: Path, key: Path, state: ServingState) -> None:
    """Swap the live context's certificate. On the event loop on purpose: the context is used
    by every handshake there, and loading one PEM pair takes about a millisecond."""
    ctx.load_cert_chain(str(cert), str(key))
    state.not_after = validity(cert)[1]
    log.info("kubelet API now serves the certificate valid until %s", state.not_after.isoformat())


async def _watch_files(ctx: ssl.SSLContext, cert: Path, key: Path, *, every: float, state: ServingState) -> None:
    seen = _stamp(cert, key)
    while True:
        await asyncio.sleep(every)
        now = _stamp(cert, key)
        if now == seen:
            continue
        seen = now
        try:
            load(ctx, cert, key, state)
        except (OSError, ssl.SSLError, ValueError) as exc:  # e.g. caught between the two files' updates
            log.warning("serving certificate files changed but cannot be loaded (%s); still serving the previous one", exc)


def _stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def sleep_until(when: dt.datetime) -> None:
    """In steps of at most an hour, so a suspended laptop or a changed clock is noticed."""
    while (left := (when - _now()).total_seconds()) > 0:
        await asyncio.sleep(min(left, 3600.0))
