"""`vnode doctor`: what vnode sees on this machine, and whether its server binary runs here.

The facts are printed as they are; the server binary is proven the way a build is before
it is cached (serverbin.smoke_test: a tiny model, one generated token), so a binary made
for another CPU is reported here, with its signal named, and not as a crash-looping pod.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from vnode.node.budget import allocatable_memory, budget_fraction
from vnode.provider.host import detect_host
from vnode.provider.serverbin import find_llama_server, smoke_test

GiB = 1024**3


async def _facts(llama_server: Path | None) -> int:
    host = detect_host()
    facts = await host.facts()
    pressure = await host.pressure(disk_path=".")
    print(f"os:           {facts.os_image} ({facts.os}/{facts.architecture}, kernel {facts.kernel_version})")
    print(f"chip:         {facts.chip or 'unknown'}; cpu capacity {facts.cpu_count}")
    print(f"memory:       {facts.memory_bytes / GiB:.1f} GiB; default budget {budget_fraction(facts.memory_bytes):.0%}"
          f" -> allocatable {allocatable_memory(facts.memory_bytes) / GiB:.1f} GiB")
    print(f"machine id:   {facts.machine_id}")
    print(f"pressure:     memory {pressure.memory_level} ({pressure.memory_detail}); disk {pressure.disk_detail}; pids {pressure.pid_detail}")
    binary = find_llama_server(llama_server)
    if binary is None:
        where = f"{llama_server} is not a file" if llama_server else "not on PATH and not built (`vnode cluster build`)"
        print(f"llama-server: FAIL {where}")
        print("              fix: install llama.cpp (on a Mac: brew install llama.cpp) or pass --llama-server PATH")
        return 1
    result = await asyncio.to_thread(smoke_test, binary)
    if result.ok:
        print(f"llama-server: ok   {binary}: {result.summary()}")
        return 0
    print(f"llama-server: FAIL {binary}: {result.summary()}")
    for line in result.log_tail.splitlines()[-5:]:
        print(f"              | {line}")
    print("              fix: use a llama-server built for this machine (`vnode cluster build` builds a portable one)")
    return 1


def doctor(llama_server: Path | None = None) -> int:
    return asyncio.run(_facts(llama_server))
