"""Hostile devices: random and mutated frames of the xiaozhi protocol over real sockets (the fuzz test).

A connection is a script drawn from its own ``random.Random``: which Device-Id (a few shared ones,
so the same device reconnects and takes over its own sessions; fresh ones; invalid ones), which
``Protocol-Version`` header, whether and which hello, then a run of frames mixing valid messages,
mutated JSON (dropped, retyped and duplicated fields, huge numbers, odd unicode, deep nesting,
truncation), garbage text, valid and broken binary frames of v1/v2/v3 (bad headers, wrong sizes,
type 1 JSON-in-binary, truncated), real Opus speech and silence, and an ending: a clean close, a
TCP reset, a close without the WebSocket handshake, half a frame, or bytes that are no WebSocket
framing at all. Each connection's script comes from ``seed`` and its index alone, so a failing one
can be replayed (``replay``); how many connections overlap is the scheduler's.
"""
from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voice.protocol import MAX_AUDIO_PAYLOAD, MAX_TEXT_BYTES

SHARED_DEVICES = [f"02:fe:00:00:00:{i:02x}" for i in range(8)]
ODD_STRINGS = ["", " ", "\x00", "\u202e\u202d", "😀" * 50, "\ud800", "\udfff\ud800", "é" * 300, "null", "0",
               "<script>", "%s%n", "\\", '"', "\u0000\u0001\u007f", "a" * 5000, "\U0010ffff", "\ufeff"]
WRONG_VALUES = [None, True, False, 0, -1, 2**31, 2**64, -(2**63) - 1, 10**30, 1.5, 1e308, -0.0, [], {}, [1, [2, [3]]],
                {"a": {"b": {}}}, "", "x" * 1000]
RAW_NUMBERS = ["1" + "0" * 5000, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1.0e-400", "0x10", "01", "1_000"]


@dataclass
class Corpus:
    """Real 16 kHz 60 ms Opus frames: an utterance (so the VAD hears speech) and silence."""
    speech: list[bytes]
    silence: list[bytes]


@dataclass
class Tally:
    """What the fuzzers did, for the test's figures and its assertions that the mix was exercised."""
    frames: int = 0
    connections: int = 0
    kinds: Counter = field(default_factory=Counter)
    endings: Counter = field(default_factory=Counter)
    close_codes: Counter = field(default_factory=Counter)
    refused_handshakes: int = 0
    received: int = 0


def hello_message(version: int) -> dict:
    return {"type": "hello", "version": version, "transport": "websocket", "features": {"mcp": True},
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}


def valid_messages(rng: random.Random) -> dict:
    """One well-formed device message (as the firmware sends them)."""
    kind = rng.choice(["hello", "listen_start", "listen_stop", "listen_detect", "abort", "mcp", "ping", "iot"])
    if kind == "hello":
        return hello_message(rng.choice([1, 2, 3]))
    if kind == "listen_start":
        return {"type": "listen", "state": "start", "mode": rng.choice(["auto", "manual", "realtime"])}
    if kind == "listen_stop":
        return {"type": "listen", "state": "stop"}
    if kind == "listen_detect":
        return {"type": "listen", "state": "detect", "text": rng.choice(["你好小智", "hey", ""])}
    if kind == "abort":
        return {"type": "abort", "reason": rng.choice(["wake_word_detected", ""])}
    if kind == "mcp":
        payload = rng.choice([
            {"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2024-11-05", "capabilities": {}}},
            {"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "self.audio_speaker.set_volume",
                                                              "inputSchema": {"type": "object"}}]}},
            {"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {"volume": 50}},
        ])
        return {"type": "mcp", "payload": payload}
    if kind == "iot":
        return {"type": "iot", "descriptors": [{"name": "Speaker", "methods": {}}]}
    return {"type": "ping"}


def _paths(obj, depth: int = 0):
    """Every (container, key) in the top levels of a JSON value, to pick one to mutate."""
    if depth > 8:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield obj, key
            yield from _paths(value, depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield obj, i
            yield from _paths(value, depth + 1)


def mutate_json(rng: random.Random, message: dict) -> str:
    """A text frame derived from ``message`` by one to three mutations."""
    obj = json.loads(json.dumps(message))
    for _ in range(rng.randint(1, 3)):
        places = list(_paths(obj))
        op = rng.randrange(7)
        if op == 0 and places:  # drop a field
            container, key = rng.choice(places)
            if isinstance(container, dict):
                container.pop(key, None)
        elif op == 1 and places:  # a wrong type or an extreme value
            container, key = rng.choice(places)
            container[key] = rng.choice(WRONG_VALUES)
        elif op == 2 and places:  # odd unicode
            container, key = rng.choice(places)
            container[key] = rng.choice(ODD_STRINGS)
        elif op == 3:  # an unknown or misspelt field, or another type
            obj[rng.choice(["type", "Type", "state", "mode", "version", "session_id", "zz" * rng.randint(1, 5)])] = \
                rng.choice(WRONG_VALUES + ODD_STRINGS + ["hello", "listen", "abort", "mcp", "ping", "start", "stop"])
        elif op == 4:  # deeper nesting
            depth = rng.choice([10, 100, 900, 5000])  # 5000: past json.dumps, so left to garbage_text
            value: object = rng.choice(WRONG_VALUES)
            for _ in range(depth):
                value = [value] if rng.random() < 0.5 else {"k": value}
            obj[rng.choice(["payload", "features", "audio_params", "x"])] = value
        elif op == 5 and places:  # a field that is an object instead of a scalar, or the reverse
            container, key = rng.choice(places)
            container[key] = {"nested": container[key]} if not isinstance(container[key], dict) else "flat"
        else:
            obj = {"type": obj.get("type", "hello"), **obj} if isinstance(obj, dict) else obj
    try:
        text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    except (ValueError, RecursionError):
        text = json.dumps(message)
    return _mutate_text(rng, text)


def _mutate_text(rng: random.Random, text: str) -> str:
    """Mutations only the serialised text can carry: duplicates, raw numbers, truncation, flipped characters."""
    op = rng.randrange(8)
    if op == 0:  # a duplicated field (the later wins in Python's json)
        return '{"type": "%s", ' % rng.choice(["hello", "listen", "ping", "abort", "x"]) + text[1:] if text.startswith("{") else text
    if op == 1:  # a raw number json.dumps would never write
        return text.replace(":", ": %s, \"_n\":" % rng.choice(RAW_NUMBERS), 1) if ":" in text else text
    if op == 2:
        return text[: rng.randrange(len(text) + 1)]
    if op == 3 and text:
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(['"', "{", "}", "[", ",", ":", "\\", "\x00", "é", "😀"])
        return "".join(chars)
    if op == 4:  # huge but within or just over the text limit
        return text[:-1] + ', "pad": "' + "p" * rng.choice([1000, 60000, MAX_TEXT_BYTES]) + '"}' if text.endswith("}") else text
    return text


def garbage_text(rng: random.Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randint(0, 200)))
    if choice == 1:
        return rng.choice(["[]", "null", "1", '"hello"', "{}", '{"type": null}', '{"type": 1}', "[" * 100_000, "{" * 50_000])
    if choice == 2:
        return "[" * rng.randint(1, 200_000) + "]" * rng.randint(0, 10)  # nesting past the parser's recursion limit
    if choice == 3:
        return json.dumps({"type": rng.choice(ODD_STRINGS)})
    return ""


def frame_for(version: int, payload: bytes, kind: int = 0, timestamp: int = 0) -> bytes:
    if version == 2:
        return struct.pack(">HHIII", 2, kind, 0, timestamp & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        return struct.pack(">BBH", kind, 0, len(payload) & 0xFFFF) + payload
    return payload


def mutated_binary(rng: random.Random, version: int, corpus: Corpus) -> bytes:
    """A binary frame broken in one way, for the framing the device claims (or another)."""
    version = version if rng.random() < 0.7 else rng.choice([1, 2, 3])
    payload = rng.choice(corpus.speech + corpus.silence)
    op = rng.randrange(9)
    if op == 0:  # a wrong payload_size
        frame = bytearray(frame_for(version, payload))
        if version == 2:
            struct.pack_into(">I", frame, 12, rng.choice([0, len(payload) + 1, len(payload) - 1, 2**32 - 1]))
        elif version == 3:
            struct.pack_into(">H", frame, 2, rng.choice([0, len(payload) + 1, 0xFFFF]))
        return bytes(frame)
    if op == 1:  # an unknown frame type or protocol version field
        frame = bytearray(frame_for(version, payload, kind=rng.choice([2, 3, 255])))
        if version == 2 and rng.random() < 0.5:
            struct.pack_into(">H", frame, 0, rng.choice([0, 1, 3, 0xFFFF]))
        return bytes(frame)
    if op == 2:  # a truncated header or frame
        frame = frame_for(version, payload)
        return frame[: rng.randrange(0, min(len(frame), 20) + 1)]
    if op == 3:  # type 1: JSON in a binary frame, valid or not
        text = json.dumps(valid_messages(rng)) if rng.random() < 0.5 else mutate_json(rng, valid_messages(rng))
        raw = text.encode("utf-8", "surrogatepass")
        return frame_for(version if version != 1 else 2, raw, kind=1)
    if op == 4:  # over the audio payload limit
        return frame_for(version, rng.randbytes(MAX_AUDIO_PAYLOAD + rng.choice([1, 100, 60000])))
    if op == 5:  # flipped bits in a real Opus packet
        data = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return frame_for(version, bytes(data))
    if op == 6:  # DTX-sized and empty packets
        return frame_for(version, rng.randbytes(rng.randint(0, 3)))
    if op == 7:  # the header of one version around the payload of another
        return frame_for(rng.choice([v for v in (1, 2, 3) if v != version]), payload)
    return rng.randbytes(rng.randint(1, 2000))


def headers_for(rng: random.Random) -> tuple[dict, str | None]:
    """Handshake headers and the Device-Id they carry (None: an invalid or missing one)."""
    roll = rng.random()
    if roll < 0.35:
        device_id = rng.choice(SHARED_DEVICES)  # reconnects and takeovers of the same device
    elif roll < 0.92:
        device_id = "02:fd:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(4))
    else:
        device_id = None
    headers = {"Client-Id": f"fuzz-{rng.randrange(10**6)}" if rng.random() < 0.2 else f"fuzz-{device_id}"}
    if device_id:
        headers["Device-Id"] = device_id
    elif rng.random() < 0.5:
        headers["Device-Id"] = rng.choice(["not-a-mac", "zz:zz:zz:zz:zz:zz", "é" * 10, "0" * 200])
    version = rng.choice(["1", "2", "3", "3", "2", "0", "9", "abc", None])
    if version is not None:
        headers["Protocol-Version"] = version
    return headers, device_id


async def send_text(ws, text: str) -> None:
    """A text frame; one with a lone surrogate goes out as the invalid UTF-8 it encodes to."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        await ws.send(text.encode("utf-8", "surrogatepass"), text=True)
    else:
        await ws.send(text)


async def _drain(ws, tally: Tally) -> None:
    try:
        async for _ in ws:
            tally.received += 1
    except ConnectionClosed:
        pass
    except Exception:  # noqa: BLE001 - a broken stream after our own abort is expected
        pass


def _reset(ws) -> None:
    """A TCP reset: linger 0, then abort (no FIN, no close frame)."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def hostile_connection(url: str, seed: int, index: int, corpus: Corpus, tally: Tally, limit: int) -> int:
    """One scripted connection; returns the frames it sent. It stops early once ``tally`` counts
    ``limit`` frames in all (the run's size)."""
    rng = random.Random(f"{seed}:{index}")
    headers, _device = headers_for(rng)
    declared = {"2": 2, "3": 3}.get(headers.get("Protocol-Version", ""))  # None: the hello decides
    tally.connections += 1
    try:
        ws = await ws_connect(url, additional_headers=headers, open_timeout=20, ping_interval=None, close_timeout=2,
                              max_size=None, compression=None)
    except (InvalidStatus, InvalidHandshake, OSError, TimeoutError):
        tally.refused_handshakes += 1
        return 0
    reader = asyncio.create_task(_drain(ws, tally))
    sent = 0
    length = min(limit, rng.choice([rng.randint(1, 20), rng.randint(20, 400), rng.randint(20, 400), rng.randint(400, 2000)]))
    version = declared or 1
    try:
        if rng.random() < 0.85:
            hello = hello_message(rng.choice([declared or 1, declared or 2, 1, 2, 3]))
            if rng.random() < 0.2:
                text = mutate_json(rng, hello)
            else:
                text = json.dumps(hello)
                version = declared or hello["version"]
            await send_text(ws, text)
            sent += 1
            tally.frames += 1
            tally.kinds["hello"] += 1
        speech_left = 0
        while sent < length and tally.frames < limit:
            if speech_left:  # a run of real speech, so the VAD hears an utterance and a turn starts
                speech_left -= 1
                await ws.send(frame_for(version, corpus.speech[speech_left % len(corpus.speech)], timestamp=sent))
                tally.kinds["speech"] += 1
                sent += 1
                tally.frames += 1
                continue
            roll = rng.random()
            if roll < 0.12:
                await ws.send(json.dumps(valid_messages(rng)))
                tally.kinds["json_valid"] += 1
            elif roll < 0.38:
                await send_text(ws, mutate_json(rng, valid_messages(rng)))
                tally.kinds["json_mutated"] += 1
            elif roll < 0.43:
                await send_text(ws, garbage_text(rng))
                tally.kinds["text_garbage"] += 1
            elif roll < 0.58:
                await ws.send(frame_for(version, rng.choice(corpus.silence + corpus.speech), timestamp=sent))
                tally.kinds["opus"] += 1
            elif roll < 0.60:
                await ws.send(json.dumps({"type": "listen", "state": "start", "mode": "auto"}))
                speech_left = min(len(corpus.speech), length - sent)
                tally.kinds["utterance"] += 1
            elif roll < 0.85:
                await ws.send(mutated_binary(rng, version, corpus))
                tally.kinds["binary_mutated"] += 1
            elif roll < 0.95:
                await ws.send(rng.randbytes(rng.randint(0, 3000)))
                tally.kinds["binary_random"] += 1
            elif roll < 0.99:
                text = json.dumps(valid_messages(rng)).encode()
                await ws.send(frame_for(version if version != 1 else rng.choice([2, 3]), text, kind=1))
                tally.kinds["binary_json"] += 1
            else:
                await asyncio.sleep(rng.uniform(0, 0.3))
                continue
            sent += 1
            tally.frames += 1
    except ConnectionClosed:
        pass  # the server closed us (too many bad frames, takeover, ...): a verdict, not a failure
    finally:
        await _end(ws, rng, tally)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        if ws.close_code is not None:
            tally.close_codes[ws.close_code] += 1
    return sent


async def _end(ws, rng: random.Random, tally: Tally) -> None:
    ending = rng.choice(["close", "close", "reset", "reset", "fin", "half_frame", "not_websocket", "close_later"])
    tally.endings[ending] += 1
    try:
        if ending == "close":
            await ws.close()
        elif ending == "close_later":
            await asyncio.sleep(rng.uniform(0, 1.0))
            await ws.close()
        elif ending == "reset":
            _reset(ws)
        elif ending == "fin":
            ws.transport.close()
        elif ending == "half_frame":  # a masked binary frame header announcing more than follows
            ws.transport.write(b"\x82\xfe\x10\x00" + rng.randbytes(4) + rng.randbytes(rng.randint(0, 100)))
            await asyncio.sleep(0.05)
            _reset(ws)
        else:  # bytes that are no WebSocket framing (reserved bits, unknown opcodes, unmasked)
            ws.transport.write(rng.randbytes(rng.randint(1, 500)))
            await asyncio.sleep(rng.uniform(0, 0.5))
            _reset(ws)
    except Exception:  # noqa: BLE001 - the server may have closed first
        pass


async def fuzz(url: str, seed: int, frames: int, corpus: Corpus, workers: int = 16, tally: Tally | None = None) -> Tally:
    """``workers`` fuzzers, each running connection after connection until ``frames`` are sent in all."""
    tally = tally or Tally()
    counter = iter(range(10**9))

    async def worker() -> None:
        while tally.frames < frames:
            await hostile_connection(url, seed, next(counter), corpus, tally, limit=frames)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return tally


async def replay(url: str, seed: int, index: int, corpus: Corpus) -> Tally:
    """One connection of a run again, alone (to reproduce what it did)."""
    tally = Tally()
    await hostile_connection(url, seed, index, corpus, tally, limit=10**9)
    return tally
