"""LLM engines, one module each."""
