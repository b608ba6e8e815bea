"""`vnode doctor`: what vnode sees on this machine, then one pass/fail line per check.

The settings checked are those given as `vnode run` flags, else those of the installed
launchd service (so a plain `vnode doctor` on a Mac checks what actually runs), else the
defaults. The server binary is proven the way a build is before it is cached
(serverbin.smoke_test), so a binary made for another CPU shows here, with its signal named,
and not as a crash-looping pod. Exit 1 when any check fails; `--json` for scripts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from vnode.doctor import checks
from vnode.doctor.checks import Check, Inputs
from vnode.node.budget import allocatable_memory, budget_fraction
from vnode.provider.host import detect_host

GiB = 1024**3
MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


async def run_checks(inputs: Inputs) -> tuple[dict, list[Check]]:
    host = detect_host()
    facts = await host.facts()
    pressure = await host.pressure(disk_path=str(inputs.state_dir) if inputs.state_dir.exists() else ".")
    server, binary = await checks.llama_server(inputs)
    found = [server, await checks.metal(inputs, binary), await checks.memory(inputs, facts), await checks.model_store(inputs),
             *await checks.api_server(inputs), await checks.serving_certificate(inputs), await checks.host_ip(inputs),
             await checks.service(inputs)]
    about = {
        "os": f"{facts.os_image} ({facts.os}/{facts.architecture}, kernel {facts.kernel_version})",
        "chip": facts.chip or "unknown", "cpus": facts.cpu_count,
        "memory": f"{facts.memory_bytes / GiB:.1f} GiB; default budget {budget_fraction(facts.memory_bytes):.0%} -> "
                  f"allocatable {allocatable_memory(facts.memory_bytes) / GiB:.1f} GiB",
        "machine_id": facts.machine_id,
        "pressure": f"memory {pressure.memory_level} ({pressure.memory_detail}); disk {pressure.disk_detail}; "
                    f"pids {pressure.pid_detail}",
    }
    return about, found


def report(about: dict, found: list[Check], *, source: str, as_json: bool, say: Callable[[str], None] = print) -> int:
    failed = any(c.status == "fail" for c in found)
    if as_json:
        say(json.dumps({"settings": source, "machine": about, "checks": [c.model_dump() for c in found], "ok": not failed},
                       indent=2))
        return 1 if failed else 0
    for key, value in about.items():
        say(f"{key + ':':<13} {value}")
    say(f"settings:     {source}")
    for c in found:
        say(f"{MARK[c.status]} {c.name:<20} {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            say(f"     {'':<20} fix: {c.fix}")
    return 1 if failed else 0


def doctor(inputs: Inputs, *, source: str, as_json: bool = False) -> int:
    about, found = asyncio.run(run_checks(inputs))
    return report(about, found, source=source, as_json=as_json)


__all__ = ["Check", "Inputs", "doctor", "report", "run_checks"]
