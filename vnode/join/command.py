"""`vnode join`: discovery, TLS bootstrap, and the next step, as `kubeadm join` runs them.

Only ordering and what a person reads live here; discovery.py decides whom to trust and
tls_bootstrap.py obtains the node's certificate. A node kubeconfig that is still good for
this node and this cluster is left alone, so running the same join twice changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vnode.config import default_state_dir
from vnode.join.discovery import BootstrapToken, DiscoveryError, JoinInputError, discover
from vnode.join.tls_bootstrap import BootstrapError, Existing, bootstrap, check_existing, confirm_identity
from vnode.service import command as service

DEFAULT_STATE_DIR = default_state_dir()
CLIENT_CA = "ca.crt"  # in the cert dir: --client-ca-file of the printed `vnode run`


@dataclass(frozen=True)
class JoinOptions:
    server: str
    token: BootstrapToken
    pins: frozenset[str]  # empty only with --discovery-token-unsafe-skip-ca-verification
    node_name: str
    host_ip: str | None
    state_dir: Path
    kubeconfig: Path
    service: bool
    discovery_timeout: float
    bootstrap_timeout: float

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "pki"  # where `vnode run` renews the certificate (client_certs.py)


def route_address(server: str) -> str:
    """This machine's address on the route to the API server (a UDP connect sends nothing).
    Blocking (name lookup): call in a thread."""
    url = urlsplit(server)
    infos = socket.getaddrinfo(url.hostname, url.port or 443, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(address)
        return s.getsockname()[0]


def run_command(options: JoinOptions, host_ip: str) -> list[str]:
    """`vnode run` with what join decided; also what the launchd service runs."""
    return ["vnode", "run", f"--kubeconfig={options.kubeconfig}", f"--node-name={options.node_name}", f"--host-ip={host_ip}",
            *([f"--state-dir={options.state_dir}"] if options.state_dir != DEFAULT_STATE_DIR else []),
            "--bootstrap-serving-cert", f"--client-ca-file={options.cert_dir / CLIENT_CA}"]


async def _host_ip(options: JoinOptions) -> tuple[str | None, str]:
    """The node's InternalIP, or why there is none: decided before anything is asked of the
    cluster, so a join that could not run the node is refused without side effects."""
    if options.host_ip is not None:
        return options.host_ip, ""
    try:
        found = await asyncio.to_thread(route_address, options.server)
    except OSError as exc:
        return None, f"cannot find this machine's address on the route to {options.server} ({exc}); pass --host-ip"
    ip = ipaddress.ip_address(found)
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return None, (f"the API server {options.server} is reached over {found}, which no node or Endpoint can use (is the "
                      "cluster on this machine, as kind on Docker Desktop?); pass --host-ip with the address the cluster's "
                      "nodes reach this Mac on (e.g. `ipconfig getifaddr en0`)")
    return found, f"--host-ip not given: {found} is this machine's address on the route to the API server"


def _write_client_ca(options: JoinOptions) -> None:
    """The cluster CA, for the kubelet API to verify the API server's client certificate
    (kubeadm signs apiserver-kubelet-client with it); not secret. Blocking."""
    from vnode.kubeconfig import load_kubeconfig

    ca = load_kubeconfig(options.kubeconfig).ca_pem
    if ca:
        options.cert_dir.mkdir(parents=True, exist_ok=True)
        tmp = options.cert_dir / f".{CLIENT_CA}.tmp"
        tmp.write_bytes(ca)
        os.replace(tmp, options.cert_dir / CLIENT_CA)


async def join(options: JoinOptions, *, say: Callable[[str], None] = print) -> int:
    """0 joined (or already joined), 1 refused or failed, 2 not tried; the reason is on stderr."""
    host_ip, why = await _host_ip(options)
    if host_ip is None:
        print(f"vnode join: {why}", file=sys.stderr)
        return 2
    try:
        await _join(options, say=say)
        await asyncio.to_thread(_write_client_ca, options)
    except (DiscoveryError, BootstrapError) as exc:
        print(f"vnode join: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the state directory or the kubeconfig's place is not writable
        print(f"vnode join: cannot write {exc.filename or options.state_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if why:
        say(why)
    run = run_command(options, host_ip)
    say("the node runs as:")
    say(f"  {shlex.join(run)}")
    say("  (the kubelet API's serving certificate comes from a kubelet-serving CSR a cluster admin approves; "
        "or pass --tls-cert-file/--tls-private-key-file)")
    if not options.service:
        return 0
    if shutil.which("launchctl") is None:
        say("no launchd on this machine: not installed as a service; start the node with the line above")
        return 0
    try:
        await service.install(run[2:], system=False, say=say)
    except service.ServiceError as exc:
        print(f"vnode join: joined, but the service was not installed: {exc}", file=sys.stderr)
        return 1
    return 0


def _keep(existing: Existing | None, options: JoinOptions, say: Callable[[str], None]) -> bool:
    if existing is not None and existing.usable:
        say(f"already joined: {options.kubeconfig} holds {existing.text}; nothing changed")
        return True
    return False


async def _join(options: JoinOptions, *, say: Callable[[str], None]) -> None:
    where = {"node_name": options.node_name, "pins": options.pins}
    existing = await asyncio.to_thread(check_existing, options.kubeconfig, server=options.server, **where)
    if _keep(existing, options, say):
        return
    info = await discover(options.server, options.token, options.pins, timeout=options.discovery_timeout, say=say)
    if info.server != options.server:
        say(f"cluster-info names the API server {info.server}: the node uses it, as kubeadm join does")
        existing = await asyncio.to_thread(check_existing, options.kubeconfig, server=info.server, **where)
        if _keep(existing, options, say):
            return
    if existing is not None:
        say(f"replacing {options.kubeconfig}: {existing.text}")
    not_after = await bootstrap(info, options.token, node_name=options.node_name, cert_dir=options.cert_dir,
                                kubeconfig=options.kubeconfig, timeout=options.bootstrap_timeout, say=say)
    who = await confirm_identity(options.kubeconfig, node_name=options.node_name)
    say(f"joined: the API server knows this Mac as {who.username} (groups {', '.join(who.groups)}); its client "
        f"certificate is valid until {not_after.isoformat(timespec='seconds')} and `vnode run` renews it")


def validate_host_ip(text: str) -> str:
    """The same rule as `vnode run --host-ip`: an address other nodes and Endpoints accept."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise JoinInputError(f"--host-ip: {text!r} is not an IP address") from None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise JoinInputError(f"--host-ip: {ip} cannot be a node InternalIP: Endpoints reject loopback, link-local and "
                         "unspecified addresses")
    return str(ip)
