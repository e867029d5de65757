"""The path a real device takes, through a real Daphne process: OTA -> handshake -> hello ->
speech -> stt, tts start, audio that decodes, tts stop. Driven by the shipped ``talk`` command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.models]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(start_server):
    """The production server (Daphne with our transport limits) with the bundled models."""
    with start_server("e2e", startup_timeout=120) as running:
        yield running.base


def talk(server, *args):
    done = subprocess.run(
        [sys.executable, "manage.py", "talk", "--server", server, "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    return done, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_device_goes_through_ota_and_hears_a_spoken_answer(server):
    done, turns = talk(server, "--text", "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    (turn,) = turns
    assert "capital" in turn["stt"].lower() and "france" in turn["stt"].lower()
    assert turn["audio_seconds"] >= 1.0 and turn["stopped"]
    assert turn["stt_ms"] < turn["tts_start_ms"] <= turn["first_audio_ms"]


def test_two_turns_on_one_connection_and_binary_v3(server):
    done, turns = talk(server, "--binary-version", "3", "--mode", "manual",
                       "--text", "Tell me a joke.", "--text", "What is the weather like?")
    assert done.returncode == 0, done.stderr
    assert len(turns) == 2 and all(t["audio_seconds"] >= 1.0 and t["stopped"] for t in turns)


def test_health_reports_the_loaded_models(server):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok"
    loaded = {kind for kind, names in health["checks"]["models"].items() if names}
    if os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery":
        # The server runs only the VAD (and the end-of-turn model beside it); the workers hold the
        # other models, and say so by heartbeat.
        assert loaded == {"vad", "turn"}
        assert health["checks"]["voice_workers"] == "ok"
        models = {kind: {m for w in found for m in w["models"]} for kind, found in health["checks"]["workers"].items()}
        assert "whisper" in models["asr"] and "smollm2" in models["llm"] and "piper" in models["tts"]
    else:
        assert loaded == {"vad", "asr", "llm", "tts", "turn"}
