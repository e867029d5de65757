"""VAD batched across sessions: the same scores and utterances as each session alone, on real Silero
and real Opus, and conversations that still work in every XIAOZHI_VAD_BATCHING mode."""
import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voice import live_stats
from voice.pipeline.listener import Listener, SpeechStarted, Utterance
from voice.pipeline.packet_queue import PacketQueue
from voice.workers.vad_batcher import VADBatcher, run_cycle
from voice.workers import ServiceBusy

ROOT = Path(__file__).resolve().parents[2]
DTX = b"\xf8"  # what the firmware sends for silence: no decoding, no VAD


@pytest.fixture(scope="module")
def silero():
    from voice.providers.vad.silero import SileroVAD

    return SileroVAD()


def noise(seconds: float, level: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, level, int(16000 * seconds)).astype(np.float32)


def opus_frames(pcm: np.ndarray) -> list[bytes]:
    from voice.audio.opus import OpusEncoder

    encoder = OpusEncoder(16000, 60)
    return encoder.encode((np.clip(pcm, -1, 1) * 32767).astype(np.int16))


def new_listener(vad, mode="auto") -> Listener:
    return Listener(vad, silence_ms=500, threshold=0.5, max_seconds=30.0, mode=mode)


def summary(events) -> list:
    return [(type(e).__name__, e.at) if isinstance(e, SpeechStarted) else (type(e).__name__, len(e.pcm), e.ended_by)
            for e in events]


@pytest.fixture(scope="module")
def streams_of_packets(say):
    """Five devices' uplinks, all different: speech of different lengths, silence, DTX, noise."""
    hello = say("Turn on the kitchen light.")
    weather = say("What is the weather like tomorrow in Paris?")
    quiet = opus_frames(np.zeros(16000 * 2, np.float32))
    hiss = opus_frames(noise(2.0, 0.01, 1))
    return [
        quiet[:4] + hello + quiet,
        hiss[:10] + weather + [DTX] * 12 + hello[:6],
        [DTX] * 5 + hiss,
        weather[5:] + quiet[:12] + weather,
        hello[::-1][:20] + quiet[:15],  # reversed frames: speech-like energy, odd content
    ]


# -- the model: a shared run equals each stream alone ----------------------------------------------------------
@pytest.mark.models
@pytest.mark.parametrize("max_batch", [1, 2, 64])
def test_grouped_scores_equal_each_stream_scored_alone(silero, max_batch):
    rng = np.random.default_rng(7)
    sessions = 5
    # Different audio, different histories (recurrent state and a partial chunk already fed).
    history = [noise(0.05 * (i + 1), 0.02 * (i + 1), 100 + i) for i in range(sessions)]
    packets = [[rng.normal(0, 0.1 * (i + 1), size).astype(np.float32) for size in (960, 960, 320, 1500, 960)][: i + 1]
               for i in range(sessions)]
    alone, together = [silero.new_stream() for _ in range(sessions)], [silero.new_stream() for _ in range(sessions)]
    for stream_a, stream_b, pcm in zip(alone, together, history):
        stream_a.probabilities(pcm)
        stream_b.probabilities(pcm)
    assert len({float(np.abs(s.state).sum()) for s in alone}) == sessions  # the states really differ
    expected = [[stream.probabilities(pcm) for pcm in per_session] for stream, per_session in zip(alone, packets)]

    got = silero.probabilities_grouped(together, packets, max_batch=max_batch)

    assert [[len(p) for p in s] for s in got] == [[len(p) for p in s] for s in expected]
    for got_session, expected_session in zip(got, expected):
        for got_packet, expected_packet in zip(got_session, expected_session):
            np.testing.assert_allclose(got_packet, expected_packet, atol=1e-5)
    for a, b in zip(alone, together):  # and the streams carry on from the same place
        np.testing.assert_allclose(a.state, b.state, atol=1e-5)
        np.testing.assert_array_equal(a.pending, b.pending)
        np.testing.assert_array_equal(a.context, b.context)


@pytest.mark.models
def test_grouped_scores_refuse_the_same_stream_twice(silero):
    stream = silero.new_stream()
    with pytest.raises(ValueError, match="only once"):
        silero.probabilities_grouped([stream, stream], [[np.zeros(960, np.float32)]] * 2)


# -- a cycle: many listeners, one set of model runs -------------------------------------------------------------
@pytest.mark.models
@pytest.mark.parametrize("max_batch", [2, 64])
def test_a_cycle_across_sessions_hears_what_each_session_hears_alone(silero, streams_of_packets, max_batch):
    alone = [new_listener(silero) for _ in streams_of_packets]
    together = [new_listener(silero) for _ in streams_of_packets]
    together[2].reset("manual")  # one session in push-to-talk: decoded, never scored
    alone[2].reset("manual")
    expected = [[] for _ in streams_of_packets]
    got = [[] for _ in streams_of_packets]
    t = 0.0
    longest = max(len(p) for p in streams_of_packets)
    for start in range(0, longest, 3):  # three packets per session per cycle, as a loaded server batches them
        jobs = []
        for i, packets in enumerate(streams_of_packets):
            batch = [(p, t + k * 0.06) for k, p in enumerate(packets[start : start + 3])]
            if batch:
                expected[i] += alone[i].feed(batch)
                jobs.append((i, batch))
        t += 0.18
        results = run_cycle([(together[i], batch) for i, batch in jobs], max_batch)
        for (i, _), events in zip(jobs, results):
            assert not isinstance(events, Exception), events
            got[i] += events
    for i in range(len(streams_of_packets)):
        assert summary(got[i]) == summary(expected[i])
        for a, b in zip(got[i], expected[i]):
            if isinstance(a, Utterance):
                np.testing.assert_allclose(a.pcm, b.pcm, atol=1e-6)
    heard = [summary(e) for e in expected]
    assert any(kind == "Utterance" for events in heard for kind, *_ in events)  # speech was cut
    assert heard[2] == []  # manual mode: nothing until listen stop
    assert together[2].buffered_samples == alone[2].buffered_samples > 0


@pytest.mark.models
def test_one_broken_session_does_not_fail_the_others_in_its_cycle(silero, streams_of_packets):
    class BrokenListener(Listener):
        def decode(self, packets):
            raise RuntimeError("decoder exploded")

    good, broken = new_listener(silero), BrokenListener(silero, silence_ms=500, threshold=0.5, max_seconds=30.0)
    packets = [(p, 0.0) for p in streams_of_packets[0]]
    reference = new_listener(silero).feed(packets)
    results = run_cycle([(broken, packets), (good, packets)], 64)
    assert isinstance(results[0], RuntimeError)
    assert summary(results[1]) == summary(reference)


# -- the batcher on a real event loop and the real VAD service ---------------------------------------------------
@pytest.mark.models
async def test_sessions_waiting_together_share_one_cycle_and_get_their_own_events(silero, streams_of_packets):
    from voice.workers.vad_batcher import _run_on_vad_service

    cycles = []

    async def dispatch(fn, jobs, max_batch, first=False):  # the real VAD service, watched
        cycles.append(len(jobs))
        return await _run_on_vad_service(fn, jobs, max_batch, first=first)

    batcher = VADBatcher(64, dispatch=dispatch)
    listeners = [new_listener(silero) for _ in streams_of_packets]
    references = [new_listener(silero) for _ in streams_of_packets]
    batches = [[(p, 0.0) for p in packets] for packets in streams_of_packets]
    got = await asyncio.gather(*(batcher.submit(l, b) for l, b in zip(listeners, batches)))
    assert cycles == [len(listeners)]
    for events, reference, batch in zip(got, references, batches):
        assert summary(events) == summary(reference.feed(batch))
    assert batcher._task.done()  # idle: the batcher holds no task
    await batcher.close()


@pytest.mark.models
async def test_a_second_batch_of_the_same_session_waits_for_the_next_cycle_in_order(silero, streams_of_packets):
    from voice.workers.vad_batcher import _run_on_vad_service

    cycles = []

    async def dispatch(fn, jobs, max_batch, first=False):
        cycles.append([id(listener) for listener, *_ in jobs])
        return await _run_on_vad_service(fn, jobs, max_batch, first=first)

    batcher = VADBatcher(64, dispatch=dispatch)
    listener, other, reference = new_listener(silero), new_listener(silero), new_listener(silero)
    packets = [(p, 0.0) for p in streams_of_packets[1]]
    half = len(packets) // 2
    first, second, _ = await asyncio.gather(
        batcher.submit(listener, packets[:half]), batcher.submit(listener, packets[half:]),
        batcher.submit(other, packets[:half]))
    assert cycles == [[id(listener), id(other)], [id(listener)]]
    assert summary(first + second) == summary(reference.feed(packets))
    await batcher.close()


@pytest.mark.models
async def test_a_cycle_takes_at_most_its_packet_budget_so_a_backlog_cannot_time_it_out(silero, streams_of_packets):
    from voice.workers.vad_batcher import _run_on_vad_service

    cycles = []

    async def dispatch(fn, jobs, max_batch, first=False):
        cycles.append(sum(len(packets) for _, packets, *_ in jobs))
        return await _run_on_vad_service(fn, jobs, max_batch, first=first)

    batcher = VADBatcher(64, dispatch=dispatch, max_packets_per_cycle=40)
    batches = [[(p, 0.0) for p in packets[:30]] for packets in streams_of_packets]  # 5 sessions x 30 packets
    listeners = [new_listener(silero) for _ in batches]
    got = await asyncio.gather(*(batcher.submit(l, b) for l, b in zip(listeners, batches)))
    assert cycles == [60, 60, 30]  # a job is never split: a cycle stops once it holds 40 or more
    for events, batch in zip(got, batches):
        assert summary(events) == summary(new_listener(silero).feed(batch))
    await batcher.close()


@pytest.mark.models
async def test_a_full_batcher_refuses_at_once_and_close_fails_what_waits(silero):
    release = asyncio.Event()

    async def slow_dispatch(fn, jobs, max_batch, first=False):
        await release.wait()
        return fn(jobs, max_batch)

    batcher = VADBatcher(64, dispatch=slow_dispatch, max_waiting=2)
    listeners = [new_listener(silero) for _ in range(4)]
    packet = [(opus_frames(noise(0.06, 0.01, 3))[0], 0.0)]
    in_cycle = asyncio.create_task(batcher.submit(listeners[0], packet))
    await asyncio.sleep(0)  # the cycle takes it; the next two wait
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(batcher.submit(l, packet)) for l in listeners[1:3]]
    await asyncio.sleep(0)
    assert batcher.waiting == 2
    with pytest.raises(ServiceBusy, match="full"):
        await batcher.submit(listeners[3], packet)
    await batcher.close()
    for task in [in_cycle, *waiting]:
        with pytest.raises(ServiceBusy, match="shut down"):
            await task
    assert batcher.waiting == 0
    with pytest.raises(ServiceBusy):
        await batcher.submit(listeners[3], packet)


# -- the session's queue ---------------------------------------------------------------------------------------------
def test_packet_queue_drops_the_oldest_when_full_and_keeps_the_backlog_gauge_true():
    before = live_stats.snapshot()
    queue = PacketQueue(3)
    assert [queue.put(bytes([i]), float(i)) for i in range(5)] == [True, True, True, False, False]
    after = live_stats.snapshot()
    assert after["gauges"]["vad_pending_packets"] - before["gauges"]["vad_pending_packets"] == 3
    assert after["counters"].get("audio_dropped", 0) - before["counters"].get("audio_dropped", 0) == 2
    assert queue.take_all() == [(bytes([2]), 2.0), (bytes([3]), 3.0), (bytes([4]), 4.0)]
    queue.put(b"x", 5.0)
    queue.clear()
    assert len(queue) == 0
    assert live_stats.snapshot()["gauges"]["vad_pending_packets"] == before["gauges"]["vad_pending_packets"]


# -- whole conversations in every mode ------------------------------------------------------------------------------
@pytest.mark.models
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["cross_session", "session", "packet"])
async def test_devices_talking_at_once_are_each_heard_in_every_batching_mode(connect_device, say, settings, mode):
    settings.XIAOZHI_VAD_BATCHING = mode
    questions = ["What is the capital of France?", "Tell me a joke."]
    devices = [await connect_device() for _ in questions]
    before = live_stats.snapshot()["counters"]
    results = await asyncio.gather(*(d.turn(say(q), mode="auto") for d, q in zip(devices, questions)))
    assert "france" in results[0].stt.lower()
    assert "joke" in results[1].stt.lower()
    assert all(r.stopped and r.audio for r in results)
    after = live_stats.snapshot()["counters"]
    assert after.get("vad_packets", 0) > before.get("vad_packets", 0)
    assert after.get("audio_lost", 0) == before.get("audio_lost", 0)
    if mode == "cross_session":
        assert after["vad_batch_cycles"] > before.get("vad_batch_cycles", 0)
    for device in devices:
        await device.close()


def test_an_unknown_batching_mode_stops_start_up_naming_the_setting(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "XIAOZHI_VAD_BATCHING": "sometimes", "XIAOZHI_DATA_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "xiaozhi.settings"}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "XIAOZHI_VAD_BATCHING must be one of cross_session, session, packet, got 'sometimes'" in done.stderr


@pytest.mark.models
@pytest.mark.django_db(transaction=True)
async def test_a_busy_vad_loses_the_batch_counted_but_the_session_keeps_hearing(connect_device, say):
    from voice.workers import vad_batcher

    loop = asyncio.get_running_loop()
    full = VADBatcher(64, max_waiting=0)  # the real batcher with no room: every batch is refused as busy
    vad_batcher._batchers[loop] = full
    try:
        device = await connect_device()
        before = live_stats.snapshot()["counters"].get("audio_lost", 0)
        await device.listen("start", "auto")
        await device.stream(say("What is the capital of France?")[:10])
        for _ in range(50):
            if live_stats.snapshot()["counters"].get("audio_lost", 0) > before:
                break
            await asyncio.sleep(0.1)
        assert live_stats.snapshot()["counters"].get("audio_lost", 0) > before
        assert not [e for e in device.events if e.kind == "closed"]
    finally:
        del vad_batcher._batchers[loop]  # room again: the loop gets a fresh batcher
        await full.close()
    result = await device.turn(say("What is the capital of France?"), mode="auto")
    assert "france" in result.stt.lower() and result.stopped
    await device.close()


# -- one side owns the listener: resets asked on the loop, carried out on the VAD side ------------------------------
@pytest.mark.models
def test_a_reset_during_a_cycle_discards_that_cycles_events_and_the_next_step_starts_afresh(silero, say):
    speech = say("What is the capital of France?")
    listener = new_listener(silero)
    packets = [(p, i * 0.06) for i, p in enumerate(speech)]
    decoded = listener.decode(packets)  # the VAD thread is between decoding and cutting...
    scores = [listener.vad_stream.probabilities(pcm) for pcm in decoded.to_score]
    listener.reset()  # ...when the session resets the listener on the loop
    assert listener.apply(decoded, scores) == []  # the old utterance's events are dropped
    assert np.abs(listener.vad_stream.state).sum() > 0  # the loop left the thread's VAD stream alone
    fresh = new_listener(silero)
    quiet = [(DTX, 10 + i * 0.06) for i in range(3)]
    assert listener.feed(quiet) == fresh.feed(quiet) == []  # the next step carried the reset out
    assert not listener.in_speech and listener.buffered_samples == fresh.buffered_samples
    assert summary(listener.feed(packets)) == summary(new_listener(silero).feed(packets))


@pytest.mark.models
def test_a_session_whose_vad_state_is_broken_fails_only_its_own_part_of_a_cycle(silero, streams_of_packets):
    listeners = [new_listener(silero) for _ in range(3)]
    reference = [new_listener(silero) for _ in range(3)]
    listeners[1].vad_stream.pending = "not audio"  # a corrupt stream in the middle of the batch
    jobs = [(listener, [(p, i * 0.06) for i, p in enumerate(streams_of_packets[3])]) for listener in listeners]
    results = run_cycle(jobs, max_batch=64)
    assert isinstance(results[1], Exception)
    for i in (0, 2):
        assert summary(results[i]) == summary(reference[i].feed(jobs[i][1]))
