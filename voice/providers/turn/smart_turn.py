"""End-of-turn detection: has the speaker finished, judged from how the last seconds sounded?

Silence alone cannot tell "What is the capital of France?" (done) from "I would like to know..."
(a breath before the rest): both are followed by the same quiet. Smart Turn v3 (Daily, BSD-2-Clause,
shipped as an ONNX file inside the ``pipecat-ai`` wheel, which is installed with ``--no-deps`` for
that file alone) is a small Whisper-encoder classifier over the last 8 s of 16 kHz audio that
returns the probability the turn is complete; it is multilingual (Chinese included) and runs in
tens of ms on one CPU thread (~110 ms on a slow 2-core host). It is asked about a pause once the
pause's speculative transcript is ready before the full silence, or beside it
(``voice/pipeline/speculation.py``): a turn that sounds finished (and whose words do not trail off)
is answered then, anything else waits for the full silence.

``SilenceOnly`` is the choice without a model: it has no opinion, so only silence ends a turn.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from voice.providers.base import ProviderUnavailable

SAMPLE_RATE = 16000
WINDOW_SECONDS = 8  # the model's input: the last 8 s, zero-padded in front when shorter
MODEL_FILE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("pipecat")  # finds the files without importing pipecat (or its deps)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderUnavailable(
            "Smart Turn needs the model file shipped in pipecat-ai (pip install --no-deps pipecat-ai==1.14.0), "
            "or set XIAOZHI_TURN_PROVIDER=silence")
    path = Path(spec.submodule_search_locations[0]).joinpath(*MODEL_FILE)
    if not path.exists():
        raise ProviderUnavailable(f"Smart Turn weights are missing at {path}; reinstall pipecat-ai or set XIAOZHI_TURN_PROVIDER=silence")
    return path


class SmartTurn:
    name = "smart_turn"

    def __init__(self, model_path: str | Path | None = None, threads: int = 1):
        try:
            import onnxruntime
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise ProviderUnavailable(f"Smart Turn needs onnxruntime and faster-whisper; or set XIAOZHI_TURN_PROVIDER=silence ({exc})") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # one: it runs on the VAD thread, beside ASR/LLM/TTS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(model_path or bundled_model_path()), options,
                                                     providers=["CPUExecutionProvider"])
        # Whisper's log-mel features (what the model was trained on), from the ASR package we ship.
        self._features = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=WINDOW_SECONDS)

    def features(self, pcm: np.ndarray) -> np.ndarray:
        """(80, 800) log-mel of the last 8 s: zero-mean, unit-variance audio, zeros in front."""
        samples = WINDOW_SECONDS * SAMPLE_RATE
        audio = np.asarray(pcm, dtype=np.float32).reshape(-1)[-samples:]
        audio = np.pad(audio, (samples - audio.size, 0))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        return self._features(audio, padding=0)[:, : samples // 160].astype(np.float32)

    def probability(self, pcm: np.ndarray) -> float | None:
        """How likely the speaker has finished, after the audio of their turn so far (16 kHz float)."""
        if pcm.size < SAMPLE_RATE // 4:
            return None  # a fragment: nothing to judge, leave it to the silence
        (logits,) = self._session.run(None, {"input_features": self.features(pcm)[None]})
        return float(np.asarray(logits).reshape(-1)[0])

    def warm(self) -> None:
        self.probability(np.zeros(SAMPLE_RATE, np.float32))


class SilenceOnly:
    """No end-of-turn model: the listener's full silence ends every turn."""

    name = "silence"

    def probability(self, pcm: np.ndarray) -> float | None:
        return None
