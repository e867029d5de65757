"""``manage.py talk``: be a xiaozhi device for one conversation.

Goes through OTA, the WebSocket handshake and hello, speaks each ``--text`` (synthesised with the
bundled voice) or ``--wav`` file at real-time pace, and prints what the server answered with the
latencies a user would feel. Exits non-zero when a turn got no spoken answer.
"""
from __future__ import annotations

import asyncio
import json
import wave

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from voice.audio.opus import OpusDecoder, OpusEncoder
from voice.audio.resample import resample
from loadtest.simulated_device import UPLINK_RATE, SimulatedDevice, spoken_frames


def wav_frames(path: str) -> list[bytes]:
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise CommandError(f"{path}: only 16-bit PCM WAV files are supported")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if wav.getnchannels() > 1:
            pcm = pcm.reshape(-1, wav.getnchannels())[:, 0].copy()
        pcm = resample(pcm, wav.getframerate(), UPLINK_RATE)
    encoder = OpusEncoder(UPLINK_RATE, 60)
    return encoder.encode(pcm) + encoder.flush()


class Command(BaseCommand):
    help = "Act as a xiaozhi device: OTA, handshake, hello, speak, and print the server's answer."

    def add_arguments(self, parser):
        parser.add_argument("--server", default="http://127.0.0.1:8000", help="base URL of the server (OTA at /xiaozhi/ota/)")
        parser.add_argument("--ota-url", help="full OTA URL (default: <server>/xiaozhi/ota/)")
        parser.add_argument("--ws-url", help="skip OTA and connect to this WebSocket URL")
        parser.add_argument("--text", action="append", default=[], help="what to say (repeat for several turns)")
        parser.add_argument("--wav", action="append", default=[], help="a 16-bit WAV file to say instead")
        parser.add_argument("--mode", choices=["auto", "manual", "realtime"], default="auto")
        parser.add_argument("--device-id", help="MAC-style id (default: a random one)")
        parser.add_argument("--binary-version", type=int, choices=[1, 2, 3],
                            help="binary framing to use (default: what the OTA answer says, else 1)")
        parser.add_argument("--save-reply", help="write the last spoken answer to this WAV file")
        parser.add_argument("--camera", action="store_true",
                            help="a board with a camera: offers self.camera.take_photo and uploads a real JPEG "
                                 "to the server's vision URL (a server with XIAOZHI_VLLM_PROVIDER)")
        parser.add_argument("--timeout", type=float, default=30.0)
        parser.add_argument("--json", action="store_true", help="print one JSON object per turn")

    def handle(self, *args, **options):
        utterances = [("text", t) for t in options["text"]] + [("wav", w) for w in options["wav"]]
        if not utterances:
            utterances = [("text", "What is the capital of France?")]
        ok = asyncio.run(self.converse(utterances, options))
        if not ok:
            raise CommandError("a turn got no spoken answer")

    async def converse(self, utterances, options) -> bool:
        device = SimulatedDevice(options["device_id"], binary_version=options["binary_version"] or 1,
                                 camera=options["camera"])
        if options["ws_url"]:
            device.ws_url = options["ws_url"]
        else:
            ota_url = options["ota_url"] or options["server"].rstrip("/") + "/xiaozhi/ota/"
            answer = await device.ota(ota_url)
            self.stdout.write(f"OTA: websocket {answer['websocket']['url']} (binary v{device.binary_version})")
            if options["binary_version"]:
                device.use_binary_version(options["binary_version"])
            if "activation" in answer:
                self.stdout.write(f"OTA: this device must be activated first, code {answer['activation']['code']}")
        hello = await device.connect()
        if hello is None:
            raise CommandError(f"no hello from the server (closed {device.close_code} {device.close_reason})")
        rate = hello.audio_params.sample_rate
        self.stdout.write(f"hello: session {hello.session_id}, downlink {rate} Hz / {hello.audio_params.frame_duration} ms")
        all_ok = True
        try:
            for kind, value in utterances:
                frames = spoken_frames(value) if kind == "text" else wav_frames(value)
                self.stdout.write(f"you: {value} ({len(frames) * 0.06:.1f} s of audio)")
                result = await device.turn(frames, mode=options["mode"], timeout=options["timeout"])
                audio_seconds = len(result.audio) * 0.06
                all_ok &= bool(result.audio) and result.stopped
                if options["json"]:
                    self.stdout.write(json.dumps({
                        "stt": result.stt, "sentences": result.sentences, "emotion": result.emotion,
                        "tool_calls": result.tool_calls,
                        "audio_seconds": round(audio_seconds, 2), "stopped": result.stopped,
                        "stt_ms": result.stt_ms, "tts_start_ms": result.tts_start_ms, "first_audio_ms": result.first_audio_ms,
                    }))
                else:
                    self.stdout.write(f"heard: {result.stt!r}")
                    for call in result.tool_calls:  # the simulated device runs them as the firmware would
                        self.stdout.write(f"tool call: {call.get('name')} {json.dumps(call.get('arguments', {}))}")
                    self.stdout.write(f"answer: {' '.join(result.sentences)!r} ({result.emotion})")
                    self.stdout.write(
                        f"audio: {audio_seconds:.1f} s in {len(result.audio)} frames; tts stop {'received' if result.stopped else 'MISSING'}"
                    )
                    self.stdout.write(
                        "latency after end of speech: "
                        + ", ".join(f"{name} {value:.0f} ms" for name, value in
                                    (("stt", result.stt_ms), ("tts start", result.tts_start_ms), ("first audio", result.first_audio_ms))
                                    if value is not None)
                    )
                if options["save_reply"] and result.audio:
                    self.save(options["save_reply"], result.audio, rate)
        finally:
            await device.close()
        return all_ok

    def save(self, path: str, frames: list[bytes], rate: int) -> None:
        decoder = OpusDecoder(rate, 1)
        pcm = np.concatenate([decoder.decode(f) for f in frames])
        with wave.open(path, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm.astype(np.int16).tobytes())
        self.stdout.write(f"saved the answer to {path}")
