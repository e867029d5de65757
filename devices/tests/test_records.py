from datetime import datetime, timezone as dt_timezone

import pytest

from devices.auth import DeviceIdentity
from devices.models import AgentConfig, Device, DeviceSession, Turn
from devices.records import close_connection, record_turn, register_connection, touch_device
from voice.pipeline.turn_row import MARKS, TurnRow

MAC = "aa:bb:cc:dd:ee:ff"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_activation(settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = False


def connect(client_id="uuid-1", remote_addr="10.0.0.9"):
    return register_connection(DeviceIdentity(MAC, client_id, "1", remote_addr), protocol_version=1)


def test_registering_creates_an_online_device_and_an_open_session():
    info = connect()
    device = Device.objects.get(pk=info.device_pk)
    session = DeviceSession.objects.get(pk=info.session_pk)
    assert (device.device_id, device.client_id, device.online, device.activated) == (MAC, "uuid-1", True, True)
    assert (str(session.session_id), session.remote_addr, session.ended_at) == (info.session_id, "10.0.0.9", None)
    assert (info.activated, info.activation_code) == (True, None)


def test_the_device_stays_online_until_its_last_overlapping_session_closes():
    old, new = connect(), connect()  # the same device (one Client-Id) reconnecting
    close_connection(old.session_pk, "replaced by a newer connection")
    assert Device.objects.get().online
    close_connection(new.session_pk, "client closed")
    assert not Device.objects.get().online
    assert DeviceSession.objects.filter(ended_at__isnull=True).count() == 0


def test_closing_twice_keeps_the_first_end_time_and_reason():
    info = connect()
    close_connection(info.session_pk, "idle timeout")
    first = DeviceSession.objects.get(pk=info.session_pk)
    close_connection(info.session_pk, "later")
    again = DeviceSession.objects.get(pk=info.session_pk)
    assert (again.ended_at, again.close_reason) == (first.ended_at, "idle timeout")


def test_an_unactivated_device_gets_one_code_across_connections(settings):
    settings.XIAOZHI_ACTIVATION_REQUIRED = True
    first, second = connect(), connect()
    assert first.activated is False
    assert first.activation_code and first.activation_code == second.activation_code


def test_the_agent_is_the_devices_own_then_the_default_then_the_settings(settings):
    settings.XIAOZHI_SYSTEM_PROMPT, settings.XIAOZHI_LLM_PROVIDER = "Server prompt", "smollm2"
    assert connect().agent["system_prompt"] == "Server prompt"

    AgentConfig.objects.create(name="Default", is_default=True, system_prompt="Default prompt")
    assert connect().agent["system_prompt"] == "Default prompt"

    own = AgentConfig.objects.create(name="Own", llm_provider="fake")
    Device.objects.update(agent=own)
    agent = connect().agent
    assert (agent["system_prompt"], agent["llm_provider"]) == ("Server prompt", "fake")


def test_a_turn_round_trips_chinese_and_emoji_with_its_timings():
    info = connect()
    speech_end = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=dt_timezone.utc)
    pk = record_turn(info.device_pk, info.session_pk, TurnRow(
        user_text="你好 😊",
        reply_text="你好！我是小智 🤖，有什么可以帮你？",
        error="",
        speech_end_at=speech_end,
        asr_done_ms=210.5,
        first_audio_sent_ms=812.0,
        timings={"asr_run_ms": 180.2, "note": "模型 ✓"},
    ))
    turn = Turn.objects.get(pk=pk)
    assert turn.user_text == "你好 😊"
    assert turn.reply_text == "你好！我是小智 🤖，有什么可以帮你？"
    assert turn.speech_end_at == speech_end
    assert (turn.asr_done_ms, turn.first_audio_sent_ms, turn.llm_first_token_ms) == (210.5, 812.0, None)
    assert turn.timings == {"asr_run_ms": 180.2, "note": "模型 ✓"} and turn.interrupted is False
    assert Turn.objects.filter(user_text__contains="😊").count() == 1


def test_a_turn_without_a_session_and_with_a_long_error_is_stored():
    info = connect()
    pk = record_turn(info.device_pk, None, TurnRow(user_text="hi", error="x" * 1000))
    turn = Turn.objects.get(pk=pk)
    assert (turn.session_id, len(turn.error), turn.reply_text, turn.timings) == (None, 255, "", {})


def test_an_interrupted_turn_is_stored_as_interrupted_with_what_was_played():
    info = connect()
    pk = record_turn(info.device_pk, info.session_pk, TurnRow(user_text="tell me a story", reply_text="Once upon",
                                                              interrupted=True, first_audio_sent_ms=640.0))
    turn = Turn.objects.get(pk=pk)
    assert (turn.interrupted, turn.reply_text, turn.first_audio_sent_ms) == (True, "Once upon", 640.0)


def test_a_turn_row_has_a_column_for_each_of_its_fields():
    import dataclasses

    columns = {f.name for f in Turn._meta.get_fields()}
    assert {f.name for f in dataclasses.fields(TurnRow)} <= columns
    assert set(TurnRow(**{f"{m}_ms": 1.0 for m in MARKS}).latencies()) == {f"{m}_ms" for m in MARKS}


def test_touching_a_device_moves_its_last_seen():
    info = connect()
    Device.objects.update(last_seen=None)
    touch_device(info.device_pk)
    assert Device.objects.get().last_seen is not None
