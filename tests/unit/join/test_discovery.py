"""Discovery as kubeadm does it: the bootstrapsigner's JWS verified (vectors made by
k8s.io/cluster-bootstrap's own ComputeDetachedSignature), the CA pinned by its public-key hash,
and the whole exchange against a small HTTPS server playing the API server."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from vnode.cluster import bootstrap_tokens, pki
from vnode.join import discovery
from vnode.join.discovery import BootstrapToken, DiscoveryError, JoinInputError

TOKEN = BootstrapToken("abcdef", "0123456789abcdef")
# (content, token, signature) computed by Go: k8s.io/cluster-bootstrap/token/jws v0.35.4.
GO_VECTORS = [
    ("apiVersion: v1\nkind: Config\nclusters: []\n", TOKEN,
     "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..6noRUKYc6IcJatsCC4tJjBE6Jx8UClLwzsstr66SXaM"),
    ("", BootstrapToken("07401b", "f395accd246ae52d"),
     "eyJhbGciOiJIUzI1NiIsImtpZCI6IjA3NDAxYiJ9..-lwceYCDjlKW5S1R0smmbqArxmb61l03ouKdjWODkAM"),
]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(("content", "token", "jws"), GO_VECTORS)
def test_the_bootstrapsigners_signature_verifies_and_is_reproduced(content, token, jws):
    assert discovery.verify_detached(jws, content, token) is None
    assert discovery.sign_detached(content, token) == jws


def test_tampered_content_is_refused():
    content, token, jws = GO_VECTORS[0]
    assert "does not match" in discovery.verify_detached(jws, content.replace("[]", "[x]"), token)


def test_a_tampered_signature_is_refused():
    content, token, jws = GO_VECTORS[0]
    flipped = jws[:-2] + ("A" if jws[-2] != "A" else "B") + jws[-1]
    assert "does not match" in discovery.verify_detached(flipped, content, token)


def test_the_wrong_secret_is_refused():
    content, _, jws = GO_VECTORS[0]
    assert "secret is wrong" in discovery.verify_detached(jws, content, BootstrapToken("abcdef", "x" * 16))


def test_a_signature_for_another_token_id_is_refused():
    content = GO_VECTORS[0][0]
    other = discovery.sign_detached(content, BootstrapToken("zzzzzz", TOKEN.secret))
    assert "token id 'zzzzzz'" in discovery.verify_detached(other, content, TOKEN)


def test_another_algorithm_is_refused():
    content = GO_VECTORS[0][0]
    assert "not a detached JWS" in discovery.verify_detached(f"{_b64({'alg': 'none', 'kid': 'abcdef'})}..", content, TOKEN)
    assert "not HS256" in discovery.verify_detached(f"{_b64({'alg': 'none', 'kid': 'abcdef'})}..AAAA", content, TOKEN)
    assert "not HS256" in discovery.verify_detached(f"{_b64({'alg': 'HS512', 'kid': 'abcdef'})}..AAAA", content, TOKEN)


@pytest.mark.parametrize("jws", ["", "abc", "a.b.c", "a..b..c", "!!!..@@@"])
def test_what_is_not_a_detached_jws_is_refused(jws):
    assert discovery.verify_detached(jws, "x", TOKEN) is not None


def test_ca_hash_is_what_the_kubeadm_docs_compute_with_openssl(tmp_path: Path):
    ca = pki.Authority.create(tmp_path, "ca", "test-ca")
    der = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(ca.pair.cert)], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der, capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-hex"], input=der, capture_output=True, check=True).stdout
    assert discovery.ca_cert_hash(ca.cert) == "sha256:" + digest.decode().split()[-1]


def test_a_ca_that_is_not_pinned_is_refused_naming_both_hashes(tmp_path: Path):
    ca = pki.Authority.create(tmp_path, "ca", "test-ca")
    pem = ca.pair.cert.read_bytes()
    real = discovery.ca_cert_hash(ca.cert)
    assert discovery.check_pins(pem, frozenset({real, "sha256:" + "1" * 64}), server="https://x") == real
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DiscoveryError) as exc:
        discovery.check_pins(pem, frozenset({wrong}), server="https://x:6443")
    assert real in str(exc.value) and wrong in str(exc.value) and "refusing" in str(exc.value)


@pytest.mark.parametrize("value", ["sha256:abc", "md5:" + "0" * 64, "0" * 64, "sha256:" + "g" * 64])
def test_a_malformed_pin_names_the_flag(value):
    with pytest.raises(JoinInputError, match="--discovery-token-ca-cert-hash"):
        discovery.parse_pins([value])


def test_pins_are_compared_in_lower_case():
    assert discovery.parse_pins(["SHA256:" + "AB" * 32]) == {"sha256:" + "ab" * 32}


@pytest.mark.parametrize("value", ["abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "secretvalue.x"])
def test_a_malformed_token_names_the_flag_without_echoing_it(value):
    with pytest.raises(JoinInputError, match="--token") as exc:
        discovery.parse_token(value)
    assert value not in str(exc.value)


@pytest.mark.parametrize(("text", "server"), [("https://10.0.0.1:6443", "https://10.0.0.1:6443"),
                                              ("10.0.0.1:6443", "https://10.0.0.1:6443"),
                                              ("https://api.example:6443/", "https://api.example:6443")])
def test_server_forms(text, server):
    assert discovery.parse_server(text) == server


@pytest.mark.parametrize("text", ["http://10.0.0.1:6443", "https://10.0.0.1:6443/api", "https://:6443", "https://h:port"])
def test_bad_servers_are_refused(text):
    with pytest.raises(JoinInputError):
        discovery.parse_server(text)


def test_kubeadms_cluster_info_kubeconfig_is_read(tmp_path: Path):
    ca = pki.Authority.create(tmp_path, "ca", "test-ca")
    cm = bootstrap_tokens.cluster_info(server="https://10.0.0.1:6443", ca_pem=ca.pair.cert.read_bytes())
    info = discovery.parse_cluster_kubeconfig(cm["data"]["kubeconfig"], where="cluster-info")
    assert info.server == "https://10.0.0.1:6443" and info.ca_pem == ca.pair.cert.read_bytes()


def test_a_cluster_info_without_ca_is_refused():
    text = yaml.safe_dump({"clusters": [{"name": "", "cluster": {"server": "https://x"}}]})
    with pytest.raises(DiscoveryError, match="no certificate-authority-data"):
        discovery.parse_cluster_kubeconfig(text, where="cluster-info")


# -- the exchange, against a stand-in API server --------------------------------------------------

class ClusterInfoServer:
    """HTTPS on 127.0.0.1 with a certificate of `serving_ca`, answering cluster-info with
    `answers` in turn (the last one repeats); counts the readings."""

    def __init__(self, serving_ca: pki.Authority, directory: Path, answers: list[tuple[int, dict]]) -> None:
        self.pair = serving_ca.issue(directory, "apiserver", common_name="kube-apiserver", server=True, ips=("127.0.0.1",))
        self.answers, self.readings, self.url = answers, 0, ""

    async def _get(self, request: web.Request) -> web.Response:
        status, body = self.answers[min(self.readings, len(self.answers) - 1)]
        self.readings += 1
        return web.json_response(body, status=status)

    async def __aenter__(self) -> ClusterInfoServer:
        app = web.Application()
        app.router.add_get(discovery.CLUSTER_INFO, self._get)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pair.cert, self.pair.key)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx).start()
        self.url = f"https://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def configmap(*, server: str, ca: pki.Authority, token: BootstrapToken | None = TOKEN, kubeconfig: str | None = None) -> dict:
    cm = bootstrap_tokens.cluster_info(server=server, ca_pem=ca.pair.cert.read_bytes())
    if kubeconfig is not None:
        cm["data"]["kubeconfig"] = kubeconfig
    if token is not None:
        cm["data"][f"jws-kubeconfig-{token.id}"] = discovery.sign_detached(cm["data"]["kubeconfig"], token)
    return cm


@pytest.fixture
def ca(tmp_path: Path) -> pki.Authority:
    (tmp_path / "ca").mkdir()
    return pki.Authority.create(tmp_path / "ca", "ca", "cluster-ca")


async def test_discovery_trusts_the_pinned_ca_and_reads_twice(tmp_path: Path, ca):
    async with ClusterInfoServer(ca, tmp_path, []) as api:
        api.answers = [(200, configmap(server=api.url, ca=ca))]
        said: list[str] = []
        info = await discovery.discover(api.url, TOKEN, frozenset({discovery.ca_cert_hash(ca.cert)}), timeout=5, say=said.append)
    assert info.server == api.url and info.ca_pem == ca.pair.cert.read_bytes()
    assert api.readings == 2 and any("matches the pinned" in line for line in said)


async def test_a_server_whose_certificate_is_not_from_the_published_ca_is_refused(tmp_path: Path, ca):
    """Someone in the middle can copy the signed cluster-info, but not hold the CA's key."""
    (tmp_path / "impostor").mkdir()
    impostor = pki.Authority.create(tmp_path / "impostor", "ca", "impostor-ca")
    async with ClusterInfoServer(impostor, tmp_path, []) as api:
        api.answers = [(200, configmap(server=api.url, ca=ca))]
        with pytest.raises(DiscoveryError, match="over TLS verified with the pinned CA failed"):
            await discovery.discover(api.url, TOKEN, frozenset({discovery.ca_cert_hash(ca.cert)}), timeout=2, say=print)


async def test_a_cluster_info_that_changes_between_the_readings_is_refused(tmp_path: Path, ca):
    async with ClusterInfoServer(ca, tmp_path, []) as api:
        first = configmap(server=api.url, ca=ca)
        second = configmap(server=api.url, ca=ca, kubeconfig=first["data"]["kubeconfig"] + "# changed\n")
        api.answers = [(200, first), (200, second)]
        with pytest.raises(DiscoveryError, match="differs from the first reading"):
            await discovery.discover(api.url, TOKEN, frozenset({discovery.ca_cert_hash(ca.cert)}), timeout=5, say=print)


async def test_no_signature_for_the_token_waits_then_says_the_token_is_not_valid(tmp_path: Path, ca):
    async with ClusterInfoServer(ca, tmp_path, []) as api:
        api.answers = [(200, configmap(server=api.url, ca=ca, token=BootstrapToken("other1", TOKEN.secret)))]
        with pytest.raises(DiscoveryError, match="no signature for token id abcdef: the token is wrong, expired or deleted"):
            await discovery.discover(api.url, TOKEN, frozenset({discovery.ca_cert_hash(ca.cert)}), timeout=1.5, say=print)
    assert api.readings >= 2  # asked again while waiting for the bootstrapsigner


async def test_a_signature_that_appears_while_waiting_is_used(tmp_path: Path, ca):
    async with ClusterInfoServer(ca, tmp_path, []) as api:
        api.answers = [(200, configmap(server=api.url, ca=ca, token=None)), (200, configmap(server=api.url, ca=ca))]
        info = await discovery.discover(api.url, TOKEN, frozenset(), timeout=5, say=print)
    assert info.server == api.url


async def test_a_cluster_without_cluster_info_or_anonymous_access_is_named(tmp_path: Path, ca):
    async with ClusterInfoServer(ca, tmp_path, [(404, {"kind": "Status", "code": 404, "reason": "NotFound"})]) as api:
        with pytest.raises(DiscoveryError, match="has no cluster-info ConfigMap in kube-public"):
            await discovery.discover(api.url, TOKEN, frozenset(), timeout=2, say=print)
    async with ClusterInfoServer(ca, tmp_path, [(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})]) as api:
        with pytest.raises(DiscoveryError, match="kubeadm:bootstrap-signer-clusterinfo"):
            await discovery.discover(api.url, TOKEN, frozenset(), timeout=2, say=print)
