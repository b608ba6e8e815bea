"""SPDY/3.1: codec round trips, Go golden bytes, fragmentation, fuzzing, and a server
session driven by a small in-test client over a loopback socket.

Long fuzz run: ``python -m tests.unit.kubelet_api.test_spdy --fuzz-seconds 600`` or
``VNODE_FUZZ_SECONDS=600 pytest tests/unit/kubelet_api/test_spdy.py -k fuzz_long``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnode.kubelet_api import spdy
from vnode.kubelet_api.spdy import (
    FLAG_FIN,
    DataFrame,
    Frame,
    FrameEncoder,
    FrameLimits,
    FrameParser,
    GoAwayFrame,
    GoAwayStatus,
    HeaderDecompressor,
    HeadersFrame,
    PingFrame,
    ProtocolError,
    RstStatus,
    RstStreamFrame,
    Setting,
    SettingId,
    SettingsFrame,
    SpdySession,
    SpdyStream,
    StreamClosedError,
    StreamResetError,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    decode_header_block,
    encode_header_block,
)

# Written by Go's github.com/moby/spdystream/spdy Framer (v0.5.1, what the API server and
# kubectl use), in this order, so the three SYN_STREAMs share one compression context.
GO_FRAMES: list[tuple[str, Frame]] = [
    (
        "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a68"
        "00000000ffff",
        SynStreamFrame(1, {"streamtype": ["error"]}),
    ),
    (
        "800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff",
        SynStreamFrame(3, {"streamtype": ["stdout"]}),
    ),
    (
        "80030001000000280000000500000000000002652a4c6dc5252999a024cd5ea19b5b9a5392092e631992"
        "00000000ffff",
        SynStreamFrame(5, {"streamtype": ["stdin"], "x-multi": ["a", "b"]}),
    ),
    ("000000050100000568656c6c6f", DataFrame(5, b"hello", FLAG_FIN)),
    ("800300060000000400000001", PingFrame(1)),
    (
        "800300040000000c000000010000000700100000",
        SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 1 << 20),)),
    ),
    ("80030009000000080000000300001000", WindowUpdateFrame(3, 4096)),
    ("80030003000000080000000300000005", RstStreamFrame(3, RstStatus.CANCEL)),
    ("80030007000000080000000500000000", GoAwayFrame(5, GoAwayStatus.OK)),
]
GO_BYTES = b"".join(bytes.fromhex(h) for h, _ in GO_FRAMES)
GO_EXPECTED = [f for _, f in GO_FRAMES]


def encode_all(frames: Sequence[Frame]) -> bytes:
    encoder = FrameEncoder()
    return b"".join(encoder.encode(f) for f in frames)


def feed_in_pieces(
    data: bytes, cuts: Sequence[int], parser: FrameParser | None = None
) -> list[Frame]:
    parser = parser or FrameParser()
    frames: list[Frame] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        frames += parser.feed(data[start:cut])
        start = max(start, cut)
    return frames


def control(kind: int, payload: bytes, *, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload


def compressed(raw_block: bytes) -> bytes:
    z = zlib.compressobj(zdict=spdy.SPDY_DICTIONARY)
    return z.compress(raw_block) + z.flush(zlib.Z_SYNC_FLUSH)


def syn_stream_raw(raw_block: bytes, stream_id: int = 1) -> bytes:
    return control(1, struct.pack(">IIBB", stream_id, 0, 0, 0) + compressed(raw_block))


# --- The dictionary and zlib --------------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    d = spdy.SPDY_DICTIONARY
    assert len(d) == 1423
    assert zlib.adler32(d) == 0xE3C6A7C2  # the DICTID in every Go-written header block above
    assert d.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert d.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_decompressobj_zdict_answers_the_preset_dictionary_request() -> None:
    blob = compressed(b"\x00\x00\x00\x01\x00\x00\x00\x06status\x00\x00\x00\x06200 OK")
    assert blob[1] & 0x20  # FDICT
    assert struct.unpack(">I", blob[2:6])[0] == zlib.adler32(spdy.SPDY_DICTIONARY)
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(blob)
    assert zlib.decompressobj(zdict=spdy.SPDY_DICTIONARY).decompress(blob).endswith(b"200 OK")


def test_go_header_blocks_inflate_to_our_uncompressed_encoding() -> None:
    inflater = HeaderDecompressor()
    blocks = [bytes.fromhex(h)[18:] for h, _ in GO_FRAMES[:3]]
    assert inflater.inflate(blocks[0]) == encode_header_block({"streamtype": "error"})
    assert inflater.inflate(blocks[1]) == encode_header_block({"streamtype": "stdout"})
    assert decode_header_block(inflater.inflate(blocks[2])) == GO_EXPECTED[2].headers  # type: ignore[union-attr]


# --- Codec --------------------------------------------------------------------------


def test_parses_go_frames() -> None:
    assert FrameParser().feed(GO_BYTES) == GO_EXPECTED


def test_parses_go_frames_fed_byte_by_byte() -> None:
    parser = FrameParser()
    frames = [f for i in range(len(GO_BYTES)) for f in parser.feed(GO_BYTES[i : i + 1])]
    assert frames == GO_EXPECTED


def test_fixed_frames_encode_byte_identical_to_go() -> None:
    encoder = FrameEncoder()
    for hex_bytes, frame in GO_FRAMES[3:]:
        assert encoder.encode(frame).hex() == hex_bytes


def test_syn_stream_with_our_compressor_round_trips() -> None:
    frames: list[Frame] = [
        SynStreamFrame(1, {"streamtype": ["error"]}),
        SynStreamFrame(3, {"streamtype": ["stdout"]}, priority=2, slot=7),
        SynStreamFrame(5, {"streamtype": ["stdin"], "x-multi": ["a", "b", ""]}, flags=FLAG_FIN),
        SynStreamFrame(7, {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}),
    ]
    encoder = FrameEncoder()
    wire = [encoder.encode(f) for f in frames]
    assert FrameParser().feed(b"".join(wire)) == frames
    # One context for the connection: a repeated block costs a few bytes the second time.
    again = encoder.encode(frames[3])
    assert len(again) < len(wire[3]) and FrameParser().feed(b"".join(wire) + again)[-1] == frames[3]


def test_header_names_are_lowercased_and_values_nul_joined() -> None:
    block = encode_header_block({"StreamType": "stdout", "X-Multi": ["a", "b"]})
    assert b"streamtype" in block and b"a\x00b" in block
    assert decode_header_block(block) == {"streamtype": ["stdout"], "x-multi": ["a", "b"]}


@pytest.mark.parametrize(
    "headers",
    [{"a": "x", "A": "y"}, {"": "x"}, {"a": ["x\x00y"]}],
    ids=["duplicate-after-lowercasing", "empty-name", "nul-in-value"],
)
def test_encoder_rejects_unencodable_headers(headers: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_header_block(headers)


@pytest.mark.parametrize(
    "frame",
    [DataFrame(0, b"x"), PingFrame(2**32), WindowUpdateFrame(1, 2**31), DataFrame(1, b"", 256)],
    ids=["stream-0-data", "ping-id", "delta", "flags"],
)
def test_encoder_rejects_out_of_range_fields(frame: Frame) -> None:
    with pytest.raises(ValueError):
        FrameEncoder().encode(frame)


def test_unknown_control_frames_are_skipped_even_when_fragmented() -> None:
    unknown = control(10, b"\xaa" * 5000)  # CREDENTIAL, or anything else unknown
    data = unknown + encode_all([PingFrame(3)]) + control(0x7FFF, b"zz")
    assert FrameParser().feed(data) == [PingFrame(3)]
    assert feed_in_pieces(data, range(0, len(data), 7)) == [PingFrame(3)]


def test_protocol_error_carries_the_frames_before_it_and_sticks() -> None:
    parser = FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(encode_all([PingFrame(1)]) + control(6, b"\x00\x00\x00\x01", version=2))
    assert info.value.frames == [PingFrame(1)]
    with pytest.raises(ProtocolError, match="failed earlier"):
        parser.feed(encode_all([PingFrame(3)]))


def _count_overflow_block() -> bytes:
    return struct.pack(">I", 2**32 - 1) + b"\x00" * 16


def _other_dictionary_block() -> bytes:
    z = zlib.compressobj(zdict=b"not the spdy dictionary")
    return z.compress(b"\x00\x00\x00\x00") + z.flush(zlib.Z_SYNC_FLUSH)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "version-2": (control(6, b"\x00\x00\x00\x01", version=2), "version 2"),
    "ping-length": (control(6, b"\x00\x00\x00\x01\x00"), "PING needs 4"),
    "rst-length": (control(3, b"\x00\x00\x00\x01"), "RST_STREAM needs 8"),
    "rst-stream-0": (control(3, b"\x00" * 8), "stream 0"),
    "goaway-spdy2-length": (control(7, b"\x00\x00\x00\x01"), "GOAWAY needs 8"),
    "window-update-length": (control(9, b"\x00" * 7), "WINDOW_UPDATE"),
    "settings-count": (control(4, struct.pack(">I", 3) + b"\x00" * 8), "SETTINGS with 3"),
    "syn-stream-short": (control(1, b"\x00\x00\x00\x01"), "at least 10"),
    "syn-stream-0": (control(1, b"\x00" * 10), "stream 0"),
    "syn-reply-short": (control(2, b"\x00"), "at least 4"),
    "data-stream-0": (b"\x00\x00\x00\x00\x00\x00\x00\x01x", "DATA on stream 0"),
    "control-too-big": (struct.pack(">HHI", 0x8003, 1, 2 * 1024 * 1024), "exceeds the cap"),
    "garbage-zlib": (
        control(1, b"\x00\x00\x00\x01" + b"\x00" * 6 + b"\x78\xbb" + b"\x01" * 20),
        "compressed",
    ),
    "wrong-dictionary": (
        control(1, b"\x00\x00\x00\x01" + b"\x00" * 6 + _other_dictionary_block()),
        "compressed",
    ),
    "zlib-stream-finished": (
        control(1, b"\x00\x00\x00\x01" + b"\x00" * 6 + zlib.compress(b"\x00\x00\x00\x00")),
        "ended its header compression",
    ),
    "truncated-block": (syn_stream_raw(b"\x00\x00\x00\x01\x00\x00\x00\x50abcdefgh"), "overruns"),
    "short-block": (syn_stream_raw(b"\x00\x00"), "shorter than its pair count"),
    "count-overflow": (syn_stream_raw(_count_overflow_block()), "claims"),
    "value-length-missing": (
        syn_stream_raw(b"\x00\x00\x00\x01\x00\x00\x00\x04abcd\x00"),
        "before a value",
    ),
    "stray-bytes": (syn_stream_raw(encode_header_block({"a": "b"}) + b"!"), "stray"),
    "uppercase-name": (
        syn_stream_raw(b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00"),
        "lowercase",
    ),
    "empty-name": (
        syn_stream_raw(b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"),
        "empty header",
    ),
    "duplicate-name": (
        syn_stream_raw(b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01a\x00\x00\x00\x00" * 2),
        "duplicate",
    ),
    "not-utf8": (syn_stream_raw(b"\x00\x00\x00\x01\x00\x00\x00\x01\xff\x00\x00\x00\x00"), "UTF-8"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_raises_protocol_error(name: str) -> None:
    data, message = MALFORMED[name]
    with pytest.raises(ProtocolError, match=message):
        FrameParser().feed(data)
    with pytest.raises(ProtocolError, match=message):  # the same, one byte at a time
        feed_in_pieces(data, range(len(data)))


def test_data_frame_cap_is_checked_before_buffering() -> None:
    parser = FrameParser(FrameLimits(max_data_frame=1024))
    with pytest.raises(ProtocolError, match="data frame of 1025"):
        parser.feed(struct.pack(">II", 1, 1025))  # the header alone is enough
    assert FrameParser(FrameLimits(max_data_frame=1024)).feed(
        encode_all([DataFrame(1, b"x" * 1024)])
    )


def test_decompression_bomb_is_capped() -> None:
    bomb = encode_header_block({"x": "a" * (4 * 1024 * 1024)})
    data = syn_stream_raw(bomb)
    assert len(data) < 20 * 1024
    with pytest.raises(ProtocolError, match="inflates past"):
        FrameParser().feed(data)
    small = FrameParser(FrameLimits(max_header_bytes=64))
    with pytest.raises(ProtocolError, match="inflates past 64"):
        small.feed(syn_stream_raw(encode_header_block({"x": "a" * 100})))


def test_peer_ending_its_compression_stream_is_an_error() -> None:
    z = zlib.compressobj(zdict=spdy.SPDY_DICTIONARY)
    block = z.compress(encode_header_block({"a": "b"})) + z.flush(zlib.Z_FINISH)
    data = control(1, struct.pack(">IIBB", 1, 0, 0, 0) + block)
    with pytest.raises(ProtocolError, match="ended its header compression"):
        FrameParser().feed(data)


# --- Property tests -----------------------------------------------------------------

stream_ids = st.integers(1, spdy.MAX_STREAM_ID)
u32 = st.integers(0, 2**32 - 1)
header_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_:.", min_size=1, max_size=12)
header_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
headers = st.dictionaries(header_names, st.lists(header_values, min_size=1, max_size=3), max_size=5)
frames = st.one_of(
    st.builds(DataFrame, stream_ids, st.binary(max_size=200), st.integers(0, 255)),
    st.builds(
        SynStreamFrame,
        stream_ids,
        headers,
        st.integers(0, spdy.MAX_STREAM_ID),
        st.integers(0, 7),
        st.integers(0, 255),
        st.integers(0, 255),
    ),
    st.builds(SynReplyFrame, stream_ids, headers, st.integers(0, 255)),
    st.builds(HeadersFrame, stream_ids, headers, st.integers(0, 255)),
    st.builds(RstStreamFrame, stream_ids, u32),
    st.builds(
        SettingsFrame,
        st.lists(
            st.builds(Setting, st.integers(0, 0xFFFFFF), u32, st.integers(0, 255)), max_size=4
        ).map(tuple),
        st.integers(0, 255),
    ),
    st.builds(PingFrame, u32),
    st.builds(GoAwayFrame, st.integers(0, spdy.MAX_STREAM_ID), u32),
    st.builds(
        WindowUpdateFrame, st.integers(0, spdy.MAX_STREAM_ID), st.integers(0, spdy.MAX_WINDOW)
    ),
)
# Control frames with plausible headers and arbitrary payloads reach the per-type decoders.
raw_controls = st.builds(
    lambda kind, flags, payload, version: control(kind, payload, flags=flags, version=version),
    st.integers(0, 12),
    st.integers(0, 255),
    st.binary(max_size=64),
    st.sampled_from([3, 3, 3, 2]),
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_protocol_errors(data: bytes, cuts: Sequence[int]) -> None:
    with contextlib.suppress(ProtocolError):
        feed_in_pieces(data, cuts)


@PROPERTY
@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=6))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    only_protocol_errors(data, cuts)


@PROPERTY
@given(
    st.lists(st.one_of(raw_controls, frames.map(lambda f: encode_all([f]))), max_size=6), st.data()
)
def test_arbitrary_control_frames_raise_only_protocol_error(
    parts: list[bytes], data: st.DataObject
) -> None:
    blob = b"".join(parts)
    only_protocol_errors(blob, data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_valid_frames_survive_arbitrary_splitting(sent: list[Frame], data: st.DataObject) -> None:
    wire = encode_all(sent)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    assert feed_in_pieces(wire, cuts) == sent


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_mutated_valid_streams_raise_only_protocol_error(
    sent: list[Frame], data: st.DataObject
) -> None:
    wire = bytearray(encode_all(sent))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    only_protocol_errors(bytes(wire), data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))


# --- Long fuzzing (bench / manual) --------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = buf[rng.randrange(len(buf) + 1) :][: rng.randint(1, 64)]
        else:
            buf[pos:pos] = control(rng.randint(0, 12), rng.randbytes(rng.randint(0, 40)))
    return bytes(buf)


def run_fuzz(seconds: float, seed: int | None = None) -> int:
    """Mutation fuzzing of the parser for a while; returns the number of cases run."""
    rng = random.Random(seed)
    corpus = [GO_BYTES, encode_all(GO_EXPECTED), syn_stream_raw(encode_header_block({"a": "b"}))]
    deadline = time.monotonic() + seconds
    cases = 0
    while time.monotonic() < deadline:
        data = (
            _mutate(rng, rng.choice(corpus))
            if rng.random() < 0.9
            else rng.randbytes(rng.randint(0, 256))
        )
        only_protocol_errors(data, [rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 5))])
        cases += 1
    return cases


@pytest.mark.skipif(
    not os.environ.get("VNODE_FUZZ_SECONDS"), reason="set VNODE_FUZZ_SECONDS for a long run"
)
def test_fuzz_long() -> None:
    seconds = float(os.environ["VNODE_FUZZ_SECONDS"])
    cases = run_fuzz(seconds)
    print(f"SPDY frame parser: {cases} mutated cases in {seconds:g} s, only ProtocolError raised")
    assert cases > 0


# --- Session, against a small client ------------------------------------------------

TIMEOUT = 5.0


class Client:
    """The peer's side: opens streams (odd ids), sends data and pings, reads frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = FrameEncoder()
        self.parser = FrameParser()
        self.pending: deque[Frame] = deque()
        self.seen: list[Frame] = []

    def send(self, *frames: Frame) -> None:
        for frame in frames:
            self.writer.write(self.encoder.encode(frame))

    def open(self, stream_id: int, streamtype: str, flags: int = 0) -> None:
        self.send(SynStreamFrame(stream_id, {"streamtype": [streamtype]}, flags=flags))

    async def frame(self, timeout: float = TIMEOUT) -> Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError
            self.pending.extend(self.parser.feed(data))
        frame = self.pending.popleft()
        self.seen.append(frame)
        return frame

    async def until(self, match: Callable[[Frame], bool], timeout: float = TIMEOUT) -> Frame:
        while not match(frame := await self.frame(timeout)):
            pass
        return frame

    async def data(self, stream_id: int, *, until_fin: bool = True, size: int = 0) -> bytes:
        got = bytearray()
        while True:
            frame = await self.until(
                lambda f: isinstance(f, DataFrame) and f.stream_id == stream_id
            )
            assert isinstance(frame, DataFrame)
            got += frame.data
            if (until_fin and frame.fin) or (size and len(got) >= size):
                return bytes(got)

    async def eof(self) -> None:
        with pytest.raises(EOFError):
            while True:
                await self.frame()

    def window_updates(self, stream_id: int) -> int:
        return sum(
            f.delta
            for f in self.seen
            if isinstance(f, WindowUpdateFrame) and f.stream_id == stream_id
        )


class Server:
    def __init__(self, **session_options: Any) -> None:
        self.options = session_options
        self.sessions: asyncio.Queue[SpdySession] = asyncio.Queue()
        self.all: list[SpdySession] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self.all:
            await session.close()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = SpdySession(reader, writer, **self.options)
        self.all.append(session)
        self.sessions.put_nowait(session)
        await session.run()

    async def connect(self) -> tuple[Client, SpdySession]:
        client = Client(*await asyncio.open_connection("127.0.0.1", self.port))
        return client, await asyncio.wait_for(self.sessions.get(), TIMEOUT)


def is_reply(stream_id: int) -> Callable[[Frame], bool]:
    return lambda f: isinstance(f, SynReplyFrame) and f.stream_id == stream_id


async def test_exec_like_session_with_three_streams() -> None:
    async with Server() as server:
        client, session = await server.connect()
        for sid, kind in ((1, "error"), (3, "stdout"), (5, "stdin")):
            client.open(sid, kind)
        streams: dict[str, SpdyStream] = {}
        for _ in range(3):
            stream = await asyncio.wait_for(session.accept(), TIMEOUT)
            assert stream is not None
            streams[stream.header("streamtype") or ""] = stream
        assert [s.id for s in (streams["error"], streams["stdout"], streams["stdin"])] == [1, 3, 5]
        for sid in (1, 3, 5):
            await client.until(is_reply(sid))

        async def exec_echo() -> None:  # what an exec handler does: stdin -> stdout, then status
            async for chunk in streams["stdin"]:
                await streams["stdout"].write(chunk.upper())
            await streams["stdout"].close()
            await streams["error"].write(b'{"status":"Success"}')
            await streams["error"].close()

        task = asyncio.create_task(exec_echo())
        client.send(DataFrame(5, b"hello "), PingFrame(7), DataFrame(5, b"world", FLAG_FIN))
        assert await client.until(lambda f: isinstance(f, PingFrame)) == PingFrame(7)
        assert await client.data(3) == b"HELLO WORLD"
        assert await client.data(1) == b'{"status":"Success"}'
        await asyncio.wait_for(task, TIMEOUT)
        assert streams["stdin"].at_eof() and streams["stdout"].local_closed
        client.send(DataFrame(3, b"", FLAG_FIN), PingFrame(9))  # both sides closed: forgotten
        await client.until(lambda f: f == PingFrame(9))
        assert sorted(session.streams) == [1, 5]
        assert session.last_good_stream_id == 5


async def test_on_stream_callback_and_half_close() -> None:
    results: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def handler(stream: SpdyStream) -> None:
        data = b"".join([chunk async for chunk in stream])  # until the peer's FIN
        await results.put((stream.id, data))
        await stream.write(b"after your FIN: " + data)  # we may still write
        await stream.close()

    async with Server(on_stream=handler) as server:
        client, session = await server.connect()
        client.open(1, "data")
        await client.until(is_reply(1))
        client.send(DataFrame(1, b"abc", FLAG_FIN))
        assert await asyncio.wait_for(results.get(), TIMEOUT) == (1, b"abc")
        assert await client.data(1) == b"after your FIN: abc"
        with pytest.raises(RuntimeError):
            await session.accept()


async def test_syn_stream_with_fin_is_half_closed_at_once() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdout", flags=FLAG_FIN)
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None and await stream.read() == b""
        await stream.write(b"out")
        assert await client.data(1, until_fin=False, size=3) == b"out"


async def test_peer_reset_ends_reads_and_fails_writes() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdin")
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None
        reading = asyncio.create_task(stream.read())
        client.send(RstStreamFrame(1, RstStatus.CANCEL))
        assert await asyncio.wait_for(reading, TIMEOUT) == b""
        with pytest.raises(StreamResetError) as info:
            await stream.write(b"x")
        assert info.value.status == RstStatus.CANCEL and info.value.by_peer
        assert isinstance(info.value, ConnectionError) and 1 not in session.streams


async def test_local_reset_sends_rst_stream() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdout")
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None
        stream.reset(RstStatus.INTERNAL_ERROR)
        rst = await client.until(lambda f: isinstance(f, RstStreamFrame))
        assert rst == RstStreamFrame(1, RstStatus.INTERNAL_ERROR)
        assert await stream.read() == b""
        with pytest.raises(StreamResetError):
            await stream.write(b"x")


async def test_handler_exception_resets_the_stream() -> None:
    async def handler(stream: SpdyStream) -> None:
        raise ValueError("boom")

    async with Server(on_stream=handler) as server:
        client, _ = await server.connect()
        client.open(1, "stdout")
        rst = await client.until(lambda f: isinstance(f, RstStreamFrame))
        assert rst == RstStreamFrame(1, RstStatus.INTERNAL_ERROR)


async def test_close_sends_goaway_with_last_good_stream() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "error")
        client.open(3, "stdout")
        out = [await asyncio.wait_for(session.accept(), TIMEOUT) for _ in range(2)]
        await session.close()
        assert await client.until(lambda f: isinstance(f, GoAwayFrame)) == GoAwayFrame(
            3, GoAwayStatus.OK
        )
        await client.eof()
        assert session.closed and await session.accept() is None
        assert out[0] is not None and await out[0].read() == b""
        with pytest.raises(StreamClosedError):
            await out[0].write(b"late")


async def test_peer_eof_ends_the_session_but_buffered_data_stays_readable() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdin")
        client.send(DataFrame(1, b"last words"))
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None
        await client.until(is_reply(1))
        client.writer.close()
        await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        assert await stream.read() == b"last words"
        assert await stream.read() == b""
        assert await session.accept() is None


async def test_protocol_error_sends_goaway_protocol_error() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdout")
        await client.until(is_reply(1))
        client.writer.write(control(6, b"\x00\x00\x00\x01", version=2))
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert goaway == GoAwayFrame(1, GoAwayStatus.PROTOCOL_ERROR)
        await client.eof()
        assert session.closed


async def test_bad_stream_ids_and_unknown_streams_get_rst() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(5, "stdout")
        await client.until(is_reply(5))
        client.open(2, "stdout")  # even: server-initiated ids
        client.open(3, "stdout")  # lower than one already seen
        client.open(5, "stdout")  # in use
        client.send(DataFrame(9, b"x"))  # never opened
        rsts = [await client.until(lambda f: isinstance(f, RstStreamFrame)) for _ in range(4)]
        assert rsts == [
            RstStreamFrame(2, RstStatus.PROTOCOL_ERROR),
            RstStreamFrame(3, RstStatus.PROTOCOL_ERROR),
            RstStreamFrame(5, RstStatus.STREAM_IN_USE),
            RstStreamFrame(9, RstStatus.INVALID_STREAM),
        ]
        assert list(session.streams) == [5]


async def test_data_after_fin_is_stream_already_closed() -> None:
    async with Server() as server:
        client, _ = await server.connect()
        client.open(1, "stdin")
        client.send(DataFrame(1, b"", FLAG_FIN), DataFrame(1, b"more"))
        rst = await client.until(lambda f: isinstance(f, RstStreamFrame))
        assert rst == RstStreamFrame(1, RstStatus.STREAM_ALREADY_CLOSED)


async def test_max_streams_refuses_extra_streams() -> None:
    async with Server(max_streams=1) as server:
        client, _ = await server.connect()
        client.open(1, "stdout")
        client.open(3, "stderr")
        rst = await client.until(lambda f: isinstance(f, RstStreamFrame))
        assert rst == RstStreamFrame(3, RstStatus.REFUSED_STREAM)


async def test_server_ping_round_trip() -> None:
    async with Server() as server:
        client, session = await server.connect()
        pinging = asyncio.create_task(session.ping())
        ping = await client.until(lambda f: isinstance(f, PingFrame))
        assert isinstance(ping, PingFrame) and ping.ping_id % 2 == 0
        client.send(ping)
        assert 0 <= await asyncio.wait_for(pinging, TIMEOUT) < TIMEOUT


async def test_window_updates_follow_consumption() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.open(1, "stdin")
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None
        payload = os.urandom(200 * 1024)
        for i in range(0, len(payload), 16 * 1024):
            client.send(DataFrame(1, payload[i : i + 16 * 1024]))
        received = bytearray()
        while len(received) < len(payload):
            received += await asyncio.wait_for(stream.read(10_000), TIMEOUT)
        assert bytes(received) == payload
        client.send(PingFrame(1))  # frames are in order: updates come before the echo
        await client.until(lambda f: isinstance(f, PingFrame))
        half = spdy.DEFAULT_WINDOW // 2
        assert len(payload) - half < client.window_updates(1) <= len(payload)
        assert len(payload) - half < client.window_updates(0) <= len(payload)


async def test_larger_receive_window_is_announced() -> None:
    async with Server(receive_window=1024 * 1024) as server:
        client, _ = await server.connect()
        assert await client.frame() == SettingsFrame(
            (Setting(SettingId.INITIAL_WINDOW_SIZE, 1024 * 1024),)
        )
        assert await client.frame() == WindowUpdateFrame(0, 1024 * 1024 - spdy.DEFAULT_WINDOW)


async def _open_and_write(
    client: Client, session: SpdySession, size: int
) -> tuple[SpdyStream, asyncio.Task[None]]:
    client.open(1, "stdout")
    stream = await asyncio.wait_for(session.accept(), TIMEOUT)
    assert stream is not None
    await client.until(is_reply(1))
    return stream, asyncio.create_task(stream.write(b"x" * size))


async def test_send_flow_control_auto_never_waits_on_a_peer_without_window_updates() -> None:
    async with Server() as server:  # spdystream never sends WINDOW_UPDATE nor SETTINGS
        client, session = await server.connect()
        stream, writing = await _open_and_write(client, session, 512 * 1024)
        assert len(await client.data(1, until_fin=False, size=512 * 1024)) == 512 * 1024
        await asyncio.wait_for(writing, TIMEOUT)
        assert not session.send_flow_control_active and stream.send_window < 0  # tracked only


async def test_send_flow_control_auto_honours_a_peer_that_sends_window_updates() -> None:
    async with Server() as server:
        client, session = await server.connect()
        client.send(WindowUpdateFrame(0, 1))  # shows it does flow control
        _, writing = await _open_and_write(client, session, 200 * 1024)
        window = spdy.DEFAULT_WINDOW  # the stream window binds first (session window: +1)
        assert len(await client.data(1, until_fin=False, size=window)) == window
        with pytest.raises(TimeoutError):
            await client.until(lambda f: isinstance(f, DataFrame), timeout=0.3)
        assert not writing.done() and session.send_flow_control_active
        client.send(WindowUpdateFrame(1, 200 * 1024), WindowUpdateFrame(0, 200 * 1024))
        rest = await client.data(1, until_fin=False, size=200 * 1024 - window)
        assert len(rest) == 200 * 1024 - window
        await asyncio.wait_for(writing, TIMEOUT)


async def test_settings_initial_window_size_applies_to_streams() -> None:
    async with Server(send_flow_control="on") as server:
        client, session = await server.connect()
        client.send(SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 256 * 1024),)))
        client.send(WindowUpdateFrame(0, 256 * 1024))
        stream, writing = await _open_and_write(client, session, 256 * 1024)
        assert len(await client.data(1, until_fin=False, size=256 * 1024)) == 256 * 1024
        await asyncio.wait_for(writing, TIMEOUT)
        assert session.peer_settings == {SettingId.INITIAL_WINDOW_SIZE: 256 * 1024}
        assert stream.send_window == 0


async def test_a_writer_blocked_on_windows_is_released_by_reset_and_by_stall_timeout() -> None:
    async with Server(send_flow_control="on") as server:
        client, session = await server.connect()
        _, writing = await _open_and_write(client, session, 100 * 1024)
        await client.data(1, until_fin=False, size=spdy.DEFAULT_WINDOW)
        client.send(RstStreamFrame(1, RstStatus.CANCEL))
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(writing, TIMEOUT)
    async with Server(send_flow_control="on", window_stall_timeout=0.2) as server:
        client, session = await server.connect()
        _, writing = await _open_and_write(client, session, 100 * 1024)
        assert len(await client.data(1, until_fin=False, size=100 * 1024)) == 100 * 1024
        await asyncio.wait_for(writing, TIMEOUT)


async def test_slow_reader_stops_the_read_loop_until_it_catches_up() -> None:
    async with Server(max_stream_buffer=64 * 1024) as server:
        client, session = await server.connect()
        client.open(1, "stdin")
        stream = await asyncio.wait_for(session.accept(), TIMEOUT)
        assert stream is not None
        client.send(DataFrame(1, b"x" * (100 * 1024)), PingFrame(1))
        with pytest.raises(TimeoutError):  # the echo waits behind the unread data
            await client.until(lambda f: isinstance(f, PingFrame), timeout=0.3)
        assert len(await stream.read()) == 100 * 1024
        assert await client.until(lambda f: isinstance(f, PingFrame)) == PingFrame(1)


async def test_a_slow_reader_does_not_stall_its_siblings_within_its_window() -> None:
    async with Server(max_stream_buffer=64 * 1024, receive_window=1024 * 1024) as server:
        client, session = await server.connect()
        client.open(1, "stdin")
        client.open(3, "stdin")
        slow, other = await asyncio.wait_for(session.accept(), TIMEOUT), await asyncio.wait_for(session.accept(), TIMEOUT)
        assert slow is not None and other is not None
        client.send(DataFrame(1, b"x" * (512 * 1024)), DataFrame(3, b"ok"), PingFrame(1))
        assert await client.until(lambda f: isinstance(f, PingFrame)) == PingFrame(1)
        assert await asyncio.wait_for(other.read(), TIMEOUT) == b"ok"
        assert len(await slow.read()) == 512 * 1024


async def test_a_peer_doing_flow_control_that_overruns_a_window_gets_flow_control_error() -> None:
    async with Server(max_stream_buffer=64 * 1024) as server:
        client, session = await server.connect()
        client.send(WindowUpdateFrame(0, 1))  # it replenishes windows: it knows about them
        client.open(1, "stdin")
        client.open(3, "stdin")
        slow, other = await asyncio.wait_for(session.accept(), TIMEOUT), await asyncio.wait_for(session.accept(), TIMEOUT)
        assert slow is not None and other is not None
        client.send(DataFrame(1, b"x" * (100 * 1024)), DataFrame(3, b"ok"), PingFrame(1))
        assert await client.until(lambda f: isinstance(f, RstStreamFrame)) == RstStreamFrame(1, RstStatus.FLOW_CONTROL_ERROR)
        assert await client.until(lambda f: isinstance(f, PingFrame)) == PingFrame(1)
        assert await asyncio.wait_for(other.read(), TIMEOUT) == b"ok"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fuzz the SPDY frame parser.")
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    cases = run_fuzz(args.fuzz_seconds, args.seed)
    print(f"{cases} cases in {time.monotonic() - started:.1f}s, only ProtocolError raised")


if __name__ == "__main__":
    main()
