"""FunASR SenseVoiceSmall: offline ASR for Chinese, Cantonese, English, Japanese and Korean.

The weights are not bundled (no package registry carries them), so ``XIAOZHI_SENSEVOICE_MODEL_DIR``
names a local folder holding ``config.yaml``, ``model.pt`` and the BPE model (``am.mvn`` is
optional). The folder is checked before funasr is imported: that import alone takes 8-12 s, and a
typo in a path should fail in milliseconds with the setting's name. funasr prints an error and
carries on with *random weights* when ``model.pt`` is missing; checking first stops that too.

Nothing here reaches for the network: AutoModel gets an existing folder (so it never asks a model
hub) and ``disable_update=True`` (so it skips its version check), and every file is passed
explicitly rather than discovered through the hub's ``configuration.json``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voice.audio.resample import mono_float32
from voice.providers.base import ProviderUnavailable
from voice.providers.pool import ModelPool

SAMPLE_RATE = 16000  # what the ASR interface receives
MIN_SAMPLES = SAMPLE_RATE // 10  # shorter than 0.1 s holds no word
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
REQUIRED_FILES = ("config.yaml", "model.pt", BPE_MODEL)
OPTIONAL_CMVN = "am.mvn"
# SenseVoice's language query; "auto" lets the model decide per utterance.
LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko")
# SenseVoice prefixes its text with tags such as <|en|><|NEUTRAL|><|Speech|><|woitn|>.
_TAG = re.compile(r"<\|[^<>|]*\|>")
_SPACES = re.compile(r"\s+")

DIR_SETTING = "XIAOZHI_SENSEVOICE_MODEL_DIR"
LANGUAGE_SETTING = "XIAOZHI_SENSEVOICE_LANGUAGE"
PROVIDER_HINT = "or set XIAOZHI_ASR_PROVIDER=whisper"


def strip_tags(text: str) -> str:
    """The spoken words only: SenseVoice's language/emotion/event tags go, spacing is tidied."""
    return _SPACES.sub(" ", _TAG.sub("", text)).strip()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def contain_funasr_side_effects() -> Iterator[None]:
    """Undo what funasr does to the whole process: importing it adds a blanket "ignore all
    warnings" filter, and its import and AutoModel call ``logging.basicConfig`` (which would give
    the root logger a handler where none was configured yet, e.g. in a bare script or worker)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def package_problem() -> str | None:
    """Why funasr cannot be used, found without importing it (the import is slow)."""
    missing = [name for name in ("funasr", "kaldi_native_fbank", "sentencepiece") if not _installed(name)]
    if missing:
        return (
            f"the funasr ASR provider needs {', '.join(missing)} "
            f"(pip install -r requirements.txt), {PROVIDER_HINT}"
        )
    return None


def model_dir_problem(model_dir: str | None) -> str | None:
    """Why ``model_dir`` cannot hold SenseVoice weights, naming the setting to fix; None if it can."""
    if not model_dir:
        return (
            f"the funasr ASR provider needs SenseVoiceSmall weights: set {DIR_SETTING} to a folder "
            f"holding {', '.join(REQUIRED_FILES)}, {PROVIDER_HINT}"
        )
    folder = Path(model_dir)
    if not folder.is_dir():
        return f"{DIR_SETTING}={model_dir!r} is not a folder, {PROVIDER_HINT}"
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        return f"{DIR_SETTING}={model_dir!r} lacks {', '.join(missing)} (SenseVoiceSmall needs {', '.join(REQUIRED_FILES)})"
    return None


def language_problem(language: str) -> str | None:
    if language not in LANGUAGES:
        return f"{LANGUAGE_SETTING}={language!r} is not one of: {', '.join(LANGUAGES)}"
    return None


def weights_problem(model_pt: Path, model) -> str | None:
    """Whether ``model.pt`` held every weight the model built from ``config.yaml`` needs. funasr
    skips missing or differently shaped weights with a log line and keeps them *random*, so a
    model.pt from another model or version would load "fine" and transcribe nonsense."""
    import torch

    try:  # memory-mapped: reads the names and shapes, not the 900 MB of weights
        state = torch.load(model_pt, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        state = torch.load(model_pt, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model_state_dict", "model"):  # the wrappers funasr also accepts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    saved = {name.removeprefix("module."): tuple(value.shape) for name, value in state.items() if hasattr(value, "shape")}
    wrong = [name for name, value in model.state_dict().items() if saved.get(name) != tuple(value.shape)]
    if wrong:
        return (
            f"model.pt does not match config.yaml: {len(wrong)} weights missing or of another shape "
            f"(first: {wrong[0]}); use the model.pt and config.yaml of the same SenseVoiceSmall release"
        )
    return None


class SenseVoiceASR:
    name = "funasr"

    def __init__(self, model_dir: str | None, pool_size: int = 1, threads: int = 2, language: str = "auto"):
        problem = model_dir_problem(model_dir) or language_problem(language) or package_problem()
        if problem:
            raise ProviderUnavailable(problem)
        try:
            with contain_funasr_side_effects():
                from funasr import AutoModel
        except ImportError as exc:
            raise ProviderUnavailable(f"the funasr ASR provider could not import funasr ({exc}), {PROVIDER_HINT}") from exc
        folder = Path(model_dir)
        self.model_dir = str(folder)
        self.language = language
        self.threads = threads
        options = dict(
            model=str(folder),
            init_param=str(folder / "model.pt"),
            tokenizer_conf={"bpemodel": str(folder / BPE_MODEL)},
            device="cpu",
            ncpu=threads,  # funasr applies it with torch.set_num_threads (process-wide)
            disable_update=True,  # no version check over the network
            disable_pbar=True,
            disable_log=True,
        )
        if (folder / OPTIONAL_CMVN).is_file():
            options["frontend_conf"] = {"cmvn_file": str(folder / OPTIONAL_CMVN)}
        self._pool = ModelPool(lambda: self._build(AutoModel, options, folder), pool_size, name="sensevoice")
        # The folder's config decides the model's input rate; resample to it when it is not ours.
        frontend = self._pool.instances[0].kwargs.get("frontend")
        self.model_rate = int(getattr(frontend, "fs", SAMPLE_RATE))

    @staticmethod
    def _build(auto_model, options: dict, folder: Path):
        try:
            with contain_funasr_side_effects():
                model = auto_model(**options)
        except Exception as exc:  # a bad config.yaml or model.pt: say which setting leads there
            raise ProviderUnavailable(
                f"{DIR_SETTING}={str(folder)!r} could not be loaded as SenseVoiceSmall ({type(exc).__name__}: {exc})"
            ) from exc
        problem = weights_problem(folder / "model.pt", model.model)
        if problem:
            raise ProviderUnavailable(f"{DIR_SETTING}={str(folder)!r}: {problem}")
        return model

    def transcribe(self, pcm: np.ndarray) -> str:
        pcm = mono_float32(pcm)
        if pcm.size < MIN_SAMPLES:
            return ""
        if not pcm.flags.writeable:  # e.g. np.frombuffer over a worker's bytes; torch wants to own it
            pcm = pcm.copy()
        if self.model_rate != SAMPLE_RATE:
            from voice.audio.resample import resample

            pcm = resample(pcm, SAMPLE_RATE, self.model_rate)
        with self._pool.borrow() as model:
            return strip_tags(self._raw_text(model, pcm))

    def _raw_text(self, model, pcm: np.ndarray) -> str:
        """SenseVoice's own output, tags included. ``use_itn`` gives punctuation and digits, which
        read better to the LLM than spelt-out numbers."""
        results = model.generate(input=pcm, language=self.language, use_itn=True, fs=self.model_rate)
        return "".join(result.get("text", "") for result in results)

    def warm(self) -> None:
        with self._pool.borrow_all() as models:
            for model in models:
                self._raw_text(model, np.zeros(self.model_rate, dtype=np.float32))
