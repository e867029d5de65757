"""Figures that count live things survive a reset, and a turn its user cuts short is an abort, not an error.

Both probed with real device sessions through the ASGI app (the fake models keep them fast): a reset
with devices connected once read 0 and then -3 when they left, and ordinary barge-in raised the
critical "High error rate" alert.
"""
import asyncio

import pytest
from asgiref.sync import sync_to_async

from devices.models import Turn
from monitoring import aggregate, alerts
from monitoring.models import Alert
from voice import live_stats
from voice.pipeline.turn_row import TurnRow

TOKEN = "reset-token"


def gauges() -> dict:
    return live_stats.snapshot()["gauges"]


async def gauge_reaches(name: str, expected: float) -> None:
    """Each consumer counts itself just after its handshake and uncounts itself on its close."""
    for _ in range(100):
        if gauges()[name] == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stuck at {gauges()[name]}, expected {expected}")


@pytest.fixture
def fake_models(settings):
    settings.XIAOZHI_ASR_PROVIDER = settings.XIAOZHI_LLM_PROVIDER = settings.XIAOZHI_TTS_PROVIDER = "fake"


@pytest.mark.django_db(transaction=True)
async def test_reset_with_devices_connected_keeps_the_live_gauges(connect_device, async_client, settings, fake_models):
    settings.XIAOZHI_MONITORING_API_TOKEN = TOKEN
    devices = [await connect_device(f"02:00:00:00:0e:{i:02x}") for i in range(3)]
    await gauge_reaches("connected_devices", 3)
    live_stats.incr("ws_messages_in", 5)

    response = await async_client.post("/api/performance/reset/", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    assert gauges()["connected_devices"] == 3  # the devices are still there
    assert "ws_messages_in" not in live_stats.snapshot()["counters"]  # the counters did start afresh
    for device in devices:
        await device.close()
    await gauge_reaches("connected_devices", 0)  # exactly back to zero, never below
    assert gauges()["active_turns"] == 0 and gauges()["vad_pending_packets"] == 0


@pytest.mark.django_db(transaction=True)
async def test_an_aborted_answer_counts_as_an_abort_and_raises_no_error_alert(connect_device, say, fake_models):
    device = await connect_device("02:00:00:00:0e:10")
    await device.listen("start", "manual")
    await device.stream(say("Tell me a long story about a dragon."))
    await device.listen("stop")
    await device.wait_for(lambda e: e.kind == "audio", 20)
    await device.abort()
    await device.wait_for(lambda e: getattr(e.message, "state", None) == "stop", 5)
    await device.close()
    for _ in range(100):  # the turn row is written by a task of the closing session
        if await Turn.objects.filter(error=live_stats.ABORTED).aexists():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the aborted turn was not recorded")

    counters = live_stats.snapshot()["counters"]
    assert counters["turns"] == 1 and counters["turn_aborts"] == 1
    assert "turn_errors" not in counters and not any(k.startswith("errors:") for k in counters)
    combined = await sync_to_async(aggregate.current)()
    assert combined["database"]["aborts_window"] == 1 and combined["database"]["errors_window"] == 0
    assert combined["flat"]["error_rate"] == 0.0
    await sync_to_async(alerts.evaluate_all)(combined)
    assert not await Alert.objects.filter(rule__metric="error_rate").aexists()


@pytest.mark.django_db
def test_error_rate_counts_failures_but_not_aborts():
    from devices.models import Device

    device = Device.objects.create(device_id="aa:bb:cc:dd:0e:01")
    Turn.objects.create(device=device, error="llm: boom")
    for _ in range(6):
        Turn.objects.create(device=device, error=live_stats.ABORTED)
    for _ in range(3):
        Turn.objects.create(device=device)
    flat = aggregate.current()["flat"]
    assert flat["error_rate"] == 10.0  # one failure in ten turns; the six aborts are not failures


def test_turn_outcomes_in_the_live_counters():
    live_stats.turn_finished(TurnRow(first_audio_sent_ms=900.0))
    live_stats.turn_finished(TurnRow(first_audio_sent_ms=800.0, error=live_stats.ABORTED))
    live_stats.turn_finished(TurnRow(error="asr: timeout"))
    counters = live_stats.snapshot()["counters"]
    assert counters["turns"] == 3 and counters["turn_aborts"] == 1 and counters["turn_errors"] == 1
    assert counters["errors:asr"] == 1 and "errors:aborted" not in counters


def test_the_task_figure_counts_the_unfinished_tasks_of_the_watched_loop_read_from_another_thread():
    """The figure is read by a request thread while the loop runs: it sees tasks come and go."""
    import threading

    from monitoring import collectors

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    previous = collectors._event_loop
    try:
        collectors.watch_event_loop(None)
        assert collectors.asyncio_tasks() is None  # a process serving no sockets has no such figure
        collectors.watch_event_loop(loop)
        assert collectors.asyncio_tasks() == 0
        release = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, result=asyncio.Event()), loop).result(5)
        waiters = [asyncio.run_coroutine_threadsafe(release.wait(), loop) for _ in range(3)]
        for _ in range(100):
            if collectors.asyncio_tasks() == 3:
                break
            threading.Event().wait(0.05)
        assert collectors.asyncio_tasks() == 3
        assert collectors.system()["process_asyncio_tasks"] == 3 and collectors.system()["process_open_fds"] > 0
        loop.call_soon_threadsafe(release.set)
        for waiter in waiters:
            waiter.result(5)
        for _ in range(100):
            if collectors.asyncio_tasks() == 0:
                break
            threading.Event().wait(0.05)
        assert collectors.asyncio_tasks() == 0
    finally:
        collectors.watch_event_loop(previous)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
