"""The kubelet API's serving certificate, requested through a kubelet-serving CSR that an
admin approves — and why self-signed is only for when you ask for it."""

from __future__ import annotations

import re

from .conftest import node_ready, wait_for


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
