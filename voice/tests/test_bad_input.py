"""Every bad input of the protocol's edge-case list gets its clear response, and the server keeps
serving other devices meanwhile (reference: shared/reference/xiaozhi-protocol.md §5)."""
import asyncio
import json

import pytest

from voice.protocol import MAX_TEXT_BYTES, BinaryFraming, CloseCode, Pong

pytestmark = [pytest.mark.models, pytest.mark.django_db(transaction=True)]

QUESTION = "What is the capital of France?"

GARBAGE_TEXT = [
    "not json at all",
    "{broken",
    "42",
    "[1, 2, 3]",
    '"a string"',
    "{}",
    '{"type": 7}',
    '{"type": "teleport"}',
    '{"type": "listen"}',
    '{"type": "listen", "state": "sideways"}',
    '{"type": "listen", "state": "start", "mode": "psychic"}',
    '{"type": "hello", "audio_params": "loud"}',
    '{"type": "mcp", "payload": 5}',
]


def pong_received(device, since=0):
    return device.wait_for(lambda e: isinstance(e.message, Pong), 3, since=since)


async def test_malformed_messages_are_ignored_never_echoed_and_the_socket_stays_usable(connect_device, say):
    bad = await connect_device()
    good = await connect_device()
    good_turn = asyncio.create_task(good.turn(say(QUESTION), mode="manual"))
    before = len(bad.events)
    for text in GARBAGE_TEXT:
        await bad.send_json(text)
    await bad.send_json(json.dumps({"type": "ping"}))
    await pong_received(bad, since=before)
    replies = [e for e in bad.events[before:] if e.kind == "json"]
    assert all(isinstance(e.message, Pong) for e in replies), "garbage must never be echoed or answered"
    result = await good_turn
    assert result.audio and result.stopped, "another device was served meanwhile"
    await bad.close()
    await good.close()


async def test_an_oversized_text_frame_is_dropped(connect_device):
    device = await connect_device()
    await device.send_json(json.dumps({"type": "listen", "state": "start", "pad": "x" * MAX_TEXT_BYTES}))
    await device.send_json(json.dumps({"type": "ping"}))
    await pong_received(device)
    assert device.close_code is None


async def test_audio_before_hello_is_dropped_and_hello_still_works(connect_device, say):
    device = await connect_device(hello=False)
    for frame in say(QUESTION)[:10]:
        await device.send_audio(frame)
    from voice.protocol import AudioParams, Hello, ServerHello, encode

    await device.send_json(encode(Hello(audio_params=AudioParams())))
    hello = await device.wait_for(lambda e: isinstance(e.message, ServerHello), 3)
    assert hello.message.transport == "websocket"


async def test_a_second_hello_is_answered_with_the_same_session(connect_device):
    from voice.protocol import Hello, ServerHello, encode

    device = await connect_device()
    first = device.server_hello.session_id
    count = len(device.events)
    await device.send_json(encode(Hello()))
    again = await device.wait_for(lambda e: isinstance(e.message, ServerHello), 3, since=count)
    assert again.message.session_id == first


async def test_corrupted_and_empty_opus_packets_do_not_break_listening(connect_device, say):
    device = await connect_device()
    await device.listen("start", "manual")
    for junk in [b"\xff" * 40, b"\x00", b"\x08", bytes(range(200))]:
        await device.send_audio(junk)
    result = await device.turn(say(QUESTION), mode="manual", send_listen_start=False)
    assert result.stt and "capital" in result.stt.lower()


async def test_a_flood_of_undecodable_frames_closes_the_socket(connect_device):
    device = await connect_device(binary_version=3)
    for _ in range(25):
        await device.link.send(b"\x00\x00\xff\xff" + b"abc")  # v3 header claims 65535 bytes
    assert await device.wait_closed(5) == CloseCode.BAD_DATA


@pytest.mark.parametrize("version", [2, 3])
async def test_binary_protocol_versions_two_and_three_carry_the_conversation(connect_device, say, version):
    device = await connect_device(binary_version=version)
    result = await device.turn(say(QUESTION), mode="manual")
    assert "capital" in result.stt.lower() and result.audio
    # frames from the server carry the same header layout (the simulator decoded them with it)
    assert BinaryFraming(version).version == version


async def test_listen_stop_without_audio_is_a_no_op(connect_device):
    device = await connect_device()
    await device.listen("start", "auto")
    await device.listen("stop")
    await device.send_json(json.dumps({"type": "ping"}))
    await pong_received(device)
    assert not [e for e in device.events if e.kind == "audio"]


async def test_an_unbound_device_hears_its_activation_code_and_nothing_more(connect_device, say, settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    device = await connect_device("aa:bb:cc:dd:ee:10")
    from devices.models import Device

    code = (await Device.objects.aget(device_id="aa:bb:cc:dd:ee:10")).activation_code
    assert code and len(code) == 6
    result = await device.turn(say(QUESTION), mode="manual")
    spoken = " ".join(result.sentences)
    assert " ".join(code) in spoken
    assert result.stt is None, "an unbound device gets no conversation"
    assert result.audio


async def test_a_failing_llm_provider_ends_the_turn_with_a_spoken_apology(connect_device, say, settings):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from devices.models import AgentConfig, Turn
    from voice.pipeline.turn import ERROR_REPLY
    from voice.providers import registry

    class Broken(BaseHTTPRequestHandler):  # a hosted LLM API having a bad day
        def do_POST(self):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "overloaded"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    Thread(target=server.serve_forever, daemon=True).start()
    settings.XIAOZHI_LLM_BASE_URL = f"http://127.0.0.1:{server.server_port}/v1"
    settings.XIAOZHI_LLM_MODEL = "remote-model"
    registry.forget("llm", "openai")
    try:
        await AgentConfig.objects.acreate(name="remote", llm_provider="openai", is_default=True)
        device = await connect_device()
        result = await device.turn(say(QUESTION), mode="manual")
        assert result.sentences == [ERROR_REPLY]
        assert result.audio and result.stopped
        turn = await Turn.objects.aget()
        assert turn.error and "capital" in turn.user_text.lower()
        again = len(device.events)
        await device.send_json(json.dumps({"type": "ping"}))
        await pong_received(device, since=again)
    finally:
        server.shutdown()
        registry.forget("llm", "openai")


async def test_a_hello_asking_for_pcm_is_told_why_in_an_alert_and_closed(connect_device):
    from voice.protocol import Alert, AudioParams, Hello, encode

    device = await connect_device(hello=False)
    await device.send_json(encode(Hello(audio_params=AudioParams("pcm", 16000, 1, 60))))
    alert = await device.wait_for(lambda e: isinstance(e.message, Alert), 3)
    assert alert.message.status == "error" and "pcm" in alert.message.message and alert.message.emotion
    assert await device.wait_closed(5) == CloseCode.UNSUPPORTED


@pytest.mark.parametrize("version", [2, 3])
async def test_json_carried_in_a_binary_frame_is_handled_as_text(connect_device, version):
    from voice.protocol import Ping, encode

    device = await connect_device(binary_version=version)
    since = len(device.events)
    await device.link.send(BinaryFraming(version).encode(encode(Ping()).encode(), kind="json"))
    assert await pong_received(device, since)
