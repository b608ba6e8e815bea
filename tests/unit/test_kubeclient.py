"""Kubeconfig loading: the parts a node uses, as kubectl reads them."""

import base64

import pytest
import yaml

from vnode.cluster import pki
from vnode.kubeclient import KubeconfigError, _error, load_kubeconfig


def _write(path, user, cluster):
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    return path


@pytest.fixture
def certs(tmp_path):
    client, _ = pki.node_credentials(tmp_path, node_name="mac", node_ip="198.18.0.2")
    return tmp_path, client


def test_relative_paths_resolve_against_the_kubeconfig(certs):
    directory, client = certs
    cfg = _write(directory / "k.yaml", {"client-certificate": client.cert.name, "client-key": client.key.name},
                 {"server": "https://198.18.0.1:6443/", "certificate-authority": "ca.crt"})
    creds = load_kubeconfig(cfg)
    assert creds.server == "https://198.18.0.1:6443" and creds.token is None and creds.user == "u"


def test_embedded_data(certs, tmp_path):
    directory, client = certs
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    cfg = _write(tmp_path / "embedded.yaml",
                 {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)},
                 {"server": "https://x:1", "certificate-authority-data": b64(directory / "ca.crt")})
    assert load_kubeconfig(cfg).ssl


def test_token_file(tmp_path):
    (tmp_path / "t").write_text("secret\n")
    cfg = _write(tmp_path / "k.yaml", {"tokenFile": str(tmp_path / "t")}, {"server": "https://x:1", "insecure-skip-tls-verify": True})
    creds = load_kubeconfig(cfg)
    assert creds.token == "secret" and creds.ssl is False


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"exec": {"command": "aws"}}, {"server": "https://x:1"}, "exec/auth-provider"),
        ({}, {}, "has no server"),
        ({"client-certificate": "missing.crt", "client-key": "missing.key"}, {"server": "https://x:1"}, "cannot be loaded"),
    ],
)
def test_unusable_kubeconfigs_say_why(tmp_path, user, cluster, message):
    with pytest.raises(KubeconfigError, match=message):
        load_kubeconfig(_write(tmp_path / "k.yaml", user, cluster))


def test_status_body_becomes_api_error():
    err = _error(403, "Forbidden", '{"kind":"Status","reason":"Forbidden","message":"nodes \\"x\\" is forbidden"}')
    assert err.status == 403 and err.reason == "Forbidden" and "forbidden" in err.message
    assert _error(502, "Bad Gateway", "<html>").message == "<html>"
