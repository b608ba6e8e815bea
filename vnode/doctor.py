"""`vnode doctor`: what vnode sees on this machine, before it joins any cluster."""

from __future__ import annotations

import asyncio
import shutil

from vnode.node.budget import allocatable_memory, budget_fraction
from vnode.provider.host import detect_host

GiB = 1024**3


async def _facts() -> int:
    host = detect_host()
    facts = await host.facts()
    pressure = await host.pressure(disk_path=".")
    print(f"os:           {facts.os_image} ({facts.os}/{facts.architecture}, kernel {facts.kernel_version})")
    print(f"chip:         {facts.chip or 'unknown'}; cpu capacity {facts.cpu_count}")
    print(f"memory:       {facts.memory_bytes / GiB:.1f} GiB; default budget {budget_fraction(facts.memory_bytes):.0%}"
          f" -> allocatable {allocatable_memory(facts.memory_bytes) / GiB:.1f} GiB")
    print(f"machine id:   {facts.machine_id}")
    print(f"pressure:     memory {pressure.memory_level} ({pressure.memory_detail}); disk {pressure.disk_detail}; pids {pressure.pid_detail}")
    print(f"llama-server: {shutil.which('llama-server') or 'not on PATH'}")
    return 0


def doctor() -> int:
    return asyncio.run(_facts())
