"""End of turn on the bundled models: real speech (Piper), Silero, Smart Turn v3 and Whisper over
the real ASGI app (the same logic on fakes, in milliseconds: ``test_end_of_turn.py``)."""
import functools

import numpy as np
import pytest

from devices.models import Turn

pytestmark = [pytest.mark.models, pytest.mark.django_db(transaction=True)]

RATE = 16000


@functools.cache
def spoken(text: str) -> np.ndarray:
    """``text`` in the bundled voice at 16 kHz, trimmed to where the voice is: the silence the
    voice puts around a sentence would otherwise lengthen the pause under test."""
    from voice.audio.resample import resample
    from voice.providers import registry

    tts = registry.get_tts("piper")
    pcm = np.concatenate([np.asarray(c, dtype=np.int16) for c in tts.synthesize(text)])
    pcm = resample(pcm, tts.sample_rate, RATE)
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > 300)[0]
    return pcm[loud[0]:loud[-1] + 1]


def frames(*parts) -> list[bytes]:
    """Opus frames for a sequence of texts and pauses (seconds)."""
    from voice.audio.opus import OpusEncoder

    pcm = np.concatenate([spoken(p) if isinstance(p, str) else np.zeros(int(p * RATE), np.int16) for p in parts])
    encoder = OpusEncoder(RATE, 60)
    return encoder.encode(pcm) + encoder.flush()


def test_smart_turn_hears_a_finished_question_as_finished():
    from voice.providers.turn.smart_turn import SmartTurn

    model = SmartTurn()
    pcm = np.concatenate([spoken("What is the capital of France?"), np.zeros(RATE // 5, np.int16)]).astype(np.float32) / 32768
    assert model.features(pcm).shape == (80, 800)
    assert model.probability(pcm) > 0.5
    assert model.probability(pcm[: RATE // 10]) is None  # too short to judge


async def test_a_400_ms_pause_mid_sentence_reaches_the_llm_whole(connect_device):
    device = await connect_device()
    result = await device.turn(frames("I would like to know", 0.4, "the capital of France."), mode="auto", timeout=60)
    text = result.stt.lower()
    assert "know" in text and "capital" in text and "france" in text, result.stt
    await device.close()
    turns = [t async for t in Turn.objects.all()]
    assert len(turns) == 1  # one turn: the first half was never answered on its own
    assert "know" in turns[0].user_text.lower() and "france" in turns[0].user_text.lower()


async def test_a_question_after_a_pause_is_answered_from_the_pause_transcript(connect_device, say):
    from voice import live_stats

    def speculations_used():
        counters = live_stats.snapshot()["counters"]
        return counters.get("speculative_asr_used", 0) + counters.get("end_of_turn_early", 0)

    before = speculations_used()
    device = await connect_device()
    result = await device.turn(say("What is the capital of France?"), mode="auto", timeout=60)
    assert "capital" in result.stt.lower()
    assert result.audio and result.stopped
    await device.close()
    turn = await Turn.objects.aget()
    assert "france" in turn.user_text.lower() and not turn.error
    # The turn's transcript is the one made at the pause (taken by the full silence, or ending
    # the turn itself when it was ready first), not a second ASR call.
    assert speculations_used() == before + 1
