#!/usr/bin/env python3
"""Kubelet API benchmarks: exec, stream echo, logs -f and event-loop stalls,
through the real API server with the real kubectl, and against vnode alone.

Starts a local control plane, the local Hugging Face-like hub serving Gemma 3 270M and two
vnode agents, each a "Mac" of its own (network namespace, node IP):

  bench-kubelet       the real llama-server; Pod bench-kubelet-api (sections 1, 4, 5)
  bench-kubelet-echo  its --llama-server is bench/support/standin.py, a small asyncio server
                      that answers GET /health (the readiness probe) and speaks our echo and
                      bulk protocols on the one port vnode launches it on; Pod
                      bench-kubelet-echo (section 2, and bench/portforward.py)

vnode's port-forward reaches only the port it launched a pod's server on (pods share the
host's network), so the echo and bulk protocols are served there, by the pod's own server,
rather than by a separate program on an extra containerPort. Then, in one run:

  1. exec round trip: wall time of `kubectl exec <pod> -- true`, next to the API server's
     own hop: `kubectl get --raw /api/v1/nodes/<node>/proxy/healthz` (a proxied request to
     the same kubelet, no streaming) and `kubectl get --raw /healthz` (API server only), and
     `kubectl version --client` (kubectl's own start-up, no network). Interleaved, --runs
     each. exec minus proxied healthz = what the streaming exec costs on top of a plain
     proxied request (websocket/SPDY upgrades, streams, the process, its status). Also, to
     say where it goes, the same two requests sent straight to vnode with the API server's
     kubelet-client certificate (fresh TLS connection each, as the API server uses for an
     exec): GET /healthz, and exec `true` over SPDY with vnode's own codec.
  2. stream echo: --lines lines of 64 B, one at a time, each timed from write to its echo,
     over five long-lived sessions, round-robin, all to the echo Pod and its node's agent:
       A  `kubectl exec -i <pod> -- cat`          kubectl -> API server -> vnode exec -> cat
       B  SPDY exec `cat` straight to vnode        vnode exec -> cat (no API server)
       C  TCP to the stand-in on the node IP       the floor: network + an echo program
       D  `kubectl port-forward` to its port       kubectl -> API server -> vnode forward -> echo
       E  SPDY port-forward straight to vnode      vnode forward -> echo (no API server)
     The API server's own hop cannot be measured without a kubelet behind it, so vnode's
     share is measured without the API server instead: "added by vnode" = B - C (TLS + SPDY
     framing + the pipe to and from `cat`, against an echo with neither), the baseline we
     call fair; the API server + kubectl hop = A - B. The same for port-forward: E - C and
     D - E. (A - D, exec vs port-forward through the same API server, is printed too.)
     Target: vnode adds <= 5 ms at p50 (B - C).
  3. port-forward throughput: see bench/portforward.py (it reuses this script's set-up).
  4. logs -f delivery: `kubectl logs -f --tail=0 --timestamps` and a direct follower at
     vnode (GET /containerLogs?follow=true) run while --log-requests completions are sent
     one after another. This llama-server logs no request line at default verbosity; the
     last line of each request is `slot release: ... stop processing`, written as the
     response goes out, so that line is the one timed: from the request returning to the
     line on kubectl's stdout (the asked-for number; the line may be written a little
     before the response arrives), and, exactly, from the shim's CRI timestamp on the line
     (--timestamps) to kubectl's stdout and to the direct follower (vnode alone; it polls
     the log file every 50 ms). Same machine, same clock.
  5. event-loop stall: vnode has no loop-lag metric, so from outside: a separate process
     sends GET /healthz to vnode every 20 ms over one keep-alive HTTPS connection (the API
     server's kubelet-client certificate) for --idle-seconds idle, then for --stall-seconds
     while --sessions `kubectl exec -i ... -- cat` echo a line every --load-interval s and
     --followers `kubectl logs -f` follow the pod's log (fed by a completion every 0.5 s).
     A probe arriving during a stall waits for it, so the latency a probe sees bounds from
     above the stall it met; with one probe every 20 ms a stall of S ms delays some probe
     by at least S - 20 ms, so stalls <= max latency + 20 ms. The latency also holds CPU
     contention (2 cores, 40 kubectl, the API server, and llama-server computing on every
     core while a completion runs: probes that overlapped a completion are also shown
     apart): an upper bound, not a loop-lag measurement. Target: no stall over 50 ms.

Before each section the script waits up to --wait-quiet s for other processes on the
machine to go quiet (as bench/pods.py does) and notes the CPU they used meanwhile.
Prints min/median/p99 next to the targets with a ratio to each target and writes JSON to
bench/results/. No assertions: numbers are for people and for trend lines. Warnings and
errors from the agent's log are counted and shown. Every process started is stopped by
pid; the cluster is torn down in a finally.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import select
import shlex
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import psutil
from kubernetes import client as k8s
from kubernetes import config as k8s_config

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import pods as podbench  # noqa: E402 - bench/pods.py: hub, model, clean-up and noise helpers
from pods import cpu_clock, cpu_seconds, foreign_activity, machine, percentile, summary, wait_quiet  # noqa: E402 - shared stats/noise
from vnode.cluster.build import ensure_llama_server  # noqa: E402
from vnode.cluster.local import LocalCluster, free_port  # noqa: E402
from vnode.cluster.processes import Proc  # noqa: E402
from vnode.cluster.processes import stop as stop_process  # noqa: E402
from vnode.kubelet_api.spdy import (  # noqa: E402
    FLAG_FIN, DataFrame, FrameEncoder, FrameParser, GoAwayFrame, RstStreamFrame, SynStreamFrame,
)
from vnode.provider.logs import parse_time  # noqa: E402

NODE = "bench-kubelet"
NAMESPACE = podbench.NAMESPACE
POD = "bench-kubelet-api"
ECHO_NODE, ECHO_POD = "bench-kubelet-echo", "bench-kubelet-echo"  # the stand-in's node and Pod
SERVER_PORT = 18600
# The stand-in's one port (echo, bulk and GET /health): the port vnode launches it on, the
# only one port-forward reaches.
ECHO_PORT = BULK_PORT = 18601
STANDIN = BENCH / "support" / "standin.py"
KUBELET_PORT = 10250
RESULTS = BENCH / "results"
TARGETS = {"echo_added_by_vnode_p50_ms": 5.0, "loop_stall_ms": 50.0}  # port-forward throughput: bench/portforward.py
PROBE_INTERVAL = 0.02
MARKER = b"stop processing"  # llama-server's last log line of a request ("slot release: ...")
LINE = 64

PROBER = r"""
import http.client, json, socket, ssl, sys, time
host, port, ca, cert, key, seconds, interval = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6], float(sys.argv[6]), float(sys.argv[7])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)

def connect():
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn

conn = connect()
conn.request("GET", "/healthz"); conn.getresponse().read()
samples, errors, reconnects = [], [], 0
next_t = time.monotonic()
end = next_t + seconds
while next_t < end:
    now = time.monotonic()
    if now < next_t:
        time.sleep(next_t - now)
    t0 = time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        samples.append([time.time(), (time.perf_counter() - t0) * 1000, resp.status])
    except (OSError, http.client.HTTPException) as exc:
        errors.append([time.time(), repr(exc)])
        conn.close()
        conn = connect()
        reconnects += 1
    next_t += interval
    if next_t < time.monotonic():  # behind (we were stalled ourselves): no burst to catch up
        next_t = time.monotonic()
print(json.dumps({"samples": samples, "errors": errors, "reconnects": reconnects}))
"""


FOREIGN_LIMIT = podbench.FOREIGN_LIMIT  # cores used by other processes above which a section is contended


def ms_line(s: dict) -> str:
    if not s.get("n"):
        return "no samples"
    return f"min {s['min']:7.1f}   median {s['median']:7.1f}   p99 {s['p99']:7.1f}   max {s['max']:7.1f} ms"


def verdict(value: float, target: float, *, at_most: bool) -> str:
    ok = value <= target if at_most else value >= target
    return f"ratio to target {value / target:.2f} ({'meets' if ok else 'misses'})"


# --------------------------------------------------------------------------- processes we start


class Children:
    """kubectl and helper processes started by this script: stopped by pid at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def popen(self, name: str, cmd: list[str], *, stdin: bool = False) -> subprocess.Popen:
        self._n += 1
        err = open(self.logs / f"bench-{name}-{self._n}.log", "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        err.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


class Kubectl:
    def __init__(self, cluster: LocalCluster) -> None:
        st = cluster.state
        self.base = [st.kubectl, f"--kubeconfig={st.admin_kubeconfig}"]

    def cmd(self, *args: str) -> list[str]:
        return [*self.base, *args]

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        out = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=60)
        dt = (time.perf_counter() - t0) * 1000
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[:300]}")
        return dt


# --------------------------------------------------------------------------- straight to vnode


class Kubelet:
    """vnode's kubelet port of one node, reached as the API server reaches it: its kubelet-client certificate."""

    def __init__(self, cluster: LocalCluster, node: str | None = None) -> None:
        pki = Path(cluster.state.directory) / "pki"
        self.host, self.port = cluster.state.host_for(node).ns_ip, KUBELET_PORT
        self.ca, self.cert, self.key = str(pki / "ca.crt"), str(pki / "apiserver-kubelet-client.crt"), str(pki / "apiserver-kubelet-client.key")
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.ctx.load_cert_chain(self.cert, self.key)
        self.ctx.set_alpn_protocols(["http/1.1"])

    def healthz_fresh(self) -> float:
        t0 = time.perf_counter()
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=10)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200 or body != b"ok":
            raise RuntimeError(f"direct /healthz: {resp.status} {body[:100]!r}")
        return (time.perf_counter() - t0) * 1000


class SpdyClient:
    """The client side of SPDY/3.1 as the API server speaks it to a kubelet, with vnode's codec."""

    def __init__(self, kubelet: Kubelet, path: str, protocol: str, *, timeout: float = 60) -> None:
        self.t0 = time.perf_counter()
        raw = socket.create_connection((kubelet.host, kubelet.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = kubelet.ctx.wrap_socket(raw, server_hostname=kubelet.host)
        self.t_tls = time.perf_counter()
        head = "\r\n".join([f"POST {path} HTTP/1.1", f"Host: {kubelet.host}:{kubelet.port}", "Connection: Upgrade",
                            "Upgrade: SPDY/3.1", f"X-Stream-Protocol-Version: {protocol}", "Content-Length: 0", "", ""])
        self.sock.sendall(head.encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"vnode closed the connection during the upgrade: {got[:200]!r}")
            got += chunk
        status, _, rest = got.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {status[:300]!r}")
        self.t_upgraded = time.perf_counter()
        self.enc, self.parser = FrameEncoder(), FrameParser()
        self.frames: deque = deque(self.parser.feed(rest) if rest else [])
        self.buffers: dict[int, bytearray] = {}
        self.fins: set[int] = set()
        self.eof = False
        self._next = 1

    def open(self, **headers: str) -> int:
        sid, self._next = self._next, self._next + 2
        self.sock.sendall(self.enc.encode(SynStreamFrame(sid, {k: [v] for k, v in headers.items()})))
        self.buffers[sid] = bytearray()
        return sid

    def send(self, sid: int, data: bytes, *, fin: bool = False) -> None:
        self.sock.sendall(self.enc.encode(DataFrame(sid, data, FLAG_FIN if fin else 0)))

    def _pump(self) -> bool:
        """Read and sort one batch of frames; False at the end of the connection."""
        while not self.frames:
            if self.eof:
                return False
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.eof = True
                return False
            self.frames.extend(self.parser.feed(chunk))
        while self.frames:
            frame = self.frames.popleft()
            if isinstance(frame, DataFrame):
                if frame.stream_id in self.buffers:
                    self.buffers[frame.stream_id] += frame.data
                if frame.fin:
                    self.fins.add(frame.stream_id)
            elif isinstance(frame, RstStreamFrame):
                self.fins.add(frame.stream_id)
            elif isinstance(frame, GoAwayFrame):
                self.fins.update(self.buffers)
        return True

    def read(self, sid: int, n: int) -> bytes:
        buf = self.buffers[sid]
        while len(buf) < n:
            if sid in self.fins or not self._pump():
                raise EOFError(f"stream {sid} ended after {len(buf)} of {n} bytes")
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def read_line(self, sid: int) -> bytes:
        buf = self.buffers[sid]
        while b"\n" not in buf:
            if sid in self.fins or not self._pump():
                raise EOFError(f"stream {sid} ended without a line: {bytes(buf[:100])!r}")
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        return line

    def count(self, sid: int, n: int) -> None:
        """Receive and drop n bytes of stream sid."""
        got = 0
        buf = self.buffers[sid]
        while got < n:
            if buf:
                got += len(buf)
                buf.clear()
                continue
            if sid in self.fins or not self._pump():
                raise EOFError(f"stream {sid} ended after {got} of {n} bytes")

    def until_fin(self, sid: int) -> bytes:
        while sid not in self.fins and self._pump():
            pass
        return bytes(self.buffers[sid])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def exec_path(command: list[str], *, stdin: bool = False, pod: str = POD) -> str:
    query = [("command", c) for c in command] + [("output", "1"), ("error", "1")] + ([("input", "1")] if stdin else [])
    return f"/exec/{NAMESPACE}/{pod}/server?{urlencode(query)}"


def direct_exec_true(kubelet: Kubelet) -> dict:
    """exec `true` straight to vnode, as the API server asks it (v4, stdout+stderr); phases in ms."""
    c = SpdyClient(kubelet, exec_path(["true"]), "v4.channel.k8s.io")
    try:
        err = c.open(streamtype="error")
        c.open(streamtype="stdout")
        c.open(streamtype="stderr")
        status = c.until_fin(err)
        t_end = time.perf_counter()
    finally:
        c.close()
    if b"Success" not in status:
        raise RuntimeError(f"direct exec true: status {status[:200]!r}")
    return {"total_ms": (t_end - c.t0) * 1000, "tls_ms": (c.t_tls - c.t0) * 1000,
            "upgrade_ms": (c.t_upgraded - c.t_tls) * 1000, "streams_to_status_ms": (t_end - c.t_upgraded) * 1000}


# --------------------------------------------------------------------------- echo paths


class EchoPath:
    """One long-lived session that echoes what it is sent; `roundtrip` times one line."""

    name = ""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, n: int) -> bytes:
        raise NotImplementedError

    def roundtrip(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        self.send(payload)
        got = self.recv(len(payload))
        dt = (time.perf_counter() - t0) * 1000
        if got != payload:
            raise RuntimeError(f"{self.name}: echoed {got[:80]!r} for {payload[:80]!r}")
        return dt

    def close(self) -> None:
        pass


class PipeEcho(EchoPath):
    """`kubectl exec -i <pod> -- cat` through its stdin and stdout pipes."""

    def __init__(self, name: str, proc: subprocess.Popen, timeout: float = 30) -> None:
        self.name, self.proc, self.timeout = name, proc, timeout
        self.w, self.r = proc.stdin.fileno(), proc.stdout.fileno()
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]

    def recv(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError(f"{self.name}: no echo within {self.timeout:.0f}s")
            chunk = os.read(self.r, 65536)
            if not chunk:
                raise EOFError(f"{self.name}: kubectl closed stdout (exit {self.proc.poll()})")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class SocketEcho(EchoPath):
    def __init__(self, name: str, host: str, port: int, timeout: float = 30) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"{self.name}: connection closed")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self) -> None:
        self.sock.close()


class SpdyExecEcho(EchoPath):
    def __init__(self, kubelet: Kubelet, pod: str = POD) -> None:
        self.name = "B vnode alone: SPDY exec cat"
        self.c = SpdyClient(kubelet, exec_path(["cat"], stdin=True, pod=pod), "v4.channel.k8s.io")
        self.err = self.c.open(streamtype="error")
        self.stdin = self.c.open(streamtype="stdin")
        self.stdout = self.c.open(streamtype="stdout")
        self.c.open(streamtype="stderr")  # asked for (error=1), as kubectl does

    def send(self, data: bytes) -> None:
        self.c.send(self.stdin, data)

    def recv(self, n: int) -> bytes:
        return self.c.read(self.stdout, n)

    def close(self) -> None:
        try:
            self.c.send(self.stdin, b"", fin=True)
            self.c.sock.settimeout(5)
            self.c.until_fin(self.err)
        except OSError:
            pass
        self.c.close()


class SpdyForward:
    """`portForward` straight to vnode: one SPDY session, a stream pair per connection."""

    def __init__(self, kubelet: Kubelet, pod: str = POD) -> None:
        self.c = SpdyClient(kubelet, f"/portForward/{NAMESPACE}/{pod}", "portforward.k8s.io")
        self._request = 0

    def connect(self, port: int) -> int:
        rid = str(self._request)
        self._request += 1
        self.c.open(streamtype="error", port=str(port), requestid=rid)
        return self.c.open(streamtype="data", port=str(port), requestid=rid)

    def close(self) -> None:
        self.c.close()


class SpdyForwardEcho(EchoPath):
    def __init__(self, forward: SpdyForward) -> None:
        self.name = "E vnode alone: SPDY port-forward"
        self.f = forward
        self.sid = forward.connect(ECHO_PORT)

    def send(self, data: bytes) -> None:
        self.f.c.send(self.sid, data)

    def recv(self, n: int) -> bytes:
        return self.f.c.read(self.sid, n)

    def close(self) -> None:
        try:
            self.f.c.send(self.sid, b"", fin=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- bulk transfers

BLOCK = memoryview(b"\xa5" * (1 << 20))


def bulk_tcp(host: str, port: int, op: str, n: int) -> float:
    """MB/s of one transfer over a new TCP connection (direct, or to kubectl's local port)."""
    with socket.create_connection((host, port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        sock.sendall(f"{op} {n}\n".encode())
        if op == "PUT":
            left = n
            while left:
                k = min(left, len(BLOCK))
                sock.sendall(BLOCK[:k])
                left -= k
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise EOFError(f"PUT via {host}:{port}: closed before the ack")
                reply += chunk
            if reply.strip() != f"OK {n}".encode():
                raise RuntimeError(f"PUT via {host}:{port}: {reply!r}")
        else:
            got, buf = 0, bytearray(1 << 20)
            while got < n:
                k = sock.recv_into(buf)
                if not k:
                    raise EOFError(f"GET via {host}:{port}: {got} of {n} bytes")
                got += k
        dt = time.perf_counter() - t0
    return n / dt / 1e6


# --------------------------------------------------------------------------- logs


class Follower(threading.Thread):
    """Reads a log stream line by line; notes when each MARKER line arrived and its CRI time."""

    def __init__(self, name: str, readline: Callable[[], bytes]) -> None:
        super().__init__(daemon=True, name=name)
        self.readline = readline
        self.lines = 0
        self.marks: list[tuple[float, float | None]] = []  # (seen, shim timestamp), epoch s
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (line := self.readline()):
                seen = time.time()
                with self.cond:
                    self.lines += 1
                    if MARKER in line:
                        stamp = parse_time(line.split(b" ", 1)[0].decode(errors="replace"))
                        self.marks.append((seen, stamp.timestamp() if stamp else None))
                    self.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by the waiter
            self.error = exc
        with self.cond:
            self.cond.notify_all()

    def wait_marks(self, count: int, timeout: float) -> tuple[float, float | None]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.marks) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None or not self.is_alive():
                    raise TimeoutError(f"{self.name}: {len(self.marks)} of {count} marker lines ({self.error!r})")
                self.cond.wait(left)
            return self.marks[count - 1]


def direct_log_stream(kubelet: Kubelet, query: dict) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPSConnection(kubelet.host, kubelet.port, context=kubelet.ctx, timeout=None)
    conn.request("GET", f"/containerLogs/{NAMESPACE}/{POD}/server?{urlencode(query)}")
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"direct follow: HTTP {resp.status}: {resp.read()[:200]!r}")
    return conn, resp


def complete(host: str, max_tokens: int) -> None:
    conn = http.client.HTTPConnection(host, SERVER_PORT, timeout=120)
    try:
        body = {"prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0}
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"completion: HTTP {resp.status}: {data[:200]!r}")


# --------------------------------------------------------------------------- set-up


def _manifest(name: str, node: str, args: list[str], port: int, port_name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": podbench.LABEL}},
        "spec": {
            "nodeSelector": {"llmkube.dev/accelerator": "metal", "kubernetes.io/hostname": node},
            "tolerations": [{"key": "llmkube.dev/accelerator", "operator": "Equal", "value": "metal", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "server", "image": podbench.IMAGE,
                "args": ["-hf", f"{podbench.REPO}:Q4_K_M", "--port", str(port), *args],
                "ports": [{"containerPort": port, "name": port_name}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": port_name}, "periodSeconds": 1},
            }],
        },
    }


def pod_manifest() -> dict:
    """The llama-server Pod on NODE."""
    return _manifest(POD, NODE, ["-c", str(podbench.CTX)], SERVER_PORT, "http")


def echo_pod_manifest(node: str = ECHO_NODE) -> dict:
    """The stand-in's Pod on `node` (whose agent runs bench/support/standin.py as its llama-server):
    echo, bulk and /health on ECHO_PORT. vnode fetches the model as for any server (the
    stand-in ignores it)."""
    return _manifest(ECHO_POD, node, ["-c", str(podbench.CTX)], ECHO_PORT, "echo")


def pod_ready(core: k8s.CoreV1Api, name: str = POD) -> bool:
    try:
        pod = core.read_namespaced_pod_status(name, NAMESPACE, _request_timeout=5)
    except Exception:  # noqa: BLE001
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def standin_binary(directory: Path) -> Path:
    """An executable for an agent's --llama-server: bench/support/standin.py run by this Python
    (stdlib only: -I -S), written into the cluster directory."""
    path = directory / "bench-standin" / "llama-server-standin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S {shlex.quote(str(STANDIN))} "$@"\n')
    path.chmod(0o755)
    return path


def start_node(cluster: LocalCluster, core: k8s.CoreV1Api, node: str, *extra: str, timeout: float = 60) -> Proc:
    """A vnode agent for `node` (recorded: down() stops it), once its Node is Ready."""
    agent = cluster.start_agent(*extra, node_name=node)
    deadline = time.monotonic() + timeout
    while not podbench.node_ready(core, node):
        if not agent.alive() or time.monotonic() > deadline:
            raise SystemExit(f"agent did not make {node} Ready; see {agent.log}")
        time.sleep(0.1)
    return agent


def start_echo_node(cluster: LocalCluster, core: k8s.CoreV1Api, hub_url: str, node: str = ECHO_NODE) -> Proc:
    """The stand-in's agent: `node` with bench/support/standin.py as its llama-server, on a
    "Mac" of its own unless it is the cluster's first node."""
    state = cluster.state
    if node != state.node_name:
        cluster.add_host(node)
    return start_node(cluster, core, node, f"--hf-endpoint={hub_url}", f"--llama-server={standin_binary(Path(state.directory))}")


def wait_pods_ready(core: k8s.CoreV1Api, pods: dict[str, Proc], timeout: float = 300) -> None:
    """Until every Pod named is Ready; exits the bench naming its agent's log otherwise."""
    deadline = time.monotonic() + timeout
    for name, agent in pods.items():
        while not pod_ready(core, name):
            if time.monotonic() > deadline:
                raise SystemExit(f"pod {name} not Ready within {timeout:.0f} s; see {agent.log}")
            time.sleep(0.2)


def wait_port(host: str, port: int, proc: Proc | subprocess.Popen, *, what: str, timeout: float = 20) -> None:
    """Until something accepts on host:port; exits the bench if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if not (proc.alive() if isinstance(proc, Proc) else proc.poll() is None):
                break
            time.sleep(0.1)
    raise SystemExit(f"{what} is not listening on {host}:{port}")


def start_port_forward(children: Children, kubectl: Kubectl, pod: str, ports: list[int]) -> tuple[subprocess.Popen, dict[int, int]]:
    """`kubectl port-forward pod/<pod>` of each remote port from a free local one; {remote: local}."""
    local = {port: free_port("127.0.0.1") for port in ports}
    proc = children.popen("port-forward", kubectl.cmd("port-forward", "--address=127.0.0.1", "-n", NAMESPACE, f"pod/{pod}",
                                                     *(f"{local[p]}:{p}" for p in ports)))
    seen = b""
    deadline = time.monotonic() + 30
    fd = proc.stdout.fileno()
    while seen.count(b"Forwarding from") < len(ports):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"kubectl port-forward not ready: {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"kubectl port-forward exited {proc.poll()}: {seen!r}")
        seen += chunk

    def drain() -> None:  # "Handling connection for ..." lines: keep the pipe from filling
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True, name="port-forward stdout").start()
    return proc, local


class Section:
    """CPU used by other processes on the machine (not this script's tree) during a section;
    first waits (at most `wait` s) for the machine to be quiet."""

    def __init__(self, directory: Path, wait: float) -> None:
        self.directory = directory
        self.waited = wait_quiet(wait) if wait > 0 else 0.0
        self.t0, (self.busy0, self.ours0, _) = time.monotonic(), cpu_clock()
        self.before = foreign_activity(directory)

    def end(self) -> dict:
        t1, (busy1, ours1, _) = time.monotonic(), cpu_clock()
        after = foreign_activity(self.directory)
        foreign = max(0.0, (busy1 - self.busy0) - (ours1 - self.ours0)) / (t1 - self.t0)
        return {"seconds": round(t1 - self.t0, 1), "waited_for_quiet_s": round(self.waited, 1), "foreign_cores": round(foreign, 3),
                "our_cores": round((ours1 - self.ours0) / (t1 - self.t0), 3),
                "other_clusters": {k: max(self.before[k], after[k]) for k in after},
                "contended": foreign > FOREIGN_LIMIT}


# --------------------------------------------------------------------------- the five measurements


def bench_exec(kubectl: Kubectl, kubelet: Kubelet, runs: int) -> dict:
    kinds: dict[str, Callable[[], float]] = {
        "kubectl version --client (no network)": lambda: kubectl.timed("version", "--client", "-o", "json"),
        "get --raw /healthz (API server only)": lambda: kubectl.timed("get", "--raw", "/healthz"),
        "get --raw proxy/healthz (API server -> vnode)": lambda: kubectl.timed("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/healthz"),
        "exec -- true (API server -> vnode, streaming)": lambda: kubectl.timed("exec", "-n", NAMESPACE, POD, "--", "true"),
        "vnode alone: GET /healthz, fresh TLS": kubelet.healthz_fresh,
        "vnode alone: SPDY exec true, fresh TLS": lambda: direct_exec_true(kubelet)["total_ms"],
    }
    for fn in kinds.values():  # warm-up: caches, authorization (SubjectAccessReview) answers
        fn()
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    phases: list[dict] = []
    failures: list[str] = []
    names = list(kinds)
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            try:
                if name.startswith("vnode alone: SPDY exec"):
                    p = direct_exec_true(kubelet)
                    phases.append(p)
                    samples[name].append(p["total_ms"])
                else:
                    samples[name].append(kinds[name]())
            except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
                failures.append(f"{name}: {exc}")
    out = {name: summary(v) for name, v in samples.items()}
    ex, px = samples["exec -- true (API server -> vnode, streaming)"], samples["get --raw proxy/healthz (API server -> vnode)"]
    return {
        "runs": runs, "ms": out, "raw_ms": samples, "failures": failures,
        "streaming_overhead_ms": {"p50": statistics.median(ex) - statistics.median(px),
                                  "p99": percentile(ex, 99) - percentile(px, 99)},
        "direct_exec_phases_ms": {k: summary([p[k] for p in phases]) for k in ("tls_ms", "upgrade_ms", "streams_to_status_ms")},
    }


def bench_echo(paths: list[EchoPath], lines: int, warmup: int = 5) -> dict:
    for path in paths:
        for w in range(warmup):
            path.roundtrip(f"warm {w:04d} ".encode().ljust(LINE - 1, b"w") + b"\n")
    samples: dict[str, list[float]] = {p.name: [] for p in paths}
    for i in range(lines):
        payload = f"{i:06d} ".encode().ljust(LINE - 1, b"x") + b"\n"
        k = i % len(paths)
        for path in paths[k:] + paths[:k]:
            samples[path.name].append(path.roundtrip(payload))
    return {"lines": lines, "line_bytes": LINE, "ms": {k: summary(v) for k, v in samples.items()}, "raw_ms": samples}


def bench_logs(children: Children, kubectl: Kubectl, kubelet: Kubelet, host: str, requests: int) -> dict:
    proc = children.popen("logs-f", kubectl.cmd("logs", "-f", "--tail=0", "--timestamps", "-n", NAMESPACE, POD))
    reader = open(proc.stdout.fileno(), "rb", closefd=False)
    via_kubectl = Follower("kubectl logs -f", reader.readline)
    conn, resp = direct_log_stream(kubelet, {"follow": "true", "tailLines": "0", "timestamps": "true"})
    direct = Follower("direct follow at vnode", resp.readline)
    via_kubectl.start()
    direct.start()
    rows = []
    try:
        # Warm-up request: both followers are connected once they deliver its line.
        deadline = time.monotonic() + 60
        while True:
            complete(host, 4)
            try:
                via_kubectl.wait_marks(1, 10)
                direct.wait_marks(1, 10)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.5)
        base_k, base_d = len(via_kubectl.marks), len(direct.marks)
        for i in range(requests):
            time.sleep(random.uniform(0.2, 0.5))  # spread over vnode's 50 ms poll phase
            complete(host, 4)
            t_ret = time.time()
            seen_k, stamp_k = via_kubectl.wait_marks(base_k + i + 1, 20)
            seen_d, stamp_d = direct.wait_marks(base_d + i + 1, 20)
            stamp = stamp_k or stamp_d
            rows.append({"returned": t_ret, "shim_stamp": stamp, "seen_kubectl": seen_k, "seen_direct": seen_d})
    finally:
        children.stop(proc)
        # Unblock the follower thread first: closing the response waits for its reader's lock.
        if conn.sock is not None:
            try:
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        direct.join(5)
        conn.close()
    lat = {
        "request returned -> line on kubectl stdout": [(r["seen_kubectl"] - r["returned"]) * 1000 for r in rows],
        "shim wrote line -> kubectl stdout": [(r["seen_kubectl"] - r["shim_stamp"]) * 1000 for r in rows if r["shim_stamp"]],
        "shim wrote line -> direct follower at vnode": [(r["seen_direct"] - r["shim_stamp"]) * 1000 for r in rows if r["shim_stamp"]],
        "shim wrote line - request returned": [(r["shim_stamp"] - r["returned"]) * 1000 for r in rows if r["shim_stamp"]],
    }
    return {"requests": requests, "marker": MARKER.decode(), "ms": {k: summary(v) for k, v in lat.items()}, "rows": rows}


def run_prober(kubelet: Kubelet, seconds: float) -> dict:
    cmd = [sys.executable, "-c", PROBER, kubelet.host, str(kubelet.port), kubelet.ca, kubelet.cert, kubelet.key,
           str(seconds), str(PROBE_INTERVAL)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"prober failed: {out.stderr[-500:]}")
    return json.loads(out.stdout)


def prober_summary(data: dict) -> dict:
    lat = [s[1] for s in data["samples"]]
    s = summary(lat)
    s.update(over_50ms=sum(1 for v in lat if v > 50), over_20ms=sum(1 for v in lat if v > 20),
             non_200=sum(1 for x in data["samples"] if x[2] != 200), errors=len(data["errors"]), reconnects=data["reconnects"])
    if lat:
        s["stall_upper_bound_ms"] = max(lat) + PROBE_INTERVAL * 1000
    return s


def split_by_windows(samples: list[list], windows: list[tuple[float, float]]) -> dict:
    """Probe latencies of probes that overlapped a completion (llama-server computing on every
    core) and of the others: separates CPU contention from vnode's own work."""
    during, outside = [], []
    for end, lat, _status in samples:
        start = end - lat / 1000
        (during if any(a <= end and start <= b for a, b in windows) else outside).append(lat)
    return {"during_completion": summary(during), "outside_completion": summary(outside)}


def bench_stall(children: Children, kubectl: Kubectl, kubelet: Kubelet, host: str, agent: Proc, apiserver_pid: int | None,
                args: argparse.Namespace) -> dict:
    idle = run_prober(kubelet, args.idle_seconds)

    stop = threading.Event()
    t_start = time.monotonic()
    execs: list[PipeEcho] = []
    followers: list[tuple[subprocess.Popen, Follower]] = []
    threads: list[threading.Thread] = []
    echo_lat: list[float] = []
    errors: list[str] = []
    completions = [0]
    windows: list[tuple[float, float]] = []  # when a completion ran (llama-server busy on every core)
    exit_codes: list[int | None] = []
    lock = threading.Lock()
    try:
        for i in range(max(args.sessions, args.followers)):
            if i < args.sessions:
                p = children.popen("load-exec", kubectl.cmd("exec", "-i", "-n", NAMESPACE, POD, "--", "cat"), stdin=True)
                execs.append(PipeEcho(f"load exec {i}", p, timeout=120))
            if i < args.followers:
                p = children.popen("load-logs", kubectl.cmd("logs", "-f", "--tail=1", "-n", NAMESPACE, POD))
                f = Follower(f"load logs {i}", open(p.stdout.fileno(), "rb", closefd=False).readline)
                f.start()
                followers.append((p, f))
            time.sleep(0.05)
        for e in execs:  # each session echoes once: it is up
            e.roundtrip(b"hello\n")
        deadline = time.monotonic() + 120
        while any(f.lines < 1 for _, f in followers) and time.monotonic() < deadline:
            time.sleep(0.1)
        startup_s = time.monotonic() - t_start
        connected = sum(1 for _, f in followers if f.lines >= 1)

        def drive(e: PipeEcho, k: int) -> None:
            n = 0
            while not stop.is_set():
                payload = f"{k:02d} {n:06d} ".encode().ljust(LINE - 1, b"l") + b"\n"
                try:
                    dt = e.roundtrip(payload)
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        errors.append(f"{e.name}: {exc}")
                    return
                with lock:
                    echo_lat.append(dt)
                n += 1
                stop.wait(args.load_interval)

        def feed_logs() -> None:
            while not stop.is_set():
                try:
                    t_c = time.time()
                    complete(host, 2)
                    completions[0] += 1
                    windows.append((t_c, time.time()))
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        errors.append(f"completion: {exc}")
                stop.wait(0.5)

        for k, e in enumerate(execs):
            threads.append(threading.Thread(target=drive, args=(e, k), daemon=True, name=f"drive {k}"))
        threads.append(threading.Thread(target=feed_logs, daemon=True, name="feed logs"))
        for t in threads:
            t.start()
        time.sleep(1.0)  # let the load settle before probing
        lines0 = sum(f.lines for _, f in followers)
        with lock:
            echo_lat.clear()
        server = next((p.pid for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "llama-server"
                       and str(SERVER_PORT) in (p.info["cmdline"] or []) and host in (p.info["cmdline"] or [])), None)
        procs = {"vnode agent": agent.pid, **({"kube-apiserver": apiserver_pid} if apiserver_pid else {}),
                 **({"llama-server": server} if server else {})}
        cpu0, t0 = cpu_seconds(procs), time.monotonic()
        loaded = run_prober(kubelet, args.stall_seconds)
        cpu1, t1 = cpu_seconds(procs), time.monotonic()
        lines1 = sum(f.lines for _, f in followers)
        with lock:
            lat = list(echo_lat)
        alive_exec = sum(1 for e in execs if e.proc.poll() is None)
        alive_logs = sum(1 for p, _ in followers if p.poll() is None)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for e in execs:
            e.close()
        for e in execs:  # stdin closed: cat ends, kubectl should exit 0 with the status vnode sent
            try:
                exit_codes.append(e.proc.wait(10))
            except subprocess.TimeoutExpired:
                exit_codes.append(None)
            children.stop(e.proc)
        for p, _ in followers:
            children.stop(p)
    cpu = {k: round(100 * (cpu1[k] - cpu0[k]) / (t1 - t0), 1) for k in cpu1 if k in cpu0}
    return {
        "probe_interval_ms": PROBE_INTERVAL * 1000,
        "idle_seconds": args.idle_seconds, "load_seconds": args.stall_seconds,
        "idle": prober_summary(idle), "load": prober_summary(loaded),
        "load_split_by_completion_ms": split_by_windows(loaded["samples"], windows),
        "load_setup": {"sessions": args.sessions, "followers": args.followers, "load_interval_s": args.load_interval,
                       "startup_s": round(startup_s, 1), "followers_connected": connected,
                       "alive_at_end": {"exec": alive_exec, "logs": alive_logs},
                       "exec_exit_codes_after_stdin_eof": dict(Counter(str(c) for c in exit_codes))},
        "exec_echo_under_load_ms": summary(lat),
        "echoes_per_s": len(lat) / (t1 - t0) if t1 > t0 else 0.0,
        "log_lines_delivered": lines1 - lines0,
        "log_lines_per_s": (lines1 - lines0) / (t1 - t0),
        "completions": completions[0],
        "cpu_percent_of_one_core": cpu,
        "errors": errors[:20],
        "probe_samples_load": loaded["samples"],
    }


def scan_log(paths: list[Path], pattern: str) -> dict:
    rx = re.compile(pattern)
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if rx.search(line):
                key = re.sub(r"\d+", "N", line[24:160] if line[:4].isdigit() else line[:160])
                counts[key] += 1
                examples.setdefault(key, line[:400])
    return {"total": sum(counts.values()), "distinct": [{"count": c, "example": examples[k]} for k, c in counts.most_common(12)]}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="cluster directory (default: a temporary one); logs are kept, the model store copy removed")
    parser.add_argument("--runs", type=int, default=20, help="exec / proxied healthz / healthz round trips each")
    parser.add_argument("--lines", type=int, default=200, help="echoed lines per session")
    parser.add_argument("--log-requests", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20, help="concurrent kubectl exec -i cat sessions for the stall test")
    parser.add_argument("--followers", type=int, default=20, help="concurrent kubectl logs -f for the stall test")
    parser.add_argument("--load-interval", type=float, default=0.02, help="pause between echoes of one loaded exec session (s)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--stall-seconds", type=float, default=30.0)
    parser.add_argument("--wait-quiet", type=float, default=20.0, metavar="S",
                        help="before each section wait up to S s for other processes to use < 0.15 core (0: don't)")
    args = parser.parse_args()

    started = time.monotonic()
    directory = (args.dir or Path(tempfile.mkdtemp(prefix="vnode-bench-kapi-"))).resolve()
    noise = {"load_avg_at_start": os.getloadavg(), "other_clusters_at_start": foreign_activity(directory)}
    binary = ensure_llama_server()
    gemma = podbench.gemma_path()
    cluster = LocalCluster(directory, node_name=NODE)
    state = cluster.up()
    children = Children(directory / "logs")
    core: k8s.CoreV1Api | None = None
    hub: Proc | None = None
    opened: list = []
    sections: dict[str, dict] = {}
    try:
        k8s_config.load_kube_config(config_file=state.admin_kubeconfig)
        core = k8s.CoreV1Api()
        hub, hub_url = podbench.start_hub(cluster, gemma)
        agent = start_node(cluster, core, NODE, f"--hf-endpoint={hub_url}", f"--llama-server={binary}")
        echo_agent = start_echo_node(cluster, core, hub_url)
        host, echo_host = state.host.ns_ip, state.host_for(ECHO_NODE).ns_ip
        print(f"cluster in {directory}; pods {POD} and {ECHO_POD} (model download, server start) ...", flush=True)
        core.create_namespaced_pod(NAMESPACE, pod_manifest())
        core.create_namespaced_pod(NAMESPACE, echo_pod_manifest())
        wait_pods_ready(core, {POD: agent, ECHO_POD: echo_agent})
        kubectl, kubelet, echo_kubelet = Kubectl(cluster), Kubelet(cluster), Kubelet(cluster, ECHO_NODE)
        apiserver_pid = next((p["pid"] for p in state.procs if p["name"] == "kube-apiserver"), None)

        print(f"1. exec round trips: {args.runs} of each kind, interleaved ...", flush=True)
        sec = Section(directory, args.wait_quiet)
        exec_result = bench_exec(kubectl, kubelet, args.runs)
        sections["exec"] = sec.end()

        print(f"2. stream echo: {args.lines} lines per session, 5 sessions round-robin (pod {ECHO_POD}) ...", flush=True)
        pf_proc, pf_local = start_port_forward(children, kubectl, ECHO_POD, [ECHO_PORT])
        exec_proc = children.popen("exec-cat", kubectl.cmd("exec", "-i", "-n", NAMESPACE, ECHO_POD, "--", "cat"), stdin=True)
        forward = SpdyForward(echo_kubelet, ECHO_POD)
        opened.append(forward)
        paths: list[EchoPath] = [PipeEcho("A kubectl exec -i cat", exec_proc), SpdyExecEcho(echo_kubelet, ECHO_POD),
                                 SocketEcho("C direct TCP echo (floor)", echo_host, ECHO_PORT),
                                 SocketEcho("D kubectl port-forward echo", "127.0.0.1", pf_local[ECHO_PORT]), SpdyForwardEcho(forward)]
        opened.extend(paths)
        sec = Section(directory, args.wait_quiet)
        echo_result = bench_echo(paths, args.lines)
        sections["echo"] = sec.end()
        for p in paths:
            p.close()
        try:
            echo_result["kubectl_exec_cat_exit_after_stdin_eof"] = exec_proc.wait(10)
        except subprocess.TimeoutExpired:
            echo_result["kubectl_exec_cat_exit_after_stdin_eof"] = None
        forward.close()
        opened = []
        children.stop(pf_proc)
        children.stop(exec_proc)

        print(f"4. logs -f delivery: {args.log_requests} completions ...", flush=True)
        sec = Section(directory, args.wait_quiet)
        logs_result = bench_logs(children, kubectl, kubelet, host, args.log_requests)
        sections["logs"] = sec.end()

        print(f"5. event loop: /healthz every {PROBE_INTERVAL * 1000:.0f} ms, {args.idle_seconds:.0f} s idle, then "
              f"{args.stall_seconds:.0f} s with {args.sessions} exec + {args.followers} logs -f ...", flush=True)
        sec = Section(directory, args.wait_quiet)
        stall_result = bench_stall(children, kubectl, kubelet, host, agent, apiserver_pid, args)
        sections["stall"] = sec.end()
        noise["other_clusters_at_end"] = foreign_activity(directory)
    finally:
        for o in opened:
            try:
                o.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        children.stop_all()
        if core is not None and cluster.state is not None:
            podbench.cleanup_pods(core)
        if hub is not None:
            stop_process(hub)
        cluster.down()
        leftovers = podbench.stop_leftover_servers(directory)
        if leftovers:
            print(f"warning: stopped {len(leftovers)} pod server(s) the agent left running: pids {leftovers}", file=sys.stderr)
        for node in (NODE, ECHO_NODE):
            shutil.rmtree(directory / "agents" / node / "models", ignore_errors=True)
    elapsed = time.monotonic() - started

    logs_dir = directory / "logs"
    agent_log = scan_log(sorted(logs_dir.glob(f"vnode-{NODE}.*.log")) + sorted(logs_dir.glob(f"vnode-{ECHO_NODE}.*.log")),
                         r" (WARNING|ERROR|CRITICAL) |Traceback")
    node_ips = "|".join(re.escape(ip) for ip in (host, echo_host))
    apiserver_log = scan_log([logs_dir / "kube-apiserver.log"], r"^E\d{4} .*(" + node_ips + r"|kubelet|proxy|stream|exec|portforward)")

    e = echo_result["ms"]
    names = {k[0]: k for k in e}
    med = {k: e[names[k]]["median"] for k in names}
    p99 = {k: e[names[k]]["p99"] for k in names}
    derived = {
        "added_by_vnode_exec (B-C)": {"p50": med["B"] - med["C"], "p99": p99["B"] - p99["C"]},
        "api_server_and_kubectl_exec (A-B)": {"p50": med["A"] - med["B"], "p99": p99["A"] - p99["B"]},
        "added_by_vnode_portforward (E-C)": {"p50": med["E"] - med["C"], "p99": p99["E"] - p99["C"]},
        "api_server_and_kubectl_portforward (D-E)": {"p50": med["D"] - med["E"], "p99": p99["D"] - p99["E"]},
        "exec_vs_portforward_through_api_server (A-D)": {"p50": med["A"] - med["D"], "p99": p99["A"] - p99["D"]},
    }
    echo_result["derived_ms"] = derived

    result = {
        "bench": "kubelet-api",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "noise": {**noise, "sections": sections},
        "elapsed_s": round(elapsed, 1),
        "args": vars(args) | {"dir": str(directory)},
        "exec": exec_result,
        "echo": echo_result,
        "logs_follow": logs_result,
        "event_loop": stall_result,
        "agent_log": agent_log,
        "apiserver_log_errors": apiserver_log,
        "targets": TARGETS,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"kubelet-api-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))

    # ------------------------------------------------------------------ report
    print(f"1. exec round trip, wall time of one command ({args.runs} each, interleaved):")
    for name, s in exec_result["ms"].items():
        print(f"  {name:48s} {ms_line(s)}")
    so = exec_result["streaming_overhead_ms"]
    print(f"  streaming overhead = exec - proxied healthz: p50 {so['p50']:.1f} ms, p99 {so['p99']:.1f} ms (difference of p99s)")
    if exec_result["failures"]:
        print(f"  {len(exec_result['failures'])} failed: {exec_result['failures'][:3]}")
    ph = exec_result["direct_exec_phases_ms"]
    print(f"  vnode alone, exec true phases (median): TLS {ph['tls_ms']['median']:.1f} ms, upgrade {ph['upgrade_ms']['median']:.1f} ms, "
          f"streams -> exit status {ph['streams_to_status_ms']['median']:.1f} ms")
    print(f"2. stream echo, {args.lines} lines of {LINE} B one at a time per session, round-robin:")
    for name, s in e.items():
        print(f"  {name:40s} {ms_line(s)}")
    for name, d in derived.items():
        print(f"  {name:46s} p50 {d['p50']:6.2f} ms   p99 {d['p99']:6.2f} ms")
    print(f"  kubectl exec -i cat exit code after its stdin closed: {echo_result['kubectl_exec_cat_exit_after_stdin_eof']}")
    added = derived["added_by_vnode_exec (B-C)"]["p50"]
    print(f"  added by vnode at p50 (B - C, the fair baseline: same echo, no vnode) vs target <= 5 ms: "
          f"{verdict(max(added, 1e-9), TARGETS['echo_added_by_vnode_p50_ms'], at_most=True)}")
    print(f"4. logs -f delivery, {args.log_requests} completions, line `{MARKER.decode()}` (shim time from --timestamps):")
    for name, s in logs_result["ms"].items():
        print(f"  {name:46s} {ms_line(s)}")
    st = stall_result
    ls = st["load_setup"]
    print(f"5. event loop, GET /healthz every {PROBE_INTERVAL * 1000:.0f} ms on one keep-alive HTTPS connection (separate process):")
    print(f"  idle ({st['idle']['n']} probes)                 {ms_line(st['idle'])}")
    print(f"  under load ({st['load']['n']} probes)           {ms_line(st['load'])}   >50 ms: {st['load']['over_50ms']}, "
          f">20 ms: {st['load']['over_20ms']}, errors {st['load']['errors']}")
    if st["load"].get("n"):
        bound = st["load"]["stall_upper_bound_ms"]
        print(f"  upper bound on any loop stall during the load: max latency + {PROBE_INTERVAL * 1000:.0f} ms probe gap = {bound:.1f} ms "
              f"vs target <= 50 ms: {verdict(bound, TARGETS['loop_stall_ms'], at_most=True)}")
        print(f"    (max latency alone {st['load']['max']:.1f} ms: {verdict(st['load']['max'], TARGETS['loop_stall_ms'], at_most=True)}; "
              "both include CPU contention, so they overstate stalls)")
    sp = st["load_split_by_completion_ms"]
    print(f"    probes overlapping a completion ({sp['during_completion'].get('n', 0)}):  {ms_line(sp['during_completion'])}")
    print(f"    probes outside completions ({sp['outside_completion'].get('n', 0)}):    {ms_line(sp['outside_completion'])}")
    print(f"  load: {ls['sessions']} kubectl exec -i cat echoing every {ls['load_interval_s'] * 1000:.0f} ms "
          f"({st['echoes_per_s']:.0f} echoes/s, echo {ms_line(st['exec_echo_under_load_ms'])}),")
    print(f"        {ls['followers']} kubectl logs -f ({ls['followers_connected']} connected, {st['log_lines_per_s']:.0f} lines/s delivered), "
          f"{st['completions']} completions; start-up of all {ls['startup_s']:.1f} s; alive at the end: {ls['alive_at_end']}; "
          f"kubectl exec exit codes after stdin EOF: {ls['exec_exit_codes_after_stdin_eof']}")
    print(f"        CPU % of one core during the probe window: {st['cpu_percent_of_one_core']}")
    if st["errors"]:
        print(f"        errors during the load: {st['errors'][:5]}")
    print(f"agent log: {agent_log['total']} warning/error lines" + (":" if agent_log["total"] else ""))
    for d in agent_log["distinct"][:8]:
        print(f"  {d['count']:5d} x {d['example'][:220]}")
    if apiserver_log["total"]:
        print(f"API server log: {apiserver_log['total']} error lines about kubelet/streams, e.g.:")
        for d in apiserver_log["distinct"][:5]:
            print(f"  {d['count']:5d} x {d['example'][:220]}")
    contended = {k: v["foreign_cores"] for k, v in sections.items() if v["contended"]}
    if contended:
        print(f"warning: other processes on this machine used cores during: {contended} (foreign cores; "
              f"other clusters {noise.get('other_clusters_at_start')} at start, {noise.get('other_clusters_at_end')} at end); "
              "those numbers are noisier")
    waited = sum(v["waited_for_quiet_s"] for v in sections.values())
    print(f"took {elapsed:.0f} s ({waited:.0f} s of it waiting for other load on the machine to pass); cluster logs in {logs_dir}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
