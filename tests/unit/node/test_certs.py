"""Serving-certificate freshness: the rotation point, and swapping the live TLS context."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from vnode.node import certs

NODE, IP = "mac-1", "127.0.0.1"


def _serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


async def _served_serial(port: int) -> int:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def _serving(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext, asyncio.Server, int]:
    """A TLS server on a fresh self-signed certificate, as the kubelet API's context is made."""
    cert, key = certs.self_signed(tmp_path, node_name=NODE, host_ip=IP)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
    return cert, key, ctx, server, server.sockets[0].getsockname()[1]


def test_rotation_deadline_is_70_to_90_percent_into_the_life() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=100)
    rng = random.Random(7)
    points = [(certs.rotation_deadline(start, end, rng) - start) / (end - start) for _ in range(1000)]
    assert 0.7 <= min(points) < 0.72 and 0.88 < max(points) <= 0.9


def test_renewing_a_self_signed_certificate_makes_a_new_key_and_serial(tmp_path: Path) -> None:
    cert, key = certs.self_signed(tmp_path, node_name=NODE, host_ip=IP)
    first_cert, first_key = cert.read_bytes(), key.read_bytes()
    assert certs.self_signed(tmp_path, node_name=NODE, host_ip=IP) == (cert, key)
    assert cert.read_bytes() == first_cert  # still good: reused
    certs.self_signed(tmp_path, node_name=NODE, host_ip=IP, renew=True)
    assert _serial_of(cert.read_bytes()) != _serial_of(first_cert) and key.read_bytes() != first_key
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.asyncio
async def test_rotation_swaps_the_certificate_new_connections_get(tmp_path: Path, monkeypatch) -> None:
    cert, key, ctx, server, port = await _serving(tmp_path)
    old = await _served_serial(port)
    renewed = asyncio.Event()

    async def renew() -> tuple[Path, Path]:
        pair = await asyncio.to_thread(certs.self_signed, tmp_path, node_name=NODE, host_ip=IP, renew=True)
        renewed.set()
        return pair

    deadlines = iter([0.0])  # the first certificate is due now, the next one at its 90 %
    monkeypatch.setattr(certs, "rotation_deadline", lambda start, end, rng=None: start + (end - start) * next(deadlines, 0.9))
    state = certs.ServingState()
    task = asyncio.create_task(certs.keep_fresh(ctx, cert, key, renew=renew, state=state))
    try:
        await asyncio.wait_for(renewed.wait(), 10)
        for _ in range(100):
            if (new := await _served_serial(port)) != old:
                break
            await asyncio.sleep(0.01)
        assert new == _serial_of(cert.read_bytes()) != old
        assert state.not_after == certs.validity(cert)[1]
    finally:
        task.cancel()
        server.close()


@pytest.mark.asyncio
async def test_a_failed_renewal_keeps_serving_and_retries(tmp_path: Path, monkeypatch, caplog) -> None:
    cert, key = certs.self_signed(tmp_path, node_name=NODE, host_ip=IP)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    calls = 0
    done = asyncio.Event()

    async def renew() -> tuple[Path, Path]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise certs.CertificateDenied("serving certificate request x was denied: no")
        if calls == 2:
            raise OSError("disk full")
        done.set()
        return cert, key

    monkeypatch.setattr(certs, "rotation_deadline", lambda start, end, rng=None: start)
    task = asyncio.create_task(certs.keep_fresh(ctx, cert, key, renew=renew, retry=0.01))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
    assert "was denied" in caplog.text and "disk full" in caplog.text


@pytest.mark.asyncio
async def test_operator_files_are_reloaded_when_they_change(tmp_path: Path) -> None:
    cert, key, ctx, server, port = await _serving(tmp_path)
    old = await _served_serial(port)
    task = asyncio.create_task(certs.keep_fresh(ctx, cert, key, renew=None, file_check=0.02))
    try:
        cert.write_bytes(b"half written")  # a broken moment is survived
        await asyncio.sleep(0.1)
        assert await _served_serial(port) == old
        await asyncio.to_thread(certs.self_signed, tmp_path, node_name=NODE, host_ip=IP, renew=True)
        new = _serial_of(cert.read_bytes())
        for _ in range(200):
            if await _served_serial(port) == new:
                break
            await asyncio.sleep(0.01)
        assert await _served_serial(port) == new != old
    finally:
        task.cancel()
        server.close()


class _FlakyApi:
    """Plain-data stand-in for the API server's CSR endpoints: scripted answers per call."""

    server = "https://api.example:6443"

    def __init__(self, creates: list, gets: list) -> None:
        self.creates, self.gets, self.created = creates, gets, []

    async def create(self, path: str, body: dict) -> dict:
        self.created.append(body["metadata"]["name"])
        answer = self.creates.pop(0) if self.creates else body
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def get(self, path: str) -> dict:
        answer = self.gets.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.mark.asyncio
async def test_waiting_for_approval_survives_the_api_server_going_away_and_a_deleted_csr(tmp_path: Path, monkeypatch, caplog) -> None:
    import aiohttp

    from vnode.kubeclient import ApiError

    monkeypatch.setattr(certs, "Backoff", lambda cap: type("B", (), {"next_delay": lambda self: 0.0, "reset": lambda self: None})())
    monkeypatch.setattr(certs, "check_issued", lambda *a, **k: None)  # what is issued is checked below, not here
    issued = {"status": {"certificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="}}
    api = _FlakyApi(creates=[aiohttp.ClientConnectionError("refused")],
                    gets=[{"status": {}}, aiohttp.ServerDisconnectedError(), ApiError(503, "ServiceUnavailable", "etcd"),
                          ApiError(404, "NotFound", "gone"), {"status": {}}, issued])
    cert, key = await certs.from_csr(api, tmp_path, node_name=NODE, host_ip=IP, poll=0.0)  # type: ignore[arg-type]
    assert cert.read_bytes() == b"-----BEGIN CERTIFICATE-----\n" and key.exists()
    assert len(api.created) == 3 and len(set(api.created)) == 1  # refused, created, re-created after the 404
    assert "API server answered 503" in caplog.text and "asking again" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.asyncio
async def test_a_refusal_retrying_cannot_fix_is_a_clear_error(tmp_path: Path) -> None:
    from vnode.kubeclient import ApiError

    api = _FlakyApi(creates=[ApiError(403, "Forbidden", 'cannot create resource "certificatesigningrequests"')], gets=[])
    with pytest.raises(certs.CertificateDenied, match="cannot request a serving certificate: forbidden by the API server"):
        await certs.from_csr(api, tmp_path, node_name=NODE, host_ip=IP, poll=0.0)  # type: ignore[arg-type]
    denied = _FlakyApi(creates=[], gets=[{"status": {"conditions": [{"type": "Denied", "status": "True", "message": "not ours"}]}}])
    with pytest.raises(certs.CertificateDenied, match="was denied: not ours"):
        await certs.from_csr(denied, tmp_path, node_name=NODE, host_ip=IP, poll=0.0)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_certificate_file_removed_under_the_agent_is_renewed_not_fatal(tmp_path: Path, caplog) -> None:
    cert, key, ctx, server, port = await _serving(tmp_path)
    old = await _served_serial(port)
    cert.unlink()
    renewed = asyncio.Event()

    async def renew() -> tuple[Path, Path]:
        pair = await asyncio.to_thread(certs.self_signed, tmp_path, node_name=NODE, host_ip=IP, renew=True)
        renewed.set()
        return pair

    task = asyncio.create_task(certs.keep_fresh(ctx, cert, key, renew=renew))
    try:
        await asyncio.wait_for(renewed.wait(), 10)
        await asyncio.sleep(0.05)
        assert not task.done() and await _served_serial(port) != old
        assert "cannot be read" in caplog.text
    finally:
        task.cancel()
        server.close()


def _sign(csr_pem: bytes, *, key=None, cn: str | None = None, sans: list[x509.GeneralName] | None = None,
          days: float = 30, start_days: float = 0) -> bytes:
    """A certificate for a CSR as a signer would issue it, with one thing changed."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    csr = x509.load_pem_x509_csr(csr_pem)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=start_days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else csr.subject
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
               .public_key(key.public_key() if key else csr.public_key()).serial_number(1)
               .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=days)))
    names = sans if sans is not None else list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _serving_csr() -> bytes:
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(certs.node_subject(NODE))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(NODE), x509.IPAddress(ipaddress.ip_address(IP))]),
                          critical=False).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def test_an_issued_certificate_must_be_the_one_requested() -> None:
    import ipaddress

    from cryptography.hazmat.primitives.asymmetric import ec

    csr = _serving_csr()
    assert certs.check_issued(_sign(csr), request_pem=csr, what="serving certificate").subject == x509.load_pem_x509_csr(csr).subject
    extra = [x509.DNSName(NODE), x509.IPAddress(ipaddress.ip_address(IP)), x509.DNSName("more.example")]
    certs.check_issued(_sign(csr, sans=extra), request_pem=csr, what="serving certificate")  # a signer may add names
    cases = {
        "not for the key vnode made": _sign(csr, key=ec.generate_private_key(ec.SECP256R1())),
        "names CN=system:node:other": _sign(csr, cn="system:node:other"),
        f"lacks the requested names IP:{IP}": _sign(csr, sans=[x509.DNSName(NODE)]),
        "not valid now": _sign(csr, days=1, start_days=-5),
        "not a PEM certificate": b"garbage",
    }
    for words, pem in cases.items():
        with pytest.raises(certs.CertificateMismatch, match=words):
            certs.check_issued(pem, request_pem=csr, what="serving certificate")
