"""A network namespace standing in for the Mac, so its InternalIP is a real address.

Endpoints and EndpointSlices reject loopback, so the "Mac" of the local cluster lives in
a namespace of its own joined to the root namespace by a veth pair, with a /30 from the
benchmarking range 198.18.0.0/15 (never routed anywhere else). Each cluster gets its own
/30 and names, so several can run side by side.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

RANGE = ipaddress.ip_network("198.18.0.0/16")  # 198.19.0.0/16 is the clusters' service range
LOCK = Path("/run/vnode-netns.lock")


class NetnsUnavailable(RuntimeError):
    """This machine cannot make a network namespace (not Linux, not root, no iproute2)."""


@dataclass(frozen=True)
class HostNetns:
    name: str
    veth_root: str
    veth_ns: str
    root_ip: str  # the root namespace's end: the control plane listens here
    ns_ip: str  # the "Mac"'s InternalIP

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_available() -> None:
    if not Path("/proc/self/ns/net").exists():
        raise NetnsUnavailable(
            "network namespaces need Linux; on a Mac use kind (deploy/kind/up.sh) or a remote cluster (vnode join)"
        )
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "creating the node's network namespace needs root (CAP_NET_ADMIN): run `sudo vnode cluster up`"
        )
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is missing: apt-get install iproute2")


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", netns, "ip"] if netns else ["ip"]) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def _existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def _allocation_lock():
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create(tag: str) -> HostNetns:
    """Create the namespace and veth pair for one cluster's "Mac"; `tag` is short and unique."""
    check_available()
    with _allocation_lock():
        used = _used_networks()
        names = _existing_namespaces()
        subnets = list(RANGE.subnets(new_prefix=30))
        for _ in range(1000):
            subnet = random.choice(subnets)
            if not any(subnet.overlaps(n) for n in used):
                break
        else:
            raise NetnsUnavailable("no free /30 left in 198.18.0.0/15")
        name = f"vnode-{tag}"
        if name in names:
            raise NetnsUnavailable(f"network namespace {name} already exists (a cluster with this tag is up?)")
        hosts = list(subnet.hosts())
        ns = HostNetns(name=name, veth_root=f"vn{tag[:8]}r", veth_ns=f"vn{tag[:8]}m", root_ip=str(hosts[0]), ns_ip=str(hosts[1]))
        try:
            _ip("netns", "add", ns.name)
            _ip("link", "add", ns.veth_root, "type", "veth", "peer", "name", ns.veth_ns)
            _ip("link", "set", ns.veth_ns, "netns", ns.name)
            _ip("addr", "add", f"{ns.root_ip}/30", "dev", ns.veth_root)
            _ip("link", "set", ns.veth_root, "up")
            _ip("addr", "add", f"{ns.ns_ip}/30", "dev", ns.veth_ns, netns=ns.name)
            _ip("link", "set", ns.veth_ns, "up", netns=ns.name)
            _ip("link", "set", "lo", "up", netns=ns.name)
            _ip("route", "add", "default", "via", ns.root_ip, netns=ns.name)
        except NetnsUnavailable:
            destroy(ns)
            raise
    return ns


def destroy(ns: HostNetns) -> None:
    """Remove the namespace (which takes its veth end, and so the pair, with it)."""
    subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)
    subprocess.run(["ip", "link", "delete", ns.veth_root], capture_output=True)
