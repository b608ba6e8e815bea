"""The agent's status file: what only the running agent knows, for `vnode status` to read.

Memory estimates, the budget and running downloads live in the agent's memory; the API
server has no place for them (NodeRestriction lets a node write pod status, not pod
metadata). The agent writes them to `<state-dir>/agent-status.json` when they change (at most
every few seconds), replaced whole, so a reader never sees half a file; a reader that finds
the writing pid gone knows the file is from an agent that stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)
NAME = "agent-status.json"
INTERVAL_SECONDS = 5.0


class Holding(BaseModel):
    pod_uid: str
    container: str
    bytes: int


class Download(BaseModel):
    model: str
    done: int
    total: int  # 0: not known yet


class AgentStatus(BaseModel):
    pid: int
    version: str
    node_name: str
    written_at: float = 0.0
    budget_total: int
    budget_used: int
    holdings: list[Holding] = Field(default_factory=list)
    downloads: list[Download] = Field(default_factory=list)


def path(state_dir: Path) -> Path:
    return state_dir / NAME


def read(state_dir: Path) -> AgentStatus | None:
    """Blocking. None when there is no file or it is unreadable (an agent older than it)."""
    try:
        return AgentStatus.model_validate_json(path(state_dir).read_bytes())
    except (OSError, ValueError):
        return None


def _write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


async def keep_written(state_dir: Path, current: Callable[[], AgentStatus], *, interval: float = INTERVAL_SECONDS) -> None:
    """Write `current()` whenever it differs from what was written last; until cancelled."""
    last: AgentStatus | None = None
    target = path(state_dir)
    while True:
        now = current()
        if now != last:
            try:
                await asyncio.to_thread(_write, target, now.model_copy(update={"written_at": time.time()}).model_dump_json().encode())
                last = now
            except OSError as exc:
                log.warning("cannot write %s: %s", target, exc)
        await asyncio.sleep(interval)
