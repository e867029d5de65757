"""The device protocol module: wire shapes, strict parsing, binary framings, small helpers."""
import json

import pytest

from voice.protocol import (
    EMOTIONS, MAX_AUDIO_PAYLOAD, MAX_TEXT_BYTES, Abort, Alert, AudioParams, BinaryFrame,
    BinaryFraming, FrameError, Hello, Iot, Listen, Llm, Mcp, Ping, Pong, ProtocolError, ServerHello,
    Stt, System, Tts, emotion_for, encode, negotiate_binary_version,
    parse_device_message, parse_server_message, strip_emoji,
)

DEVICE_MESSAGES = [
    Hello(version=1, features={"mcp": True}, audio_params=AudioParams()),
    Hello(version=3, audio_params=None, session_id="s1"),
    Listen("start", "auto"),
    Listen("start", "manual", session_id="abc"),
    Listen("start", "realtime"),
    Listen("stop"),
    Listen("detect", text="你好小智"),
    Abort(),
    Abort("wake_word_detected", "abc"),
    Mcp({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}, "abc"),
    Iot({"update": True, "descriptors": [{"name": "Lamp"}]}),
    Ping(),
    Ping("abc"),
]

SERVER_MESSAGES = [
    ServerHello("uuid-1", AudioParams(sample_rate=24000)),
    ServerHello("uuid-2", AudioParams(), version=3),
    Stt("你好"),
    Llm("happy", "🙂"),
    Llm("thinking"),
    Tts("start"),
    Tts("sentence_start", "Hi"),
    Tts("sentence_start", ""),
    Tts("stop"),
    Alert("error", "server unavailable", "sad"),
    System("reboot"),
    Pong(),
    Mcp({"jsonrpc": "2.0", "id": 100, "method": "tools/list", "params": {}}),
]


@pytest.mark.parametrize("message", DEVICE_MESSAGES, ids=repr)
def test_device_messages_survive_an_encode_parse_round_trip(message):
    assert parse_device_message(encode(message)) == message


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=repr)
def test_server_messages_survive_an_encode_parse_round_trip(message):
    assert parse_server_message(encode(message)) == message


@pytest.mark.parametrize("message, wire", [
    (Tts("sentence_start", "Hi"), {"type": "tts", "state": "sentence_start", "text": "Hi"}),
    (Tts("start"), {"type": "tts", "state": "start"}),
    (Listen("start", "auto"), {"type": "listen", "state": "start", "mode": "auto"}),
    (Listen("start", "manual", session_id="s"),
     {"type": "listen", "state": "start", "mode": "manual", "session_id": "s"}),
    (Listen("detect", text="hi"), {"type": "listen", "state": "detect", "text": "hi"}),
    (Abort(), {"type": "abort"}),
    (Abort("wake_word_detected"), {"type": "abort", "reason": "wake_word_detected"}),
    (Llm("happy", "🙂"), {"type": "llm", "emotion": "happy", "text": "🙂"}),
    (Alert("s", "m", "e"), {"type": "alert", "status": "s", "message": "m", "emotion": "e"}),
    (System("reboot"), {"type": "system", "command": "reboot"}),
    (Pong(), {"type": "pong"}),
    (Iot({"update": True, "states": []}), {"type": "iot", "update": True, "states": []}),
    (ServerHello("sid", AudioParams(sample_rate=24000)),
     {"type": "hello", "transport": "websocket", "session_id": "sid",
      "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60},
      "version": 1}),
    (Hello(features={"mcp": True}, audio_params=AudioParams()),
     {"type": "hello", "version": 1, "transport": "websocket", "features": {"mcp": True},
      "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                       "frame_duration": 60}}),
])
def test_encode_writes_the_firmware_wire_shape(message, wire):
    assert json.loads(encode(message)) == wire


def test_encode_is_compact_and_keeps_unicode():
    assert encode(Stt("你好")) == '{"type":"stt","text":"你好"}'


@pytest.mark.parametrize("thing", [AudioParams(), {"type": "stt"}, "hello"])
def test_encode_refuses_things_that_are_not_messages(thing):
    with pytest.raises(TypeError):
        encode(thing)


def test_hello_without_audio_params_is_valid():
    assert parse_device_message('{"type":"hello","version":1}') == Hello()


def test_py_xiaozhi_hello_with_20ms_frames_is_accepted():
    hello = parse_device_message(json.dumps({
        "type": "hello", "version": 1, "features": {"mcp": True}, "transport": "websocket",
        "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                         "frame_duration": 20}}))
    assert hello.audio_params == AudioParams(frame_duration=20)
    assert hello.features == {"mcp": True}


def test_listen_start_without_mode_defaults_to_auto():
    assert parse_device_message('{"type":"listen","state":"start"}').mode == "auto"


def test_listen_detect_carries_the_wake_word_text():
    msg = parse_device_message('{"type":"listen","state":"detect","text":"你好小智","session_id":"x"}')
    assert msg == Listen("detect", None, "你好小智", "x")


def test_abort_keeps_its_reason():
    abort = parse_device_message('{"type":"abort","reason":"wake_word_detected"}')
    assert abort == Abort("wake_word_detected")


def test_unknown_extra_fields_are_ignored():
    assert parse_device_message('{"type":"ping","extra":[1,2]}') == Ping()


def test_bytes_frames_are_parsed_like_text():
    assert parse_device_message('{"type":"listen","state":"stop"}'.encode()) == Listen("stop")


def test_server_hello_without_audio_params_gets_the_firmware_defaults():
    hello = parse_server_message('{"type":"hello","transport":"websocket","session_id":"s"}')
    assert hello.audio_params == AudioParams(sample_rate=24000, frame_duration=60)


def kind_of(parse, text):
    with pytest.raises(ProtocolError) as info:
        parse(text)
    return info.value.kind


@pytest.mark.parametrize("text, kind", [
    ("x" * (MAX_TEXT_BYTES + 1), "too_large"),
    (b'{"type":"ping"}' + b" " * MAX_TEXT_BYTES, "too_large"),
    ("{not json", "malformed_json"),
    ("", "malformed_json"),
    (b'{"type":"ping","x":"\xff\xfe"}', "malformed_json"),
    ('{"type":"ping","x":"\ud800"}', "malformed_json"),
    ("[" * 60_000, "malformed_json"),
    ("42", "not_object"),
    ("[1, 2]", "not_object"),
    ('"hello"', "not_object"),
    ("null", "not_object"),
    ('{"state":"start"}', "missing_type"),
    ('{"type":7}', "missing_type"),
    ('{"type":"server","action":"restart"}', "unknown_type"),
    ('{"type":"tts","state":"start"}', "unknown_type"),
    ('{"type":"listen"}', "invalid_field"),
    ('{"type":"listen","state":"pause"}', "invalid_field"),
    ('{"type":"listen","state":"start","mode":"turbo"}', "invalid_field"),
    ('{"type":"listen","state":"detect","text":5}', "invalid_field"),
    ('{"type":"hello","audio_params":"opus"}', "invalid_field"),
    ('{"type":"hello","audio_params":{"sample_rate":"16000"}}', "invalid_field"),
    ('{"type":"hello","audio_params":{"sample_rate":true}}', "invalid_field"),
    ('{"type":"hello","audio_params":{"channels":0}}', "invalid_field"),
    ('{"type":"hello","audio_params":{"format":1}}', "invalid_field"),
    ('{"type":"hello","version":"2"}', "invalid_field"),
    ('{"type":"hello","features":[]}', "invalid_field"),
    ('{"type":"mcp"}', "invalid_field"),
    ('{"type":"mcp","payload":[1]}', "invalid_field"),
    ('{"type":"abort","reason":null}', "invalid_field"),
])
def test_bad_device_frames_raise_the_right_error_kind(text, kind):
    assert kind_of(parse_device_message, text) == kind


def test_a_text_frame_of_exactly_the_limit_is_accepted():
    text = '{"type":"ping","pad":"' + "x" * (MAX_TEXT_BYTES - 24) + '"}'
    assert len(text.encode()) == MAX_TEXT_BYTES
    assert parse_device_message(text) == Ping()


@pytest.mark.parametrize("text, kind", [
    ('{"type":"hello","session_id":"s"}', "invalid_field"),
    ('{"type":"hello","transport":"websocket"}', "invalid_field"),
    ('{"type":"hello","transport":"websocket","session_id":null}', "invalid_field"),
    ('{"type":"tts","state":"sentence_end"}', "invalid_field"),
    ('{"type":"alert","status":"s","message":"m"}', "invalid_field"),
    ('{"type":"stt"}', "invalid_field"),
    ('{"type":"llm","text":"🙂"}', "invalid_field"),
    ('{"type":"system"}', "invalid_field"),
    ('{"type":"listen","state":"start"}', "unknown_type"),
    ('{"type":"custom","payload":{}}', "unknown_type"),
    ("[]", "not_object"),
])
def test_bad_server_frames_raise_the_right_error_kind(text, kind):
    assert kind_of(parse_server_message, text) == kind


def test_protocol_errors_are_value_errors_with_a_message():
    with pytest.raises(ValueError) as info:
        parse_device_message("{")
    assert info.value.message and str(info.value) == info.value.message


# ---- binary framing ---------------------------------------------------------------------------
OPUS = b"\x01\x02\x03"


@pytest.mark.parametrize("version, header", [
    (1, b""),
    (2, b"\x00\x02\x00\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x03\xe8" + b"\x00\x00\x00\x03"),
    (3, b"\x00\x00\x00\x03"),
])
def test_each_version_writes_the_exact_header_and_reads_it_back(version, header):
    framing = BinaryFraming(version)
    timestamp = 1000 if version == 2 else 0
    data = framing.encode(OPUS, timestamp=timestamp)
    assert data == header + OPUS
    assert framing.decode(data) == BinaryFrame(OPUS, "audio", timestamp)


@pytest.mark.parametrize("version, type_bytes", [(2, b"\x00\x02\x00\x01"), (3, b"\x01\x00")])
def test_json_inside_a_binary_frame_is_tagged_json(version, type_bytes):
    framing = BinaryFraming(version)
    data = framing.encode(b"{}", kind="json")
    assert data.startswith(type_bytes)
    assert framing.decode(data) == BinaryFrame(b"{}", "json", 0)


def test_v2_timestamps_wrap_like_a_u32_millisecond_clock():
    framing = BinaryFraming(2)
    assert framing.decode(framing.encode(OPUS, timestamp=2**32 + 5)).timestamp == 5


def test_v1_cannot_carry_json():
    with pytest.raises(ValueError):
        BinaryFraming(1).encode(b"{}", kind="json")


@pytest.mark.parametrize("version", [0, 4, "2", None, True])
def test_unsupported_framing_versions_are_refused(version):
    with pytest.raises(ValueError):
        BinaryFraming(version)


def v2(version=2, kind=0, size=3, payload=OPUS):
    return (version.to_bytes(2, "big") + kind.to_bytes(2, "big") + bytes(4) + bytes(4)
            + size.to_bytes(4, "big") + payload)


def v3(kind=0, size=3, payload=OPUS):
    return bytes([kind, 0]) + size.to_bytes(2, "big") + payload


@pytest.mark.parametrize("version, data, kind", [
    (1, b"", "bad_frame"),
    (2, b"", "bad_frame"),
    (3, b"", "bad_frame"),
    (2, v2()[:15], "bad_frame"),
    (3, b"\x00\x00\x00", "bad_frame"),
    (2, v2(version=1), "bad_frame"),
    (2, v2(version=3), "bad_frame"),
    (2, v2(kind=2), "bad_frame"),
    (3, v3(kind=7), "bad_frame"),
    (2, v2(size=4), "bad_frame"),
    (2, v2(size=2), "bad_frame"),
    (3, v3(size=60000), "bad_frame"),
    (3, v3(size=1), "bad_frame"),
    (1, bytes(MAX_AUDIO_PAYLOAD + 1), "too_large"),
    (2, v2(size=MAX_AUDIO_PAYLOAD + 1, payload=bytes(MAX_AUDIO_PAYLOAD + 1)), "too_large"),
    (3, v3(size=MAX_AUDIO_PAYLOAD + 1, payload=bytes(MAX_AUDIO_PAYLOAD + 1)), "too_large"),
    (3, v3(kind=1, size=MAX_TEXT_BYTES - 1, payload=bytes(MAX_TEXT_BYTES - 1)), None),
])
def test_untrustworthy_binary_frames_raise_frame_errors(version, data, kind):
    if kind is None:  # json payloads are bounded by the text limit, not the audio one
        assert BinaryFraming(version).decode(data).kind == "json"
        return
    with pytest.raises(FrameError) as info:
        BinaryFraming(version).decode(data)
    assert info.value.kind == kind


def test_a_v3_payload_too_big_for_its_header_cannot_be_encoded():
    with pytest.raises(FrameError):
        BinaryFraming(3).encode(bytes(0x10000))


@pytest.mark.parametrize("header, hello, expected", [
    ("3", 2, 3),
    (" 2 ", None, 2),
    (b"2", 1, 2),
    ("9", 2, 2),
    ("banana", 3, 3),
    ("", None, 1),
    (None, 2, 2),
    (None, 7, 1),
    (None, "3", 1),
    (None, True, 1),
    (None, None, 1),
])
def test_binary_version_prefers_the_header_then_hello_then_default(header, hello, expected):
    assert negotiate_binary_version(header, hello) == expected


def test_binary_version_falls_back_to_the_given_default():
    assert negotiate_binary_version("x", None, default=3) == 3


# ---- emotions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("哈哈😂太好笑了😭", ("funny", "😂")),
    ("Let me think 🤔", ("thinking", "🤔")),
    ("no emoji here", ("happy", "")),
    ("👍 unknown emoji then 😏", ("confident", "😏")),
])
def test_emotion_for_uses_the_first_known_emoji(text, expected):
    assert emotion_for(text) == expected


def test_emotion_for_without_emoji_uses_the_given_default():
    assert emotion_for("plain", default="neutral") == ("neutral", "")


def test_every_emotion_emoji_maps_to_itself():
    assert len(EMOTIONS) == 21
    assert all(emotion_for(f"x{emoji}") == (name, emoji) for emoji, name in EMOTIONS.items())


@pytest.mark.parametrize("text, expected", [
    ("你好😊，我是小智！", "你好，我是小智！"),
    ("Great job 👍🏽!", "Great job !"),
    ("❤️ love ☀️", " love "),
    ("《三体》、「引号」。©™", "《三体》、「引号」。©™"),
    ("👨‍👩‍👧 family 🇨🇳", " family "),
])
def test_strip_emoji_removes_emoji_and_keeps_chinese_text(text, expected):
    assert strip_emoji(text) == expected
