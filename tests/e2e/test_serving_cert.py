"""The kubelet API's serving certificate, requested through a kubelet-serving CSR that an
admin approves — and why self-signed is only for when you ask for it."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vnode.cluster.pki import Authority

from .conftest import node_ready, wait_for


def served_certificate(host: str, port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_serving_certificate_from_an_approved_csr(cluster, agents):
    name = "vnode-e2e-servingcsr"
    proc = agents.start("--bootstrap-serving-cert", "--kubelet-port=10253", name=name, serving_cert=False)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready (before its certificate)")
    line = wait_for(lambda: re.search(r"kubectl certificate approve (\S+)", open(proc.log).read()), timeout=30, what="approval hint")
    csr = line.group(1).rstrip("`")
    before = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{name}/proxy/healthz", check=False)
    assert before.returncode != 0, "no kubelet API before the certificate is approved"
    cluster.kubectl("certificate", "approve", csr)
    wait_for(lambda: cluster.kubectl("get", "--raw", f"/api/v1/nodes/{name}/proxy/healthz", check=False).stdout == "ok",
             timeout=60, what="kubelet API served with the signed certificate")
    assert "kubernetes.io/kubelet-serving" in cluster.kubectl("get", "csr", csr, "-o", "jsonpath={.spec.signerName}").stdout
    cluster.kubectl("delete", "node", name)


def test_self_signed_is_refused_by_a_verifying_api_server(cluster, agents):
    name = "vnode-e2e-selfsigned"
    agents.start("--self-signed-serving-cert", "--kubelet-port=10254", name=name, serving_cert=False)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
    out = wait_for(lambda: (p := cluster.kubectl("get", "--raw", f"/api/v1/nodes/{name}/proxy/healthz", check=False)).returncode != 0
                   and "certificate" in p.stderr and p, timeout=30, what="TLS verification failure")
    assert out.returncode != 0
    cluster.kubectl("delete", "node", name)


def test_serving_certificate_is_rotated_before_it_expires(cluster, agents):
    """A CSR-issued certificate 85 % through its life: vnode serves it, asks for a new one
    (logging the approve command), keeps serving the old one meanwhile, and switches to the
    approved one without a restart; the API server reaches the node after the old one expired."""
    name, port, host = "vnode-e2e-rotation", 10255, cluster.state.host.ns_ip
    pki = Path(cluster.state.directory) / "agents" / name / "pki"
    pki.mkdir(parents=True)
    now = dt.datetime.now(dt.timezone.utc)
    expires = now + dt.timedelta(seconds=30)
    Authority.create(Path(cluster.state.directory) / "pki", "ca", "unused: loaded from disk").issue(
        pki, "serving", common_name=f"system:node:{name}", orgs=("system:nodes",), server=True, dns=(name,), ips=(host,),
        not_before=now - dt.timedelta(seconds=170), not_after=expires)
    proc = agents.start("--bootstrap-serving-cert", f"--kubelet-port={port}", name=name, serving_cert=False)
    wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
    old = served_certificate(host, port)
    assert old.not_valid_after_utc == expires.replace(microsecond=0)
    proxied = f"/api/v1/nodes/{name}/proxy/healthz"
    assert cluster.kubectl("get", "--raw", proxied).stdout == "ok"  # the old certificate is good until it expires
    line = wait_for(lambda: re.search(r"kubectl certificate approve (\S+)", open(proc.log).read()), timeout=30, what="rotation CSR")
    cluster.kubectl("certificate", "approve", line.group(1).rstrip("`"))
    new = wait_for(lambda: (c := served_certificate(host, port)).serial_number != old.serial_number and c, timeout=30,
                   what="the rotated certificate served")
    assert new.not_valid_after_utc > expires + dt.timedelta(days=1)
    assert new.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != old.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo), "a new key, as the kubelet makes"
    time.sleep(max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() + 1))
    assert cluster.kubectl("get", "--raw", proxied).stdout == "ok"
    assert proc.alive()
    cluster.kubectl("delete", "node", name)

