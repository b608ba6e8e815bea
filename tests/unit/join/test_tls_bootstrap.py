"""The TLS bootstrap: the key and kubeconfig owner-only from their creation, the CSR the
csrapproving controller expects, an existing node kubeconfig kept only while it is good for this
node and cluster, and the exchange against a stand-in API server (tests/support/fakeapi.py)."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support.fakeapi import FakeApi
from vnode.cluster import pki
from vnode.join import tls_bootstrap
from vnode.join.discovery import BootstrapToken, ClusterInfo, ca_cert_hash
from vnode.kubeclient import load_kubeconfig
from vnode.node import certs
from vnode.node.client_certs import PairStore

NODE = "studio"
TOKEN = BootstrapToken("abcdef", "0123456789abcdef")
SERVER = "https://192.0.2.1:6443"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def created(monkeypatch):
    """Every os.open that creates a file, with its mode; chmod afterwards is a failure."""
    calls: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            calls.append((os.fspath(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def no_chmod(*args, **kwargs):
        raise AssertionError("a secret's mode is set at its creation, never by chmod afterwards")

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    old = os.umask(0)  # what the mode argument does not cover would show
    yield calls
    os.umask(old)


def test_the_key_is_owner_only_from_its_creation(tmp_path: Path, created):
    path = tmp_path / tls_bootstrap.TMP_KEY
    key, reused = tls_bootstrap.load_or_make_key(path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and not reused
    assert (str(path), 0o600) in created and _mode(path) == 0o600


def test_an_interrupted_joins_key_is_used_again(tmp_path: Path):
    path = tmp_path / tls_bootstrap.TMP_KEY
    first, _ = tls_bootstrap.load_or_make_key(path)
    again, reused = tls_bootstrap.load_or_make_key(path)
    assert reused and again.private_numbers() == first.private_numbers()
    path.write_text("not a key")
    fresh, reused = tls_bootstrap.load_or_make_key(path)
    assert not reused and _mode(path) == 0o600


def test_the_csr_is_what_csrapproving_approves_for_a_kubelet_client():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    req = x509.load_pem_x509_csr(tls_bootstrap.make_csr(ec_key, NODE))
    assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE}"
    assert [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    assert len(req.extensions) == 0  # no SANs: csrapproving refuses a client CSR that has any
    assert tls_bootstrap.usages_for(ec_key) == ["digital signature", "client auth"]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert tls_bootstrap.usages_for(rsa_key) == ["digital signature", "client auth", "key encipherment"]


def test_the_csr_name_follows_the_key_and_the_node():
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    assert tls_bootstrap.csr_name(key, NODE) == tls_bootstrap.csr_name(key, NODE)
    assert tls_bootstrap.csr_name(key, NODE) != tls_bootstrap.csr_name(other, NODE)
    assert tls_bootstrap.csr_name(key, NODE) != tls_bootstrap.csr_name(key, "other")


# -- the kubeconfig and what is kept ----------------------------------------------------------

def _joined(tmp_path: Path, *, node: str = NODE, server: str = SERVER, **validity) -> tuple[Path, pki.Authority]:
    """A node kubeconfig as join writes it, with a certificate of the test CA."""
    ca = pki.Authority.create(tmp_path, "ca", "test-ca")
    client, _ = pki.node_credentials(tmp_path, node_name=node, node_ip="192.0.2.10", **validity)
    store = PairStore(tmp_path / "pki")
    store.update(client.cert.read_bytes(), client.key.read_bytes())
    path = tmp_path / "kubeconfig"
    tls_bootstrap.write_node_kubeconfig(path, tls_bootstrap.node_kubeconfig(
        server=server, ca_pem=ca.pair.cert.read_bytes(), pair=store.current, node_name=node))
    return path, ca


def test_the_kubeconfig_is_owner_only_from_its_creation_and_replaced_whole(tmp_path: Path, created):
    path = tmp_path / "out" / "kubeconfig"
    path.parent.mkdir()
    path.write_text("old")
    old_inode = path.stat().st_ino
    tls_bootstrap.write_node_kubeconfig(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o600 and path.stat().st_ino != old_inode
    assert [mode for name, mode in created if Path(name).parent == path.parent] == [0o600]


def test_the_kubeconfig_names_the_current_pair_and_embeds_the_ca(tmp_path: Path):
    path, ca = _joined(tmp_path)
    creds = load_kubeconfig(path, environ={})
    assert creds.server == SERVER and creds.ca_pem == ca.pair.cert.read_bytes()
    assert creds.cert_file == creds.key_file == tmp_path / "pki" / "kubelet-client-current.pem"
    assert creds.user == f"system:node:{NODE}"
    assert _mode(path) == 0o600


def test_a_good_kubeconfig_is_kept(tmp_path: Path):
    path, ca = _joined(tmp_path)
    kept = tls_bootstrap.check_existing(path, node_name=NODE, server=SERVER, pins=frozenset({ca_cert_hash(ca.cert)}))
    assert kept.usable and f"system:node:{NODE}" in kept.text
    assert tls_bootstrap.check_existing(path, node_name=NODE, server=SERVER, pins=frozenset()).usable  # the unsafe flag


def test_nothing_there_is_no_verdict(tmp_path: Path):
    assert tls_bootstrap.check_existing(tmp_path / "none", node_name=NODE, server=SERVER, pins=frozenset()) is None


@pytest.mark.parametrize(("change", "why"), [
    ({"node_name": "other"}, "not system:node:other"),
    ({"server": "https://192.0.2.9:6443"}, "not https://192.0.2.9:6443"),
    ({"pins": frozenset({"sha256:" + "0" * 64})}, "is not the pinned one"),
])
def test_a_kubeconfig_for_another_node_server_or_ca_is_replaced(tmp_path: Path, change, why):
    path, _ = _joined(tmp_path)
    args = {"node_name": NODE, "server": SERVER, "pins": frozenset(), **change}
    verdict = tls_bootstrap.check_existing(path, **args)
    assert not verdict.usable and why in verdict.text


def test_an_expired_certificate_is_replaced(tmp_path: Path):
    now = dt.datetime.now(dt.timezone.utc)
    path, _ = _joined(tmp_path, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1))
    verdict = tls_bootstrap.check_existing(path, node_name=NODE, server=SERVER, pins=frozenset())
    assert not verdict.usable and "expired" in verdict.text


def test_a_broken_kubeconfig_is_replaced(tmp_path: Path):
    path = tmp_path / "kubeconfig"
    path.write_text(": not yaml: [")
    assert not tls_bootstrap.check_existing(path, node_name=NODE, server=SERVER, pins=frozenset()).usable
    path.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": {"server": SERVER}}], "users": [{"name": "u", "user": {"token": "x"}}],
                                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x"}))
    verdict = tls_bootstrap.check_existing(path, node_name=NODE, server=SERVER, pins=frozenset())
    assert not verdict.usable and "no client certificate" in verdict.text


# -- the exchange -----------------------------------------------------------------------------

async def test_the_token_obtains_the_nodes_certificate(tmp_path: Path):
    async with FakeApi(tmp_path / "api", tokens={str(TOKEN)}) as api:
        info = ClusterInfo(server=api.url, ca_pem=api.ca_file.read_bytes())
        said: list[str] = []
        kubeconfig, cert_dir = tmp_path / "state" / "kubeconfig", tmp_path / "state" / "pki"
        not_after = await tls_bootstrap.bootstrap(info, TOKEN, node_name=NODE, cert_dir=cert_dir, kubeconfig=kubeconfig,
                                                  timeout=10, say=said.append)
        (csr,) = api.csrs.values()
        assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
        assert csr["spec"]["usages"] == ["digital signature", "client auth"]
        assert {s.token for s in api.seen if s.path.startswith(certs.CSRS)} == {str(TOKEN)}
        creds = load_kubeconfig(kubeconfig, environ={})
        cert = x509.load_pem_x509_certificate(creds.client_cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE}"
        assert cert.not_valid_after_utc == not_after
        assert not (cert_dir / tls_bootstrap.TMP_KEY).exists()
        assert _mode(kubeconfig) == 0o600 and _mode(cert_dir) == 0o700 and _mode((cert_dir / "kubelet-client-current.pem").resolve()) == 0o600
        assert any("authenticated as token:" in line for line in said)


async def test_a_rejected_token_is_named_before_any_csr(tmp_path: Path):
    async with FakeApi(tmp_path / "api", tokens={"other0.0000000000000000"}) as api:
        info = ClusterInfo(server=api.url, ca_pem=api.ca_file.read_bytes())
        with pytest.raises(tls_bootstrap.BootstrapError, match=r"rejects the bootstrap token \(401 Unauthorized\)"):
            await tls_bootstrap.bootstrap(info, TOKEN, node_name=NODE, cert_dir=tmp_path / "pki", kubeconfig=tmp_path / "k",
                                          timeout=5, say=print)
        assert not api.csrs and not (tmp_path / "k").exists()


async def test_an_interrupted_join_asks_again_under_the_same_name(tmp_path: Path):
    cert_dir = tmp_path / "pki"
    cert_dir.mkdir()
    key, _ = tls_bootstrap.load_or_make_key(cert_dir / tls_bootstrap.TMP_KEY)
    async with FakeApi(tmp_path / "api", tokens={str(TOKEN)}) as api:
        info = ClusterInfo(server=api.url, ca_pem=api.ca_file.read_bytes())
        await tls_bootstrap.bootstrap(info, TOKEN, node_name=NODE, cert_dir=cert_dir, kubeconfig=tmp_path / "k",
                                      timeout=5, say=print)
        assert list(api.csrs) == [tls_bootstrap.csr_name(key, NODE)]
