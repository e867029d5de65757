"""The load test's measuring, checked against a scripted server whose delays and audio timing are known."""
from __future__ import annotations

import asyncio
import json
import wave

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from loadtest.chart import ttfa_svg
from loadtest.generator import Config, Run, ota_or_ws
from loadtest.playout import simulate
from loadtest.report import Targets, build, table
from loadtest.simulated_device import SimulatedDevice, silence_frames
from loadtest.tests.scripted import ScriptedServer as Scripted, paced, paced_with_lead

STT, TTS_START, FIRST_AUDIO = 0.20, 0.10, 0.10  # seconds, the scripted server's delays
EXPECTED_TTFA_MS = (STT + TTS_START + FIRST_AUDIO) * 1000




# -- the playout simulator on its own -----------------------------------------------------------------------
def test_frames_at_real_time_pace_play_without_underrun_or_overflow():
    p = simulate(paced(50))
    assert (p.received, p.played, p.underruns, p.overflows) == (50, 50, 0, 0)
    assert p.played_seconds == pytest.approx(3.0)


def test_a_burst_beyond_the_40_frame_queue_is_dropped():
    p = simulate([0.0] * 60)  # one plays, 40 wait, 19 are dropped
    assert (p.overflows, p.played, p.max_queue) == (19, 41, 40)


def test_a_burst_the_queue_can_hold_is_all_played():
    p = simulate([0.0] * 41 + paced(10, start=2.46))
    assert p.overflows == 0 and p.underruns == 0 and p.played == 51


def test_a_starving_sender_underruns_once_per_gap():
    p = simulate(paced(10) + paced(10, start=1.54))  # playback runs dry at 0.60 s, audio resumes at 1.54 s
    assert p.underruns == 1 and p.underrun_seconds == pytest.approx(0.94)
    assert p.gaps == [pytest.approx((0.60, 1.54))]
    p = simulate(paced(6, step=0.12))  # half speed: every frame after the first comes to an empty queue
    assert p.underruns == 5 and p.overflows == 0


def test_figures_and_targets():
    turns = [{"ttfa_ms": v, "error": None, "played_seconds": 6.0, "underruns": 1, "audio_frames": 100} for v in (100, 200, 300)]
    turns.append({"error": "no_stt"})
    report = build([{"connected": True, "connect_ms": 5, "hello_ms": 1}], turns, [1.0, 40.0, 50.0], {},
                   Targets(ttfa_p95_ms=250, max_error_rate=0.5, max_underruns_per_minute=20), 1.0)
    assert report["errors"] == {"no_stt": 1} and report["error_rate"] == 0.25
    # voice.percentile (interpolated): p95 of 100/200/300 is 200 + 0.9 * 100
    assert report["figures"]["ttfa_ms"] == {"count": 3, "p50": 200.0, "p95": 290.0, "p99": 298.0, "max": 300, "mean": 200.0}
    assert report["audio"]["underruns_per_minute"] == pytest.approx(10.0)
    assert report["verdict"]["ttfa_p95_ms"]["passed"] is False and report["verdict"]["error_rate"]["passed"]
    assert report["generator"]["behind_schedule"] and not report["passed"]


def test_an_underrun_during_a_generator_stall_is_attributed_to_the_generator():
    run = Run(Config())
    run.stalls = [(10.0, 10.3)]
    assert run.during_stall(10.1, 10.2) and run.during_stall(9.9, 10.05) and not run.during_stall(11.0, 11.5)
    turns = [{"error": None, "played_seconds": 60.0, "underruns": 3, "underruns_in_generator_stall": 2}]
    report = build([], turns, [], {}, Targets(max_underruns_per_minute=1), 1.0, run.stalls)
    assert report["audio"]["underruns_per_minute"] == 3 and report["audio"]["server_underruns_per_minute"] == 1
    assert report["passed"] and report["generator"]["stalls"] == {"count": 1, "max_ms": 300.0}


def test_target_forms():
    assert ota_or_ws("http://h:8000") == ("http://h:8000/xiaozhi/ota/", None)
    assert ota_or_ws("https://h/xiaozhi/ota/") == ("https://h/xiaozhi/ota/", None)
    assert ota_or_ws("ws://h/xiaozhi/v1/") == (None, "ws://h/xiaozhi/v1/")


def test_chart_is_inline_svg():
    svg = ttfa_svg([{"at_s": 1.0, "ttfa_ms": 400}, {"at_s": 2.0, "ttfa_ms": None}], p95=400, target=500)
    assert svg.startswith("<svg") and "<circle" in svg and "target 500" in svg and "script" not in svg


# -- a scripted server ----------------------------------------------------------------------------------------
def ScriptedServer(frame_offsets):
    return Scripted(frame_offsets, stt=STT, tts_start=TTS_START, first_audio=FIRST_AUDIO)


def run_load(url, devices=1, frames=None):
    run = Run(Config(target=url, devices=devices, turns=1, mode="manual", think_time=0,
                     utterances=[frames or silence_frames(5)]))
    asyncio.run(run.run())
    return run


def test_ttfa_through_a_scripted_server_matches_its_known_delays():
    with ScriptedServer(paced_with_lead(20)) as url:
        run = run_load(url, devices=3)
    assert len(run.turns) == 3 and all(t["error"] is None for t in run.turns)
    for t in run.turns:
        assert EXPECTED_TTFA_MS - 5 <= t["ttfa_ms"] <= EXPECTED_TTFA_MS + 80
        assert STT * 1000 - 5 <= t["stt_ms"] <= STT * 1000 + 60
        assert t["audio_frames"] == 20 and t["underruns"] == 0 and t["overflows"] == 0
    assert max(run.lateness_ms) < 30


def test_a_bursty_server_overflows_the_device_queue():
    with ScriptedServer([0.0] * 60) as url:
        (turn,) = run_load(url).turns
    assert turn["overflows"] == 19 and turn["played_seconds"] == pytest.approx(41 * 0.06)


def test_a_starving_server_underruns_the_device_queue():
    with ScriptedServer(paced(6, step=0.15)) as url:
        (turn,) = run_load(url).turns
    assert turn["underruns"] == 5 and turn["overflows"] == 0


def test_auto_mode_streams_silence_after_speech_and_stops_at_tts_start():
    """The firmware keeps its microphone open after speech: silence flows until the server speaks."""
    speech = silence_frames(5)
    server = Scripted(paced_with_lead(10), stt=STT, tts_start=TTS_START, first_audio=FIRST_AUDIO,
                      answer_after_frames=len(speech) + 3)  # "end of speech" noticed 3 silent frames later
    with server as url:
        run = Run(Config(target=url, devices=2, turns=2, mode="auto", think_time=0, utterances=[speech],
                         trailing_silence=3.0))
        asyncio.run(run.run())
    assert len(run.turns) == 4 and all(t["error"] is None for t in run.turns)
    for t in run.turns:
        assert EXPECTED_TTFA_MS + 3 * 60 - 20 <= t["ttfa_ms"] <= EXPECTED_TTFA_MS + 3 * 60 + 100
    # speech + 3 silent frames + silence until tts start (~0.3 s = 5 frames), not the whole 3 s of silence
    assert len(run.lateness_ms) < 4 * (5 + 3 + 5 + 6)


def test_the_device_can_keep_only_sizes():
    device = SimulatedDevice(keep_audio=False)
    assert device.keep_audio is False and device.on_send is None


# -- the command ----------------------------------------------------------------------------------------------
@pytest.fixture
def wav_file(tmp_path):
    path = tmp_path / "say.wav"
    t = np.arange(int(16000 * 0.6)) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16).tobytes())
    return str(path)


@pytest.mark.django_db(transaction=True)
def test_the_command_stores_the_run_and_writes_the_report(tmp_path, wav_file):
    from loadtest.models import LoadTestRun

    out = tmp_path / "report.json"
    with ScriptedServer(paced_with_lead(20)) as url:
        call_command("loadtest", "--target", url, "--devices", "2", "--turns", "1", "--mode", "manual",
                     "--wav", wav_file, "--think-time", "0", "--report", str(out), "--quiet",
                     "--target-ttfa-p95-ms", "1000", "--max-error-rate", "0", "--max-underruns-per-minute", "0",
                     "--expect-audio-seconds", "1.2")
        with pytest.raises(CommandError, match="ttfa"):
            call_command("loadtest", "--target", url, "--devices", "1", "--turns", "1", "--mode", "manual",
                         "--wav", wav_file, "--think-time", "0", "--quiet", "--target-ttfa-p95-ms", "100")
    report = json.loads(out.read_text())
    assert report["devices"] == 2 and report["turns_completed"] == 2 and report["passed"]
    assert EXPECTED_TTFA_MS - 5 <= report["figures"]["ttfa_ms"]["p95"] <= EXPECTED_TTFA_MS + 80
    assert report["audio"]["received_vs_expected"] == pytest.approx(1.0)
    assert set(report["figures"]) >= {"connect_ms", "hello_ms", "stt_ms", "tts_start_ms", "ttfa_ms", "send_lateness_ms"}
    ok, missed = LoadTestRun.objects.order_by("id")
    assert ok.passed and ok.devices == 2 and ok.turns_completed == 2 and ok.errors == {}
    assert ok.ttfa_p95 == report["figures"]["ttfa_ms"]["p95"] and ok.underruns_per_minute == 0
    assert not missed.passed and missed.report["verdict"]["ttfa_p95_ms"]["passed"] is False


@pytest.mark.django_db
def test_the_admin_change_page_shows_the_svg_chart(admin_client):
    from loadtest.models import LoadTestRun

    turns = [{"device": 0, "turn": 0, "at_s": 0.5, "ttfa_ms": 420.0, "error": None}]
    report = build([{"connected": True, "connect_ms": 5, "hello_ms": 1}], turns, [1.0], {"target": "x"}, Targets(), 2.0)
    run = LoadTestRun.from_report("ws://x", report)
    page = admin_client.get(f"/admin/loadtest/loadtestrun/{run.pk}/change/")
    assert page.status_code == 200 and b"<svg" in page.content and b"<circle" in page.content
    assert admin_client.get("/admin/loadtest/loadtestrun/").status_code == 200


# -- simultaneous talkers: busy answers and the order of service ------------------------------------------------
def test_simultaneous_talkers_are_ordered_and_overflow_is_counted_as_busy():
    """One slot, one waiting place, 0.3 s per request: of 5 talkers 50 ms apart, the first two are answered in
    the order they finished speaking and the other three hear the busy notice."""
    server = Scripted(paced_with_lead(10), stt=0.05, tts_start=0.0, first_audio=0.05, slots=1, queue=1, service=0.3)
    with server as url:
        run = Run(Config(target=url, devices=5, turns=1, mode="manual", think_time=0, utterances=[silence_frames(5)],
                         sync_start=True, stagger_ms=50))
        asyncio.run(run.run())
    report = build(run.devices, run.turns, run.lateness_ms, {}, Targets(), 1.0)
    assert report["busy_turns"] == 3 and report["turns_completed"] == 2 and report["errors"] == {"busy": 3}
    assert report["figures"]["ttfa_ms"]["count"] == 2  # busy replies stay out of the latency figures
    f = report["fairness"]
    assert (f["talkers"], f["answered"], f["busy"], f["unanswered"]) == (5, 2, 3, 0)
    assert f["answered_in_arrival_order"] and f["busy_after_every_answered"] and f["answered_underruns"] == 0
    rows = f["devices"]
    assert [r["device"] for r in rows] == [0, 1, 2, 3, 4] and [r["arrival"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["outcome"] for r in rows] == ["answered", "answered", "busy", "busy", "busy"]
    assert [r["answer"] for r in rows] == [1, 2, None, None, None]
    assert [r["speech_end_ms"] for r in rows] == sorted(r["speech_end_ms"] for r in rows)
    for r, step in zip(rows[1:], range(1, 5)):  # the stagger held: 50 ms apart
        assert 50 * step - 20 <= r["speech_end_ms"] <= 50 * step + 20
    # the queued device waited for the first's service: its first audio ~0.3 s after the first's
    assert 250 <= rows[1]["first_audio_ms"] - rows[0]["first_audio_ms"] <= 450


def test_answer_order_against_arrival_order_is_computed_from_the_times():
    def turn(device, end, audio, error=None, busy=False, underruns=0):
        return {"device": device, "turn": 0, "sync": True, "speech_end_s": end, "first_audio_s": audio,
                "error": error, "busy": busy, "underruns": underruns, "ttfa_ms": None if audio is None else (audio - end) * 1000}

    turns = [turn(2, 10.10, 11.0), turn(0, 10.00, 12.0, underruns=2), turn(1, 10.05, 11.5), turn(3, 10.15, None, "busy", True),
             turn(4, 10.20, None, "no_stt"), {"device": 5, "turn": 1, "sync": False, "speech_end_s": 9.0, "error": None}]
    f = build([], turns, [], {}, Targets(), 1.0)["fairness"]
    rows = {r["device"]: r for r in f["devices"]}
    assert [r["device"] for r in f["devices"]] == [0, 1, 2, 3, 4]  # arrival order; the unsynchronised turn is left out
    assert {d: (r["arrival"], r["answer"]) for d, r in rows.items()} == {
        0: (1, 3), 1: (2, 2), 2: (3, 1), 3: (4, None), 4: (5, None)}
    assert f["order_inversions"] == 3 and not f["answered_in_arrival_order"]  # fully reversed: 3 pairs
    assert (f["answered"], f["busy"], f["unanswered"]) == (3, 1, 1) and rows[4]["outcome"] == "no_stt"
    assert rows[0]["speech_end_ms"] == 0 and rows[2]["first_audio_ms"] == 1000 and f["answered_underruns"] == 2
    assert f["busy_after_every_answered"]
    table_text = table(build([], turns, [], {}, Targets(), 1.0))
    assert "NO (3 inversions)" in table_text and "answered with the busy notice: 1" in table_text


def test_the_command_takes_sync_start_and_stagger(tmp_path):
    out = tmp_path / "report.json"
    server = Scripted(paced_with_lead(5), stt=0.05, tts_start=0.0, first_audio=0.05, slots=1, queue=0, service=0.2)
    with server as url:
        call_command("loadtest", "--target", url, "--devices", "3", "--turns", "1", "--mode", "manual",
                     "--text", "Hi.", "--think-time", "0", "--sync-start", "--stagger-ms", "40", "--report", str(out),
                     "--quiet", "--no-store")
    report = json.loads(out.read_text())
    assert report["settings"]["sync_start"] and report["settings"]["stagger_ms"] == 40
    assert report["busy_turns"] == 2 and report["fairness"]["answered"] == 1
    assert [r["outcome"] for r in report["fairness"]["devices"]] == ["answered", "busy", "busy"]
    with pytest.raises(CommandError, match="needs --sync-start"):
        call_command("loadtest", "--target", url, "--stagger-ms", "40", "--quiet", "--no-store")
