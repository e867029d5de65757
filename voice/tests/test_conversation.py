"""Spoken turns over a real WebSocket to the real ASGI app, on the bundled models (the same logic
on fake providers, in milliseconds: ``test_session_script.py``)."""
import asyncio

import pytest

from devices.models import Turn
from devices.tokens import issue_token
from voice.audio.opus import OpusDecoder
from voice.protocol import Stt, Tts
from loadtest.simulated_device import silence_frames

pytestmark = [pytest.mark.models, pytest.mark.django_db(transaction=True)]

QUESTION = "What is the capital of France?"


def tts_state(event) -> str | None:
    """``start``, ``sentence_start`` or ``stop`` for a ``tts`` message, else None."""
    return event.message.state if isinstance(event.message, Tts) else None


def decoded_seconds(frames, rate):
    decoder = OpusDecoder(rate, 1)
    samples = sum(len(decoder.decode(f)) for f in frames)
    assert decoder.errors == 0
    return samples / rate


async def test_auto_mode_turn_is_heard_answered_and_closed_with_tts_stop(connect_device, say):
    device = await connect_device()
    assert device.server_hello.transport == "websocket" and device.server_hello.session_id
    result = await device.turn(say(QUESTION), mode="auto")
    assert "capital" in result.stt.lower() and "france" in result.stt.lower()
    states = [tts_state(e) for e in result.events if tts_state(e) in ("start", "stop")]
    assert states == ["start", "stop"]
    first_audio = next(i for i, e in enumerate(result.events) if e.kind == "audio")
    tts_start = next(i for i, e in enumerate(result.events) if tts_state(e) == "start")
    assert tts_start < first_audio
    assert decoded_seconds(result.audio, device.server_hello.audio_params.sample_rate) >= 1.0
    assert result.sentences and result.emotion
    await device.close()
    turn = await Turn.objects.select_related("device").aget()
    assert turn.device.device_id == device.device_id
    assert "capital" in turn.user_text.lower() and turn.reply_text and not turn.error
    assert 0 < turn.asr_done_ms < turn.llm_first_token_ms < turn.first_sentence_ms <= turn.tts_first_audio_ms <= turn.first_audio_sent_ms


async def test_manual_mode_answers_on_listen_stop(connect_device, say):
    device = await connect_device()
    result = await device.turn(say("Tell me a joke."), mode="manual")
    assert "joke" in result.stt.lower()
    assert result.audio and result.stopped
    await device.close()


async def test_manual_mode_ignores_a_press_too_short_to_be_speech(connect_device, say):
    device = await connect_device()
    await device.listen("start", "manual")
    await device.stream(say(QUESTION)[:3])
    await device.listen("stop")
    with pytest.raises(TimeoutError):
        await device.wait_for(lambda e: e.kind == "json" and not hasattr(e.message, "session_id"), 1.5, since=1)
    await device.close()


async def test_abort_in_the_middle_of_an_answer_stops_it_once_and_keeps_the_socket(connect_device, say):
    device = await connect_device()
    await device.listen("start", "manual")
    await device.stream(say("Tell me a long story about a dragon."))
    await device.listen("stop")
    await device.wait_for(lambda e: e.kind == "audio", 20)
    await device.abort()
    stop = await device.wait_for(lambda e: tts_state(e) == "stop", 2)
    index = device.events.index(stop)
    await asyncio.sleep(0.5)
    after = device.events[index + 1:]
    assert not [e for e in after if e.kind == "audio"], "audio kept coming after tts stop"
    assert [tts_state(e) for e in device.events].count("stop") == 1
    # the socket is still good for another turn
    again = await device.turn(say(QUESTION), mode="manual")
    assert again.audio and again.stopped
    await device.close()
    aborted = [t async for t in Turn.objects.filter(error="aborted")]
    assert len(aborted) == 1
    assert aborted[0].reply_text, "the part of the answer the device had played is kept"
    assert aborted[0].interrupted


async def test_speech_while_speaking_in_realtime_mode_is_barge_in(connect_device, say):
    device = await connect_device()
    await device.listen("start", "realtime")
    await device.stream(say("Tell me a long story about a dragon."))
    await device.stream(silence_frames(10))
    await device.wait_for(lambda e: e.kind == "audio", 20)
    # the user talks over the answer
    before = len(device.events)
    result = await device.turn(say(QUESTION), mode="realtime", send_listen_start=False)
    states = [tts_state(e) for e in result.events]
    assert "stop" in states
    assert result.stt and "capital" in result.stt.lower(), "the interrupting question was answered"
    transcript = next(i for i, e in enumerate(device.events) if i >= before and isinstance(e.message, Stt))
    assert "stop" not in states[states.index("stop") + 1:transcript - before], "one stop for the story"
    assert states.index("stop") < transcript - before, "the story stopped before the question was answered"
    # the answer to the question ends with a stop of its own (waited for here: on a busy machine it
    # may come after the trailing silence)
    await device.wait_for(lambda e: tts_state(e) == "stop", 30, since=transcript)
    answer = device.events[transcript:]
    assert any(e.kind == "audio" for e in answer)
    assert [tts_state(e) for e in device.events[before:]].count("stop") == 2
    await device.close()
    story, question = [t async for t in Turn.objects.order_by("id")]
    # the story is kept as far as it was heard: its audio had started playing
    assert story.error == "aborted" and story.reply_text and story.interrupted
    assert "capital" in question.user_text.lower() and question.reply_text and not question.error


async def test_a_second_connection_of_the_same_device_replaces_the_first(connect_device, say):
    first = await connect_device("aa:bb:cc:dd:ee:01")
    # The same device (its Client-Id): another Client-Id would be refused, the device is bound to this one
    second = await connect_device("AA-BB-CC-DD-EE-01", headers={**first.handshake_headers(), "Device-Id": "AA-BB-CC-DD-EE-01"})
    assert await first.wait_closed(5) == 4409
    result = await second.turn(say(QUESTION), mode="manual")
    assert result.audio and result.stopped
    await second.close()


async def test_a_bad_token_is_refused_before_anything_runs(connect_device, settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    device = await connect_device("aa:bb:cc:dd:ee:02", token="not-a-valid-token")
    assert device.server_hello is None
    assert device.close_code == 4401


async def test_a_token_issued_by_the_ota_is_accepted(connect_device, settings):
    settings.XIAOZHI_AUTH_ENABLED = True
    device_id = "aa:bb:cc:dd:ee:03"
    probe = await connect_device(device_id, hello=False)  # learn the client id the simulator uses
    token = issue_token(probe.client_id, device_id)
    await probe.close()
    good = await connect_device(device_id, headers={"Device-Id": device_id, "Client-Id": probe.client_id,
                                                    "Authorization": f"Bearer {token}"})
    assert good.server_hello is not None
    await good.close()


async def test_a_missing_device_id_is_refused(connect_device):
    device = await connect_device(headers={"Client-Id": "x"})
    assert device.server_hello is None and device.close_code == 4400


async def test_no_hello_closes_the_socket(connect_device, settings):
    settings.XIAOZHI_HELLO_TIMEOUT_SECONDS = 0.3
    device = await connect_device(hello=False)
    assert await device.wait_closed(3) == 4408


async def test_a_session_with_no_voice_is_closed(connect_device, settings):
    settings.XIAOZHI_IDLE_TIMEOUT_SECONDS = 1.0
    device = await connect_device()
    await device.listen("start", "auto")
    assert await device.wait_closed(5) == 4000
