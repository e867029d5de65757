"""Retries and the circuit breaker of the OpenAI-compatible LLM, against a real HTTP server on
127.0.0.1 that fails as scripted and then streams."""
import http.server
import json
import os
import threading
import time

import pytest

from voice import live_stats
from voice.providers.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from voice.providers.errors import CircuitOpen, LLMError
from voice.providers.llm.openai_compat import OpenAICompatibleLLM

REPLY = ["Hello", " there", ",", " friend", "."]


class ScriptedChat(http.server.BaseHTTPRequestHandler):
    """Each request takes the next step of the server's script (then "ok" once it runs out):
    "drop" closes without answering, "500"/"503"/"400" answer that status, "429:<s>" answers 429
    with Retry-After <s>, "partial" streams two words and then an error event, "ok" streams REPLY."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.arrivals.append(time.monotonic())
            server.bodies.append(body)
            step = server.script.pop(0) if server.script else "ok"
        if step.startswith("tool_calls"):
            self._tool_calls(step)
            return
        if step == "drop":
            self.close_connection = True
            return
        if step.split(":")[0] in ("400", "429", "500", "503"):
            status, _, retry_after = step.partition(":")
            self.send_response(int(status))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "scripted failure"}}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = REPLY[:2] if step == "partial" else REPLY
        for word in words:
            self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n".encode())
            self.wfile.flush()
        if step == "partial":
            self.wfile.write(b'data: {"error": {"message": "overloaded mid-stream"}}\n\n')
            return
        self.wfile.write(b"data: [DONE]\n\n")

    def _tool_calls(self, step):
        """Like a hosted API asking for tools: the id and name first, then the JSON arguments in
        fragments, interleaved by ``index`` for two calls ("tool_calls:bad" sends broken JSON)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        arguments = '{"volume": 3' if step == "tool_calls:bad" else '{"volume": 30}'
        deltas = [
            {"role": "assistant", "content": None,
             "tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "self_audio_speaker_set_volume", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:8]}}]},
            {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "self_get_device_status", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": arguments[8:]}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        ]
        for delta in deltas:
            self.wfile.write(f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n".encode())
            self.wfile.flush()
        finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        self.wfile.write(f"data: {json.dumps(finish)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScriptedChat)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.script, httpd.arrivals, httpd.bodies = [], [], []
    httpd.url = f"http://127.0.0.1:{httpd.server_port}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def llm_for(server, timeout=5.0, retry_budget=None, **options):
    """The provider with these retry settings (``RetryPolicy``'s fields; ``retry_budget`` its budget)."""
    from voice.providers.remote import RetryPolicy

    policy = {"retries": 2, "backoff": 0.01, "breaker_failures": 5, "breaker_cooldown": 30.0}
    model = {k: options.pop(k) for k in list(options) if k not in policy}
    return OpenAICompatibleLLM(server.url, timeout=timeout, policy=RetryPolicy(**{**policy, **options}, budget=retry_budget),
                               **model)


def ask(llm, cancel=None):
    return "".join(llm.stream([{"role": "user", "content": "hi"}], cancel or threading.Event()))


# --- the model asked for ------------------------------------------------------------------------------


def test_a_request_names_the_model_it_is_given_else_the_providers_own(server):
    llm = llm_for(server, model="server-model")
    assert "".join(llm.stream([{"role": "user", "content": "hi"}], threading.Event(), model="agent-model")) == "Hello there, friend."
    assert ask(llm) == "Hello there, friend."
    ask(llm_for(server))  # no model anywhere: the server's default
    assert [body.get("model") for body in server.bodies] == ["agent-model", "server-model", None]


@pytest.mark.models
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery",
    reason="the LLM then runs in the Celery worker started at session start, whose settings this test cannot point at its server",
)
async def test_the_agents_llm_model_is_the_model_the_server_is_asked_for(server, connect_device, say, settings):
    """AgentConfig.llm_model (admin) -> the device's session -> the turn -> the operation -> the request."""
    from devices.models import AgentConfig
    from voice.providers import registry

    settings.XIAOZHI_LLM_BASE_URL = server.url
    settings.XIAOZHI_LLM_MODEL = "server-model"
    registry.forget("llm", "openai")
    try:
        await AgentConfig.objects.acreate(name="remote", llm_provider="openai", llm_model="agent-model", is_default=True)
        device = await connect_device()
        result = await device.turn(say("What is the capital of France?"), mode="manual")
        assert result.sentences and result.stopped
        assert [body["model"] for body in server.bodies] == ["agent-model"]
    finally:
        registry.forget("llm", "openai")


# --- retries ------------------------------------------------------------------------------------------


def test_a_dropped_connection_and_a_5xx_are_retried_until_the_reply_streams(server):
    server.script = ["drop", "503"]
    before = live_stats.snapshot()["counters"].get("llm_retries", 0)
    llm = llm_for(server)
    assert ask(llm) == "Hello there, friend."
    assert len(server.arrivals) == 3
    assert live_stats.snapshot()["counters"]["llm_retries"] - before == 2
    assert llm.breaker.state == CLOSED and llm.breaker.snapshot()["consecutive_failures"] == 0


def test_it_gives_up_after_the_configured_retries_with_the_last_error(server):
    server.script = ["500"] * 10
    with pytest.raises(LLMError, match="HTTP 500"):
        ask(llm_for(server, retries=2))
    assert len(server.arrivals) == 3


def test_no_retries_when_set_to_zero(server):
    server.script = ["503"]
    with pytest.raises(LLMError, match="HTTP 503"):
        ask(llm_for(server, retries=0))
    assert len(server.arrivals) == 1


def test_retry_after_is_waited_for(server):
    server.script = ["429:1"]
    assert ask(llm_for(server, backoff=0.001)) == "Hello there, friend."
    assert len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.95, "the retry came before Retry-After allowed"


def test_a_retry_after_beyond_the_budget_fails_at_once(server):
    server.script = ["429:60"]
    with pytest.raises(LLMError, match="HTTP 429.*not retried.*retry budget"):
        ask(llm_for(server, retry_budget=10.0))
    assert len(server.arrivals) == 1


def test_a_client_error_is_not_retried_and_does_not_count_against_the_server(server):
    server.script = ["400"]
    llm = llm_for(server, breaker_failures=1)
    with pytest.raises(LLMError, match="HTTP 400"):
        ask(llm)
    assert len(server.arrivals) == 1
    assert llm.breaker.state == CLOSED


def test_nothing_is_retried_once_text_has_streamed(server):
    """The words already yielded are on their way to the device: a second attempt would speak a
    different reply glued to the first."""
    server.script = ["partial"]
    llm = llm_for(server)
    received = []
    with pytest.raises(LLMError, match="overloaded mid-stream"):
        for delta in llm.stream([{"role": "user", "content": "hi"}], threading.Event()):
            received.append(delta)
    assert received == ["Hello", " there"]
    assert len(server.arrivals) == 1


def test_cancel_during_the_backoff_stops_without_another_request(server):
    server.script = ["503"]
    llm = llm_for(server, backoff=30.0, retry_budget=120.0)
    cancel = threading.Event()
    result = []
    worker = threading.Thread(target=lambda: result.append(ask(llm, cancel)))
    worker.start()
    while not server.arrivals:
        time.sleep(0.01)
    cancel.set()
    worker.join(10)
    assert not worker.is_alive() and result == [""]
    assert len(server.arrivals) == 1


# --- the circuit breaker ---------------------------------------------------------------------------------


def test_the_breaker_opens_after_n_failures_and_then_fails_fast_without_a_request(server):
    server.script = ["500"] * 3
    llm = llm_for(server, retries=0, breaker_failures=3)
    for _ in range(3):
        with pytest.raises(LLMError, match="HTTP 500"):
            ask(llm)
    assert llm.breaker.state == OPEN
    with pytest.raises(CircuitOpen, match=r"\(3 failures in a row\): circuit open, retrying in"):
        ask(llm)
    assert len(server.arrivals) == 3  # the open breaker sent nothing
    assert llm.breaker.snapshot()["rejected"] == 1


def test_retries_stop_as_soon_as_the_breaker_opens(server):
    server.script = ["500"] * 10
    llm = llm_for(server, retries=5, breaker_failures=2)
    with pytest.raises(CircuitOpen) as caught:
        ask(llm)
    assert len(server.arrivals) == 2
    assert "HTTP 500" in str(caught.value.__cause__)


def test_after_the_cool_down_one_probe_closes_the_breaker_on_success(server):
    server.script = ["500", "500"]
    llm = llm_for(server, retries=0, breaker_failures=2, breaker_cooldown=0.2)
    for _ in range(2):
        with pytest.raises(LLMError):
            ask(llm)
    assert llm.breaker.state == OPEN
    time.sleep(0.3)  # let the cool-down pass
    assert llm.breaker.state == HALF_OPEN
    assert ask(llm) == "Hello there, friend."
    assert llm.breaker.state == CLOSED and len(server.arrivals) == 3


def test_a_failed_probe_opens_the_breaker_again(server):
    server.script = ["500", "500", "503"]
    llm = llm_for(server, retries=0, breaker_failures=2, breaker_cooldown=0.2)
    for _ in range(2):
        with pytest.raises(LLMError):
            ask(llm)
    time.sleep(0.3)
    with pytest.raises(LLMError, match="HTTP 503"):
        ask(llm)
    assert llm.breaker.state == OPEN
    with pytest.raises(CircuitOpen):
        ask(llm)
    assert len(server.arrivals) == 3


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_half_open_lets_exactly_one_probe_through():
    clock = Clock()
    breaker = CircuitBreaker("svc", failure_threshold=1, cooldown=10, clock=clock)
    breaker.before_request()
    breaker.record_failure()
    with pytest.raises(CircuitOpen, match="retrying in 10.0 s"):
        breaker.before_request()
    clock.now = 10
    breaker.before_request()  # the probe
    with pytest.raises(CircuitOpen, match="probe request is in flight"):
        breaker.before_request()
    breaker.record_abandoned()  # the probe's turn was aborted: the next request may probe
    breaker.before_request()
    breaker.record_success()
    assert breaker.state == CLOSED
    breaker.before_request()


def test_successes_reset_the_count_of_consecutive_failures():
    breaker = CircuitBreaker("svc", failure_threshold=3, cooldown=10, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.times_opened == 1


def test_an_aborted_turn_frees_the_probe(server):
    """A reader that walks away mid-reply neither closes nor reopens the breaker, but must not
    leave the half-open probe slot taken forever."""
    llm = llm_for(server, breaker_failures=1, breaker_cooldown=0.0)
    llm.breaker.record_failure()
    assert llm.breaker.state == HALF_OPEN
    stream = llm.stream([{"role": "user", "content": "hi"}], threading.Event())
    assert next(stream) == "Hello"
    stream.close()
    assert ask(llm) == "Hello there, friend."
    assert llm.breaker.state == CLOSED


# --- function calling --------------------------------------------------------------------------------------
TOOLS = [{"type": "function", "function": {"name": "self_audio_speaker_set_volume", "description": "Set the volume.",
                                           "parameters": {"type": "object", "properties": {"volume": {"type": "integer"}}}}},
         {"type": "function", "function": {"name": "self_get_device_status", "description": "Status.",
                                           "parameters": {"type": "object", "properties": {}}}}]


def test_tools_are_sent_natively_and_streamed_tool_calls_are_assembled(server):
    from voice.tools.model import ToolCall

    server.script = ["tool_calls"]
    items = list(llm_for(server).stream([{"role": "user", "content": "Set the volume to thirty."}], threading.Event(), TOOLS))
    assert items == [ToolCall("call_a", "self_audio_speaker_set_volume", {"volume": 30}),
                     ToolCall("call_b", "self_get_device_status", {})]
    assert server.bodies[0]["tools"] == TOOLS and server.bodies[0]["tool_choice"] == "auto"
    ask(llm_for(server))  # without tools, none are sent
    assert "tools" not in server.bodies[1] and "tool_choice" not in server.bodies[1]


def test_broken_arguments_are_a_call_with_a_problem_not_a_crash(server):
    server.script = ["tool_calls:bad"]
    first, second = llm_for(server).stream([{"role": "user", "content": "x"}], threading.Event(), TOOLS)
    assert first.arguments == {} and "not valid JSON" in first.problem
    assert second.arguments == {} and not second.problem


async def test_a_whole_tool_turn_through_the_openai_provider(server):
    """The loop against the local fake of the API: tool calls, the device's answers, then words."""
    from voice.pipeline.tool_loop import ToolLoop
    from voice.tests.test_mcp import Device
    from voice.tools.toolset import Toolset

    server.script = ["tool_calls", "ok"]
    llm = llm_for(server)
    device = Device()
    await device.client.start()
    tools = Toolset(device.client.tools, [], device_call=device.client.call)

    async def stream(messages, offered):
        for item in llm.stream(messages, threading.Event(), offered):
            yield item

    loop = ToolLoop(tools, stream)
    reply = "".join([d async for d in loop.reply([{"role": "user", "content": "Set the volume to thirty."}])])
    assert reply == "Hello there, friend."
    assert device.volume == 30 and [s.name for s in loop.steps] == ["self.audio_speaker.set_volume", "self.get_device_status"]
    second = server.bodies[1]["messages"]
    assert second[1]["role"] == "assistant" and [c["id"] for c in second[1]["tool_calls"]] == ["call_a", "call_b"]
    assert second[1]["tool_calls"][0]["function"]["arguments"] == '{"volume": 30}'
    assert [(m["role"], m["tool_call_id"]) for m in second[2:]] == [("tool", "call_a"), ("tool", "call_b")]
    assert second[2]["content"] == "true"
