"""The boot ID in nodeInfo: a new one after every reboot, so a user (and the kubelet's
consumers) can tell a node that restarted from one whose agent did.

macOS has it as `sysctl kern.bootsessionuuid`, Linux as /proc/sys/kernel/random/boot_id.
Read once at start, off the loop; an unreadable one is "" (as before), never an error.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import uuid

from vnode.provider.host import parse_sysctl_output

log = logging.getLogger(__name__)

LINUX_BOOT_ID = "/proc/sys/kernel/random/boot_id"
OID = "kern.bootsessionuuid"


def parse_boot_session(text: str) -> str:
    """`sysctl kern.bootsessionuuid` prints `kern.bootsessionuuid: <UUID>`; the kubelet
    reports boot IDs lowercased, as Linux writes them."""
    value = parse_sysctl_output(text).get(OID, "").strip()
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return ""


async def read_boot_id(system: str | None = None) -> str:
    system = system or platform.system()
    try:
        if system == "Darwin":
            proc = await asyncio.create_subprocess_exec("sysctl", OID, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), 5)
            found = parse_boot_session(out.decode(errors="replace"))
        else:
            text = await asyncio.to_thread(lambda: open(LINUX_BOOT_ID).read())
            found = text.strip()
    except (OSError, TimeoutError) as exc:
        log.warning("reading the boot ID failed: %s", exc)
        return ""
    if not found:
        log.warning("the boot ID could not be read; nodeInfo.bootID stays empty")
    return found
