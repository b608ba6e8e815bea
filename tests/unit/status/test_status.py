"""`vnode status` from plain data: the agent's status file, container state files, the model
store's index and pod objects as the API server returns them."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from vnode.status import command, file

MiB = 1024**2


def _pod(uid: str, name: str, *, phase="Running", ready="True", restarts=0, waiting=None) -> dict:
    state = {"waiting": waiting} if waiting else {"running": {}}
    return {"metadata": {"namespace": "ml", "name": name, "uid": uid},
            "spec": {"containers": [{"name": "server"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}],
                       "containerStatuses": [{"name": "server", "restartCount": restarts, "state": state}]}}


def _agent(**changes) -> file.AgentStatus:
    base = dict(pid=os.getpid(), version="0.1", node_name="studio", budget_total=8192 * MiB, budget_used=360 * MiB,
                holdings=[file.Holding(pod_uid="u1", container="server", bytes=360 * MiB)],
                downloads=[file.Download(model="ggml-org/big:Q4_K_M", done=100 * MiB, total=400 * MiB)])
    return file.AgentStatus(**{**base, **changes})


def test_bar():
    assert command.bar(100 * MiB, 400 * MiB) == "[#####...............]  25%  100/400 MiB"
    assert command.bar(5 * MiB, 0).endswith("5 MiB")
    assert command.bar(500, 100).startswith("[####################] 100%")


def test_pod_rows_join_ports_and_estimates():
    pods = [_pod("u2", "b", phase="Pending", ready="False",
                 waiting={"reason": "PullingModel", "message": "downloading ggml-org/big: 25% (100 MiB of 400 MiB)"}),
            _pod("u1", "a", restarts=2)]
    rows = command._pod_rows(pods, {"u1": {"server": {"port": 8080, "instance": 2}}}, _agent())
    assert [(r["pod"], r["port"], r["memory_estimate"], r["restarts"], r["ready"]) for r in rows] == [
        ("a", 8080, 360 * MiB, 2, True), ("b", None, None, 0, False)]
    assert command._note(rows[1]).startswith("PullingModel [##") and rows[1]["message"].startswith("downloading")


async def test_gather_and_render_without_a_cluster(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "index.json").write_text(json.dumps({
        "models": {"hf|ggml-org/gemma|main|quant:Q4_K_M": {"kind": "hf", "repo": "ggml-org/gemma", "file": "g.gguf",
                                                            "paths": ["hf/g.gguf"]}},
        "files": {"hf/g.gguf": {"sha256": "x", "size": 253 * MiB}}}))
    (tmp_path / file.NAME).write_text(_agent().model_dump_json())
    view = await command.gather(kubeconfig=None, node_name="studio", state_dir=tmp_path)
    assert view["agent"]["running"] and view["budget"] == {"total": 8192 * MiB, "used": 360 * MiB, "free": 7832 * MiB}
    assert view["store"]["models"] == [{"model": "ggml-org/gemma/g.gguf", "bytes": 253 * MiB}]
    lines: list[str] = []
    command.render(view, lines.append)
    text = "\n".join(lines)
    assert "memory budget: 360 MiB used, 7,832 MiB free of 8,192 MiB" in text
    assert "downloading ggml-org/big:Q4_K_M: [#####" in text
    assert "253 MiB  ggml-org/gemma/g.gguf" in text
    assert "(not from the API server: no kubeconfig given)" in text


async def test_a_stopped_agent_s_file_is_not_taken_for_the_present(tmp_path: Path):
    (tmp_path / file.NAME).write_text(_agent(pid=2**22 + 12345).model_dump_json())
    view = await command.gather(kubeconfig=None, node_name="studio", state_dir=tmp_path)
    assert not view["agent"]["running"] and view["downloads"] == []


async def test_the_agent_writes_only_on_change(tmp_path: Path, monkeypatch):
    states = [_agent(), _agent(), _agent(budget_used=0)]
    writes: list[bytes] = []
    monkeypatch.setattr(file, "_write", lambda target, data: writes.append(data))
    task = asyncio.create_task(file.keep_written(tmp_path, lambda: states.pop(0) if len(states) > 1 else states[0],
                                                 interval=0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    assert len(writes) == 2, writes
    assert file.AgentStatus.model_validate_json(writes[-1]).budget_used == 0
