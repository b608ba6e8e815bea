"""Kubeconfig loading as kubectl does it, and a live client's credentials: read again on
401, switched without dropping a watch, exec plugins, tls-server-name, proxies."""

import asyncio
import base64
import datetime as dt
import json
import logging
import stat
import sys

import aiohttp
import pytest
import yaml

from tests.support.fakeapi import FakeApi, kubeconfig
from vnode import kubeclient
from vnode.cluster import pki
from vnode.kubeclient import ApiError, KubeClient, KubeconfigError, _error, load_kubeconfig


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
        ({"auth-provider": {"name": "gcp"}}, {"server": "https://x:1"}, "auth-provider plugin"),
        ({"exec": {"command": "aws"}}, {"server": "https://x:1"}, "apiVersion must be client.authentication.k8s.io/v1"),
        ({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}, {"server": "https://x:1"},
         "interactiveMode must be set"),
        ({"client-certificate": "missing.crt"}, {"server": "https://x:1"}, "cannot be loaded"),
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


# -- a live client against a stand-in API server (tests/support/fakeapi.py) -----------------

V1 = "client.authentication.k8s.io/v1"


@pytest.fixture
async def api_server(tmp_path):
    async with FakeApi(tmp_path / "api", dns=("kubernetes.default",)) as fake:
        yield fake


def _client(path) -> KubeClient:
    return KubeClient(load_kubeconfig(path))


async def test_a_rotated_token_file_is_read_again_on_401(api_server, tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("old")
    api_server.tokens = {"old"}
    client = _client(kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file, user={"tokenFile": "token"}))
    try:
        assert (await client.get("/api/v1/whoami"))["token"] == "old"
        token.write_text("new\n")  # rotated by whoever issues it; the old one is revoked
        api_server.tokens = {"new"}
        with caplog.at_level(logging.INFO, logger="vnode.kubeclient"):
            answers = await asyncio.gather(*(client.get("/api/v1/whoami") for _ in range(5)))
        assert {a["token"] for a in answers} == {"new"}
        reloads = [r for r in caplog.records if "reloaded the credentials" in r.message]
        assert len(reloads) == 1, caplog.text  # one line, not one per request
        assert "401 Unauthorized" in reloads[0].message and "token" in reloads[0].message
        # Revoked for good: the 401 comes through, and the unchanged credentials are said once.
        api_server.tokens = set()
        client._last_reload = -1e9
        for _ in range(3):
            with pytest.raises(ApiError) as err:
                await client.get("/api/v1/whoami")
            assert err.value.status == 401
            client._last_reload = -1e9
        assert caplog.text.count("unchanged on disk") == 1
    finally:
        await client.close()


async def test_a_token_file_is_read_again_every_minute(api_server, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("one")
    client = _client(kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file, user={"tokenFile": str(token)}))
    try:
        token.write_text("two")
        assert (await client.get("/api/v1/whoami"))["token"] == "one"  # within the minute: the token read before
        monkeypatch.setattr(kubeclient, "TOKEN_FILE_SECONDS", 0.0)
        assert (await client.get("/api/v1/whoami"))["token"] == "two"
    finally:
        await client.close()


async def test_new_connections_use_new_certificates_while_a_watch_goes_on(api_server, tmp_path):
    first = api_server.client_cert("first", cn="system:node:mac", orgs=("system:nodes",))
    second = api_server.client_cert("second", cn="system:node:mac", orgs=("system:nodes",))
    cfg = kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file,
                     user={"client-certificate": str(first.cert), "client-key": str(first.key)})
    client = _client(cfg)
    try:
        old = (await client.get("/api/v1/whoami"))["serial"]
        watch = client.watch("/api/v1/stream")
        assert (await watch.__anext__())["object"]["serial"] == old
        old_session = client._link.session
        kubeconfig(cfg, server=api_server.url, ca=api_server.ca_file,
                   user={"client-certificate": str(second.cert), "client-key": str(second.key)})
        assert await client.reload_credentials(why="test")
        assert not await client.reload_credentials(why="test")  # nothing changed since
        new = (await client.get("/api/v1/whoami"))["serial"]
        assert new != old and client.credentials.cert_file == second.cert
        api_server.release_watch.set()  # the watch started before the switch still streams
        assert (await watch.__anext__()) == {"type": "MODIFIED", "object": {"serial": old}}
        assert not old_session.closed
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()
        await asyncio.sleep(0)
        await asyncio.gather(*client._closers)
        assert old_session.closed  # idle and retired: closed
    finally:
        await client.close()


async def test_a_rejected_certificate_is_read_again_from_disk(api_server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    old = api_server.client_cert("old", cn="system:node:mac", orgs=("system:nodes",))
    new = api_server.client_cert("new", cn="system:node:mac", orgs=("system:nodes",))
    current = tmp_path / "current.pem"
    current.write_bytes(old.cert.read_bytes() + old.key.read_bytes())
    client = _client(kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file,
                                user={"client-certificate": "current.pem", "client-key": "current.pem"}))
    try:
        serial = (await client.get("/api/v1/whoami"))["serial"]
        api_server.rejected_serials.add(serial)
        current.write_bytes(new.cert.read_bytes() + new.key.read_bytes())  # renewed by someone else
        assert (await client.get("/api/v1/whoami"))["serial"] != serial
        assert "client certificate for system:node:mac valid until" in caplog.text
    finally:
        await client.close()


async def test_tls_server_name_checks_the_certificate_against_that_name(api_server, tmp_path):
    # The fake's certificate names 127.0.0.1 and kubernetes.default: ask for a name it lacks,
    # then for the one it has.
    wrong = _client(kubeconfig(tmp_path / "w.yaml", server=api_server.url, ca=api_server.ca_file, user={"token": "t"},
                               cluster={"tls-server-name": "elsewhere.example"}))
    right = _client(kubeconfig(tmp_path / "r.yaml", server=api_server.url, ca=api_server.ca_file, user={"token": "t"},
                               cluster={"tls-server-name": "kubernetes.default"}))
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="elsewhere.example"):
            await wrong.get("/api/v1/whoami")
        assert (await right.get("/api/v1/whoami"))["token"] == "t"
    finally:
        await wrong.close()
        await right.close()


async def test_requests_go_through_the_proxy(tmp_path):
    """An HTTPS server is reached with CONNECT through the proxy, which here records the
    tunnel asked for and refuses it."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = _client(kubeconfig(tmp_path / "k.yaml", server="https://api.example.com:6443", user={"token": "t"},
                                cluster={"insecure-skip-tls-verify": True, "proxy-url": f"http://who:pw@127.0.0.1:{port}"}))
    try:
        with pytest.raises(aiohttp.ClientHttpProxyError):
            await client.get("/api/v1/whoami")
    finally:
        await client.close()
        server.close()
    assert seen and seen[0].startswith(b"CONNECT api.example.com:6443 HTTP/1.1")
    assert b"Proxy-Authorization: Basic d2hvOnB3" in seen[0]


def _exec_plugin(tmp_path, *, token_prefix: str = "tok", expires_in: float | None = 3600, with_cert: tuple | None = None):
    """A plugin printing token <prefix>-<n> on its n-th run (or a certificate), logging each run."""
    script = tmp_path / "bin" / "get-credential"
    script.parent.mkdir(exist_ok=True)
    status = {}
    if with_cert:
        status = {"clientCertificateData": with_cert[0].read_text(), "clientKeyData": with_cert[1].read_text()}
    script.write_text(f"""#!{sys.executable}
import datetime as dt, json, os
runs = {str(tmp_path / 'runs')!r}
n = (len(open(runs).read().splitlines()) if os.path.exists(runs) else 0) + 1
open(runs, "a").write(os.environ["{'KUBERNETES_EXEC_INFO'}"] + "\\n")
status = {status!r} or {{"token": "{token_prefix}-%d" % n}}
expires_in = {expires_in!r}
if expires_in is not None:
    status["expirationTimestamp"] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({{"apiVersion": "{V1}", "kind": "ExecCredential", "status": status}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"exec": {"apiVersion": V1, "command": "bin/get-credential", "interactiveMode": "Never", "provideClusterInfo": True}}


def _runs(tmp_path) -> int:
    return len((tmp_path / "runs").read_text().splitlines()) if (tmp_path / "runs").exists() else 0


async def test_exec_plugin_token_is_cached_until_it_expires_and_renewed_on_401(api_server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = _client(kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file, user=_exec_plugin(tmp_path)))
    try:
        assert _runs(tmp_path) == 0  # not run before the first request
        answers = await asyncio.gather(*(client.get("/api/v1/whoami") for _ in range(4)))
        assert {a["token"] for a in answers} == {"tok-1"} and _runs(tmp_path) == 1
        info = json.loads((tmp_path / "runs").read_text().splitlines()[0])
        assert info["spec"]["cluster"]["server"] == api_server.url and info["spec"]["interactive"] is False
        api_server.tokens = {"tok-2"}  # tok-1 revoked: a 401 runs the plugin again, the request is retried
        assert (await client.get("/api/v1/whoami"))["token"] == "tok-2" and _runs(tmp_path) == 2
        assert "exec plugin" in caplog.text and "401 Unauthorized" in caplog.text
        client._exec_expires = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)  # expired: run before sending
        api_server.tokens = None
        assert (await client.get("/api/v1/whoami"))["token"] == "tok-3" and _runs(tmp_path) == 3
    finally:
        await client.close()


async def test_exec_plugin_client_certificate_is_presented(api_server, tmp_path):
    pair = api_server.client_cert("exec", cn="system:node:from-exec", orgs=("system:nodes",))
    client = _client(kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file,
                                user=_exec_plugin(tmp_path, with_cert=(pair.cert, pair.key))))
    try:
        answer = await client.get("/api/v1/whoami")
        assert answer["cn"] == "system:node:from-exec" and answer["token"] is None
    finally:
        await client.close()


async def test_a_changed_exec_plugin_is_run_anew_and_an_unchanged_one_is_not(api_server, tmp_path):
    cfg = kubeconfig(tmp_path / "k.yaml", server=api_server.url, ca=api_server.ca_file, user=_exec_plugin(tmp_path))
    client = _client(cfg)
    try:
        assert (await client.get("/api/v1/whoami"))["token"] == "tok-1"
        assert not await client.reload_credentials(why="test")  # the kubeconfig is as it was: the token stays
        assert (await client.get("/api/v1/whoami"))["token"] == "tok-1" and _runs(tmp_path) == 1
        user = _exec_plugin(tmp_path)
        user["exec"]["args"] = ["--other"]
        kubeconfig(cfg, server=api_server.url, ca=api_server.ca_file, user=user)
        assert await client.reload_credentials(why="test")
        assert (await client.get("/api/v1/whoami"))["token"] == "tok-2" and _runs(tmp_path) == 2
    finally:
        await client.close()
