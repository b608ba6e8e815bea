"""What a kubeconfig says, turned into the credentials a client connects with.

Read as client-go's clientcmd reads it, for the parts a node uses: the cluster (server, CA,
insecure-skip-tls-verify, tls-server-name, proxy-url, else HTTPS_PROXY/NO_PROXY) and the
user (client certificate and key as files or data, token or tokenFile, an exec credential
plugin of client.authentication.k8s.io/v1). Paths are relative to the kubeconfig's
directory. Nothing here talks to the API server; `KubeClient` decides when to read again.
`load_kubeconfig` reads files: the client calls it in a thread once the loop runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import ssl
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from vnode.files import write_private

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_INFO_ENV = "KUBERNETES_EXEC_INFO"
EXEC_CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
EXEC_TIMEOUT = 60.0


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used (missing, malformed, unsupported credentials)."""


class ExecPluginError(RuntimeError):
    """An exec credential plugin failed or answered something unusable."""


@dataclass(frozen=True)
class ExecPlugin:
    """users[].user.exec: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    interactive_mode: str = "Never"
    install_hint: str = ""
    cluster: dict | None = None  # spec.cluster for the plugin, when provideClusterInfo is set


@dataclass(frozen=True)
class ExecResult:
    """What a plugin answered (status of its ExecCredential)."""

    token: str | None
    cert_pem: bytes | None
    key_pem: bytes | None
    expires: dt.datetime | None


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None
    user: str
    tls_server_name: str | None = None
    proxy: str | None = None
    proxy_headers: Mapping[str, str] | None = None
    # Where they came from, so that they can be read again and compared:
    kubeconfig: Path | None = None
    context: str | None = None
    ca_pem: bytes | None = None
    insecure: bool = False
    cert_file: Path | None = None  # the client certificate's file (None: inline data, exec, or none)
    key_file: Path | None = None
    client_cert: bytes | None = None  # PEM of the client certificate in use
    token_file: Path | None = None
    exec: ExecPlugin | None = None
    fingerprint: str = field(default="", compare=False)


def _digest(*parts: bytes | str | bool | None) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else b"\0" if part is None else str(part).encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _material(entry: dict, key: str, base: Path) -> tuple[bytes | None, Path | None]:
    """The bytes of `key-data` or of the file `key` (relative to the kubeconfig), and the file."""
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(entry[f"{key}-data"], validate=True), None
        except ValueError:
            raise KubeconfigError(f"{key}-data is not valid base64") from None
    if entry.get(key):
        path = Path(os.path.expanduser(str(entry[key])))
        path = path if path.is_absolute() else base / path
        try:
            return path.read_bytes(), path
        except OSError as exc:
            raise KubeconfigError(f"{key} {path}: {exc.strerror}") from None
    return None, None


def tls_context(*, ca_pem: bytes | None, insecure: bool, cert_pem: bytes | None = None,
                key_pem: bytes | None = None) -> ssl.SSLContext | bool:
    """The client's TLS context; False means: do not verify and present nothing (aiohttp's way)."""
    if insecure:
        if not (cert_pem and key_pem):
            return False
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=ca_pem.decode() if ca_pem else None)
    if cert_pem and key_pem:
        # ssl loads a key pair only from files: private ones, in a private directory, gone at once.
        scratch = Path(tempfile.mkdtemp(prefix="vnode-tls-"))
        try:
            write_private(scratch / "cert.pem", cert_pem)
            write_private(scratch / "key.pem", key_pem)
            ctx.load_cert_chain(scratch / "cert.pem", scratch / "key.pem")
        finally:
            for item in scratch.iterdir():
                item.unlink()
            scratch.rmdir()
    return ctx


# -- proxies ---------------------------------------------------------------------------

def env_proxy(server: str, environ: Mapping[str, str]) -> str | None:
    """The proxy for `server` from HTTPS_PROXY/HTTP_PROXY and NO_PROXY, as Go's
    ProxyFromEnvironment decides: never for localhost and loopback addresses."""
    url = urlsplit(server)
    host = (url.hostname or "").lower()
    scheme = url.scheme or "https"
    port = url.port or (443 if scheme == "https" else 80)
    if host == "localhost" or _is_loopback(host):
        return None
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    proxy = next((environ[n] for n in names if environ.get(n)), "")
    if not proxy or _no_proxy(host, port, environ.get("NO_PROXY") or environ.get("no_proxy") or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _no_proxy(host: str, port: int, no_proxy: str) -> bool:
    """NO_PROXY: `*`; IP addresses and CIDRs; a domain matches itself and its subdomains,
    `.domain` only its subdomains; any entry may carry `:port`."""
    try:
        host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        host_ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            with contextlib.suppress(ValueError):
                if host_ip is not None and host_ip in ipaddress.ip_network(entry, strict=False):
                    return True
            continue
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        try:
            entry_ip = ipaddress.ip_address(name)
        except ValueError:
            entry_ip = None
        if entry_ip is not None or host_ip is not None:  # addresses match addresses only
            if entry_ip is not None and entry_ip == host_ip:
                return True
            continue
        name = name[1:] if name.startswith("*.") else name
        if name.startswith("."):
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _proxy_settings(proxy: str | None) -> tuple[str | None, dict[str, str] | None]:
    """The proxy URL without its user info, and the Proxy-Authorization header made of it."""
    if not proxy:
        return None, None
    url = urlsplit(proxy)
    if url.scheme not in ("http", "https"):
        raise KubeconfigError(f"proxy {proxy!r}: only http:// and https:// proxies are supported (not {url.scheme}://)")
    if not url.hostname:
        raise KubeconfigError(f"proxy {proxy!r} has no host")
    if url.username is None:
        return proxy, None
    netloc = url.hostname if url.port is None else f"{url.hostname}:{url.port}"
    header = "Basic " + base64.b64encode(f"{unquote(url.username)}:{unquote(url.password or '')}".encode()).decode()
    return urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment)), {"Proxy-Authorization": header}


# -- loading ---------------------------------------------------------------------------

def load_kubeconfig(path: Path, *, context: str | None = None, environ: Mapping[str, str] | None = None) -> Credentials:
    """Read a kubeconfig the way kubectl does for the parts a node uses."""
    environ = os.environ if environ is None else environ
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise KubeconfigError(f"--kubeconfig: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"--kubeconfig: {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise KubeconfigError(f"--kubeconfig: {path} is not a kubeconfig (no mapping at the top)")

    def named(kind: str, name: str) -> dict:
        for item in config.get(kind) or []:
            if item.get("name") == name:
                return item.get(kind[:-1]) or {}
        raise KubeconfigError(f"--kubeconfig: {path} has no {kind[:-1]} named {name!r}")

    ctx_name = context or config.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"--kubeconfig: {path} has no current-context")
    ctx = named("contexts", ctx_name)
    cluster = named("clusters", ctx.get("cluster", ""))
    user = named("users", ctx.get("user", ""))
    if "auth-provider" in user:
        raise KubeconfigError(
            f"--kubeconfig: {path} uses an auth-provider plugin (removed from client-go); a node authenticates with "
            "its own client certificate (system:node:<name>), a token, or an exec plugin"
        )
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"--kubeconfig: cluster {ctx.get('cluster')!r} in {path} has no server")
    base = path.resolve().parent
    try:
        ca_pem, _ = _material(cluster, "certificate-authority", base)
        cert_pem, cert_file = _material(user, "client-certificate", base)
        key_pem, key_file = _material(user, "client-key", base)
    except KubeconfigError as exc:
        raise KubeconfigError(f"--kubeconfig: credentials in {path} cannot be loaded: {exc}") from None
    if bool(cert_pem) != bool(key_pem):
        raise KubeconfigError(f"--kubeconfig: user {ctx.get('user')!r} in {path} has a client certificate or key without the other")
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    try:
        context_ssl = tls_context(ca_pem=ca_pem, insecure=insecure, cert_pem=cert_pem, key_pem=key_pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeconfigError(f"--kubeconfig: credentials in {path} cannot be loaded: {exc}") from None
    token, token_file = user.get("token") or None, None
    if user.get("tokenFile"):
        token_file = Path(os.path.expanduser(str(user["tokenFile"])))
        token_file = token_file if token_file.is_absolute() else base / token_file
        token = read_token_file(token_file)  # a tokenFile takes precedence over token, as in client-go
    exec_plugin = _exec_plugin(user["exec"], base=base, cluster=cluster, server=server, ca_pem=ca_pem, path=path) if user.get("exec") else None
    proxy, proxy_headers = _proxy_settings(cluster.get("proxy-url") or env_proxy(server, environ))
    tls_server_name = cluster.get("tls-server-name") or None
    return Credentials(
        server=server.rstrip("/"), ssl=context_ssl, token=token, user=ctx.get("user", ""),
        tls_server_name=tls_server_name, proxy=proxy, proxy_headers=proxy_headers,
        kubeconfig=path, context=context, ca_pem=ca_pem, insecure=insecure,
        cert_file=cert_file, key_file=key_file, client_cert=cert_pem, token_file=token_file, exec=exec_plugin,
        fingerprint=_digest(server, ca_pem, insecure, tls_server_name, proxy, cert_pem, key_pem, token,
                            repr(exec_plugin)),
    )


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise KubeconfigError(f"--kubeconfig: tokenFile {path}: {exc.strerror}") from None
    if not token:
        raise KubeconfigError(f"--kubeconfig: tokenFile {path} is empty")
    return token


def _exec_plugin(spec: Any, *, base: Path, cluster: dict, server: str, ca_pem: bytes | None, path: Path) -> ExecPlugin:
    where = f"--kubeconfig: exec plugin in {path}"
    if not isinstance(spec, dict) or not spec.get("command"):
        raise KubeconfigError(f"{where} has no command")
    api_version = spec.get("apiVersion")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeconfigError(f"{where}: apiVersion must be {' or '.join(EXEC_API_VERSIONS)}, not {api_version!r}")
    mode = spec.get("interactiveMode") or ("IfAvailable" if api_version.endswith("v1beta1") else None)
    if mode is None:
        raise KubeconfigError(f"{where}: interactiveMode must be set (Never, IfAvailable or Always) for {api_version}")
    if mode not in INTERACTIVE_MODES:
        raise KubeconfigError(f"{where}: interactiveMode {mode!r} is not one of {', '.join(INTERACTIVE_MODES)}")
    command = os.path.expanduser(str(spec["command"]))
    if os.sep in command and not os.path.isabs(command):
        command = str(base / command)  # a path, not a name looked up on PATH: relative to the kubeconfig
    env = []
    for item in spec.get("env") or []:
        if not isinstance(item, dict) or not item.get("name"):
            raise KubeconfigError(f"{where}: every env entry needs a name")
        env.append((str(item["name"]), str(item.get("value", ""))))
    info = None
    if spec.get("provideClusterInfo"):
        info = {"server": server}
        for key in ("tls-server-name", "insecure-skip-tls-verify", "proxy-url", "disable-compression"):
            if cluster.get(key):
                info[key] = cluster[key]
        if ca_pem:
            info["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
        for ext in cluster.get("extensions") or []:
            if isinstance(ext, dict) and ext.get("name") == EXEC_CLUSTER_EXTENSION:
                info["config"] = ext.get("extension")
    return ExecPlugin(command=command, args=tuple(str(a) for a in spec.get("args") or []), env=tuple(env),
                      api_version=api_version, interactive_mode=mode, install_hint=str(spec.get("installHint") or ""),
                      cluster=info)


# -- exec credential plugins -------------------------------------------------------------

def _interactive(mode: str) -> bool:
    tty = sys.stdin is not None and sys.stdin.isatty()
    if mode == "Always" and not tty:
        raise ExecPluginError("the exec plugin wants a terminal (interactiveMode Always) and vnode's standard input is not one")
    return mode != "Never" and tty


async def run_exec_plugin(plugin: ExecPlugin, *, timeout: float = EXEC_TIMEOUT) -> ExecResult:
    """Run the plugin as client-go does (its env on top of ours, KUBERNETES_EXEC_INFO with the
    ExecCredential spec) and read its answer. An asyncio subprocess: the loop keeps running."""
    name = os.path.basename(plugin.command)
    interactive = _interactive(plugin.interactive_mode)
    spec: dict[str, Any] = {"interactive": interactive}
    if plugin.cluster is not None:
        spec["cluster"] = plugin.cluster
    env = {**os.environ, **dict(plugin.env),
           EXEC_INFO_ENV: json.dumps({"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec})}
    try:
        proc = await asyncio.create_subprocess_exec(
            plugin.command, *plugin.args, env=env, stdin=None if interactive else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=None if interactive else asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        hint = f"; {plugin.install_hint.strip()}" if plugin.install_hint.strip() else ""
        raise ExecPluginError(f"exec plugin {plugin.command} cannot be run: {exc.strerror or exc}{hint}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:  # timeout or cancellation: the plugin must not outlive the wait
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.TimeoutError):
            raise ExecPluginError(f"exec plugin {name} did not answer within {timeout:.0f}s") from None
        raise
    if proc.returncode != 0:
        last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ExecPluginError(f"exec plugin {name} exited with status {proc.returncode}" + (f": {last[0]}" if last[0] else ""))
    return parse_exec_credential(out, api_version=plugin.api_version, name=name)


def parse_exec_credential(out: bytes, *, api_version: str, name: str = "exec plugin") -> ExecResult:
    try:
        cred = json.loads(out)
    except ValueError:
        raise ExecPluginError(f"exec plugin {name} did not print an ExecCredential (not JSON)") from None
    if not isinstance(cred, dict) or cred.get("kind") != "ExecCredential":
        raise ExecPluginError(f"exec plugin {name} printed something other than an ExecCredential")
    if cred.get("apiVersion") != api_version:
        raise ExecPluginError(f"exec plugin {name} answered {cred.get('apiVersion')!r}; the kubeconfig asks for {api_version}")
    status = cred.get("status")
    if not isinstance(status, dict):
        raise ExecPluginError(f"exec plugin {name} returned no status")
    token = status.get("token") or None
    cert, key = status.get("clientCertificateData") or None, status.get("clientKeyData") or None
    if not token and not cert and not key:
        raise ExecPluginError(f"exec plugin {name} returned neither a token nor a client certificate and key")
    if bool(cert) != bool(key):
        raise ExecPluginError(f"exec plugin {name} returned a client certificate or key without the other")
    expires = None
    if status.get("expirationTimestamp"):
        try:
            expires = dt.datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
        except ValueError:
            raise ExecPluginError(f"exec plugin {name}: expirationTimestamp {status['expirationTimestamp']!r} is not RFC 3339") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.timezone.utc)
    return ExecResult(token=token, cert_pem=cert.encode() if cert else None, key_pem=key.encode() if key else None,
                      expires=expires)


def with_exec_result(base: Credentials, result: ExecResult) -> Credentials:
    """`base` (the kubeconfig's) authenticated with what the plugin returned. Loads a key pair:
    call in a thread."""
    ctx = base.ssl
    if result.cert_pem and result.key_pem:
        try:
            ctx = tls_context(ca_pem=base.ca_pem, insecure=base.insecure, cert_pem=result.cert_pem, key_pem=result.key_pem)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ExecPluginError(f"the exec plugin's client certificate cannot be used: {exc}") from None
    return replace(base, ssl=ctx, token=result.token or base.token, client_cert=result.cert_pem or base.client_cert,
                   fingerprint=_digest(base.fingerprint, result.token, result.cert_pem, result.key_pem))


def certificate_facts(pem: bytes) -> tuple[str, tuple[str, ...], dt.datetime, dt.datetime]:
    """Common name, organizations, not-before and not-after of the first certificate in `pem`."""
    cert = x509.load_pem_x509_certificate(pem)
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return str(cn[0]) if cn else "", orgs, cert.not_valid_before_utc, cert.not_valid_after_utc


def describe_change(old: Credentials, new: Credentials) -> str:
    """What differs between two sets of credentials, in words for a log line."""
    parts = []
    if new.client_cert != old.client_cert:
        if new.client_cert:
            try:
                cn, _, _, not_after = certificate_facts(new.client_cert)
                parts.append(f"client certificate for {cn} valid until {not_after.isoformat()}")
            except ValueError:
                parts.append("client certificate")
        else:
            parts.append("no client certificate")
    if new.token != old.token:
        parts.append("token" if new.token else "no token")
    if new.server != old.server:
        parts.append(f"server {new.server}")
    if new.ca_pem != old.ca_pem:
        parts.append("CA")
    if new.exec != old.exec:
        parts.append("exec plugin")
    return ", ".join(parts) or "connection settings"
