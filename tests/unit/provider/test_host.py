"""Host facts: parsers on recorded command outputs, MacHost wiring with those outputs
substituted for the commands, and LinuxHost for real on this machine."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from vnode.provider import host as host_mod
from vnode.provider.host import (
    GiB,
    HostCommandError,
    HostFacts,
    LinuxHost,
    MacHost,
    Pressure,
    detect_host,
    disk_pressure,
    existing_parent,
    goarch,
    linux_memory_pressure,
    linux_memory_signal,
    mac_memory_signal,
    parse_cpuinfo_model,
    parse_ioreg_platform_uuid,
    parse_loadavg_tasks,
    parse_meminfo,
    parse_os_release,
    parse_pressure_level,
    parse_psi,
    parse_sw_vers,
    parse_sysctl_output,
    parse_vm_stat,
    pid_pressure,
    vm_available_bytes,
)

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# ------------------------------------------------------------------ macOS parsers


def test_parse_sysctl_facts() -> None:
    values = parse_sysctl_output(sample("macos_sysctl_facts.txt"))
    assert values["hw.memsize"] == "68719476736"
    assert values["hw.perflevel0.physicalcpu"] == "8"
    assert values["hw.physicalcpu"] == "12"
    assert values["machdep.cpu.brand_string"] == "Apple M2 Max"
    assert values["kern.osrelease"] == "24.1.0"


def test_parse_sysctl_keeps_colons_in_values_and_skips_blank_lines() -> None:
    text = "kern.version: Darwin Kernel Version 24.1.0: Thu Oct 10\n\nnot a sysctl line\n"
    values = parse_sysctl_output(text)
    assert values == {"kern.version": "Darwin Kernel Version 24.1.0: Thu Oct 10"}


@pytest.mark.parametrize(
    ("raw", "level"), [("1\n", "normal"), ("2", "warn"), (" 4 \n", "critical")]
)
def test_parse_pressure_level(raw: str, level: str) -> None:
    assert parse_pressure_level(raw) == level


def test_parse_pressure_level_recorded_sample() -> None:
    assert parse_pressure_level(sample("macos_sysctl_n_pressure_level_warn.txt")) == "warn"
    values = parse_sysctl_output(sample("macos_sysctl_pressure.txt"))
    assert parse_pressure_level(values["kern.memorystatus_vm_pressure_level"]) == "normal"


@pytest.mark.parametrize("raw", ["", "3", "normal", "0"])
def test_parse_pressure_level_rejects_unknown(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_pressure_level(raw)


def test_parse_ioreg_platform_uuid() -> None:
    text = sample("macos_ioreg_platform.txt")
    assert parse_ioreg_platform_uuid(text) == "3F2A7C1E-8B4D-5E6F-9A0B-1C2D3E4F5A6B"


def test_parse_ioreg_platform_uuid_missing() -> None:
    with pytest.raises(ValueError, match="IOPlatformUUID"):
        parse_ioreg_platform_uuid(
            '+-o Root  <class IORegistryEntry>\n  {\n    "IOKitBuildVersion" = "x"\n  }\n'
        )


def test_parse_sw_vers() -> None:
    assert parse_sw_vers(sample("macos_sw_vers.txt")) == "macOS 15.1 (24B83)"
    # Older releases use a single tab and lack nothing else.
    single_tab = "ProductName:\tmacOS\nProductVersion:\t14.6.1\nBuildVersion:\t23G93\n"
    assert parse_sw_vers(single_tab) == "macOS 14.6.1 (23G93)"
    with pytest.raises(ValueError):
        parse_sw_vers("")


def test_parse_vm_stat() -> None:
    vm = parse_vm_stat(sample("macos_vm_stat.txt"))
    assert vm.page_size == 16384
    assert vm.pages["Pages free"] == 187424
    assert vm.pages["Pages inactive"] == 1589377
    assert vm.pages["Translation faults"] == 2183947612
    assert vm.pages["Pages occupied by compressor"] == 121907
    assert vm_available_bytes(vm) == (187424 + 42118 + 1589377 + 8342) * 16384
    # Sanity: the page counts of the recorded M2 Max add up to (nearly) its 64 GiB.
    counted = sum(
        vm.pages[k]
        for k in ("Pages free", "Pages active", "Pages inactive", "Pages speculative",
                  "Pages wired down", "Pages occupied by compressor")
    )
    assert 0.98 < counted * vm.page_size / (64 * GiB) <= 1.0


def test_mac_memory_signal_from_recorded_outputs() -> None:
    """memory.available = free + speculative + inactive + purgeable pages; the kernel's
    pressure level rides along in the detail."""
    signal = mac_memory_signal(vm_stat=sample("macos_vm_stat.txt"), pressure_level=sample("macos_sysctl_n_pressure_level_warn.txt"),
                               capacity=64 * GiB)
    assert signal.available_bytes == (187424 + 42118 + 1589377 + 8342) * 16384
    assert signal.capacity_bytes == 64 * GiB
    assert signal.detail == "macOS memory pressure level warn"
    assert mac_memory_signal(vm_stat=sample("macos_vm_stat.txt"), pressure_level=None, capacity=GiB).detail.endswith("unknown")
    with pytest.raises(ValueError):
        mac_memory_signal(vm_stat="", pressure_level="1", capacity=GiB)


def test_parse_vm_stat_needs_header() -> None:
    with pytest.raises(ValueError):
        parse_vm_stat("Pages free: 12.\n")


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("AMD64", "amd64"),
        ("riscv64", "riscv64"),
    ],
)
def test_goarch(machine: str, arch: str) -> None:
    assert goarch(machine) == arch


# ------------------------------------------------------------------ Linux parsers


def test_parse_meminfo_recorded() -> None:
    values = parse_meminfo(sample("linux_proc_meminfo.txt"))
    assert values["MemTotal"] == 24683584 * 1024
    assert values["MemAvailable"] == 23811732 * 1024
    assert values["HugePages_Total"] == 0  # no unit: a count, kept as is
    assert parse_meminfo("garbage\nMemFree: lots kB\n") == {}


def test_linux_memory_signal_recorded() -> None:
    """MemAvailable and MemTotal from /proc/meminfo; PSI "some avg10" as extra detail."""
    signal = linux_memory_signal(meminfo=sample("linux_proc_meminfo.txt"), psi=sample("linux_proc_pressure_memory.txt"))
    assert signal.available_bytes == 23811732 * 1024
    assert signal.capacity_bytes == 24683584 * 1024
    assert signal.detail == "PSI some avg10=23.41%"
    assert linux_memory_signal(meminfo=sample("linux_proc_meminfo.txt"), psi=None).detail == "PSI unavailable"
    with pytest.raises(ValueError):
        linux_memory_signal(meminfo="MemFree: 1 kB\n", psi=None)


def test_parse_psi() -> None:
    psi = parse_psi(sample("linux_proc_pressure_memory.txt"))
    assert psi["some"]["avg10"] == 23.41
    assert psi["full"] == {"avg10": 14.86, "avg60": 7.52, "avg300": 1.94, "total": 29384512.0}
    assert parse_psi("") == {}


def test_parse_os_release() -> None:
    assert parse_os_release(sample("linux_os_release.txt")) == "Debian GNU/Linux 12 (bookworm)"
    assert parse_os_release('NAME="Alpine Linux"\nVERSION=3.20\n') == "Alpine Linux 3.20"
    assert parse_os_release("") == "Linux"


def test_parse_cpuinfo_model() -> None:
    assert parse_cpuinfo_model(sample("linux_cpuinfo.txt")) == "Intel(R) Xeon(R) Platinum 8488C"
    assert parse_cpuinfo_model(sample("linux_cpuinfo_arm64.txt")) is None


def test_parse_loadavg_tasks() -> None:
    assert parse_loadavg_tasks(sample("linux_loadavg.txt")) == 1187
    with pytest.raises(ValueError):
        parse_loadavg_tasks("0.1 0.2")


# ------------------------------------------------------------------ evaluation


def test_linux_memory_pressure_levels() -> None:
    total = 16 * GiB
    assert linux_memory_pressure(available=8 * GiB, total=total, full_avg10=0.0)[0] == "normal"
    assert linux_memory_pressure(available=8 * GiB, total=total, full_avg10=14.86)[0] == "warn"
    assert linux_memory_pressure(available=8 * GiB, total=total, full_avg10=55.0)[0] == "critical"
    four_percent = int(0.04 * total)
    assert linux_memory_pressure(available=four_percent, total=total, full_avg10=None)[0] == "warn"
    level, detail = linux_memory_pressure(available=int(0.01 * total), total=total, full_avg10=None)
    assert level == "critical"
    assert "PSI unavailable" in detail and "16.0 GiB" in detail


def test_disk_pressure_thresholds() -> None:
    assert disk_pressure(free=50 * GiB, total=100 * GiB, path="/m")[0] is False
    assert disk_pressure(free=9 * GiB, total=100 * GiB, path="/m")[0] is True  # < 10 %
    assert disk_pressure(free=4 * GiB, total=20 * GiB, path="/m")[0] is True  # < 5 GiB
    assert disk_pressure(free=4 * GiB, total=20 * GiB, path="/m", min_free_bytes=GiB)[0] is False
    low, detail = disk_pressure(free=9 * GiB, total=100 * GiB, path="/models")
    assert "/models" in detail and "9.0 GiB" in detail


def test_pid_pressure() -> None:
    assert pid_pressure(used=900, limit=1000) == (False, "process count ok: 900 of 1000 (90%)")
    assert pid_pressure(used=901, limit=1000)[0] is True
    assert pid_pressure(used=10, limit=0)[0] is False


def test_existing_parent(tmp_path: Path) -> None:
    missing = tmp_path / "store" / "models" / "x"
    assert existing_parent(str(missing)) == str(tmp_path)
    assert not (tmp_path / "store").exists()
    assert existing_parent(str(tmp_path)) == str(tmp_path)


# ------------------------------------------------------------------ MacHost wiring


@pytest.fixture
def fake_mac_commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    async def fake_run(*argv: str, timeout: float = 5.0) -> tuple[int, str]:
        calls.append(argv)
        if argv[0] == "sysctl" and "hw.memsize" in argv:
            return 0, sample("macos_sysctl_facts.txt")
        if argv[0] == "sysctl":
            return 0, sample("macos_sysctl_pressure.txt")
        outputs = {
            "sw_vers": "macos_sw_vers.txt",
            "ioreg": "macos_ioreg_platform.txt",
            "vm_stat": "macos_vm_stat.txt",
        }
        return 0, sample(outputs[argv[0]])

    monkeypatch.setattr(host_mod, "_run", fake_run)
    return calls


Calls = list[tuple[str, ...]]


async def test_mac_host_facts_from_recorded_outputs(fake_mac_commands: Calls) -> None:
    host = MacHost()
    facts, again = await asyncio.gather(host.facts(), host.facts())
    assert facts == HostFacts(
        os="darwin",
        architecture="arm64",
        kernel_version="24.1.0",
        os_image="macOS 15.1 (24B83)",
        hostname=facts.hostname,
        machine_id="3F2A7C1E-8B4D-5E6F-9A0B-1C2D3E4F5A6B",
        cpu_count=8,
        memory_bytes=68719476736,
        chip="Apple M2 Max",
    )
    assert again is facts
    await host.facts()
    assert len(fake_mac_commands) == 3  # cached: one sysctl, sw_vers, ioreg


async def test_mac_host_pressure_and_available(fake_mac_commands: Calls, tmp_path: Path) -> None:
    host = MacHost()
    pressure = await host.pressure(disk_path=str(tmp_path / "not-yet"))
    assert pressure.memory is False and pressure.memory_level == "normal"
    assert "38% free" in pressure.memory_detail
    assert "of 8000" in pressure.pid_detail
    assert await host.available_memory() == (187424 + 42118 + 1589377 + 8342) * 16384


async def test_mac_host_memory_signal(fake_mac_commands: Calls) -> None:
    signal = await MacHost().memory_signal()
    assert signal.available_bytes == (187424 + 42118 + 1589377 + 8342) * 16384
    assert signal.capacity_bytes == 68719476736  # hw.memsize, from the (cached) facts
    assert signal.detail == "macOS memory pressure level normal"
    assert ("vm_stat",) in fake_mac_commands


async def test_mac_host_falls_back_to_physicalcpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # An Intel Mac: no hw.perflevel0.* (sysctl exits 1 but prints the oids it knows).
    intel = (
        "hw.memsize: 17179869184\nhw.physicalcpu: 6\n"
        "machdep.cpu.brand_string: Intel(R) Core(TM) i7-8700B\n"
    )

    async def fake_run(*argv: str, timeout: float = 5.0) -> tuple[int, str]:
        outputs = {
            "sysctl": intel,
            "sw_vers": sample("macos_sw_vers.txt"),
            "ioreg": sample("macos_ioreg_platform.txt"),
        }
        return (1 if argv[0] == "sysctl" else 0), outputs[argv[0]]

    monkeypatch.setattr(host_mod, "_run", fake_run)
    facts = await MacHost().facts()
    assert facts.cpu_count == 6
    assert facts.memory_bytes == 16 * GiB


async def test_run_reports_missing_command_and_timeout() -> None:
    with pytest.raises(HostCommandError, match="cannot run"):
        await host_mod._run("/nonexistent/vnode-no-such-binary")
    with pytest.raises(HostCommandError, match="timed out"):
        await host_mod._run("sleep", "5", timeout=0.1)
    assert await host_mod._run("sh", "-c", "echo hi; exit 3") == (3, "hi\n")


# ------------------------------------------------------------------ LinuxHost, for real


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_linux_host_facts_on_this_machine() -> None:
    host = LinuxHost()
    facts = await host.facts()
    assert facts.os == "linux"
    assert facts.architecture in {"amd64", "arm64"}
    assert facts.kernel_version == os.uname().release
    assert facts.hostname and facts.os_image and facts.machine_id
    assert facts.cpu_count >= 1
    assert facts.memory_bytes > 256 * 1024**2
    assert await host.facts() is facts
    available = await host.available_memory()
    assert 0 < available <= facts.memory_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_linux_host_memory_signal_on_this_machine() -> None:
    signal = await LinuxHost().memory_signal()
    assert 0 < signal.available_bytes <= signal.capacity_bytes == (await LinuxHost().facts()).memory_bytes
    assert signal.detail.startswith("PSI")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_linux_host_pressure_on_this_machine(tmp_path: Path) -> None:
    pressure = await LinuxHost().pressure(disk_path=str(tmp_path / "models" / "missing"))
    assert isinstance(pressure, Pressure)
    assert pressure.memory_level in {"normal", "warn", "critical"}
    assert pressure.memory == (pressure.memory_level != "normal")
    assert "GiB" in pressure.memory_detail and "GiB" in pressure.disk_detail
    assert pressure.pid_detail.startswith("process count")
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_linux_disk_thresholds_are_configurable(tmp_path: Path) -> None:
    pressure = await LinuxHost(min_free_fraction=1.01).pressure(disk_path=str(tmp_path))
    assert pressure.disk is True


def test_detect_host() -> None:
    expected = MacHost if sys.platform == "darwin" else LinuxHost
    assert isinstance(detect_host(), expected)


def test_models_are_frozen() -> None:
    p = Pressure(
        memory=False,
        memory_level="normal",
        memory_detail="",
        disk=False,
        disk_detail="",
        pid=False,
        pid_detail="",
    )
    with pytest.raises(Exception):
        p.memory = True  # type: ignore[misc]
