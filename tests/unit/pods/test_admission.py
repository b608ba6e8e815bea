import socket

import pytest

from vnode.pods.admission import AdmissionError, MemoryBudget, PortRegistry

MiB = 1 << 20


def test_budget_refuses_with_numbers_and_releases():
    b = MemoryBudget(1000 * MiB)
    b.reserve(("a", "c"), 600 * MiB, what="container c")
    with pytest.raises(AdmissionError) as exc:
        b.reserve(("b", "c"), 500 * MiB, what="container c (weights 480 MiB)")
    assert exc.value.reason == "InsufficientMemory" and "500 MiB" in exc.value.message and "400 MiB free" in exc.value.message
    b.reserve(("a", "c"), 700 * MiB, what="again")  # re-reserving replaces, not adds
    b.release_pod("a")
    b.reserve(("b", "c"), 900 * MiB, what="c")


def test_port_clash_between_pods_and_with_other_processes():
    ports = PortRegistry("127.0.0.1")
    ports.claim(18080, pod_uid="a", pod_ref="ns/a")
    with pytest.raises(AdmissionError, match="ns/a"):
        ports.claim(18080, pod_uid="b", pod_ref="ns/b")
    ports.release_pod("a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(AdmissionError, match="another process"):
            ports.claim(taken, pod_uid="b", pod_ref="ns/b")
