"""A signal death is named, with its usual cause, wherever a user reads it."""

import json
import signal

from vnode.provider.exits import describe_exit, describe_signal
from vnode.provider.supervisor import Instance, Supervisor


def test_sigill_names_the_cpu():
    assert describe_signal(signal.SIGILL) == (
        "illegal instruction: the server binary uses CPU instructions this machine does not have")
    assert describe_exit(132, 4).startswith("signal 4 (SIGILL): illegal instruction")


def test_other_signals_and_plain_exits():
    assert "segmentation fault" in describe_signal(signal.SIGSEGV)
    assert describe_signal(signal.SIGUSR1) == f"killed by signal SIGUSR1 ({int(signal.SIGUSR1)})"
    assert describe_signal(200) == "killed by signal signal 200 (200)"
    assert describe_exit(1, None) == "exit code 1"


def _instance(tmp_path) -> Instance:
    return Instance(pod_uid="u", namespace="ns", pod_name="p", container="c", instance=0, shim_pid=1, shim_start=0.0,
                    started_at=0.0, port=8080, host="198.18.0.2", log_path=str(tmp_path / "0.log"),
                    exit_path=str(tmp_path / "0.exit.json"), pid_path=str(tmp_path / "0.pid.json"), args=[])


def test_recorded_signal_exit_gets_a_message(tmp_path):
    """The shim records only the number; the container's termination message names it."""
    inst = _instance(tmp_path)
    (tmp_path / "0.exit.json").write_text(json.dumps(
        {"exitCode": 132, "signal": 4, "reason": "Error", "message": "", "finishedAt": "2026-01-01T00:00:00Z"}))
    info = Supervisor(tmp_path).exit_info(inst)
    assert (info.exit_code, info.signal, info.reason) == (132, 4, "Error")
    assert info.message.startswith("illegal instruction")


def test_recorded_plain_exit_keeps_an_empty_message(tmp_path):
    inst = _instance(tmp_path)
    (tmp_path / "0.exit.json").write_text(json.dumps({"exitCode": 1, "signal": None, "reason": "Error", "message": ""}))
    assert Supervisor(tmp_path).exit_info(inst).message == ""
