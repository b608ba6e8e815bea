"""The Node's shape from host facts: pure data in, dicts out."""

import datetime as dt

from vnode.node.registration import label_patch, owner_machine_id
from vnode.node.status import (
    ACCELERATOR_LABEL, MACHINE_ID_ANNOTATION, NodeIdentity, label_value, new_node, node_status, status_fingerprint,
)
from vnode.provider.host import HostFacts, Pressure

GiB = 1024**3
FACTS = HostFacts(
    os="darwin", architecture="arm64", kernel_version="24.1.0", os_image="macOS 15.1 (24B83)", hostname="studio",
    machine_id="6A1C0D2E-0000-4000-8000-123456789ABC", cpu_count=12, memory_bytes=64 * GiB, chip="Apple M2 Max",
)
CALM = Pressure(memory=False, memory_level="normal", memory_detail="62% free", disk=False, disk_detail="400 GiB free",
                pid=False, pid_detail="612 of 8000 processes")
IDENT = NodeIdentity(name="studio", host_ip="198.18.0.2", kubelet_port=10250, max_pods=110, register_taint=True,
                     memory_fraction=None)
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.timezone.utc)


def test_new_node_has_label_taint_and_machine_id():
    node = new_node(IDENT, FACTS)
    labels = node["metadata"]["labels"]
    assert labels[ACCELERATOR_LABEL] == "metal"
    assert labels["kubernetes.io/arch"] == "arm64" and labels["kubernetes.io/os"] == "darwin"
    assert labels["llmkube.dev/chip"] == "Apple-M2-Max"
    assert node["spec"]["taints"] == [{"key": ACCELERATOR_LABEL, "value": "metal", "effect": "NoSchedule"}]
    assert node["metadata"]["annotations"][MACHINE_ID_ANNOTATION] == FACTS.machine_id


def test_taint_can_be_turned_off():
    ident = NodeIdentity(**{**IDENT.__dict__, "register_taint": False})
    assert new_node(ident, FACTS)["spec"]["taints"] == []


def test_capacity_is_unified_memory_and_allocatable_the_budget():
    status = node_status(IDENT, FACTS, CALM, previous_conditions=None, not_ready=[], now=NOW)
    assert status["capacity"] == {"cpu": "12", "memory": f"{64 * 1024 * 1024}Ki", "pods": "110"}
    assert status["allocatable"]["memory"] == f"{int(64 * GiB * 0.75) // 1024}Ki"
    assert status["nodeInfo"]["operatingSystem"] == "darwin" and status["nodeInfo"]["kubeletVersion"].endswith("-vnode")
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert {"type": "InternalIP", "address": "198.18.0.2"} in status["addresses"]


def test_memory_fraction_override():
    ident = NodeIdentity(**{**IDENT.__dict__, "memory_fraction": 0.5})
    status = node_status(ident, FACTS, CALM, previous_conditions=None, not_ready=[], now=NOW)
    assert status["allocatable"]["memory"] == f"{32 * 1024 * 1024}Ki"


def test_conditions_and_transition_times():
    first = node_status(IDENT, FACTS, CALM, previous_conditions=None, not_ready=[], now=NOW)
    by_type = {c["type"]: c for c in first["conditions"]}
    assert by_type["Ready"]["status"] == "True" and by_type["MemoryPressure"]["status"] == "False"
    later = NOW + dt.timedelta(seconds=30)
    pressed = Pressure(**{**CALM.model_dump(), "memory": True, "memory_level": "critical", "memory_detail": "3% free"})
    second = node_status(IDENT, FACTS, pressed, previous_conditions=first["conditions"], not_ready=[], now=later)
    by_type2 = {c["type"]: c for c in second["conditions"]}
    assert by_type2["MemoryPressure"]["status"] == "True"
    assert by_type2["MemoryPressure"]["lastTransitionTime"] == "2026-11-25T12:00:30Z"
    assert by_type2["Ready"]["lastTransitionTime"] == "2026-11-25T12:00:00Z"
    assert by_type2["Ready"]["lastHeartbeatTime"] == "2026-11-25T12:00:30Z"
    assert status_fingerprint(first) != status_fingerprint(second)


def test_heartbeat_alone_does_not_change_the_fingerprint():
    a = node_status(IDENT, FACTS, CALM, previous_conditions=None, not_ready=[], now=NOW)
    b = node_status(IDENT, FACTS, CALM, previous_conditions=a["conditions"], not_ready=[], now=NOW + dt.timedelta(minutes=1))
    assert status_fingerprint(a) == status_fingerprint(b)


def test_not_ready_and_unknown_pressure():
    status = node_status(IDENT, FACTS, None, previous_conditions=None, not_ready=["llama-server missing"], now=NOW,
                         pressure_error="sysctl timed out")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["status"] == "False" and "llama-server missing" in by_type["Ready"]["message"]
    assert by_type["DiskPressure"]["status"] == "Unknown" and "sysctl timed out" in by_type["DiskPressure"]["message"]


def test_label_value_squeezes_free_text():
    assert label_value("Apple M3 Ultra (32-core)") == "Apple-M3-Ultra--32-core"
    assert len(label_value("x" * 100)) == 63


def test_owner_and_label_patch():
    node = {"metadata": {"labels": {"a": "1", "keep": "x"}, "annotations": {MACHINE_ID_ANNOTATION: "m1"}}}
    assert owner_machine_id(node) == "m1"
    assert owner_machine_id({"metadata": {}, "status": {"nodeInfo": {"machineID": "m2"}}}) == "m2"
    assert owner_machine_id({"metadata": {}}) is None
    assert label_patch(node, {"a": "1", "b": "2"}) == {"b": "2"}


def test_eviction_manager_decides_memory_pressure():
    """When the eviction manager runs, its verdict is the MemoryPressure condition, whatever
    the host's own pressure level says (and even when the host cannot be read)."""
    from vnode.node.status import MemoryCondition

    pressed = Pressure(**{**CALM.model_dump(), "memory": True, "memory_level": "critical", "memory_detail": "3% free"})
    calm = node_status(IDENT, FACTS, pressed, previous_conditions=None, not_ready=[], now=NOW, memory=MemoryCondition(pressure=False))
    mem = {c["type"]: c for c in calm["conditions"]}["MemoryPressure"]
    assert (mem["status"], mem["reason"], mem["message"]) == ("False", "KubeletHasSufficientMemory", "vnode has sufficient memory available")
    low = MemoryCondition(pressure=True, detail="memory.available 80Mi is below the hard threshold 100Mi")
    for host in (CALM, None):
        status = node_status(IDENT, FACTS, host, previous_conditions=None, not_ready=[], now=NOW, memory=low)
        mem = {c["type"]: c for c in status["conditions"]}["MemoryPressure"]
        assert (mem["status"], mem["reason"]) == ("True", "KubeletHasInsufficientMemory")
        assert mem["message"] == "vnode has insufficient memory available: memory.available 80Mi is below the hard threshold 100Mi"
    assert {c["type"]: c for c in status["conditions"]}["DiskPressure"]["status"] == "Unknown"
