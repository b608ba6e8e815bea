"""What a started instance records survives an agent restart (the stats endpoints' image,
sandbox and hostPath volumes; the process group); a state file written before those fields
existed is still adopted. A server whose shim died is still found and stopped."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vnode.provider.spec import LaunchSpec
from vnode.provider.supervisor import Supervisor


async def test_instance_records_image_sandbox_and_volumes(tmp_path):
    sup = Supervisor(tmp_path / "state")
    sandbox = sup.sandbox("uid-1")
    spec = LaunchSpec(namespace="ns", pod_name="p", pod_uid="uid-1", container="server", image="ghcr.io/ggml-org/llama.cpp:server",
                      binary=shutil.which("sleep"), args=["30"], env={}, workdir=str(sandbox), host="127.0.0.1", port=8080,
                      host_volumes={"models": str(tmp_path / "store")})
    inst = await sup.start(spec, model_path=None, instance=0)
    try:
        assert (inst.image, inst.sandbox, inst.volumes) == (spec.image, str(sandbox), {"models": str(tmp_path / "store")})
        (adopted,) = Supervisor(tmp_path / "state").adopt()
        assert adopted == inst
    finally:
        await sup.stop(inst, grace=2)
    # An older agent's state file, without the new fields: still adopted, the fields empty.
    state = sup.container_dir("uid-1", "server") / "state.json"
    old = json.loads(state.read_text())
    for key in ("image", "sandbox", "volumes"):
        old.pop(key)
    state.write_text(json.dumps(old))
    (adopted,) = sup.adopt()
    assert (adopted.image, adopted.sandbox, adopted.volumes) == ("", "", {})


# -- a server whose shim died ------------------------------------------------------------
# The shim is vnode's conmon: kill -9 of it leaves the server running, reparented, in the
# shim's process group. It must still be found (pid file, recorded group) and stopped, and
# nothing that merely reuses a recorded number may ever be signalled.

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"


def _spec(tmp_path, *, uid="uid-9", binary=None, args=("300",)):
    sup_sandbox = tmp_path / "state" / "pods" / uid / "sandbox"
    return LaunchSpec(namespace="ns", pod_name="p", pod_uid=uid, container="server", binary=binary or shutil.which("sleep"),
                      args=list(args), env={}, workdir=str(sup_sandbox), host="127.0.0.1", port=8080)


_started: list[psutil.Process] = []


@pytest.fixture(autouse=True)
def _no_server_survives_a_test():
    """Servers these tests start are killed by pid afterwards, also when a test failed (the
    failure may be that one was orphaned)."""
    yield
    while _started:
        proc = _started.pop()
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


async def _server_of(inst):
    for _ in range(100):
        pid = inst.server_pid()
        if pid is not None:
            proc = psutil.Process(pid)
            _started.append(proc)
            return proc
        await asyncio.sleep(0.05)
    raise AssertionError("the shim never recorded its server")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


async def _kill_shim(sup, inst):
    os.kill(inst.shim_pid, signal.SIGKILL)
    await asyncio.wait_for(sup.wait(inst), 5)


async def test_the_shim_records_the_servers_process_group(tmp_path):
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    try:
        server = await _server_of(inst)
        recorded = json.loads(Path(inst.pid_path).read_text())
        assert recorded == {"pid": server.pid, "pgid": inst.shim_pid}
        assert inst.group == inst.pgid == inst.shim_pid == os.getpgid(server.pid)
        state = json.loads((sup.container_dir("uid-9", "server") / "state.json").read_text())
        assert state["pgid"] == inst.shim_pid and state["binary"] == shutil.which("sleep")
    finally:
        await sup.stop(inst, grace=2)


async def test_a_server_whose_shim_was_killed_is_stopped_through_its_group(tmp_path):
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    server = await _server_of(inst)
    await _kill_shim(sup, inst)
    assert _running(server), "kill -9 of the shim leaves its server running"
    assert not sup.shim_alive(inst) and sup.alive(inst) and sup.orphaned(inst)
    exit_info = await asyncio.wait_for(sup.stop(inst, grace=5), 10)
    assert not _running(server), "the server must not outlive stop()"
    assert not sup.alive(inst) and not sup.orphaned(inst)
    assert exit_info.reason == "ContainerStatusUnknown" and "shim" in exit_info.message


async def test_a_restarted_agent_finds_a_server_without_its_shim(tmp_path):
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    server = await _server_of(inst)
    await _kill_shim(sup, inst)
    (adopted,) = Supervisor(tmp_path / "state").adopt()  # the next agent: only the state files
    again = Supervisor(tmp_path / "state")
    assert again.orphaned(adopted) and again.alive(adopted)
    await asyncio.wait_for(again.stop(adopted, grace=5), 10)
    assert not _running(server)


async def test_a_new_instance_never_runs_beside_the_leftover_of_the_last(tmp_path):
    sup = Supervisor(tmp_path / "state")
    first = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    old = await _server_of(first)
    await _kill_shim(sup, first)
    second = await sup.start(_spec(tmp_path), model_path=None, instance=1)
    try:
        assert not _running(old), "the previous instance's server is killed before the next starts"
        assert _running(await _server_of(second))
    finally:
        await sup.stop(second, grace=2)


async def test_removing_a_pod_kills_what_still_runs_of_it(tmp_path):
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    server = await _server_of(inst)
    await _kill_shim(sup, inst)
    await asyncio.wait_for(sup.remove_pod("uid-9"), 10)
    assert not _running(server) and not sup.pod_dir("uid-9").exists()


async def test_a_server_that_ignores_sigterm_is_killed_and_its_shim_records_it(tmp_path):
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path, binary=sys.executable, args=["-c", IGNORE_TERM]), model_path=None, instance=0)
    server = await _server_of(inst)
    await asyncio.sleep(0.5)  # the handler is installed
    started = time.monotonic()
    exit_info = await asyncio.wait_for(sup.stop(inst, grace=1), 10)
    assert time.monotonic() - started < 5 and not _running(server)
    assert (exit_info.exit_code, exit_info.signal, exit_info.reason) == (137, signal.SIGKILL, "Error")
    assert json.loads(Path(inst.exit_path).read_text())["signal"] == signal.SIGKILL, "the shim lived to record the kill"


async def test_a_stopped_server_is_killed(tmp_path):
    """A hung server (SIGSTOP): SIGTERM stays pending, SIGKILL after the grace period ends it."""
    sup = Supervisor(tmp_path / "state")
    inst = await sup.start(_spec(tmp_path), model_path=None, instance=0)
    server = await _server_of(inst)
    server.suspend()
    await asyncio.wait_for(sup.stop(inst, grace=1), 10)
    assert not _running(server), f"left {server.status() if psutil.pid_exists(server.pid) else 'nothing'}"


@pytest.fixture
def stranger():
    """A process of someone else's, in a session of its own, running what a server would."""
    proc = subprocess.Popen([shutil.which("sleep"), "300"], start_new_session=True)
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("mismatch", ["command", "started-before", "group"])
async def test_recorded_numbers_reused_by_a_stranger_are_never_signalled(tmp_path, stranger, mismatch):
    """The state file of an instance long gone, whose pid and group numbers now belong to
    another process: the shim by its start time, the server by group, command and start
    time, and nothing is signalled unless one of them is proven ours."""
    sup = Supervisor(tmp_path / "state")
    cdir = sup.container_dir("uid-x", "server")
    cdir.mkdir(parents=True)
    (cdir / "0.pid.json").write_text(json.dumps({"pid": stranger.pid, "pgid": stranger.pid}))
    record = {
        "pod_uid": "uid-x", "namespace": "ns", "pod_name": "p", "container": "server", "instance": 0,
        "shim_pid": stranger.pid, "shim_start": stranger.create_time() - 100, "started_at": stranger.create_time() - 100,
        "port": 8080, "host": "127.0.0.1", "log_path": str(cdir / "0.log"), "exit_path": str(cdir / "0.exit.json"),
        "pid_path": str(cdir / "0.pid.json"), "args": ["300"], "pgid": stranger.pid, "binary": shutil.which("sleep"),
    }
    if mismatch == "command":
        record["args"] = ["301"]
    elif mismatch == "started-before":
        record["shim_start"] = record["started_at"] = stranger.create_time() + 100
    else:
        record["pgid"] = os.getpgid(0)  # recorded a group the process is not in
    (cdir / "state.json").write_text(json.dumps(record))
    (inst,) = sup.adopt()
    assert not sup.alive(inst) and not sup.orphaned(inst)
    await sup.stop(inst, grace=0)
    await sup.remove_pod("uid-x")
    assert _running(stranger), "a process that is not provably ours is never signalled"
    # The same record with everything matching is ours: the check is not simply "never".
    record.update(args=["300"], shim_start=stranger.create_time() - 100, pgid=stranger.pid)
    cdir.mkdir(parents=True)
    (cdir / "0.pid.json").write_text(json.dumps({"pid": stranger.pid, "pgid": stranger.pid}))
    (cdir / "state.json").write_text(json.dumps(record))
    (inst,) = sup.adopt()
    assert sup.orphaned(inst)
