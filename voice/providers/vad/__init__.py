"""VAD engines, one module each."""
