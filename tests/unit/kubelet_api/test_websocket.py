"""The WebSocket channel protocols: codec, negotiation, and sessions on a real aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from vnode.kubelet_api import websocket as kws
from vnode.kubelet_api.websocket import (
    CLOSE_CHANNEL,
    EXEC_CHANNELS,
    EXEC_PROTOCOLS,
    MAX_MESSAGE_SIZE,
    PORTFORWARD_PROTOCOLS,
    ChannelError,
    accept,
    choose_protocol,
    command_exit_message,
    decode,
    encode,
    exec_session,
    exit_status,
    parse_ports,
    parse_stream_options,
    portforward_session,
    status_json,
    status_payload,
)

V5, V4, V4B64 = "v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"
SUCCESS = b'{"metadata":{},"status":"Success"}'
EXIT_3 = (
    b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: '
    b'error executing command [cat], exit code 3","reason":"NonZeroExitCode",'
    b'"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
)
EOT = b"\x04"  # the test handler's in-band end of input, for protocols without half-close


# --- negotiation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([V4, V5], V5),
        (["channel.k8s.io", V4], V4),
        (["base64.channel.k8s.io", V4B64], V4B64),
        ([V4B64, V4], V4),
        ([V4B64, "v3.channel.k8s.io"], V4B64),
        (["v2.channel.k8s.io", "v3.channel.k8s.io"], "v3.channel.k8s.io"),
        (["channel.k8s.io", "base64.channel.k8s.io"], "channel.k8s.io"),
        (["base64.channel.k8s.io"], "base64.channel.k8s.io"),
        ([f"{V4}, {V5}"], V5),
        ([], ""),
        (["  "], ""),
        (["v6.channel.k8s.io", "portforward.k8s.io"], None),
        (["V5.CHANNEL.K8S.IO"], None),
    ],
)
def test_exec_negotiation(offered: list[str], expected: str | None) -> None:
    assert choose_protocol(offered, kind="exec") == expected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([V5, V4], V4),  # the Python client offers both; the kubelet's port-forward has no v5
        ([V4B64], V4B64),
        ([V4B64, V4], V4),
        ([], ""),
        (["portforward.k8s.io"], None),  # SPDY only
        (["SPDY/3.1+portforward.k8s.io"], None),  # tunneled SPDY ends at the API server
        (["channel.k8s.io", "base64.channel.k8s.io"], None),
    ],
)
def test_portforward_negotiation(offered: list[str], expected: str | None) -> None:
    assert choose_protocol(offered, kind="portforward") == expected


def test_negotiation_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        choose_protocol([V4], kind="logs")  # type: ignore[arg-type]


def test_offered_protocols_reads_every_header() -> None:
    headers = CIMultiDict([("Sec-WebSocket-Protocol", f"{V5}, {V4}"), ("sec-websocket-protocol", V4B64)])
    assert kws.offered_protocols(headers) == [V5, V4, V4B64]


def test_protocol_versions() -> None:
    specs = {s.name: s for s in EXEC_PROTOCOLS}
    assert specs[V5].close_signal and specs[V5].json_status
    assert specs[V4].json_status and not specs[V4].close_signal
    assert specs[V4B64].base64 and specs[V4B64].json_status
    for name in ("v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io", ""):
        assert not specs[name].json_status
    assert not any(s.close_signal for s in PORTFORWARD_PROTOCOLS)


# --- codec -------------------------------------------------------------------------------

ALL_SPECS = sorted({(s.name, s.base64) for s in EXEC_PROTOCOLS + PORTFORWARD_PROTOCOLS})


@pytest.mark.parametrize(("name", "b64"), ALL_SPECS)
@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("data", [b"", b"foo\n", bytes(range(256)), b"\x00" * 1000])
def test_round_trip_every_protocol(name: str, b64: bool, channel: int, data: bytes) -> None:
    frame = encode(channel, data, base64=b64)
    assert isinstance(frame, str if b64 else bytes)
    assert decode(frame, base64=b64) == (channel, data)


@given(channel=st.integers(0, 79), data=st.binary(max_size=2048), b64=st.booleans())
def test_round_trip_property(channel: int, data: bytes, b64: bool) -> None:
    assert decode(encode(channel, data, base64=b64), base64=b64, channels=range(80)) == (channel, data)


def test_known_frames() -> None:
    assert encode(0, b"foo\n", base64=False) == b"\x00foo\n"
    assert encode(1, b"\n", base64=True) == "1Cg=="  # the example in Kubernetes' wsstream docs
    assert decode("0Zm9vCg==", base64=True) == (0, b"foo\n")
    assert decode(bytearray(b"\x02err"), base64=False) == (2, b"err")
    assert decode(memoryview(b"\x04{}"), base64=False) == (4, b"{}")


def test_text_frames_in_binary_protocols() -> None:
    # The Python client sends str stdin as a TEXT frame chr(0) + data even on v4/v5.
    assert decode("\x00ls -l\n", base64=False) == (0, b"ls -l\n")
    assert decode("\x00h\u00e9", base64=False) == (0, "h\u00e9".encode())


def test_base64_accepts_line_breaks_like_go() -> None:
    assert decode("0Zm9v\r\nCg==", base64=True) == (0, b"foo\n")


def test_v5_close_signal() -> None:
    assert decode(bytes([CLOSE_CHANNEL, 0]), base64=False) == (CLOSE_CHANNEL, b"\x00")
    assert decode(bytes([CLOSE_CHANNEL, 4]), base64=False) == (CLOSE_CHANNEL, b"\x04")


@pytest.mark.parametrize(
    ("message", "b64", "fatal"),
    [
        (b"", False, False),
        ("", True, False),
        (b"\x09data", False, False),
        ("9Zm9v", True, False),
        ("/Zm9v", True, False),  # '/' - '0' is negative
        ("\u00e9Zm9v", True, False),
        ("0Zm9v!", True, False),
        ("0Zm9vYg", True, False),  # missing padding
        ("0Zg==Zg==", True, False),  # data after padding
        (b"0\xffZm9v", True, False),
        ("\x00\ud800", False, False),  # lone surrogate: not UTF-8
        (bytes([CLOSE_CHANNEL]), False, True),
        (bytes([CLOSE_CHANNEL, 0, 1]), False, True),
        (bytes([CLOSE_CHANNEL, CLOSE_CHANNEL]), False, True),
        (bytes([CLOSE_CHANNEL, 7]), False, True),
        (b"\x00" + b"x" * MAX_MESSAGE_SIZE, False, True),
        ("0" + "A" * MAX_MESSAGE_SIZE, True, True),
        ("\x00" + "\u00e9" * (MAX_MESSAGE_SIZE // 2), False, True),  # small in chars, big in bytes
    ],
)
def test_malformed_messages(message: bytes | str, b64: bool, fatal: bool) -> None:
    with pytest.raises(ChannelError) as caught:
        decode(message, base64=b64)
    assert (caught.value.close_code is not None) is fatal


def test_close_signal_is_an_unknown_channel_before_v5() -> None:
    with pytest.raises(ChannelError) as caught:
        decode(bytes([CLOSE_CHANNEL, 0]), base64=False, channels=EXEC_CHANNELS - {CLOSE_CHANNEL})
    assert caught.value.close_code is None


def test_oversize_close_code() -> None:
    with pytest.raises(ChannelError) as caught:
        decode(b"\x00" * (MAX_MESSAGE_SIZE + 1), base64=False)
    assert caught.value.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def test_decode_rejects_non_messages() -> None:
    with pytest.raises(ChannelError):
        decode(None, base64=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("channel", "b64"), [(-1, False), (256, False), (80, True), (CLOSE_CHANNEL, True)])
def test_encode_rejects_unencodable_channels(channel: int, b64: bool) -> None:
    with pytest.raises(ChannelError):
        encode(channel, b"x", base64=b64)


@given(
    message=st.one_of(st.binary(max_size=300), st.text(max_size=300)),
    b64=st.booleans(),
    channels=st.sampled_from([EXEC_CHANNELS, EXEC_CHANNELS - {CLOSE_CHANNEL}, frozenset(range(6)), frozenset()]),
)
def test_decode_raises_only_channel_error(message: bytes | str, b64: bool, channels: frozenset[int]) -> None:
    try:
        channel, payload = decode(message, base64=b64, channels=channels)
    except ChannelError:
        return
    assert channel in channels and isinstance(payload, bytes)


def run_decode_fuzz(seconds: float, seed: int | None = None) -> int:
    """Mutation fuzzing of the channel decoder for a while (binary and base64 framing, every
    channel set in use); only ChannelError may come out. Returns the number of cases run."""
    rng = random.Random(seed)
    corpus = [encode(c, rng.randbytes(rng.randint(0, 64)), base64=b64) for c in range(5) for b64 in (False, True)]
    sets = [EXEC_CHANNELS, EXEC_CHANNELS - {CLOSE_CHANNEL}, frozenset(range(6)), frozenset()]
    deadline, cases = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        seed_msg = rng.choice(corpus)
        raw = bytearray(seed_msg.encode() if isinstance(seed_msg, str) else seed_msg)
        for _ in range(rng.randint(0, 6)):
            pos = rng.randrange(len(raw) + 1)
            if rng.random() < 0.5 and raw:
                raw[min(pos, len(raw) - 1)] = rng.randrange(256)
            else:
                raw[pos:pos] = rng.randbytes(rng.randint(1, 8))
        b64 = rng.random() < 0.5
        message: bytes | str = raw.decode("latin-1") if b64 and rng.random() < 0.8 else bytes(raw)
        channels = rng.choice(sets)
        try:
            channel, payload = decode(message, base64=b64, channels=channels)
        except ChannelError:
            pass
        else:
            assert channel in channels and isinstance(payload, bytes)
        cases += 1
    return cases


@pytest.mark.skipif(not os.environ.get("VNODE_FUZZ_SECONDS"), reason="set VNODE_FUZZ_SECONDS for a long run")
def test_fuzz_long_channel_decoder() -> None:
    seconds = float(os.environ["VNODE_FUZZ_SECONDS"])
    cases = run_decode_fuzz(seconds)
    print(f"WebSocket channel decoder: {cases} mutated cases in {seconds:g} s, only ChannelError raised")
    assert cases > 0


def test_channel_decoder_fuzz_smoke() -> None:
    assert run_decode_fuzz(0.5, seed=1) > 100


# --- exit status -------------------------------------------------------------------------


def test_status_shapes_match_go() -> None:
    assert status_json(exit_status(0)) == SUCCESS
    assert status_json(exit_status(3, command_exit_message(["cat"], 3))) == EXIT_3
    assert json.loads(status_json(exit_status(3)))["message"] == "command terminated with non-zero exit code: exit code 3"
    internal = json.loads(status_json(exit_status(None, "no such container")))
    assert internal == {
        "metadata": {}, "status": "Failure", "message": "Internal error occurred: no such container",
        "reason": "InternalError", "details": {"causes": [{"message": "no such container"}]}, "code": 500,
    }


def test_status_escapes_html_like_go() -> None:
    encoded = status_json(exit_status(1, command_exit_message(["sh", "-c", "a && b <x>"], 1)))
    assert b"\\u0026\\u0026" in encoded and b"\\u003cx\\u003e" in encoded
    assert json.loads(encoded)["message"].endswith("[sh -c a && b <x>], exit code 1")


def test_exit_codes_are_uint8() -> None:
    assert exit_status(-9)["details"]["causes"][0]["message"] == "137"  # killed by SIGKILL
    assert exit_status(255)["details"]["causes"][0]["message"] == "255"
    with pytest.raises(ValueError):
        exit_status(256)


def test_text_status_for_old_protocols() -> None:
    v1 = kws.protocol_spec("channel.k8s.io", kind="exec")
    assert status_payload(exit_status(0), v1) is None
    assert status_payload(exit_status(3, command_exit_message(["cat"], 3)), v1) == (
        b"command terminated with non-zero exit code: error executing command [cat], exit code 3"
    )
    assert status_payload(exit_status(0), kws.protocol_spec(V4B64, kind="exec")) == SUCCESS


# --- request parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("port", "8080")], (8080,)),
        ([("port", "80,443")], (80, 443)),
        ([("port", "80"), ("port", "443")], (80, 443)),
        ([("ports", "5000,5000")], (5000, 5000)),
        ([("port", "1"), ("ports", "65535")], (1, 65535)),
    ],
)
def test_parse_ports(pairs: list[tuple[str, str]], expected: tuple[int, ...]) -> None:
    assert parse_ports(MultiDict(pairs)) == expected


@pytest.mark.parametrize(
    "pairs",
    [[], [("port", "")], [("port", "0")], [("port", "65536")], [("port", "+80")], [("port", "80,")],
     [("port", " 80")], [("port", "http")], [("port", ",".join(["1"] * (kws.MAX_PORTS + 1)))]],
)
def test_parse_ports_errors(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        parse_ports(MultiDict(pairs))


def test_parse_stream_options() -> None:
    opts = parse_stream_options({"stdin": "1", "stdout": "1", "stderr": "1", "tty": "1"})
    assert (opts.stdin, opts.stdout, opts.stderr, opts.tty) == (True, True, False, True)
    assert parse_stream_options({"stdout": "True"}).stdout  # the Python client's spelling
    assert not parse_stream_options({"stdout": "yes", "stderr": "1"}).stdout
    with pytest.raises(ValueError):
        parse_stream_options({"tty": "1", "stderr": "1"})


# --- resize stream -----------------------------------------------------------------------


async def _drain_resizes(sink: kws._ResizeSink) -> list[tuple[int, int]]:
    sizes = []
    while (size := await sink.get()) is not None:
        sizes.append(size)
    return sizes


async def test_resize_stream_parsing() -> None:
    sink = kws._ResizeSink()
    await sink.put(b'{"Width":80,"Height":24}')
    await sink.put(b'{"Width":100,')  # split across messages
    await sink.put(b'"Height":30}\n{"width":1,"height":2}')  # two per message, Go's case-insensitive names
    await sink.put(b"garbage")  # like the kubelet, a broken stream ends resize handling
    await sink.put(b'{"Width":5,"Height":5}')
    assert await _drain_resizes(sink) == [(80, 24), (100, 30), (1, 2)]
    assert await sink.get() is None  # stays ended


@pytest.mark.parametrize("bad", [b'{"Width":70000}', b'{"Width":-1}', b'{"Width":"80"}', b"[80,24]", b"\xff"])
async def test_resize_stream_rejects(bad: bytes) -> None:
    sink = kws._ResizeSink()
    await sink.put(bad)
    assert await _drain_resizes(sink) == []


async def test_inbox_backpressure_and_eof() -> None:
    inbox = kws._Inbox(limit=4)
    await inbox.put(b"abcd")
    blocked = asyncio.create_task(inbox.put(b"efgh"))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # full: the socket reader waits for the consumer
    assert await inbox.get() == b"abcd"
    await asyncio.wait_for(blocked, 1)
    inbox.close()
    assert [await inbox.get(), await inbox.get(), await inbox.get()] == [b"efgh", b"", b""]


# --- a real server -----------------------------------------------------------------------


STDIN_ENDED = web.AppKey("stdin_ended", asyncio.Queue)  # per exec: was the connection gone by then


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession
    app: web.Application


async def _exec_handler(request: web.Request) -> web.StreamResponse:
    """Echo stdin to stdout (until EOF or EOT), resize events to stderr, then exit 3."""
    opts = parse_stream_options(request.query)
    ws, protocol = await accept(request, kind="exec")
    streams = await exec_session(ws, protocol, stdin=opts.stdin, stdout=opts.stdout, stderr=opts.stderr)

    async def resizes() -> None:
        async for width, height in streams.resize_events():
            await streams.write_stderr(f"{width}x{height}".encode())

    resize_task = asyncio.create_task(resizes())
    while chunk := await streams.read_stdin():
        await streams.write_stdout(chunk.rstrip(EOT))
        if chunk.endswith(EOT):
            break
    request.app[STDIN_ENDED].put_nowait(streams.closed)
    await streams.send_status(3, command_exit_message(["cat"], 3))
    await streams.close()
    resize_task.cancel()
    return ws


async def _portforward_handler(request: web.Request) -> web.StreamResponse:
    """Echo every port, except port 1 which fails like a refused connection."""
    try:
        ports = parse_ports(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    ws, protocol = await accept(request, kind="portforward")
    streams = await portforward_session(ws, protocol, ports)

    async def serve(port: kws.PortStream) -> None:
        if port.port == 1:
            await port.write_error("dial tcp 127.0.0.1:1: connect: connection refused")
            return
        while data := await port.read():
            await port.write(data)

    await asyncio.gather(*(serve(port) for port in streams))
    await streams.close()
    return ws


async def _portforward_run_handler(request: web.Request) -> web.StreamResponse:
    """The kubelet-like plumbing: every port goes to a TCP connection on 127.0.0.1."""
    ports = parse_ports(request.query)
    ws, protocol = await accept(request, kind="portforward")
    streams = await portforward_session(ws, protocol, ports)
    await streams.run(lambda port: asyncio.open_connection("127.0.0.1", port))
    await streams.close()
    return ws


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    app[STDIN_ENDED] = asyncio.Queue()
    app.router.add_get("/exec/{ns}/{pod}/{container}", _exec_handler)
    app.router.add_get("/portForward/{ns}/{pod}", _portforward_handler)
    app.router.add_get("/portForwardTCP/{ns}/{pod}", _portforward_run_handler)
    # the paths the Python client uses when pointed straight at this server
    app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{pod}/exec", _exec_handler)
    app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{pod}/portforward", _portforward_handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Server(f"http://{host}:{port}", session, app)
    await runner.cleanup()


EXEC_PATH = "/exec/default/pod/main?command=cat&stdin=1&stdout=1&stderr=1"


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), timeout=5)


async def _read_until_close(ws: aiohttp.ClientWebSocketResponse, *, b64: bool) -> dict[int, bytes]:
    """Every channel's bytes until the server closes."""
    got: dict[int, bytes] = {}
    while (msg := await _receive(ws)).type in (WSMsgType.BINARY, WSMsgType.TEXT):
        channel, payload = decode(msg.data, base64=b64)
        got[channel] = got.get(channel, b"") + payload
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    return got


async def test_exec_v4_binary(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4,)) as ws:
        assert ws.protocol == V4
        ready = await _receive(ws)
        assert (ready.type, ready.data) == (WSMsgType.BINARY, b"\x01")  # kubelet's empty stdout frame
        await ws.send_bytes(b'\x04{"Width":120,"Height":40}')
        assert (await _receive(ws)).data == b"\x02120x40"
        await ws.send_bytes(b"\x00hello ")
        assert (await _receive(ws)).data == b"\x01hello "
        await ws.send_bytes(b"\x01ignored: stdout is write-only")
        await ws.send_bytes(b"\x09ignored: no such channel")
        await ws.send_str("\x00world" + EOT.decode())  # the Python client's TEXT frames
        got = await _read_until_close(ws, b64=False)
    assert got == {1: b"world", 3: EXIT_3}


async def test_exec_base64(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4B64, "base64.channel.k8s.io")) as ws:
        assert ws.protocol == V4B64
        ready = await _receive(ws)
        assert (ready.type, ready.data) == (WSMsgType.TEXT, "1")
        await ws.send_str("0" + base64.b64encode(b"hi\x00there").decode())
        msg = await _receive(ws)
        assert msg.type is WSMsgType.TEXT and decode(msg.data, base64=True) == (1, b"hi\x00there")
        await ws.send_str("0not base64!")  # skipped, as the kubelet does
        await ws.send_str("0" + base64.b64encode(EOT).decode())
        got = await _read_until_close(ws, b64=True)
    assert got == {3: EXIT_3}


async def test_exec_v5_close_signal_is_stdin_eof(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4, V5)) as ws:
        assert ws.protocol == V5
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00line 1\n")
        await ws.send_bytes(b"\x00line 2\n")
        await ws.send_bytes(bytes([CLOSE_CHANNEL, 0]))
        got = await _read_until_close(ws, b64=False)
    assert got == {1: b"line 1\nline 2\n", 3: EXIT_3}


async def test_exec_large_output_is_split(server: Server) -> None:
    big = bytes(range(256)) * 3000  # 768000 bytes: several outgoing messages
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V5,)) as ws:
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00" + big)
        await ws.send_bytes(bytes([CLOSE_CHANNEL, 0]))
        frames = 0
        while (msg := await _receive(ws)).type is WSMsgType.BINARY:
            frames += 1
            assert len(msg.data) <= kws.OUT_CHUNK + 1
            channel, payload = decode(msg.data, base64=False)
            if channel == 1:
                big, rest = big[len(payload):], big[:len(payload)]
                assert rest == payload
    assert big == b"" and frames > 3


async def test_exec_without_stdout(server: Server) -> None:
    path = "/exec/default/pod/main?command=cat&stdin=1&stderr=1"
    async with server.session.ws_connect(server.url + path, protocols=(V4,)) as ws:
        assert (await _receive(ws)).data == b"\x02"  # ready goes to the lowest writable channel
        await ws.send_bytes(b"\x00dropped" + EOT)
        got = await _read_until_close(ws, b64=False)
    assert got == {3: EXIT_3}


async def test_exec_v1_error_channel_is_text(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=("channel.k8s.io",)) as ws:
        assert ws.protocol == "channel.k8s.io"
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00x" + EOT)
        got = await _read_until_close(ws, b64=False)
    assert got == {1: b"x", 3: b"command terminated with non-zero exit code: error executing command [cat], exit code 3"}


async def test_client_disconnect_is_stdin_eof(server: Server) -> None:
    ws = await server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4,))
    assert (await _receive(ws)).data == b"\x01"
    await ws.send_bytes(b"\x00partial")
    assert (await _receive(ws)).data == b"\x01partial"
    await ws.close()
    assert await asyncio.wait_for(server.app[STDIN_ENDED].get(), 5) is True


async def test_exec_unsupported_protocol_is_refused(server: Server) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await server.session.ws_connect(server.url + EXEC_PATH, protocols=("v9.channel.k8s.io",))
    assert caught.value.status == 403


async def _assert_echo_works(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V5,)) as ws:
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00still serving")
        await ws.send_bytes(bytes([CLOSE_CHANNEL, 0]))
        assert (await _read_until_close(ws, b64=False))[1] == b"still serving"


async def test_oversized_message_gets_an_error(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4,)) as ws:
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00" + b"x" * MAX_MESSAGE_SIZE)
        msg = await _receive(ws)
        channel, payload = decode(msg.data, base64=False)
        status = json.loads(payload)
        assert channel == 3 and status["status"] == "Failure" and "exceeds" in status["message"]
        closing = await _receive(ws)
        assert closing.type is WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await _assert_echo_works(server)


async def test_frame_beyond_wire_limit_is_refused(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V4,)) as ws:
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(b"\x00" + b"x" * kws.WIRE_LIMIT)
        closing = await _receive(ws)
        assert closing.type is WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await _assert_echo_works(server)


async def test_bad_v5_close_signal_ends_the_session(server: Server) -> None:
    async with server.session.ws_connect(server.url + EXEC_PATH, protocols=(V5,)) as ws:
        assert (await _receive(ws)).data == b"\x01"
        await ws.send_bytes(bytes([CLOSE_CHANNEL, 9]))
        got = await _read_until_close(ws, b64=False)
        assert json.loads(got[3])["reason"] == "InternalError"
        assert ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR


# --- port-forward ------------------------------------------------------------------------


async def test_portforward_two_ports(server: Server) -> None:
    url = server.url + "/portForward/default/pod?port=8080,9090"
    async with server.session.ws_connect(url, protocols=(V5, V4)) as ws:
        assert ws.protocol == V4
        greeting = [(await _receive(ws)).data for _ in range(4)]
        assert greeting == [b"\x00" + struct.pack("<H", 8080), b"\x01" + struct.pack("<H", 8080),
                            b"\x02" + struct.pack("<H", 9090), b"\x03" + struct.pack("<H", 9090)]
        await ws.send_bytes(b"\x00GET / HTTP/1.0\r\n\r\n")
        await ws.send_bytes(b"\x02\x00\x01binary")
        await ws.send_bytes(b"\x01error channels are write-only")
        echoed = {(await _receive(ws)).data for _ in range(2)}
        assert echoed == {b"\x00GET / HTTP/1.0\r\n\r\n", b"\x02\x00\x01binary"}


async def test_portforward_base64_and_errors(server: Server) -> None:
    url = server.url + "/portForward/default/pod?port=1&port=7000"
    async with server.session.ws_connect(url, protocols=(V4B64,)) as ws:
        greeting = [decode((await _receive(ws)).data, base64=True, channels=range(4)) for _ in range(4)]
        assert greeting == [(0, b"\x01\x00"), (1, b"\x01\x00"), (2, b"\x58\x1b"), (3, b"\x58\x1b")]
        error = decode((await _receive(ws)).data, base64=True, channels=range(4))
        assert error == (1, b"dial tcp 127.0.0.1:1: connect: connection refused")
        await ws.send_str(encode(2, b"ping", base64=True))  # type: ignore[arg-type]
        assert decode((await _receive(ws)).data, base64=True, channels=range(4)) == (2, b"ping")


@pytest.fixture
async def tcp_ports() -> AsyncIterator[tuple[int, int, int]]:
    """(an echo server, a server that says bye and hangs up, a port nobody listens on)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(cb, "127.0.0.1", 0) for cb in (echo, bye)]
    closed = await asyncio.start_server(echo, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    yield servers[0].sockets[0].getsockname()[1], servers[1].sockets[0].getsockname()[1], closed_port
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def test_portforward_run_to_tcp(server: Server, tcp_ports: tuple[int, int, int]) -> None:
    echo_port, _, closed_port = tcp_ports
    url = server.url + f"/portForwardTCP/default/pod?port={echo_port},{closed_port}"
    async with server.session.ws_connect(url, protocols=(V4,)) as ws:
        frames = [(await _receive(ws)).data for _ in range(5)]
        assert frames[:4] == [bytes([c]) + struct.pack("<H", p) for c, p in
                              ((0, echo_port), (1, echo_port), (2, closed_port), (3, closed_port))]
        channel, error = decode(frames[4], base64=False, channels=range(4))
        assert channel == 3 and error.startswith(f"error forwarding port {closed_port}: ".encode())
        await ws.send_bytes(b"\x00round trip through TCP")
        assert (await _receive(ws)).data == b"\x00round trip through TCP"


async def test_portforward_pod_hangup_ends_the_stream(server: Server, tcp_ports: tuple[int, int, int]) -> None:
    _, bye_port, _ = tcp_ports
    async with server.session.ws_connect(server.url + f"/portForwardTCP/default/pod?port={bye_port}", protocols=(V4,)) as ws:
        got = await _read_until_close(ws, b64=False)
    assert got == {0: struct.pack("<H", bye_port) + b"bye", 1: struct.pack("<H", bye_port)}


async def test_portforward_needs_ports(server: Server) -> None:
    async with server.session.get(server.url + "/portForward/default/pod") as resp:
        assert resp.status == 400


async def test_portforward_refuses_spdy_protocol_name(server: Server) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await server.session.ws_connect(server.url + "/portForward/default/pod?port=80", protocols=("portforward.k8s.io",))
    assert caught.value.status == 403


# --- the Python kubernetes client, pointed straight at the server ------------------------


def _core_api(url: str):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.CoreV1Api(client.ApiClient(client.Configuration(host=url)))


def _python_client_exec(url: str) -> tuple[str, int | None, str]:
    from kubernetes.stream import stream

    resp = stream(_core_api(url).connect_get_namespaced_pod_exec, "pod", "default", command=["cat"],
                  stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
    protocol = resp.subprotocol
    resp.write_stdin("from python\n")
    resp.close_channel(0)
    resp.run_forever(timeout=5)
    try:
        return resp.read_stdout(timeout=0), resp.returncode, protocol
    finally:
        resp.close()
        resp.sock.shutdown()  # websocket-client skips this once it has answered the server's close


async def test_python_client_exec(server: Server) -> None:
    out, code, protocol = await asyncio.wait_for(asyncio.to_thread(_python_client_exec, server.url), 15)
    assert (out, code, protocol) == ("from python\n", 3, V5)


def _python_client_portforward(url: str) -> bytes:
    from kubernetes.stream import portforward

    forward = portforward(_core_api(url).connect_get_namespaced_pod_portforward, "pod", "default", ports="8080")
    sock = forward.socket(8080)
    sock.settimeout(5)
    sock.sendall(b"ping over python")
    data = sock.recv(1024)
    forward.close()
    deadline = time.monotonic() + 5
    while forward.connected and time.monotonic() < deadline:  # its proxy thread closes the websocket
        time.sleep(0.01)
    return data


async def test_python_client_portforward(server: Server) -> None:
    assert await asyncio.wait_for(asyncio.to_thread(_python_client_portforward, server.url), 15) == b"ping over python"
