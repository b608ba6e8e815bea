"""Kubeconfig features read as client-go reads them: tokenFile, exec plugins, proxies,
tls-server-name."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.support.fakeapi import kubeconfig
from vnode.kubeconfig import (
    EXEC_INFO_ENV,
    ExecPlugin,
    ExecPluginError,
    KubeconfigError,
    env_proxy,
    load_kubeconfig,
    parse_exec_credential,
    run_exec_plugin,
)

SERVER = "https://api.example.com:6443"
V1 = "client.authentication.k8s.io/v1"


def _load(tmp_path: Path, user: dict, cluster: dict | None = None, environ: dict | None = None, server: str = SERVER):
    return load_kubeconfig(kubeconfig(tmp_path / "kubeconfig", server=server, user=user,
                                      cluster={"insecure-skip-tls-verify": True, **(cluster or {})}), environ=environ or {})


def test_token_file_is_relative_to_the_kubeconfig_and_wins_over_token(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("from-file\n")
    monkeypatch.chdir("/")
    creds = _load(tmp_path, {"tokenFile": "secrets/token", "token": "inline"})
    assert creds.token == "from-file" and creds.token_file == tmp_path / "secrets" / "token"


def test_an_empty_token_file_is_an_error(tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(KubeconfigError, match="is empty"):
        _load(tmp_path, {"tokenFile": "token"})


def test_exec_plugin_settings(tmp_path):
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    creds = load_kubeconfig(kubeconfig(
        tmp_path / "kubeconfig", server=SERVER,
        user={"exec": {"apiVersion": V1, "command": "./bin/get-token", "args": ["--audience", "x"],
                       "env": [{"name": "REGION", "value": "eu"}], "interactiveMode": "Never", "provideClusterInfo": True}},
        cluster={"insecure-skip-tls-verify": True, "tls-server-name": "kubernetes.default", "certificate-authority-data": ca,
                 "extensions": [{"name": "client.authentication.k8s.io/exec", "extension": {"audience": "node"}}]},
    ), environ={})
    plugin = creds.exec
    assert plugin is not None and creds.token is None
    assert plugin.command == str(tmp_path / "bin" / "get-token")  # a path: relative to the kubeconfig
    assert plugin.args == ("--audience", "x") and plugin.env == (("REGION", "eu"),)
    assert plugin.cluster == {"server": SERVER, "tls-server-name": "kubernetes.default", "insecure-skip-tls-verify": True,
                              "certificate-authority-data": ca, "config": {"audience": "node"}}
    on_path = _load(tmp_path, {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws"}})
    assert on_path.exec.command == "aws" and on_path.exec.interactive_mode == "IfAvailable" and on_path.exec.cluster is None


@pytest.mark.parametrize(("environ", "server", "expected"), [
    ({"HTTPS_PROXY": "proxy.corp:3128"}, SERVER, "http://proxy.corp:3128"),
    ({"https_proxy": "http://lower:1"}, SERVER, "http://lower:1"),
    ({"HTTP_PROXY": "http://plain:1"}, SERVER, None),  # an https server uses HTTPS_PROXY only
    ({"HTTP_PROXY": "http://plain:1"}, "http://api.example.com", "http://plain:1"),
    ({"HTTPS_PROXY": "http://p:1"}, "https://127.0.0.1:6443", None),  # loopback is never proxied
    ({"HTTPS_PROXY": "http://p:1"}, "https://localhost:6443", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, SERVER, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, SERVER, None),  # a domain and its subdomains
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, "https://example.com", "http://p:1"),  # subdomains only
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, SERVER, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.com, api.example.com:443"}, SERVER, "http://p:1"),  # port differs
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.example.com:6443"}, SERVER, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3:6443", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.1.2.3"}, "https://10.1.2.3:6443", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "https://192.168.1.1:6443", "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "example.com"}, SERVER, None),
])
def test_proxy_from_the_environment(environ, server, expected):
    assert env_proxy(server, environ) == expected


def test_proxy_url_wins_and_carries_its_credentials_as_a_header(tmp_path):
    creds = _load(tmp_path, {"token": "t"}, {"proxy-url": "http://user:p%40ss@proxy.corp:3128"}, {"HTTPS_PROXY": "http://env:1"})
    assert creds.proxy == "http://proxy.corp:3128"
    assert creds.proxy_headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"user:p@ss").decode()}
    assert _load(tmp_path, {"token": "t"}, environ={"HTTPS_PROXY": "http://env:1"}).proxy == "http://env:1"
    with pytest.raises(KubeconfigError, match="only http:// and https:// proxies"):
        _load(tmp_path, {"token": "t"}, {"proxy-url": "socks5://proxy:1080"})


def test_tls_server_name_is_kept(tmp_path):
    assert _load(tmp_path, {"token": "t"}, {"tls-server-name": "kubernetes.default"}).tls_server_name == "kubernetes.default"


def test_a_changed_file_changes_the_fingerprint(tmp_path):
    (tmp_path / "token").write_text("one")
    first = _load(tmp_path, {"tokenFile": "token"})
    assert _load(tmp_path, {"tokenFile": "token"}).fingerprint == first.fingerprint
    (tmp_path / "token").write_text("two")
    assert _load(tmp_path, {"tokenFile": "token"}).fingerprint != first.fingerprint


# -- exec plugins --------------------------------------------------------------------------

def _plugin(tmp_path: Path, answer: dict | str, *, exit_code: int = 0, mode: str = "Never") -> ExecPlugin:
    script = tmp_path / "plugin"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(tmp_path / 'calls.jsonl')!r}, "a") as f:
    f.write(json.dumps({{"info": os.environ.get({EXEC_INFO_ENV!r}), "region": os.environ.get("REGION"),
                        "args": sys.argv[1:], "stdin_tty": sys.stdin.isatty()}}) + "\\n")
sys.stderr.write("plugin says hello\\n")
print({json.dumps(answer) if isinstance(answer, dict) else answer!r})
sys.exit({exit_code})
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return ExecPlugin(command=str(script), args=("--flag",), env=(("REGION", "eu"),), api_version=V1, interactive_mode=mode,
                      cluster={"server": SERVER})


def _calls(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


async def test_exec_plugin_runs_with_its_args_env_and_exec_info(tmp_path):
    answer = {"apiVersion": V1, "kind": "ExecCredential", "status": {"token": "abc", "expirationTimestamp": "2030-01-02T03:04:05Z"}}
    result = await run_exec_plugin(_plugin(tmp_path, answer))
    assert result.token == "abc" and result.expires.isoformat() == "2030-01-02T03:04:05+00:00"
    call = _calls(tmp_path)[0]
    assert call["args"] == ["--flag"] and call["region"] == "eu" and not call["stdin_tty"]
    assert json.loads(call["info"]) == {"apiVersion": V1, "kind": "ExecCredential",
                                        "spec": {"interactive": False, "cluster": {"server": SERVER}}}


async def test_exec_plugin_failures_are_clear(tmp_path):
    with pytest.raises(ExecPluginError, match="exited with status 3: plugin says hello"):
        await run_exec_plugin(_plugin(tmp_path, {}, exit_code=3))
    with pytest.raises(ExecPluginError, match="cannot be run"):
        await run_exec_plugin(ExecPlugin(command=str(tmp_path / "nothing"), install_hint="brew install nothing"))
    if not os.isatty(0):
        with pytest.raises(ExecPluginError, match="wants a terminal"):
            await run_exec_plugin(_plugin(tmp_path, {}, mode="Always"))


@pytest.mark.parametrize(("answer", "message"), [
    ("not json", "not JSON"),
    ({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {"token": "x"}}, "asks for"),
    ({"apiVersion": V1, "kind": "ExecCredential"}, "no status"),
    ({"apiVersion": V1, "kind": "ExecCredential", "status": {}}, "neither a token"),
    ({"apiVersion": V1, "kind": "ExecCredential", "status": {"clientCertificateData": "x"}}, "without the other"),
    ({"apiVersion": V1, "kind": "ExecCredential", "status": {"token": "x", "expirationTimestamp": "soon"}}, "RFC 3339"),
])
def test_unusable_exec_credentials_say_why(answer, message):
    out = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
    with pytest.raises(ExecPluginError, match=message):
        parse_exec_credential(out, api_version=V1)
