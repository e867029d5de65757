"""A tiny SenseVoiceSmall folder made on the spot, laid out like the real one.

The real weights cannot be fetched here, yet the provider's loading path (funasr's AutoModel reading
a local folder) must be exercised for real. So this writes the same files a real SenseVoiceSmall
folder has, only small: ``config.yaml`` naming the same model, encoder, tokenizer and frontend
classes with tiny encoder dimensions, a sentencepiece BPE model trained here on a few sentences
(with SenseVoice's language/emotion/event tags as symbols of their own), and random weights in
``model.pt``. The transcripts it produces are gibberish; that the path works end to end is the point.
"""
from __future__ import annotations

from pathlib import Path

import yaml

BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
# The special symbols SenseVoice writes before the words; giving them their own pieces lets the
# random model emit them, as the real one does, so stripping them is tested on real output.
TAGS = [
    "<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>",
    "<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>",
    "<|Speech|>", "<|BGM|>", "<|Laughter|>", "<|woitn|>", "<|withitn|>",
]
SENTENCES = [
    "turn on the kitchen light",
    "what is the capital of france",
    "tell me a joke about a dragon",
    "set a timer for ten minutes",
    "how is the weather today",
    "play some music in the living room",
    "good morning how are you",
    "switch off the fan please",
]
ENCODER = dict(
    output_size=32,
    attention_heads=2,
    linear_units=64,
    num_blocks=2,
    tp_blocks=1,
    dropout_rate=0.0,
    positional_dropout_rate=0.0,
    attention_dropout_rate=0.0,
    input_layer="pe",
    pos_enc_class="SinusoidalPositionEncoder",
    normalize_before=True,
    kernel_size=11,
    sanm_shfit=0,
    selfattention_layer_type="sanm",
)
# dither 0: funasr's frontend otherwise adds random noise to every clip, and this random-weight
# model is sensitive enough that the same audio would give different gibberish from call to call.
FRONTEND = dict(fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, lfr_m=7, lfr_n=6, dither=0.0, cmvn_file=None)


def config(fs: int = 16000, encoder: dict | None = None) -> dict:
    return {
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": dict(ENCODER, **(encoder or {})),
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": dict(FRONTEND, fs=fs),
    }


def train_bpe(folder: Path) -> int:
    """Train the BPE model into ``folder``; returns its vocabulary size."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "bpe"),
        model_type="bpe",
        vocab_size=64,
        user_defined_symbols=TAGS,
        minloglevel=2,
    )
    corpus.unlink()
    (folder / "bpe.vocab").unlink()
    (folder / "bpe.model").rename(folder / BPE_MODEL)
    return spm.SentencePieceProcessor(model_file=str(folder / BPE_MODEL)).get_piece_size()


def build(folder: Path, seed: int = 0, fs: int = 16000, encoder: dict | None = None) -> Path:
    """Write a complete tiny SenseVoiceSmall folder into ``folder`` (created if needed); ``encoder``
    overrides encoder dimensions (the benchmark uses the real model's)."""
    import torch

    from voice.providers.asr.sensevoice import contain_funasr_side_effects

    with contain_funasr_side_effects():
        from funasr.models.sense_voice.model import SenseVoiceSmall

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = train_bpe(folder)
    conf = config(fs, encoder)
    (folder / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    torch.manual_seed(seed)
    model = SenseVoiceSmall(
        encoder=conf["encoder"],
        encoder_conf=conf["encoder_conf"],
        input_size=FRONTEND["n_mels"] * FRONTEND["lfr_m"],
        vocab_size=vocab_size,
        **conf["model_conf"],
    )
    with torch.no_grad():
        # Spread the CTC output so frames disagree: an untrained head tends to pick one token
        # (often blank) everywhere, which would print nothing and test nothing.
        model.ctc.ctc_lo.weight.mul_(20.0)
        model.ctc.ctc_lo.bias[0] = -10.0  # blank
    torch.save(model.state_dict(), folder / "model.pt")
    return folder
