"""The per-container shim (vnode's conmon): parent of one server process.

It exists so that a server outlives an agent restart without losing anything: the shim,
not the agent, holds the server's stdout/stderr pipes (written as CRI log lines with
rotation) and is the process that reaps it, so the exit code is recorded in an exit file
even if the agent was down when the server died. SIGTERM/SIGINT are forwarded to the
server. The server stays in the shim's process group, recorded in the pid file, so that
the agent can kill it even if the shim is gone. Standard library only, run by path, to keep
its footprint small.

    python shim.py --log FILE --exit-file FILE [--max-bytes N] [--max-files K] -- CMD...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import selectors
import signal
import subprocess
import sys

MAX_LINE = 16 * 1024  # longer lines are split and marked partial ("P"), as CRI does


def _now() -> str:
    t = dt.datetime.now(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}000Z"


class RotatingLog:
    """CRI-format log file: `<RFC3339Nano> <stream> <F|P> <text>`; rotated by size to
    FILE.1 .. FILE.<max_files-1>."""

    def __init__(self, path: str, *, max_bytes: int, max_files: int) -> None:
        self.path, self.max_bytes, self.max_files = path, max_bytes, max_files
        self.file = open(path, "ab", buffering=0)

    def write(self, stream: str, text: bytes, *, partial: bool) -> None:
        record = f"{_now()} {stream} {'P' if partial else 'F'} ".encode() + text + b"\n"
        self.file.write(record)
        if self.max_bytes and self.file.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self.file.close()
        for i in range(self.max_files - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        self.file = open(self.path, "ab", buffering=0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vnode-shim")
    parser.add_argument("--log", required=True)
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--max-files", type=int, default=5)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    log = RotatingLog(args.log, max_bytes=args.max_bytes, max_files=max(1, args.max_files))
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        log.write("stderr", f"vnode: cannot start {cmd[0]}: {exc.strerror}".encode(), partial=False)
        _write_exit(args.exit_file, code=128, signal_number=None, reason="StartError", message=str(exc))
        return 0
    # The server's process group is the shim's (its session): recorded with the pid so that
    # the agent can still reach, and kill, a server whose shim died (supervisor.py).
    _atomic_write(args.pid_file, json.dumps({"pid": child.pid, "pgid": os.getpgid(child.pid)}))

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    sel = selectors.DefaultSelector()
    buffers: dict[str, bytes] = {}
    for stream, pipe in (("stdout", child.stdout), ("stderr", child.stderr)):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ, stream)
        buffers[stream] = b""
    open_pipes = 2
    while open_pipes:
        try:
            events = sel.select()
        except InterruptedError:
            continue
        for key, _ in events:
            stream = key.data
            try:
                chunk = os.read(key.fileobj.fileno(), 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                open_pipes -= 1
                if buffers[stream]:
                    log.write(stream, buffers[stream], partial=False)
                    buffers[stream] = b""
                continue
            data = buffers[stream] + chunk
            *lines, rest = data.split(b"\n")
            for line in lines:
                _write_line(log, stream, line)
            while len(rest) > MAX_LINE:
                log.write(stream, rest[:MAX_LINE], partial=True)
                rest = rest[MAX_LINE:]
            buffers[stream] = rest
    code = child.wait()
    if code < 0:
        _write_exit(args.exit_file, code=128 - code, signal_number=-code, reason="Error", message="")
    else:
        _write_exit(args.exit_file, code=code, signal_number=None, reason="Completed" if code == 0 else "Error", message="")
    return 0


def _write_line(log: RotatingLog, stream: str, line: bytes) -> None:
    while len(line) > MAX_LINE:
        log.write(stream, line[:MAX_LINE], partial=True)
        line = line[MAX_LINE:]
    log.write(stream, line, partial=False)


def _write_exit(path: str, *, code: int, signal_number: int | None, reason: str, message: str) -> None:
    _atomic_write(path, json.dumps({"exitCode": code, "signal": signal_number, "reason": reason, "message": message, "finishedAt": _now()}))


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
