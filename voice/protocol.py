"""The xiaozhi device protocol as plain data: JSON text messages in both directions, the binary
audio framings (v1/v2/v3), version negotiation, device-id normalisation and emotion mapping.

Pure on purpose (no sockets, Django or asyncio): the server session, the device simulator, the
load-test generator and the tests all share one definition of the wire, so they cannot drift apart.
Parsing is strict and raises ``ProtocolError`` with a ``kind`` the caller can log and count; a bad
frame from a device must never take the connection down, and must never be echoed back.
"""
from __future__ import annotations

import json
import re
import struct
from enum import IntEnum
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

MAX_TEXT_BYTES = 64 * 1024  # larger text frames are rejected
MAX_AUDIO_PAYLOAD = 4096  # bytes; a 60 ms Opus frame is < 1.5 KB
SUPPORTED_BINARY_VERSIONS = (1, 2, 3)

ERROR_KINDS = ("too_large", "malformed_json", "not_object", "missing_type", "unknown_type",
               "invalid_field", "bad_frame")
LISTEN_STATES = ("start", "stop", "detect")
LISTEN_MODES = ("auto", "manual", "realtime")
TTS_STATES = ("start", "sentence_start", "stop")


class CloseCode(IntEnum):
    """Every code the server closes a device socket with, so a device (or a log reader) can tell
    the reasons apart. Daphne (autobahn) sends only 1000 or 3000-4999, so the private range
    mirrors HTTP where it can."""

    NORMAL = 1000
    IDLE = 4000  # no voice for the idle limit, or an unbound device's session limit
    BAD_REQUEST = 4400  # missing or malformed Device-Id
    UNAUTHORIZED = 4401  # bad or missing token (accepted, then closed, so the reason is seen)
    FORBIDDEN = 4403  # the device is bound to another Client-Id: a takeover attempt (devices/binding)
    HELLO_TIMEOUT = 4408  # no hello in time
    REPLACED = 4409  # a newer connection of the same device took over
    TOO_BIG = 4413  # a run of frames over the size limit
    UNSUPPORTED = 4415  # the hello asks for an audio format the server does not speak (after an alert)
    BAD_DATA = 4422  # a run of undecodable frames
    RATE_LIMITED = 4429  # too many handshakes from this address or device, or too many sockets from this address
    STORAGE_UNAVAILABLE = 4502  # the database is unreachable at the handshake: try again shortly (devices/consumers.py)
    SERVER_FULL = 4503  # the process holds its connection limit


class ProtocolError(ValueError):
    """A frame that breaks the protocol. ``kind`` is one of ERROR_KINDS, so callers can count and
    log errors by category without matching on message text."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ProtocolError kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message


class FrameError(ProtocolError):
    """A binary frame that cannot be trusted (kind 'bad_frame' or 'too_large')."""


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_field", message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a number


_REQUIRED = object()
_TYPE_CHECKS = {str: ("a string", lambda v: isinstance(v, str)), int: ("an integer", _is_int),
                dict: ("an object", lambda v: isinstance(v, dict))}


def _get(d: dict, key: str, typ: type, default=_REQUIRED):
    """One typed field of a wire object; without ``default`` the field is required."""
    value = d.get(key, default)
    name, ok = _TYPE_CHECKS[typ]
    if not ok(value):
        raise _invalid(f"{d['type']}: {key!r} must be {name}")
    return value


def _choice(d: dict, key: str, options: tuple, optional: bool = False) -> str | None:
    value = d.get(key)
    if value not in options and not (optional and value is None):
        raise _invalid(f"{d['type']}: {key!r} must be one of {options}, got {value!r}")
    return value


@dataclass(frozen=True)
class AudioParams:
    """Opus stream settings. The device sizes its decode buffer from sample_rate * frame_duration,
    so the server must advertise what it really encodes."""
    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60

    @classmethod
    def from_dict(cls, d, base: AudioParams | None = None) -> AudioParams:
        """Validate a wire ``audio_params`` object; missing keys fall back to ``base``."""
        if not isinstance(d, dict):
            raise _invalid("audio_params must be an object")
        base = base or cls()
        fmt = d.get("format", base.format)
        if not isinstance(fmt, str) or not fmt:
            raise _invalid("audio_params.format must be a non-empty string")
        ints = {}
        for key in ("sample_rate", "channels", "frame_duration"):
            value = d.get(key, getattr(base, key))
            if not _is_int(value) or value <= 0:
                raise _invalid(f"audio_params.{key} must be a positive integer")
            ints[key] = value
        return cls(format=fmt, **ints)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The firmware's own defaults when a server hello has no audio_params (FW protocol.h: 24000 / 60).
FIRMWARE_DOWNLINK_DEFAULTS = AudioParams(sample_rate=24000)
SUPPORTED_AUDIO_FORMATS = ("opus",)  # uplink and downlink; a hello asking for another is refused


# Messages: the wire object is {"type": TYPE} plus the fields in order. Optional fields left at
# "" or None are omitted (to the firmware absent and empty mean the same), except the ``text`` of
# listen/detect and tts/sentence_start, which the reader expects to find.
@dataclass(frozen=True)
class Hello:
    """First frame from a device; ``version`` is the binary framing it will use."""
    TYPE: ClassVar[str] = "hello"
    version: int = 1
    transport: str = "websocket"
    audio_params: AudioParams | None = None  # absent: the server assumes the defaults
    features: dict = field(default_factory=dict)
    session_id: str = ""


@dataclass(frozen=True)
class Listen:
    """Turn control. A ``start`` without mode means ``auto`` (the firmware default)."""
    TYPE: ClassVar[str] = "listen"
    state: str
    mode: str | None = None
    text: str = ""
    session_id: str = ""

    def __post_init__(self):
        if self.state == "start" and self.mode is None:
            object.__setattr__(self, "mode", "auto")


@dataclass(frozen=True)
class Abort:
    """The user interrupted; the device keeps speaking until it receives ``tts/stop``."""
    TYPE: ClassVar[str] = "abort"
    reason: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class Mcp:
    """A JSON-RPC 2.0 message in ``payload`` (both directions)."""
    TYPE: ClassVar[str] = "mcp"
    payload: dict
    session_id: str = ""


@dataclass(frozen=True)
class Iot:
    """Legacy IoT descriptors/states (still sent by py-xiaozhi); ``body`` is every other field."""
    TYPE: ClassVar[str] = "iot"
    body: dict
    session_id: str = ""


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    session_id: str = ""


@dataclass(frozen=True)
class ServerHello:
    """Reply to hello. ``transport`` and ``session_id`` are always written: the firmware reads
    ``transport`` without a null check."""
    TYPE: ClassVar[str] = "hello"
    session_id: str
    audio_params: AudioParams
    transport: str = "websocket"
    version: int = 1


@dataclass(frozen=True)
class Stt:
    TYPE: ClassVar[str] = "stt"
    text: str


@dataclass(frozen=True)
class Llm:
    """Sets the face; the firmware reads only ``emotion``."""
    TYPE: ClassVar[str] = "llm"
    emotion: str
    text: str = ""


@dataclass(frozen=True)
class Tts:
    """``start`` must precede audio: the device drops audio unless it is speaking."""
    TYPE: ClassVar[str] = "tts"
    state: str
    text: str = ""


@dataclass(frozen=True)
class Alert:
    """All three strings are required by the firmware."""
    TYPE: ClassVar[str] = "alert"
    status: str
    message: str
    emotion: str


@dataclass(frozen=True)
class System:
    """Only ``reboot`` is implemented by the firmware."""
    TYPE: ClassVar[str] = "system"
    command: str


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[str] = "pong"


def _wire(message) -> dict:
    wire = {"type": message.TYPE}
    for f in fields(message):
        value = getattr(message, f.name)
        optional = f.default is not MISSING or f.default_factory is not MISSING
        state = getattr(message, "state", None)
        keep_text = f.name == "text" and state in ("detect", "sentence_start")
        if optional and value in ("", None) and not keep_text:
            continue
        wire[f.name] = value.to_dict() if isinstance(value, AudioParams) else value
    if isinstance(message, Iot):
        wire = {"type": "iot", **wire.pop("body"), **wire}
    return wire


# ---- parsing ----------------------------------------------------------------------------------
def _load(text: str | bytes) -> tuple[str, dict]:
    """Size check, decode and JSON-parse one text frame; returns (type, object)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
    else:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise ProtocolError("malformed_json", f"text is not valid unicode: {exc}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise ProtocolError("too_large", f"text frame of {len(raw)} bytes exceeds {MAX_TEXT_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError("malformed_json", f"text is not valid UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError("malformed_json", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not_object", f"JSON {type(obj).__name__} is not an object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_type", "message has no string 'type'")
    return kind, obj


def _session(d: dict) -> str:
    return _get(d, "session_id", str, "")


def _parse_hello(d: dict) -> Hello:
    params = d.get("audio_params")
    return Hello(version=_get(d, "version", int, 1),
                 transport=_get(d, "transport", str, "websocket"),
                 audio_params=None if params is None else AudioParams.from_dict(params),
                 features=_get(d, "features", dict, {}), session_id=_session(d))


_DEVICE_PARSERS = {
    "hello": _parse_hello,
    "listen": lambda d: Listen(_choice(d, "state", LISTEN_STATES),
                               _choice(d, "mode", LISTEN_MODES, optional=True),
                               _get(d, "text", str, ""), _session(d)),
    "abort": lambda d: Abort(_get(d, "reason", str, ""), _session(d)),
    "mcp": lambda d: Mcp(_get(d, "payload", dict), _session(d)),
    "iot": lambda d: Iot({k: v for k, v in d.items() if k not in ("type", "session_id")},
                         _session(d)),
    "ping": lambda d: Ping(_session(d)),
}


def _parse_server_hello(d: dict) -> ServerHello:
    params = d.get("audio_params")  # absent: the firmware falls back to its own defaults
    return ServerHello(session_id=_get(d, "session_id", str),
                       audio_params=(FIRMWARE_DOWNLINK_DEFAULTS if params is None else
                                     AudioParams.from_dict(params, FIRMWARE_DOWNLINK_DEFAULTS)),
                       transport=_get(d, "transport", str), version=_get(d, "version", int, 1))


_SERVER_PARSERS = {
    "hello": _parse_server_hello,
    "stt": lambda d: Stt(_get(d, "text", str)),
    "llm": lambda d: Llm(_get(d, "emotion", str), _get(d, "text", str, "")),
    "tts": lambda d: Tts(_choice(d, "state", TTS_STATES), _get(d, "text", str, "")),
    "alert": lambda d: Alert(_get(d, "status", str), _get(d, "message", str),
                             _get(d, "emotion", str)),
    "system": lambda d: System(_get(d, "command", str)),
    "pong": lambda d: Pong(),
    "mcp": lambda d: Mcp(_get(d, "payload", dict), _session(d)),
}


def _parse(text: str | bytes, parsers: dict, side: str):
    kind, obj = _load(text)
    parser = parsers.get(kind)
    if parser is None:
        raise ProtocolError("unknown_type", f"unknown {side} message type {kind[:40]!r}")
    return parser(obj)


def parse_device_message(text: str | bytes) -> Hello | Listen | Abort | Mcp | Iot | Ping:
    """Parse one text frame sent by a device; unknown extra fields are ignored."""
    return _parse(text, _DEVICE_PARSERS, "device")


def parse_server_message(
        text: str | bytes) -> ServerHello | Stt | Llm | Tts | Alert | System | Pong | Mcp:
    """Parse one text frame sent by a server (device simulator, load test)."""
    return _parse(text, _SERVER_PARSERS, "server")


def encode(message) -> str:
    """Compact JSON for any message dataclass, in the firmware's wire shape."""
    if not isinstance(getattr(message, "TYPE", None), str) or isinstance(message, type):
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    return json.dumps(_wire(message), ensure_ascii=False, separators=(",", ":"))


# ---- emotions ---------------------------------------------------------------------------------
EMOTIONS: dict[str, str] = {
    "😂": "funny", "😭": "crying", "😠": "angry", "😔": "sad", "😍": "loving", "😲": "surprised",
    "😱": "shocked", "🤔": "thinking", "😌": "relaxed", "😴": "sleepy", "😜": "silly",
    "🙄": "confused", "😶": "neutral", "🙂": "happy", "😆": "laughing", "😳": "embarrassed",
    "😉": "winking", "😎": "cool", "🤤": "delicious", "😘": "kissy", "😏": "confident",
}

# Pictographs, dingbats, flags, keycaps, skin tones, joiners and variation selectors. CJK text,
# CJK punctuation and ordinary symbols (©, ™, arrows) are deliberately outside these ranges.
_EMOJI_RE = re.compile(
    "[\U0001F000-\U0001FAFF\U000E0020-\U000E007F\u2600-\u27BF\u2B05-\u2B07\u2B1B\u2B1C\u2B50"
    "\u2B55\u231A\u231B\u23E9-\u23F3\u23F8-\u23FA\u200D\uFE0E\uFE0F\u20E3]")


def emotion_for(text: str, default: str = "happy") -> tuple[str, str]:
    """(name, emoji) of the first known emotion emoji in ``text``; (default, "") if none."""
    for char in text:
        if char in EMOTIONS:
            return EMOTIONS[char], char
    return default, ""


def strip_emoji(text: str) -> str:
    """Remove emoji characters (TTS would read them aloud or choke); other text is kept as is."""
    return _EMOJI_RE.sub("", text)


# ---- binary framing ---------------------------------------------------------------------------
_V2 = struct.Struct(">HHIII")  # version, type, reserved, timestamp, payload_size
_V3 = struct.Struct(">BBH")  # type, reserved, payload_size
_KIND_CODES = {"audio": 0, "json": 1}
_CODE_KINDS = {0: "audio", 1: "json"}


@dataclass(frozen=True)
class BinaryFrame:
    payload: bytes
    kind: str = "audio"  # 'audio' (Opus) or 'json'
    timestamp: int = 0  # v2 only: device capture time in ms, for server-side AEC


class BinaryFraming:
    """One binary framing version, chosen per connection. The header's payload_size must be exact
    both ways: the firmware trusts it blindly, and a mismatch on uplink means a corrupt frame."""

    def __init__(self, version: int):
        if not _is_int(version) or version not in SUPPORTED_BINARY_VERSIONS:
            raise ValueError(f"unsupported binary protocol version {version!r}")
        self.version = version

    def decode(self, data: bytes) -> BinaryFrame:
        data = bytes(data)
        if not data:
            raise FrameError("bad_frame", "empty binary message")
        if self.version == 1:
            kind, timestamp, payload = "audio", 0, data
        else:
            header = _V2 if self.version == 2 else _V3
            if len(data) < header.size:
                raise FrameError("bad_frame", f"truncated v{self.version} header")
            if self.version == 2:
                version, code, _reserved, timestamp, size = _V2.unpack_from(data)
                if version != 2:
                    raise FrameError("bad_frame", f"v2 header carries version {version}")
            else:
                code, _reserved, size = _V3.unpack_from(data)
                timestamp = 0
            kind = _CODE_KINDS.get(code)
            if kind is None:
                raise FrameError("bad_frame", f"unknown v{self.version} frame type {code}")
            payload = data[header.size:]
            if size != len(payload):
                raise FrameError("bad_frame", f"payload_size {size} != {len(payload)}")
        limit = MAX_AUDIO_PAYLOAD if kind == "audio" else MAX_TEXT_BYTES
        if len(payload) > limit:
            raise FrameError("too_large", f"{kind} payload of {len(payload)} bytes exceeds {limit}")
        return BinaryFrame(payload, kind, timestamp)

    def encode(self, payload: bytes, timestamp: int = 0, kind: str = "audio") -> bytes:
        """Header + payload; v2 timestamps wrap like the device's u32 millisecond clock."""
        payload = bytes(payload)
        if kind not in _KIND_CODES:
            raise ValueError(f"unknown frame kind {kind!r}")
        if self.version == 1:
            if kind != "audio":
                raise ValueError("binary protocol v1 carries only audio")
            return payload
        if self.version == 2:
            return _V2.pack(2, _KIND_CODES[kind], 0, timestamp & 0xFFFFFFFF, len(payload)) + payload
        if len(payload) > 0xFFFF:
            raise FrameError("too_large", "payload does not fit a v3 header")
        return _V3.pack(_KIND_CODES[kind], 0, len(payload)) + payload


def negotiate_binary_version(header_value: str | None, hello_version: int | None,
                             default: int = 1) -> int:
    """Protocol-Version header if it names a supported version, else the hello ``version`` if
    supported, else ``default``. Never raises: a bad header must not break the handshake."""
    if isinstance(header_value, (bytes, bytearray)):
        header_value = bytes(header_value).decode("latin-1")
    by_name = {str(v): v for v in SUPPORTED_BINARY_VERSIONS}
    if isinstance(header_value, str) and header_value.strip() in by_name:
        return by_name[header_value.strip()]
    if _is_int(hello_version) and hello_version in SUPPORTED_BINARY_VERSIONS:
        return hello_version
    return default
