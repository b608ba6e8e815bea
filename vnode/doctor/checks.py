"""The checks `vnode doctor` runs, one verdict each with a fix a person can act on.

Each check reads the machine or the cluster the way `vnode run` would with the same
settings, and never changes anything (the model store check writes and removes one empty
file). Verdicts on numbers live in parse.py; this module gathers the inputs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import errno
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from cryptography import x509
from pydantic import BaseModel

from vnode.doctor import parse
from vnode.doctor.parse import GiB, MiB, Status
from vnode.node.budget import allocatable_memory
from vnode.provider.host import HostFacts, parse_sysctl_output
from vnode.provider.serverbin import find_llama_server, smoke_test

COMMAND_TIMEOUT = 30.0
MIN_FREE_BYTES = 5 * GiB  # a small quantised model plus room to download it again


class Check(BaseModel):
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Inputs:
    """The settings the checks use, from flags, the installed service or the defaults."""

    llama_server: Path | None
    kubeconfig: Path | None
    node_name: str
    host_ip: str | None
    kubelet_port: int
    state_dir: Path
    memory_fraction: float | None
    tls_cert_file: Path | None
    system: bool
    macos: bool = sys.platform == "darwin"


async def _output(*argv: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """(exit code, stdout and stderr together): llama-server prints its version to stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return 127, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"no answer within {timeout:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace")


async def llama_server(inputs: Inputs) -> tuple[Check, Path | None]:
    binary = find_llama_server(inputs.llama_server)
    if binary is None:
        where = f"{inputs.llama_server} is not a file" if inputs.llama_server else "not on PATH and not built"
        return Check(name="llama-server", status="fail", detail=where,
                     fix="install llama.cpp (on a Mac: brew install llama.cpp) or pass --llama-server PATH"), None
    _, text = await _output(str(binary), "--version")
    version = parse.server_version(text) or "version unknown"
    result = await asyncio.to_thread(smoke_test, binary)
    if result.ok:
        return Check(name="llama-server", status="ok", detail=f"{binary}, {version}; smoke run {result.summary()}"), binary
    tail = " | ".join(result.log_tail.splitlines()[-3:])
    return Check(name="llama-server", status="fail", detail=f"{binary}, {version}: {result.summary()}" + (f" | {tail}" if tail else ""),
                 fix="use a llama-server built for this machine (`vnode cluster build` builds a portable one)"), binary


async def metal(inputs: Inputs, binary: Path | None) -> Check:
    if binary is None:
        return Check(name="metal", status="skip", detail="no llama-server to ask")
    rc, text = await _output(str(binary), "--list-devices")
    devices = parse.list_devices(text)
    listed = ", ".join(f"{d.name} {d.description}" for d in devices) or "none"
    if not inputs.macos:
        return Check(name="metal", status="skip", detail=f"not macOS: pods run on the CPU here (devices: {listed})")
    if any(d.metal for d in devices):
        return Check(name="metal", status="ok", detail=f"devices: {listed}")
    why = f"exit {rc}: {text.strip()[-200:]}" if rc != 0 else f"devices: {listed}"
    return Check(name="metal", status="fail", detail=f"llama-server lists no Metal device ({why})",
                 fix="use a llama-server built with Metal (brew install llama.cpp builds it so)")


async def memory(inputs: Inputs, facts: HostFacts) -> Check:
    budget = allocatable_memory(facts.memory_bytes, inputs.memory_fraction)
    text = f"budget {budget / GiB:.1f} of {facts.memory_bytes / GiB:.1f} GiB"
    if not inputs.macos:
        return Check(name="memory", status="ok", detail=text + " (no GPU wired limit off macOS)")
    _, out = await _output("sysctl", "iogpu.wired_limit_mb")
    limit_mb = parse.sysctl_int(parse_sysctl_output(out).get("iogpu.wired_limit_mb", ""))
    if limit_mb is None:
        return Check(name="memory", status="warn", detail=text + "; iogpu.wired_limit_mb unreadable",
                     fix="on macOS before 14 the GPU limit cannot be read; keep --memory-fraction at 0.75 or below")
    limit, default = parse.wired_limit_bytes(facts.memory_bytes, limit_mb)
    text += f"; GPU wired limit {limit / GiB:.1f} GiB ({'macOS default' if default else 'iogpu.wired_limit_mb'})"
    # macOS's default is known only approximately: within 1 % of memory is no finding.
    if budget > limit + (facts.memory_bytes // 100 if default else 0):
        want = (budget + 512 * MiB) // MiB
        return Check(name="memory", status="warn" if default else "fail",
                     detail=text + ": models the budget admits may not fit on the GPU",
                     fix=f"raise the limit (`sudo sysctl iogpu.wired_limit_mb={want}`, not kept across reboots) "
                         "or lower --memory-fraction")
    return Check(name="memory", status="ok", detail=text)


def _store(path: Path) -> Check:
    """Blocking: called in a thread. Writes one empty file and removes it; a store that does
    not exist yet is judged by the directory it would be created in."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if where == path:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
                pass
        elif not where.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{where} is not a directory")
        elif not os.access(where, os.W_OK):
            raise PermissionError(errno.EACCES, f"cannot create it in {where}")
    except OSError as exc:
        return Check(name="model store", status="fail", detail=f"{path} is not writable: {exc.strerror or exc}",
                     fix=f"make {path} writable by the user vnode runs as, or pass --state-dir")
    free = shutil.disk_usage(where).free
    detail = f"{path}: {'writable' if where == path else 'created on first start'}, {free / GiB:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Check(name="model store", status="warn", detail=detail + f" (less than {MIN_FREE_BYTES // GiB} GiB)",
                     fix="free disk space or move the store with --state-dir")
    return Check(name="model store", status="ok", detail=detail)


async def model_store(inputs: Inputs) -> Check:
    return await asyncio.to_thread(_store, inputs.state_dir / "models")


async def api_server(inputs: Inputs) -> list[Check]:
    """Reachable with the node's credentials, as whom, and the clock against its Date."""
    from vnode.kubeclient import KubeClient
    from vnode.kubeconfig import KubeconfigError, load_kubeconfig
    from vnode.node.identity import problem, who_am_i

    if inputs.kubeconfig is None:
        skip = "no kubeconfig: give `vnode run`'s flags (--kubeconfig ...) or install the service"
        return [Check(name=n, status="skip", detail=skip) for n in ("api server", "client certificate", "clock")]
    try:
        creds = await asyncio.to_thread(load_kubeconfig, inputs.kubeconfig)
    except (KubeconfigError, OSError) as exc:
        return [Check(name="api server", status="fail", detail=f"{inputs.kubeconfig}: {exc}",
                      fix="`vnode join` writes a node kubeconfig; or pass the one you were given")]
    checks = [_client_certificate(creds.client_cert)]
    api = KubeClient(creds, timeout=10)
    try:
        version = await api.get("/version")
        identity = await who_am_i(api)
        server_date = await _server_date(creds)
    except Exception as exc:  # noqa: BLE001 - any failure to reach or be let in is the verdict
        return [Check(name="api server", status="fail", detail=f"{creds.server}: {exc}",
                      fix="check the address and the network; `vnode join` again if the credentials were revoked"), *checks]
    finally:
        await api.close()
    who = problem(identity, node_name=inputs.node_name, kubeconfig=str(inputs.kubeconfig))
    reach = f"{creds.server} {version.get('gitVersion', '?')}, as {identity.username}"
    checks.insert(0, Check(name="api server", status="warn" if who else "ok", detail=reach + (f": {who}" if who else ""),
                           fix="`vnode join` gets the node its own credentials" if who else ""))
    if server_date is None:
        checks.append(Check(name="clock", status="skip", detail="the API server sent no Date header"))
    else:
        status, text = parse.skew_verdict((dt.datetime.now(dt.UTC) - server_date).total_seconds())
        checks.append(Check(name="clock", status=status, detail=text,
                            fix="" if status == "ok" else "turn on network time (System Settings > General > Date & Time)"))
    return checks


async def _server_date(creds) -> dt.datetime | None:
    async with aiohttp.ClientSession() as session, session.get(
            creds.server + "/version", ssl=creds.ssl, proxy=creds.proxy, timeout=aiohttp.ClientTimeout(total=10),
            headers={"Authorization": f"Bearer {creds.token}"} if creds.token else {}) as resp:
        date = resp.headers.get("Date")
    return email.utils.parsedate_to_datetime(date) if date else None


def _certificate(name: str, pem: bytes | None, origin: str, fix: str) -> Check:
    if pem is None:
        return Check(name=name, status="skip", detail=f"none ({origin})")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        return Check(name=name, status="fail", detail=f"unreadable: {exc}", fix=fix)
    status, text = parse.certificate_verdict(cert.not_valid_before_utc, cert.not_valid_after_utc, dt.datetime.now(dt.UTC))
    return Check(name=name, status=status, detail=f"{cert.subject.rfc4514_string()}: {text}", fix="" if status == "ok" else fix)


def _client_certificate(pem: bytes | None) -> Check:
    return _certificate("client certificate", pem, "the kubeconfig authenticates with a token or a plugin",
                        "`vnode run` renews it (--rotate-certificates); an expired one needs `vnode join` again")


async def serving_certificate(inputs: Inputs) -> Check:
    pki = inputs.state_dir / "pki"
    candidates = [inputs.tls_cert_file] if inputs.tls_cert_file else [pki / "serving.crt", pki / "serving-self-signed.crt"]
    for path in candidates:
        if path is not None and path.exists():
            pem = await asyncio.to_thread(path.read_bytes)
            check = _certificate("serving certificate", pem, str(path),
                                 "`vnode run --bootstrap-serving-cert` requests a new one; a cluster admin approves it")
            return check.model_copy(update={"detail": f"{path}: {check.detail}"})
    return Check(name="serving certificate", status="skip", detail="none yet (requested when `vnode run` starts)")


def _port(host_ip: str, port: int) -> tuple[Status, str]:
    """Blocking: called in a thread. In use is fine when it is vnode; free is fine too."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        if s.connect_ex((host_ip, port)) == 0:
            return "ok", f"port {port} answers (vnode's kubelet API, when it runs)"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host_ip, port))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            return "fail", f"port {port} cannot be bound: {'taken' if taken else exc.strerror}"
    return "ok", f"port {port} free"


async def host_ip(inputs: Inputs) -> Check:
    if inputs.host_ip is None:
        return Check(name="host ip", status="skip", detail="no --host-ip given")
    ip = ipaddress.ip_address(inputs.host_ip)
    local = {ipaddress.ip_address(a.address.split("%")[0]) for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family in (socket.AF_INET, socket.AF_INET6)}
    if ip not in local:
        return Check(name="host ip", status="fail", detail=f"{ip} is not an address of this machine",
                     fix="pass the address other machines reach this Mac on (`ipconfig getifaddr en0`)")
    status, text = await asyncio.to_thread(_port, str(ip), inputs.kubelet_port)
    return Check(name="host ip", status=status, detail=f"{ip} is local; {text}",
                 fix="" if status == "ok" else "stop what holds the port or pass --kubelet-port")


async def service(inputs: Inputs) -> Check:
    from vnode.service import command as service_command
    from vnode.service.launchctl import ServiceError, state

    where = service_command.layout(system=inputs.system)
    try:
        job = await state(where)
    except ServiceError:
        return Check(name="service", status="skip", detail="no launchd on this machine")
    if job.loaded and job.state == "running":
        return Check(name="service", status="ok", detail=f"{where.kind} {where.service}: {job.summary()}")
    if not job.installed and not job.loaded:
        return Check(name="service", status="warn", detail=f"no {where.kind} installed: vnode does not start by itself",
                     fix="`vnode service install` with your `vnode run` flags (`vnode join` does it)")
    return Check(name="service", status="fail", detail=f"{where.kind} {where.service}: {job.summary()}",
                 fix=f"read {where.log_dir / 'vnode.log'}; `vnode service install` again loads it")

