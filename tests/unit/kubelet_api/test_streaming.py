"""exec and port-forward through the real kubelet API app (routing, auth middleware, SPDY
upgrade, WebSocket) on a loopback socket, with a pod served by a fake ContainerSource:
bounded memory under a flood to a client that never reads, a stalled stream that does not
stall its siblings, the stream timeouts, the {podUID} check and the port-forward scope."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from tests.unit.kubelet_api.test_probe_metrics import Authn, Authz
from tests.unit.kubelet_api.test_spdy import Client
from vnode.kubelet_api import portforward
from vnode.kubelet_api.context import ApiContext, Launch, StreamLimits
from vnode.kubelet_api.server import build_app
from vnode.kubelet_api.spdy import DataFrame, RstStreamFrame, SynStreamFrame

pytestmark = pytest.mark.timeout(60)

UID = "0f9c6a2e-1111-4a4a-9d9d-5b5b5b5b5b5b"
TOKEN = "Authorization: Bearer good"
MiB = 1 << 20


@dataclass
class FakeContainer:
    launch_: Launch
    pod_ref: str = "llm/gemma"
    pod_uid: str = UID
    name: str = "server"
    logs: Path = Path("/nonexistent")

    def launch(self) -> Launch | None:
        return self.launch_

    def instance(self) -> int | None:
        return 0

    def restart_count(self) -> int:
        return 0

    def waiting_reason(self) -> str:
        return ""

    def log_path(self, instance: int) -> Path:
        return self.logs / f"{instance}.log"

    def alive(self, instance: int) -> bool:
        return True


@dataclass
class FakePod:
    container_: FakeContainer
    pod_ref: str = "llm/gemma"
    pod_uid: str = UID

    def container(self, name: str) -> FakeContainer | None:
        return self.container_ if name == self.container_.name else None

    def launches(self) -> list[Launch]:
        return [self.container_.launch_]


@dataclass
class FakeSource:
    pod: FakePod
    asked: list[tuple[str, str]] = field(default_factory=list)

    def find_pod(self, namespace: str, name: str) -> FakePod | None:
        self.asked.append((namespace, name))
        return self.pod if (namespace, name) == ("llm", "gemma") else None


@dataclass
class Api:
    host: str
    port: int
    source: FakeSource

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=64 * 1024)

    async def spdy(self, path: str, protocol: str) -> tuple[Client, bytes]:
        """Upgrade to SPDY/3.1; the client and the response head."""
        reader, writer = await self.connect()
        writer.write((f"POST {path} HTTP/1.1\r\nHost: vnode\r\n{TOKEN}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                      f"X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return Client(reader, writer), head

    async def websocket(self, path: str, protocol: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A hand-made WebSocket handshake, so that nothing reads the socket behind the test's back."""
        reader, writer = await self.connect()
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: vnode\r\n{TOKEN}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return reader, writer, head


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


async def ws_messages(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Unmasked server frames' payloads (no fragmentation: the server does not fragment)."""
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await reader.readexactly(8))
        payload = await reader.readexactly(n)
        if b0 & 0x0F == 8:
            return
        yield payload


@contextlib.asynccontextmanager
async def serve(launch: Launch, limits: StreamLimits | None = None) -> AsyncIterator[Api]:
    source = FakeSource(FakePod(FakeContainer(launch)))
    ctx = ApiContext(node_name="mac", pods=None, supervisor=None, log_dir=None, containers=source,
                     streams=limits or StreamLimits())
    runner = web.AppRunner(build_app(ctx, authn=Authn(), authz=Authz()), shutdown_timeout=1)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Api(host, port, source)
    finally:
        await runner.cleanup()


def exec_launch(tmp_path: Path, port: int = 1) -> Launch:
    return Launch(host="127.0.0.1", port=port, workdir=str(tmp_path), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@contextlib.asynccontextmanager
async def pod_server(handler) -> AsyncIterator[int]:
    """A TCP server for the pod's side; `handler(reader, writer, stop)` should end at `stop`."""
    stop = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer, stop)
        writer.close()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        stop.set()
        for writer in writers:
            writer.close()
        server.close()
        await asyncio.sleep(0.05)


def rss() -> int:
    return psutil.Process().memory_info().rss


async def _growth_while(seconds: float) -> int:
    """RSS growth of this process (the agent's app runs in it) between 1 s and `seconds` s."""
    await asyncio.sleep(1.0)
    start = peak = rss()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds - 1.0
    while loop.time() < end:
        await asyncio.sleep(0.2)
        peak = max(peak, rss())
    return peak - start


# --- 1. bounded memory under a flood to a client that never reads ------------------------

FLOOD_SECONDS = 5.0
FLOOD_BOUND = 24 * MiB  # the bytes in flight are a few MiB (socket buffers, one read chunk, one frame)


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "pipes"])
@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec_yes_to_a_client_that_never_reads_keeps_the_agent_bounded(tmp_path: Path, transport: str, tty: bool) -> None:
    flags = "&tty=1" if tty else "&error=1"
    async with serve(exec_launch(tmp_path)) as api:
        path = f"/exec/llm/gemma/{UID}/server?command=yes&output=1{flags}"
        if transport == "spdy":
            client, head = await api.spdy(path, "v4.channel.k8s.io")
            assert head.startswith(b"HTTP/1.1 101"), head
            kinds = ["error", "stdout"] + (["resize"] if tty else ["stderr"])
            for i, kind in enumerate(kinds):
                client.open(2 * i + 1, kind)
            writer = client.writer
        else:
            _, writer, head = await api.websocket(path, "v4.channel.k8s.io")
            assert head.startswith(b"HTTP/1.1 101"), head
        # From here on the client reads nothing.
        grown = await _growth_while(FLOOD_SECONDS)
        writer.close()
    assert grown < FLOOD_BOUND, f"the agent grew by {grown / MiB:.0f} MiB in {FLOOD_SECONDS} s"


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_portforward_flood_to_a_client_that_never_reads_keeps_the_agent_bounded(transport: str) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
        chunk = b"y" * 65536
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()

    async with pod_server(flood) as port, serve(Launch("127.0.0.1", port, "/", {})) as api:
        if transport == "spdy":
            client, head = await api.spdy(f"/portForward/llm/gemma/{UID}", "portforward.k8s.io")
            assert head.startswith(b"HTTP/1.1 101"), head
            client.send(SynStreamFrame(1, {"streamtype": ["error"], "port": [str(port)], "requestid": ["0"]}),
                        SynStreamFrame(3, {"streamtype": ["data"], "port": [str(port)], "requestid": ["0"]}))
            writer = client.writer
        else:
            _, writer, head = await api.websocket(f"/portForward/llm/gemma?port={port}", "v4.channel.k8s.io")
            assert head.startswith(b"HTTP/1.1 101"), head
        grown = await _growth_while(FLOOD_SECONDS)
        writer.close()
    assert grown < FLOOD_BOUND, f"the agent grew by {grown / MiB:.0f} MiB in {FLOOD_SECONDS} s"


def _yes_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "yes"]


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "pipes"])
@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_exec_command_is_killed_when_the_client_goes_away(tmp_path: Path, transport: str, tty: bool) -> None:
    """A client that disconnects mid-flood: the command does not outlive the session
    (blocked on its output, or writing into writes that are dropped)."""
    flags = "&tty=1" if tty else "&error=1"
    async with serve(exec_launch(tmp_path)) as api:
        path = f"/exec/llm/gemma/{UID}/server?command=yes&output=1{flags}"
        if transport == "spdy":
            client, _ = await api.spdy(path, "v4.channel.k8s.io")
            for i, kind in enumerate(["error", "stdout"] + (["resize"] if tty else ["stderr"])):
                client.open(2 * i + 1, kind)
            reader, writer = client.reader, client.writer
        else:
            reader, writer, _ = await api.websocket(path, "v4.channel.k8s.io")
        await asyncio.wait_for(reader.read(65536), 5)
        async with asyncio.timeout(5):
            while not _yes_children():
                await asyncio.sleep(0.05)
        writer.transport.abort()
        async with asyncio.timeout(5):
            while _yes_children():
                await asyncio.sleep(0.05)


# --- 2. a stalled stream does not stall its siblings -------------------------------------


def stall_or_echo():
    """A pod server: a connection whose first bytes are STALL never reads again; others echo."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
        first = await reader.read(5)
        if first == b"STALL":
            await stop.wait()
            return
        writer.write(first)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    return handler


async def test_spdy_portforward_stalled_stream_does_not_stall_its_sibling() -> None:
    """Like spdystream, the client ignores windows and pushes 12 MiB (within the 16 MiB
    window, past every socket buffer) to a pod connection that reads nothing: the other
    connection of the session still echoes at once. Past the window, the stalled stream is
    reset after the stall timeout, and the sibling goes on."""
    limits = StreamLimits(stall_timeout=1.0)
    async with pod_server(stall_or_echo()) as port, serve(Launch("127.0.0.1", port, "/", {}), limits) as api:
        client, head = await api.spdy(f"/portForward/llm/gemma/{UID}", "portforward.k8s.io")
        assert head.startswith(b"HTTP/1.1 101"), head
        for sid, kind, rid in ((1, "error", "0"), (3, "data", "0"), (5, "error", "1"), (7, "data", "1")):
            client.send(SynStreamFrame(sid, {"streamtype": [kind], "port": [str(port)], "requestid": [rid]}))
        client.send(DataFrame(3, b"STALL"))
        block = b"z" * (256 * 1024)

        async def push(n: int) -> None:
            for _ in range(n):
                client.send(DataFrame(3, block))
                await client.writer.drain()

        async def echo(text: bytes, timeout: float) -> None:
            client.send(DataFrame(7, text))
            got = b""
            while len(got) < len(text):
                frame = await client.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 7, timeout=timeout)
                got += frame.data
            assert got == text

        await asyncio.wait_for(push(48), 5)  # 12 MiB
        await echo(b"hello", timeout=2.0)
        pushing = asyncio.create_task(push(64))  # 16 MiB more: past the window
        reset = await client.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 3, timeout=10)
        assert isinstance(reset, RstStreamFrame)
        await asyncio.wait_for(pushing, 10)
        await echo(b"still here", timeout=5.0)
        client.writer.close()


async def test_websocket_portforward_stalled_port_does_not_stall_the_others_for_good() -> None:
    """No flow control in the channel protocol: the reader waits for a full port, but a
    port whose pod side takes nothing for the stall timeout is ended with an error and the
    other port flows again."""
    limits = StreamLimits(stall_timeout=1.0)
    async with pod_server(stall_or_echo()) as port, serve(Launch("127.0.0.1", port, "/", {}), limits) as api:
        reader, writer, head = await api.websocket(f"/portForward/llm/gemma?port={port}&port={port}", "v4.channel.k8s.io")
        assert head.startswith(b"HTTP/1.1 101"), head
        messages = ws_messages(reader)
        for _ in range(4):  # the greetings
            await asyncio.wait_for(messages.__anext__(), 5)
        writer.write(ws_frame(b"\x00STALL"))
        block = ws_frame(b"\x00" + b"z" * (256 * 1024))

        async def push() -> None:
            for _ in range(48):  # 12 MiB: past the port's 4 MiB buffer and the socket buffers
                writer.write(block)
                await writer.drain()

        pushing = asyncio.create_task(push())
        await asyncio.sleep(0.5)
        writer.write(ws_frame(b"\x02ping"))
        got: dict[int, bytes] = {}
        async with asyncio.timeout(limits.stall_timeout + 5):
            while b"ping" not in got.get(2, b""):
                message = await messages.__anext__()
                got[message[0]] = got.get(message[0], b"") + message[1:]
        assert b"took no data" in got.get(1, b""), got
        await asyncio.wait_for(pushing, 10)
        writer.close()


# --- 3. timeouts -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_an_idle_stream_connection_is_closed(tmp_path: Path, transport: str) -> None:
    limits = StreamLimits(idle_timeout=1.0)
    async with serve(exec_launch(tmp_path), limits) as api:
        path = f"/exec/llm/gemma/{UID}/server?command=sleep&command=30&output=1&input=1"
        if transport == "spdy":
            client, _ = await api.spdy(path, "v4.channel.k8s.io")
            for i, kind in enumerate(("error", "stdout", "stdin")):
                client.open(2 * i + 1, kind)
            reader = client.reader
        else:
            reader, writer, _ = await api.websocket(path, "v4.channel.k8s.io")  # keep the writer: dropped, it closes
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
        elapsed = asyncio.get_running_loop().time() - started
    assert 0.8 < elapsed < 6, elapsed


async def test_exec_streams_not_opened_in_time_end_the_request(tmp_path: Path) -> None:
    limits = StreamLimits(creation_timeout=0.5)
    async with serve(exec_launch(tmp_path), limits) as api:
        client, head = await api.spdy(f"/exec/llm/gemma/{UID}/server?command=true&output=1", "v4.channel.k8s.io")
        assert head.startswith(b"HTTP/1.1 101")
        client.open(1, "error")  # never the stdout stream
        async with asyncio.timeout(5):
            while await client.reader.read(65536):
                pass


async def test_spdy_error_stream_without_its_data_stream_times_out() -> None:
    limits = StreamLimits(creation_timeout=0.5)
    async with pod_server(stall_or_echo()) as port, serve(Launch("127.0.0.1", port, "/", {}), limits) as api:
        client, _ = await api.spdy(f"/portForward/llm/gemma/{UID}", "portforward.k8s.io")
        client.send(SynStreamFrame(1, {"streamtype": ["error"], "port": [str(port)], "requestid": ["0"]}))
        text = await client.data(1, until_fin=True)
        assert b"timed out waiting for the data stream" in text


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_portforward_connect_timeout(transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(host: str, port: int):
        await asyncio.Event().wait()

    monkeypatch.setattr(portforward, "_connect", hang)
    monkeypatch.setattr(portforward, "_ws_connect", hang)
    limits = StreamLimits(connect_timeout=0.5)
    async with serve(Launch("127.0.0.1", 9, "/", {}), limits) as api:
        if transport == "spdy":
            client, _ = await api.spdy(f"/portForward/llm/gemma/{UID}", "portforward.k8s.io")
            client.send(SynStreamFrame(1, {"streamtype": ["error"], "port": ["9"], "requestid": ["0"]}),
                        SynStreamFrame(3, {"streamtype": ["data"], "port": ["9"], "requestid": ["0"]}))
            text = await client.data(1, until_fin=True)
        else:
            reader, writer, _ = await api.websocket("/portForward/llm/gemma?port=9", "v4.channel.k8s.io")
            messages = ws_messages(reader)
            text = b""
            async with asyncio.timeout(5):
                while b"timed out" not in text:
                    message = await messages.__anext__()
                    if message[0] == 1:
                        text += message[1:]
    assert b"timed out after 0.5s" in text, text


# --- 5. the {podUID} segment and the port-forward scope ----------------------------------


@pytest.mark.parametrize("path", [
    "/exec/llm/gemma/{uid}/server?command=true&output=1",
    "/attach/llm/gemma/{uid}/server?output=1",
    "/portForward/llm/gemma/{uid}",
])
async def test_a_pod_uid_that_does_not_match_is_not_found(tmp_path: Path, path: str) -> None:
    async with serve(exec_launch(tmp_path)) as api:
        client, head = await api.spdy(path.format(uid="00000000-dead-beef-0000-000000000000"),
                                      "portforward.k8s.io" if "portForward" in path else "v4.channel.k8s.io")
        assert head.startswith(b"HTTP/1.1 404"), head
        client.writer.close()
        # The right UID gets its upgrade.
        client, head = await api.spdy(path.format(uid=UID), "portforward.k8s.io" if "portForward" in path else "v4.channel.k8s.io")
        assert head.startswith(b"HTTP/1.1 101"), head
        client.writer.close()


async def test_portforward_reaches_only_the_launched_port() -> None:
    async with pod_server(stall_or_echo()) as port, serve(Launch("127.0.0.1", port, "/", {})) as api:
        client, _ = await api.spdy(f"/portForward/llm/gemma/{UID}", "portforward.k8s.io")
        client.send(SynStreamFrame(1, {"streamtype": ["error"], "port": ["22"], "requestid": ["0"]}),
                    SynStreamFrame(3, {"streamtype": ["data"], "port": ["22"], "requestid": ["0"]}))
        text = await client.data(1, until_fin=True)
        assert text.startswith(b"port 22 is not a port vnode serves for pod llm/gemma"), text
        assert f"launched on ({port})".encode() in text
        assert await client.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 3)
        client.writer.close()
        reader, writer, head = await api.websocket("/portForward/llm/gemma?port=22", "v4.channel.k8s.io")
        assert head.startswith(b"HTTP/1.1 400"), head
        body = await asyncio.wait_for(reader.read(4096), 5)
        assert b"port 22 is not a port vnode serves for pod llm/gemma" in body, body
        writer.close()
