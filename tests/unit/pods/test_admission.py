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


@pytest.mark.parametrize("port", [22, 80, 443, 1023])
def test_ports_below_the_range_are_refused_with_the_flag_named(port):
    ports = PortRegistry("127.0.0.1")
    with pytest.raises(AdmissionError) as err:
        ports.claim(port, pod_uid="u", pod_ref="ml/a", probe_socket=False)
    assert err.value.reason == "PortNotAllowed"
    assert f"port {port} is outside" in err.value.message and "--pod-port-range" in err.value.message


def test_the_range_is_configurable():
    ports = PortRegistry("127.0.0.1", allowed=(8000, 8999))
    ports.claim(8000, pod_uid="u", pod_ref="ml/a", probe_socket=False)
    with pytest.raises(AdmissionError, match=r"\(8000-8999"):
        ports.claim(9000, pod_uid="v", pod_ref="ml/b", probe_socket=False)


@pytest.mark.parametrize(("text", "ok"), [("1024-65535", True), ("80-80", True), ("0-100", False), ("9000-8000", False),
                                          ("1024", False), ("a-b", False), ("1-70000", False)])
def test_port_range_setting(text, ok):
    from vnode.config import SettingsError, load_settings

    base = {"kubeconfig": "/k", "host_ip": "192.0.2.10", "pod_port_range": text}
    if ok:
        assert load_settings(base).pod_ports == tuple(int(x) for x in text.split("-"))
    else:
        with pytest.raises(SettingsError, match="--pod-port-range"):
            load_settings(base)
