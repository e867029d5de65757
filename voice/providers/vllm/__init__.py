"""Vision providers: answer a question about a photo (the ``vllm`` service)."""
