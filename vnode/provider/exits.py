"""What a process exit means, in words a pod's owner can act on.

A server killed by a signal leaves only a number (exit code 132 = 128 + SIGILL); the
termination message, `vnode demo` and `vnode doctor` name the signal and its usual cause
instead, so "illegal instruction" reads as a binary built for another CPU.
"""

from __future__ import annotations

import signal

_CAUSES = {
    signal.SIGILL: "illegal instruction: the server binary uses CPU instructions this machine does not have",
    signal.SIGSEGV: "segmentation fault: the server crashed (a bug in the server or a corrupt model file)",
    signal.SIGBUS: "bus error: the server read memory that went away (a model file changed or truncated while mapped?)",
    signal.SIGABRT: "aborted: the server stopped itself on a failed check (see its last log lines)",
    signal.SIGFPE: "arithmetic exception in the server",
    signal.SIGKILL: "killed (SIGKILL): stopped by force, after the grace period or by the system (out of memory?)",
}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_signal(number: int) -> str:
    """A one-line message for a process killed by signal `number`."""
    try:
        cause = _CAUSES.get(signal.Signals(number))
    except ValueError:
        cause = None
    return cause or f"killed by signal {signal_name(number)} ({number})"


def describe_exit(code: int | None, sig: int | None) -> str:
    """`exit 3`, or `signal 4 (SIGILL): illegal instruction: ...`."""
    if sig:
        return f"signal {sig} ({signal_name(sig)}): {describe_signal(sig)}"
    return f"exit code {code}"
