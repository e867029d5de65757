"""ASR engines, one module each."""
