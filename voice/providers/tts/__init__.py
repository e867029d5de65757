"""TTS engines, one module each."""
