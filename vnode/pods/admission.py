"""Admission on the node: memory budget and ports, decided before anything is loaded.

The scheduler already checked requests against allocatable; this is the node's own
check with real numbers: the GGUF-based estimate of each server against what the budget
has left, and a port that another pod (or any other process) on this node already holds.
"""

from __future__ import annotations

import socket

MiB = 1024 * 1024


class AdmissionError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


class MemoryBudget:
    """The allocatable memory, shared among admitted containers by their estimates."""

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self._held: dict[tuple[str, str], int] = {}

    @property
    def used(self) -> int:
        return sum(self._held.values())

    def reserve(self, key: tuple[str, str], need: int, *, what: str) -> None:
        """Hold `need` bytes for `key` (pod uid, container), replacing what it held before."""
        others = sum(v for k, v in self._held.items() if k != key)
        free = self.total - others
        if need > free:
            raise AdmissionError(
                "InsufficientMemory",
                f"{what} needs about {_mib(need)} but the node's memory budget has {_mib(free)} free "
                f"({_mib(self.total)} allocatable, {_mib(others)} held by other pods)",
            )
        self._held[key] = need

    def release_pod(self, pod_uid: str) -> None:
        for key in [k for k in self._held if k[0] == pod_uid]:
            del self._held[key]

    def holdings(self) -> dict[tuple[str, str], int]:
        """(pod uid, container) -> the estimate it holds; a copy, for reports."""
        return dict(self._held)


class PortRegistry:
    """Which pod holds which port on the node's address."""

    def __init__(self, host: str, *, allowed: tuple[int, int] = (1024, 65535)) -> None:
        self.host = host
        self.allowed = allowed  # --pod-port-range: the Mac's own services below it stay out of reach
        self._owners: dict[int, tuple[str, str]] = {}  # port -> (pod uid, "ns/name")

    def claim(self, port: int, *, pod_uid: str, pod_ref: str, probe_socket: bool = True) -> None:
        low, high = self.allowed
        if not low <= port <= high:
            raise AdmissionError(
                "PortNotAllowed",
                f"port {port} is outside the ports pods may use on this node ({low}-{high}, --pod-port-range): pods share "
                "the Mac's network, so a pod must not take the port of one of its services; choose a containerPort in the range")
        owner = self._owners.get(port)
        if owner and owner[0] != pod_uid:
            raise AdmissionError("PortConflict", f"port {port} on {self.host} is already used by pod {owner[1]}")
        if owner is None and probe_socket and not _free(self.host, port):
            raise AdmissionError("PortConflict", f"port {port} on {self.host} is already in use by another process on the node")
        self._owners[port] = (pod_uid, pod_ref)

    def release_pod(self, pod_uid: str) -> None:
        for port in [p for p, o in self._owners.items() if o[0] == pod_uid]:
            del self._owners[port]


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
