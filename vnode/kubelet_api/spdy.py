"""Server-side SPDY/3.1 for exec, attach and port-forward.

The API server speaks SPDY/3.1 to kubelets for exec/attach/port-forward (after an HTTP
``Upgrade: SPDY/3.1``), and no maintained Python SPDY library exists, so this module is a
hand-written codec (``FrameParser``/``FrameEncoder``, no I/O) plus an asyncio ``SpdySession``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn, Protocol

from vnode.kubelet_api.idle import IdleTimer

log = logging.getLogger(__name__)

VERSION = 3
DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_FRAME_LENGTH = 2**24 - 1
DEFAULT_MAX_CONTROL_FRAME = 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 1024 * 1024  # a header block, decompressed

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    # The draft text lists INTERNAL_ERROR as 11; Chromium, Go and Netty all use 2.
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(enum.IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


# The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): 1423 bytes,
# Adler-32 0xe3c6a7c2 (the DICTID every SPDY/3 zlib stream names). Length-prefixed words
# first, then one run of status lines, dates and media types.
# fmt: off
SPDY_DICTIONARY = (
    b"\x00\x00\x00\x07options" b"\x00\x00\x00\x04head" b"\x00\x00\x00\x04post"
    b"\x00\x00\x00\x03put" b"\x00\x00\x00\x06delete" b"\x00\x00\x00\x05trace"
    b"\x00\x00\x00\x06accept" b"\x00\x00\x00\x0eaccept-charset"
    b"\x00\x00\x00\x0faccept-encoding" b"\x00\x00\x00\x0faccept-language"
    b"\x00\x00\x00\x0daccept-ranges" b"\x00\x00\x00\x03age" b"\x00\x00\x00\x05allow"
    b"\x00\x00\x00\x0dauthorization" b"\x00\x00\x00\x0dcache-control"
    b"\x00\x00\x00\x0aconnection" b"\x00\x00\x00\x0ccontent-base"
    b"\x00\x00\x00\x10content-encoding" b"\x00\x00\x00\x10content-language"
    b"\x00\x00\x00\x0econtent-length" b"\x00\x00\x00\x10content-location"
    b"\x00\x00\x00\x0bcontent-md5" b"\x00\x00\x00\x0dcontent-range"
    b"\x00\x00\x00\x0ccontent-type" b"\x00\x00\x00\x04date" b"\x00\x00\x00\x04etag"
    b"\x00\x00\x00\x06expect" b"\x00\x00\x00\x07expires" b"\x00\x00\x00\x04from"
    b"\x00\x00\x00\x04host" b"\x00\x00\x00\x08if-match" b"\x00\x00\x00\x11if-modified-since"
    b"\x00\x00\x00\x0dif-none-match" b"\x00\x00\x00\x08if-range"
    b"\x00\x00\x00\x13if-unmodified-since" b"\x00\x00\x00\x0dlast-modified"
    b"\x00\x00\x00\x08location" b"\x00\x00\x00\x0cmax-forwards" b"\x00\x00\x00\x06pragma"
    b"\x00\x00\x00\x12proxy-authenticate" b"\x00\x00\x00\x13proxy-authorization"
    b"\x00\x00\x00\x05range" b"\x00\x00\x00\x07referer" b"\x00\x00\x00\x0bretry-after"
    b"\x00\x00\x00\x06server" b"\x00\x00\x00\x02te" b"\x00\x00\x00\x07trailer"
    b"\x00\x00\x00\x11transfer-encoding" b"\x00\x00\x00\x07upgrade"
    b"\x00\x00\x00\x0auser-agent" b"\x00\x00\x00\x04vary" b"\x00\x00\x00\x03via"
    b"\x00\x00\x00\x07warning" b"\x00\x00\x00\x10www-authenticate" b"\x00\x00\x00\x06method"
    b"\x00\x00\x00\x03get" b"\x00\x00\x00\x06status" b"\x00\x00\x00\x06200 OK"
    b"\x00\x00\x00\x07version" b"\x00\x00\x00\x08HTTP/1.1" b"\x00\x00\x00\x03url"
    b"\x00\x00\x00\x06public" b"\x00\x00\x00\x0aset-cookie" b"\x00\x00\x00\x0akeep-alive"
    b"\x00\x00\x00\x06origin"
    b"10010120120220520630030230330430530630740240540640740840941041141241341441541641"
    b"7502504505203 Non-Authoritative Information204 No Content301 Moved Permanently40"
    b"0 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O"
    b"ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,imag"
    b"e/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/"
    b"javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1"
    b",utf-,*,enq=0."
)
# fmt: on

Headers = dict[str, list[str]]
HeaderInput = Mapping[str, str | Sequence[str]]


class ProtocolError(Exception):
    """Malformed or unsupported input: fatal to the session (GOAWAY PROTOCOL_ERROR).

    ``frames`` holds the frames parsed, in the same ``feed`` call, before the bad one.
    """

    def __init__(self, message: str, frames: Sequence[Frame] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.frames: list[Frame] = list(frames)


class StreamClosedError(ConnectionError):
    """Writing to a stream closed for writing, or to a stream of a closed session."""


class StreamResetError(StreamClosedError):
    """The stream was reset (RST_STREAM), by the peer or locally."""

    def __init__(self, stream_id: int, status: int, *, by_peer: bool) -> None:
        who = "peer" if by_peer else "us"
        super().__init__(f"stream {stream_id} reset by {who}: {_status_name(status)}")
        self.stream_id = stream_id
        self.status = status
        self.by_peer = by_peer


def _status_name(status: int) -> str:
    try:
        return RstStatus(status).name
    except ValueError:
        return str(status)


# --- Frames -------------------------------------------------------------------------


class _Fin:
    """`fin` for the frames whose flags can carry FLAG_FIN (no fields: the dataclasses keep
    their slots)."""

    __slots__ = ()
    flags: int

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class DataFrame(_Fin):
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SynStreamFrame(_Fin):
    stream_id: int
    headers: Headers
    associated_stream_id: int = 0
    priority: int = 0  # 0 (highest) .. 7
    slot: int = 0
    flags: int = 0

    @property
    def unidirectional(self) -> bool:
        return bool(self.flags & FLAG_UNIDIRECTIONAL)


@dataclass(frozen=True, slots=True)
class SynReplyFrame(_Fin):
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Setting:
    id: int  # 24 bits
    value: int  # 32 bits
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    settings: tuple[Setting, ...] = ()
    flags: int = 0


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class HeadersFrame(_Fin):
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int  # 0: the session window (SPDY/3.1)
    delta: int


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
)


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Caps the parser enforces before buffering a frame or inflating a header block."""

    max_data_frame: int = MAX_FRAME_LENGTH
    max_control_frame: int = DEFAULT_MAX_CONTROL_FRAME
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES


# --- Header blocks ------------------------------------------------------------------


def encode_header_block(headers: HeaderInput) -> bytes:
    """Serialize (uncompressed): u32 count, then u32-length-prefixed name and value pairs.

    Names are lowercased; a sequence value becomes NUL-separated values.
    """
    out = [struct.pack(">I", len(headers))]
    seen: set[str] = set()
    for name, value in headers.items():
        lname = name.lower()
        if not lname or lname in seen:
            raise ValueError(f"empty or duplicate header name {name!r}")
        seen.add(lname)
        values = [value] if isinstance(value, str) else list(value)
        if any("\0" in v for v in values):
            raise ValueError(f"header {name!r}: a value contains NUL")
        for part in (lname.encode(), "\0".join(values).encode()):
            out += [struct.pack(">I", len(part)), part]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    """Parse an uncompressed header block; ProtocolError on anything malformed."""
    if len(block) < 4:
        raise ProtocolError("header block shorter than its pair count")
    (count,) = struct.unpack_from(">I", block, 0)
    if count > (len(block) - 4) // 8:
        raise ProtocolError(f"header block claims {count} pairs in {len(block)} bytes")
    headers: Headers = {}
    pos = 4
    for _ in range(count):
        name, pos = _read_string(block, pos, "name")
        value, pos = _read_string(block, pos, "value")
        _check_header_name(name, headers)
        headers[name] = value.split("\0")
    if pos != len(block):
        raise ProtocolError(f"{len(block) - pos} stray bytes after the header block")
    return headers


def _read_string(block: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + 4 > len(block):
        raise ProtocolError(f"header block truncated before a {what} length")
    (length,) = struct.unpack_from(">I", block, pos)
    end = pos + 4 + length
    if end > len(block):
        raise ProtocolError(f"header {what} of {length} bytes overruns the block")
    try:
        return block[pos + 4 : end].decode(), end
    except UnicodeDecodeError:
        raise ProtocolError(f"header {what} is not UTF-8") from None


def _check_header_name(name: str, seen: Headers) -> None:
    if not name:
        raise ProtocolError("empty header name")
    if name != name.lower():
        raise ProtocolError(f"header name {name!r} is not lowercase")
    if name in seen:
        raise ProtocolError(f"duplicate header name {name!r}")


class HeaderCompressor:
    """Our direction's zlib context (SPDY dictionary, sync flush per block), one per session."""

    def __init__(self, level: int = zlib.Z_DEFAULT_COMPRESSION) -> None:
        self._z = zlib.compressobj(level=level, wbits=zlib.MAX_WBITS, zdict=SPDY_DICTIONARY)

    def compress(self, headers: HeaderInput) -> bytes:
        block = encode_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's zlib context, for the session's lifetime. zlib asks for the dictionary
    (FDICT, DICTID 0xe3c6a7c2) on the first block; ``decompressobj(zdict=...)`` supplies it.
    Output is capped at ``max_bytes`` per block (decompression bombs); any error leaves
    the context unusable, so later calls fail too."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self._z = zlib.decompressobj(wbits=zlib.MAX_WBITS, zdict=SPDY_DICTIONARY)
        self._max = max_bytes
        self._broken: str | None = None

    def inflate(self, data: bytes) -> bytes:
        if self._broken:
            raise ProtocolError(f"header compression context unusable: {self._broken}")
        try:
            out = self._z.decompress(data, self._max + 1)
        except zlib.error as e:
            self._fail(f"bad compressed header block: {e}")
        if len(out) > self._max or self._z.unconsumed_tail:
            self._fail(f"header block inflates past {self._max} bytes")
        if self._z.eof:
            self._fail("peer ended its header compression stream")
        return out

    def decompress(self, data: bytes) -> Headers:
        return decode_header_block(self.inflate(data))

    def _fail(self, reason: str) -> NoReturn:
        self._broken = reason
        raise ProtocolError(reason)


# --- Parsing ------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_TWO_U32 = struct.Struct(">II")
_CONTROL_FLAG = 0x80000000
_ID_MASK = 0x7FFFFFFF


class FrameParser:
    """Incremental SPDY/3 frame parser: bytes in any fragmentation -> frames.

    Unknown control frame types are skipped (without buffering them). Any malformed
    input raises ``ProtocolError``; after that the parser only raises again.
    """

    def __init__(
        self, limits: FrameLimits | None = None, decompressor: HeaderDecompressor | None = None
    ) -> None:
        self.limits = limits or FrameLimits()
        self._headers = decompressor or HeaderDecompressor(self.limits.max_header_bytes)
        self._buf = bytearray()
        self._skip = 0
        self._failed: str | None = None
        self._control: dict[int, Callable[[int, bytes], Frame]] = {
            FrameType.SYN_STREAM: self._syn_stream,
            FrameType.SYN_REPLY: self._syn_reply,
            FrameType.RST_STREAM: self._rst_stream,
            FrameType.SETTINGS: self._settings,
            FrameType.PING: self._ping,
            FrameType.GOAWAY: self._goaway,
            FrameType.HEADERS: self._headers_frame,
            FrameType.WINDOW_UPDATE: self._window_update,
        }

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise ProtocolError(f"parser failed earlier: {self._failed}")
        frames: list[Frame] = []
        try:
            if self._buf:
                self._buf += data
                used = self._parse_into(self._buf, frames)
                del self._buf[:used]
            else:  # the common case: parse the chunk in place, keep only an incomplete tail
                used = self._parse_into(data, frames)
                self._buf += memoryview(data)[used:]
        except ProtocolError as e:
            self._failed = e.message
            raise ProtocolError(e.message, frames) from None
        return frames

    def _parse_into(self, src: bytes | bytearray, frames: list[Frame]) -> int:
        """Parse whole frames out of src into frames; how many bytes were used.

        A payload is copied out of src once, through a memoryview (a bytearray slice would
        be a second copy)."""
        size = len(src)
        with memoryview(src) as view:
            pos = self._consume_skip(0, size)
            while not self._skip and size - pos >= 8:
                first, second = _TWO_U32.unpack_from(view, pos)
                flags, length = second >> 24, second & 0xFFFFFF
                kind = None
                if first & _CONTROL_FLAG:
                    kind = self._check_header(first, length)
                    if kind is None:  # unknown type: skip its payload
                        self._skip = length
                        pos = self._consume_skip(pos + 8, size)
                        continue
                elif length > self.limits.max_data_frame:
                    raise ProtocolError(f"data frame of {length} bytes exceeds the cap")
                if size - pos < 8 + length:
                    break
                payload = bytes(view[pos + 8 : pos + 8 + length])
                pos += 8 + length
                frames.append(self._decode(first, kind, flags, payload))
        return pos

    def _consume_skip(self, pos: int, size: int) -> int:
        n = min(self._skip, size - pos)
        self._skip -= n
        return pos + n

    def _check_header(self, first: int, length: int) -> int | None:
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        if kind not in self._control:
            return None
        if length > self.limits.max_control_frame:
            raise ProtocolError(f"control frame of {length} bytes exceeds the cap")
        return kind

    def _decode(self, first: int, kind: int | None, flags: int, payload: bytes) -> Frame:
        if kind is not None:
            return self._control[kind](flags, payload)
        return DataFrame(_nonzero_id(first & _ID_MASK, "DATA"), payload, flags)

    def _syn_stream(self, flags: int, p: bytes) -> Frame:
        _need(p, 10, "SYN_STREAM", exact=False)
        sid, assoc = _TWO_U32.unpack_from(p, 0)
        return SynStreamFrame(
            stream_id=_nonzero_id(sid & _ID_MASK, "SYN_STREAM"),
            headers=self._header_block(p[10:]),
            associated_stream_id=assoc & _ID_MASK,
            priority=p[8] >> 5,
            slot=p[9],
            flags=flags,
        )

    def _syn_reply(self, flags: int, p: bytes) -> Frame:
        _need(p, 4, "SYN_REPLY", exact=False)
        sid = _nonzero_id(_U32.unpack_from(p, 0)[0] & _ID_MASK, "SYN_REPLY")
        return SynReplyFrame(sid, self._header_block(p[4:]), flags)

    def _headers_frame(self, flags: int, p: bytes) -> Frame:
        _need(p, 4, "HEADERS", exact=False)
        sid = _nonzero_id(_U32.unpack_from(p, 0)[0] & _ID_MASK, "HEADERS")
        return HeadersFrame(sid, self._header_block(p[4:]), flags)

    def _rst_stream(self, flags: int, p: bytes) -> Frame:
        _need(p, 8, "RST_STREAM")
        sid, status = _TWO_U32.unpack_from(p, 0)
        return RstStreamFrame(_nonzero_id(sid & _ID_MASK, "RST_STREAM"), status)

    def _settings(self, flags: int, p: bytes) -> Frame:
        _need(p, 4, "SETTINGS", exact=False)
        (count,) = _U32.unpack_from(p, 0)
        if len(p) != 4 + 8 * count:
            raise ProtocolError(f"SETTINGS with {count} entries has {len(p)} bytes")
        entries = []
        for off in range(4, len(p), 8):
            flag_id, value = _TWO_U32.unpack_from(p, off)
            entries.append(Setting(flag_id & 0xFFFFFF, value, flag_id >> 24))
        return SettingsFrame(tuple(entries), flags)

    def _ping(self, flags: int, p: bytes) -> Frame:
        _need(p, 4, "PING")
        return PingFrame(_U32.unpack_from(p, 0)[0])

    def _goaway(self, flags: int, p: bytes) -> Frame:
        _need(p, 8, "GOAWAY")
        last, status = _TWO_U32.unpack_from(p, 0)
        return GoAwayFrame(last & _ID_MASK, status)

    def _window_update(self, flags: int, p: bytes) -> Frame:
        _need(p, 8, "WINDOW_UPDATE")
        sid, delta = _TWO_U32.unpack_from(p, 0)
        return WindowUpdateFrame(sid & _ID_MASK, delta & _ID_MASK)

    def _header_block(self, compressed: bytes) -> Headers:
        return self._headers.decompress(compressed) if compressed else {}


def _need(payload: bytes, size: int, name: str, *, exact: bool = True) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        relation = "" if exact else "at least "
        raise ProtocolError(f"{name} needs {relation}{size} bytes, got {len(payload)}")


def _nonzero_id(stream_id: int, name: str) -> int:
    if stream_id == 0:
        raise ProtocolError(f"{name} on stream 0")
    return stream_id


# --- Encoding -----------------------------------------------------------------------


class FrameEncoder:
    """Frames -> bytes. Header-bearing frames go through this direction's compressor,
    so frames must be written to the wire in the order they are encoded."""

    def __init__(self, compressor: HeaderCompressor | None = None) -> None:
        self.compressor = compressor or HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            return _data_frame(frame)
        kind, flags, payload = self._control_payload(frame)
        return _control_frame(kind, flags, payload)

    def _control_payload(self, frame: Frame) -> tuple[FrameType, int, bytes]:
        if isinstance(frame, SynStreamFrame):
            ids = _TWO_U32.pack(_sid(frame.stream_id), _sid(frame.associated_stream_id, zero=True))
            priority = _ranged(frame.priority, 7, "priority") << 5
            slot = _ranged(frame.slot, 255, "slot")
            block = self.compressor.compress(frame.headers)
            return FrameType.SYN_STREAM, frame.flags, ids + bytes([priority, slot]) + block
        if isinstance(frame, SynReplyFrame | HeadersFrame):
            kind = FrameType.SYN_REPLY if isinstance(frame, SynReplyFrame) else FrameType.HEADERS
            block = self.compressor.compress(frame.headers)
            return kind, frame.flags, _U32.pack(_sid(frame.stream_id)) + block
        if isinstance(frame, RstStreamFrame):
            return FrameType.RST_STREAM, 0, _TWO_U32.pack(_sid(frame.stream_id), _u32(frame.status))
        if isinstance(frame, SettingsFrame):
            return FrameType.SETTINGS, frame.flags, _settings_payload(frame.settings)
        if isinstance(frame, PingFrame):
            return FrameType.PING, 0, _U32.pack(_u32(frame.ping_id))
        if isinstance(frame, GoAwayFrame):
            last = _sid(frame.last_good_stream_id, zero=True)
            return FrameType.GOAWAY, 0, _TWO_U32.pack(last, _u32(frame.status))
        if isinstance(frame, WindowUpdateFrame):
            sid = _sid(frame.stream_id, zero=True)
            delta = _ranged(frame.delta, MAX_WINDOW, "delta")
            return FrameType.WINDOW_UPDATE, 0, _TWO_U32.pack(sid, delta)
        raise TypeError(f"not a SPDY frame: {frame!r}")


def _control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    length = _ranged(len(payload), MAX_FRAME_LENGTH, "frame length")
    word = (_ranged(flags, 255, "flags") << 24) | length
    return struct.pack(">HHI", 0x8000 | VERSION, kind, word) + payload


def _data_frame(frame: DataFrame) -> bytes:
    length = _ranged(len(frame.data), MAX_FRAME_LENGTH, "data length")
    word = (_ranged(frame.flags, 255, "flags") << 24) | length
    return _TWO_U32.pack(_sid(frame.stream_id), word) + frame.data


def _settings_payload(settings: Sequence[Setting]) -> bytes:
    parts = [_U32.pack(len(settings))]
    for s in settings:
        flags = _ranged(s.flags, 255, "setting flags")
        flag_id = (flags << 24) | _ranged(s.id, 0xFFFFFF, "setting id")
        parts.append(_TWO_U32.pack(flag_id, _u32(s.value)))
    return b"".join(parts)


def _sid(stream_id: int, *, zero: bool = False) -> int:
    if not (0 if zero else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range")
    return stream_id


def _u32(value: int) -> int:
    return _ranged(value, 0xFFFFFFFF, "value")


def _ranged(value: int, top: int, what: str) -> int:
    if not 0 <= value <= top:
        raise ValueError(f"{what} {value} out of range 0..{top}")
    return value


# --- Session ------------------------------------------------------------------------


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> object: ...

    async def drain(self) -> None: ...

    def close(self) -> object: ...


StreamHandler = Callable[["SpdyStream"], Awaitable[None]]
SendFlowControl = Literal["auto", "on", "off"]

_CLOSE_TIMEOUT = 5.0
_MAX_BACKLOG = 1024 * 1024  # unsent bytes past which the read loop waits for the peer to read


def _backlog(writer: object) -> int:
    """Bytes written but not yet sent (0 when the writer cannot tell)."""
    size = getattr(writer, "write_buffer_size", None)
    if callable(size):
        return size()
    transport = getattr(writer, "transport", None)
    try:
        return transport.get_write_buffer_size() if transport is not None else 0
    except (AttributeError, RuntimeError):
        return 0


class SpdyStream:
    """A stream the peer opened with SYN_STREAM (already answered with SYN_REPLY).

    ``read`` returns b"" at the peer's FIN, after a reset (either side) and once the
    session ends with nothing left buffered. ``write`` raises ``StreamResetError`` after
    a reset and ``StreamClosedError`` after ``close()`` or the end of the session.
    """

    def __init__(self, session: SpdySession, frame: SynStreamFrame, send_window: int) -> None:
        self.id = frame.stream_id
        self.headers: Headers = frame.headers
        self.priority = frame.priority
        self.send_window = send_window  # what the peer lets us send; may go negative
        self._session = session
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._unacked = 0  # consumed bytes not yet returned with WINDOW_UPDATE
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._write_lock = asyncio.Lock()
        self._remote_closed = frame.fin
        self._local_closed = frame.unidirectional
        self._reset: int | None = None
        self._reset_by_peer = False

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} streamtype={self.header('streamtype')!r}>"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (names are lowercase on the wire)."""
        values = self.headers.get(name.lower())
        return values[0] if values else default

    @property
    def remote_closed(self) -> bool:
        return self._remote_closed

    @property
    def local_closed(self) -> bool:
        return self._local_closed

    @property
    def reset_status(self) -> int | None:
        return self._reset

    def at_eof(self) -> bool:
        return not self._chunks and self._input_ended()

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all buffered if n < 0); b"" at end of input."""
        if n == 0:
            return b""
        while not self._chunks:
            if self._input_ended():
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._take(n)
        self._buffered -= len(data)
        self._session._buffered_total -= len(data)
        self._drained.set()  # progress: wakes a read loop waiting for room in this stream
        self._session._data_consumed(self, len(data))
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def write(self, data: bytes) -> None:
        """Send data in DATA frames (split to the frame size and, if enforced, the windows)."""
        view = memoryview(data)
        async with self._write_lock:
            self._check_writable()
            while view:
                n = await self._session._reserve_send(self, len(view))
                chunk = data if n == len(data) and type(data) is bytes else bytes(view[:n])  # whole bytes: no copy
                self._session._send(DataFrame(self.id, chunk))
                view = view[n:]
                await self._session._drain()

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FLAG_FIN. Reading goes on until the peer's FIN."""
        async with self._write_lock:
            if self._local_closed or self._reset is not None or self._session.closed:
                self._local_closed = True
                return
            self._local_closed = True
            self._session._send(DataFrame(self.id, b"", FLAG_FIN))
            self._session._maybe_forget(self)
        with contextlib.suppress(StreamClosedError):
            await self._session._drain()

    def reset(self, status: int = RstStatus.CANCEL) -> None:
        """Abort with RST_STREAM: reads end (buffered data dropped), writes raise."""
        if self._reset is not None or (self._local_closed and self._remote_closed):
            return
        self._terminate(status, by_peer=False)
        self._session._send_reset(self.id, status)

    # -- called by the session --

    def _input_ended(self) -> bool:
        return self._remote_closed or self._reset is not None or self._session.closed

    def _take(self, n: int) -> bytes:
        if n < 0 or n >= self._buffered:
            data = b"".join(self._chunks)
            self._chunks.clear()
            return data
        parts: list[bytes] = []
        while n:
            chunk = self._chunks.popleft()
            if len(chunk) > n:
                self._chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _check_writable(self) -> None:
        if self._reset is not None:
            raise StreamResetError(self.id, self._reset, by_peer=self._reset_by_peer)
        if self._local_closed:
            raise StreamClosedError(f"stream {self.id} is closed for writing")
        if self._session.closed:
            raise StreamClosedError("SPDY session closed")

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._session._buffered_total += len(data)
        self._readable.set()

    def _on_remote_fin(self) -> None:
        self._remote_closed = True
        self._readable.set()

    def _terminate(self, status: int, *, by_peer: bool) -> None:
        self._reset = status
        self._reset_by_peer = by_peer
        dropped, self._buffered = self._buffered, 0
        self._session._buffered_total -= dropped
        self._chunks.clear()
        self._session._credit_session(dropped)
        self._wake()
        self._session._forget(self)

    def _wake(self) -> None:
        self._readable.set()
        self._drained.set()
        self._session._wake_writers()


class SpdySession:
    """Server side of one SPDY/3.1 connection.

    Every SYN_STREAM is answered with SYN_REPLY at once and handed to ``on_stream`` (run
    as its own task) or, without a handler, queued for ``accept()``. PINGs are echoed,
    consumed data is returned with WINDOW_UPDATE, ``close()`` sends GOAWAY.

    Send-side flow control (``send_flow_control``): windows are always tracked; "on"
    waits for them, "off" never does, "auto" (default) starts waiting once the peer has
    sent a WINDOW_UPDATE, i.e. has shown it replenishes windows. Go's spdystream (the API
    server's and kubectl's SPDY) never does, so with it writes never wait on windows.
    ``window_stall_timeout`` bounds a wait: past it, the frame is sent anyway.

    Receiving, each stream buffers up to its window (``max(receive_window,
    max_stream_buffer)``) and the read loop never waits for one stream's reader, so a
    stalled stream does not stall its siblings. A peer that does flow control (it sent a
    WINDOW_UPDATE) and overruns a window gets RST_STREAM FLOW_CONTROL_ERROR. One that does
    not (spdystream) is held back by TCP instead: the read loop waits for that stream's
    reader, and ``read_stall_timeout`` (None: forever) resets a stream whose reader takes
    nothing for that long, so the others go on. The bytes buffered across all streams are
    capped too (twice the larger window), and so is our unsent output (a peer that pings
    but never reads stops being read). ``idle_timeout``: no frame either way for that long
    closes the session (GOAWAY), as the kubelet's --streaming-connection-idle-timeout.
    """

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        on_stream: StreamHandler | None = None,
        receive_window: int = DEFAULT_WINDOW,
        send_flow_control: SendFlowControl = "auto",
        window_stall_timeout: float | None = None,
        max_send_frame: int = 32 * 1024,
        max_stream_buffer: int = 1024 * 1024,
        max_streams: int = 256,
        read_size: int = 64 * 1024,
        limits: FrameLimits | None = None,
        read_stall_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        if not 0 < receive_window <= MAX_WINDOW:
            raise ValueError(f"receive_window {receive_window} out of range 1..{MAX_WINDOW}")
        self._reader = reader
        self._writer = writer
        self._on_stream = on_stream
        self._parser = FrameParser(limits)
        self._encoder = FrameEncoder()
        self.receive_window = receive_window
        self.max_stream_buffer = max_stream_buffer
        self._session_receive_window = max(receive_window, DEFAULT_WINDOW)
        self._flow_mode = send_flow_control
        self._enforce_send = send_flow_control == "on"
        self._stall_timeout = window_stall_timeout
        self._max_send_frame = max(1, min(max_send_frame, MAX_FRAME_LENGTH))
        self._max_streams = max_streams
        self._read_size = read_size
        self.stream_limit = max(receive_window, max_stream_buffer)  # bytes a stream may buffer
        self._session_budget = 2 * max(self._session_receive_window, self.stream_limit)
        self._buffered_total = 0  # received, not yet read, over every stream
        self._peer_flow_control = False  # the peer sent a WINDOW_UPDATE: it does flow control
        self._read_stall_timeout = read_stall_timeout
        self._idle_timeout = idle_timeout
        self._idle: IdleTimer | None = None
        self._idle_close: asyncio.Task[None] | None = None
        self.streams: dict[int, SpdyStream] = {}
        self.peer_settings: dict[int, int] = {}
        self.peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # session level (SPDY/3.1)
        self.last_good_stream_id = 0
        self.peer_gone_away = False
        self._highest_stream_id = 0
        self._session_unacked = 0
        self._accepted: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._handlers: set[asyncio.Task[None]] = set()
        self._window_waiters: set[asyncio.Future[None]] = set()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._next_ping_id = 2  # ours are even, the client's odd
        self._drain_lock = asyncio.Lock()
        self._read_task: asyncio.Task[None] | None = None
        self._writer_close: Awaitable[object] | None = None
        self._goaway_sent = False
        self._writer_closed = False
        self._closed = False
        self._closed_event = asyncio.Event()

    # -- public --

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_flow_control_active(self) -> bool:
        return self._enforce_send

    def start(self) -> None:
        """Start the read loop in a task (idempotent)."""
        if self._read_task is None:
            self._idle = IdleTimer(self._idle_timeout, self._on_idle)
            self._read_task = asyncio.create_task(self._read_loop(), name="spdy-session")

    async def run(self) -> None:
        """Start and wait until the connection ends (peer EOF, protocol error or close())."""
        self.start()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened, or None once the session is closed."""
        if self._on_stream is not None:
            raise RuntimeError("this session hands streams to on_stream")
        stream = await self._accepted.get()
        if stream is None:
            self._accepted.put_nowait(None)  # wake any other acceptor too
        return stream

    async def __aiter__(self) -> AsyncIterator[SpdyStream]:
        while (stream := await self.accept()) is not None:
            yield stream

    async def ping(self, timeout: float = 10.0) -> float:
        """Send a PING and return the round-trip time in seconds."""
        if self._closed:
            raise StreamClosedError("SPDY session closed")
        loop = asyncio.get_running_loop()
        ping_id = self._next_ping_id
        self._next_ping_id = 2 if ping_id >= 0xFFFFFFFE else ping_id + 2
        waiter: asyncio.Future[None] = loop.create_future()
        self._pings[ping_id] = waiter
        started = loop.time()
        try:
            self._send(PingFrame(ping_id))
            await self._drain()
            await asyncio.wait_for(waiter, timeout)
        finally:
            self._pings.pop(ping_id, None)
        return loop.time() - started

    async def close(self, status: int = GoAwayStatus.OK) -> None:
        """Send GOAWAY (with the last stream accepted), end every stream, close the writer."""
        if not self._closed:
            self._send_goaway(status)
            with contextlib.suppress(StreamClosedError, TimeoutError):
                await asyncio.wait_for(self._drain(), _CLOSE_TIMEOUT)
            self._shutdown()
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})
        await self._await_writer_closed()

    def _on_idle(self) -> None:
        log.info("SPDY connection idle for %ss (streaming connection idle timeout): closing it", self._idle_timeout)
        self._idle_close = asyncio.create_task(self.close(), name="spdy-idle-close")

    # -- read side --

    async def _read_loop(self) -> None:
        try:
            self._announce_windows()
            while data := await self._reader.read(self._read_size):
                if self._idle is not None:
                    self._idle.touch()
                if not await self._process(data):
                    break
                if _backlog(self._writer) > _MAX_BACKLOG:  # our answers pile up unread: stop reading
                    await self._drain()
        except (ConnectionError, OSError) as e:
            log.debug("SPDY connection lost: %s", e)
        except Exception:
            log.exception("SPDY session failed")
            self._send_goaway(GoAwayStatus.INTERNAL_ERROR)
        finally:
            self._shutdown()

    async def _process(self, data: bytes) -> bool:
        try:
            frames = self._parser.feed(data)
        except ProtocolError as e:
            for frame in e.frames:
                await self._dispatch(frame)
            log.warning("SPDY protocol error from peer: %s", e.message)
            self._send_goaway(GoAwayStatus.PROTOCOL_ERROR)
            return False
        for frame in frames:
            await self._dispatch(frame)
        return True

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):
            await self._on_data(frame)
        elif isinstance(frame, SynStreamFrame):
            self._on_syn_stream(frame)
        elif isinstance(frame, RstStreamFrame):
            self._on_rst_stream(frame)
        elif isinstance(frame, SettingsFrame):
            self._on_settings(frame)
        elif isinstance(frame, PingFrame):
            self._on_ping(frame)
        elif isinstance(frame, GoAwayFrame):
            self.peer_gone_away = True
            log.debug("SPDY peer sent GOAWAY (last good %d)", frame.last_good_stream_id)
        elif isinstance(frame, HeadersFrame):
            self._on_headers(frame)
        elif isinstance(frame, WindowUpdateFrame):
            self._on_window_update(frame)
        else:  # SYN_REPLY: this side never opens streams
            log.debug("SPDY: ignoring %s", type(frame).__name__)

    def _on_syn_stream(self, frame: SynStreamFrame) -> None:
        sid = frame.stream_id
        refusal = self._refusal(sid)
        if sid % 2 == 1:
            self._highest_stream_id = max(self._highest_stream_id, sid)
        if refusal is not None:
            self._send_reset(sid, refusal)
            return
        stream = SpdyStream(self, frame, self.peer_initial_window)
        self.streams[sid] = stream
        self.last_good_stream_id = sid
        if not frame.unidirectional:
            self._send(SynReplyFrame(sid, {}))
        self._deliver(stream)
        self._maybe_forget(stream)

    def _refusal(self, sid: int) -> RstStatus | None:
        if sid in self.streams:
            return RstStatus.STREAM_IN_USE
        if sid % 2 == 0 or sid <= self._highest_stream_id:  # client streams: odd, increasing
            return RstStatus.PROTOCOL_ERROR
        if self._goaway_sent or self._closed or self.peer_gone_away:
            return RstStatus.REFUSED_STREAM
        if len(self.streams) >= self._max_streams:
            return RstStatus.REFUSED_STREAM
        return None

    def _deliver(self, stream: SpdyStream) -> None:
        if self._on_stream is None:
            self._accepted.put_nowait(stream)
            return
        task = asyncio.create_task(self._run_handler(stream), name=f"spdy-stream-{stream.id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, stream: SpdyStream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except Exception:
            log.exception("SPDY stream %d handler failed", stream.id)
            stream.reset(RstStatus.INTERNAL_ERROR)

    async def _on_data(self, frame: DataFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            self._credit_session(len(frame.data))
            if frame.stream_id > self._highest_stream_id:
                self._send_reset(frame.stream_id, RstStatus.INVALID_STREAM)
            return  # else: late data for a finished stream
        if stream.remote_closed:
            self._credit_session(len(frame.data))
            stream.reset(RstStatus.STREAM_ALREADY_CLOSED)
            return
        if frame.data:
            stream._feed(frame.data)
        if frame.fin:
            stream._on_remote_fin()
            self._maybe_forget(stream)
        if stream._buffered > self.stream_limit:
            await self._overrun(stream)
        while self._buffered_total > self._session_budget and not self._closed:
            if not await self._any_progress():
                break

    async def _overrun(self, stream: SpdyStream) -> None:
        """The peer sent past a stream's window (see the class docstring)."""
        if self._peer_flow_control:
            log.warning("SPDY peer overran stream %d's window: resetting it", stream.id)
            stream.reset(RstStatus.FLOW_CONTROL_ERROR)
            return
        while stream._buffered > self.stream_limit and not stream._input_ended():
            stream._drained.clear()
            try:
                await asyncio.wait_for(stream._drained.wait(), self._read_stall_timeout)
            except TimeoutError:
                log.info("SPDY stream %d: its reader took nothing for %ss with %d bytes waiting: resetting it",
                         stream.id, self._read_stall_timeout, stream._buffered)
                stream.reset(RstStatus.FLOW_CONTROL_ERROR)
                return

    async def _any_progress(self) -> bool:
        """Wait until some stream's reader takes data (or a stream goes); False if none could."""
        busy = [s for s in self.streams.values() if s._buffered]
        for s in busy:
            s._drained.clear()
        waiters = [asyncio.ensure_future(s._drained.wait()) for s in busy]
        if not waiters:
            return False
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return True

    def _on_rst_stream(self, frame: RstStreamFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is not None:
            stream._terminate(frame.status, by_peer=True)

    def _on_headers(self, frame: HeadersFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            return
        for name, values in frame.headers.items():
            stream.headers.setdefault(name, []).extend(values)
        if frame.fin:
            stream._on_remote_fin()
            self._maybe_forget(stream)

    def _on_settings(self, frame: SettingsFrame) -> None:
        for setting in frame.settings:
            self.peer_settings[setting.id] = setting.value
            if setting.id == SettingId.INITIAL_WINDOW_SIZE and setting.value <= MAX_WINDOW:
                delta = setting.value - self.peer_initial_window
                self.peer_initial_window = setting.value
                for stream in self.streams.values():
                    stream.send_window += delta
                self._wake_writers()

    def _on_ping(self, frame: PingFrame) -> None:
        if frame.ping_id % 2 == 1:  # the client's: echo it
            self._send(frame)
            return
        waiter = self._pings.get(frame.ping_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        self._peer_flow_control = True
        if self._flow_mode == "auto" and not self._enforce_send:
            log.debug("SPDY peer does flow control: honouring its windows")
            self._enforce_send = True
        if frame.stream_id == 0:
            self.send_window = min(self.send_window + frame.delta, MAX_WINDOW)
        elif (stream := self.streams.get(frame.stream_id)) is not None:
            stream.send_window += frame.delta
            if stream.send_window > MAX_WINDOW:
                stream.reset(RstStatus.FLOW_CONTROL_ERROR)
        self._wake_writers()

    # -- receive windows --

    def _announce_windows(self) -> None:
        if self.receive_window != DEFAULT_WINDOW:
            setting = Setting(SettingId.INITIAL_WINDOW_SIZE, self.receive_window)
            self._send(SettingsFrame((setting,)))
        if self._session_receive_window > DEFAULT_WINDOW:
            self._send(WindowUpdateFrame(0, self._session_receive_window - DEFAULT_WINDOW))

    def _data_consumed(self, stream: SpdyStream, n: int) -> None:
        stream._unacked += n
        if not stream._input_ended() and stream._unacked >= self.receive_window // 2:
            self._send(WindowUpdateFrame(stream.id, stream._unacked))
            stream._unacked = 0
        self._credit_session(n)

    def _credit_session(self, n: int) -> None:
        self._session_unacked += n
        if self._session_unacked >= self._session_receive_window // 2 and not self._closed:
            self._send(WindowUpdateFrame(0, self._session_unacked))
            self._session_unacked = 0

    # -- send side --

    async def _reserve_send(self, stream: SpdyStream, wanted: int) -> int:
        n = min(wanted, self._max_send_frame)
        while self._enforce_send:
            stream._check_writable()
            allowed = min(stream.send_window, self.send_window)
            if allowed > 0:
                n = min(n, allowed)
                break
            if not await self._wait_for_window():
                break
        stream._check_writable()
        stream.send_window -= n
        self.send_window -= n
        return n

    async def _wait_for_window(self) -> bool:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._window_waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, self._stall_timeout)
            return True
        except TimeoutError:
            stalled = self._stall_timeout
            log.warning("SPDY peer sent no WINDOW_UPDATE for %ss; sending anyway", stalled)
            return False
        finally:
            self._window_waiters.discard(waiter)

    def _wake_writers(self) -> None:
        for waiter in self._window_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._window_waiters.clear()

    def _send(self, frame: Frame) -> None:
        if self._writer_closed:
            return
        data = self._encoder.encode(frame)  # encode and write together: zlib context order
        if self._idle is not None:
            self._idle.touch()
        try:
            self._writer.write(data)
        except (ConnectionError, OSError, RuntimeError) as e:
            log.debug("SPDY write failed: %s", e)

    async def _drain(self) -> None:
        try:
            async with self._drain_lock:
                await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise StreamClosedError(f"SPDY connection lost: {e}") from e

    def _send_reset(self, stream_id: int, status: int) -> None:
        if not self._closed:
            self._send(RstStreamFrame(stream_id, status))

    def _send_goaway(self, status: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self._send(GoAwayFrame(self.last_good_stream_id, status))

    # -- teardown --

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: SpdyStream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
        for stream in list(self.streams.values()):
            stream._wake()
        self.streams.clear()
        self._wake_writers()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(StreamClosedError("SPDY session closed"))
        self._accepted.put_nowait(None)
        self._close_writer()
        self._closed_event.set()

    def _close_writer(self) -> None:
        self._writer_closed = True
        try:
            result = self._writer.close()
        except Exception as e:  # a broken transport must not stop the teardown
            log.debug("SPDY writer close failed: %s", e)
            return
        if inspect.isawaitable(result):
            self._writer_close = asyncio.ensure_future(result)

    async def _await_writer_closed(self) -> None:
        waits: list[Awaitable[object]] = []
        if self._writer_close is not None:
            waits.append(self._writer_close)
        wait_closed = getattr(self._writer, "wait_closed", None)
        if callable(wait_closed):
            waits.append(wait_closed())
        for awaitable in waits:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(awaitable, _CLOSE_TIMEOUT)
