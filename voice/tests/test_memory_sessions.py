"""Memory across reconnects, spoken over the real ASGI app: session 1 says who the user is, the
device disconnects, the memory is stored; session 2's system prompt carries it. On the bundled
models end to end (SmolLM2 answers "What is my name?"), and on the OpenAI-compatible provider
against a local fake server at the remote boundary (which records each request)."""
import http.server
import json
import os
import re
import threading

import pytest

from devices.models import AgentConfig, Device
from voice import memory
from voice.providers import registry

pytestmark = [pytest.mark.models, pytest.mark.django_db(transaction=True)]

INTRODUCTION = "My name is Ana and I love jazz."
QUESTION = "What is my name?"
FAKE_MEMORY = "The user is called Ana and loves jazz music."
llm_in_this_process = pytest.mark.skipif(
    os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery",
    reason="the LLM then runs in a Celery worker: this test can neither point it at its server nor see its requests",
)


async def stored_memory(device_id: str) -> str:
    assert await memory.updates().drain(60), "the memory update did not finish"
    return (await Device.objects.aget(device_id=device_id)).memory


def heard_name(stt: str) -> str:
    """The name as the ASR wrote it: spoken "Ana" and "Anna" sound the same (Whisper writes Anna)."""
    match = re.search(r"my name is (\w+)", stt, re.I)
    assert match and match.group(1).lower() in ("ana", "anna"), stt
    return match.group(1)


CELERY = os.environ.get("XIAOZHI_WORKER_BACKEND") == "celery"


@pytest.fixture
def bundled_llm_requests(monkeypatch):
    """The messages each request to the bundled SmolLM2 carried (the real model still answers);
    None under Celery, where the model runs in a worker process."""
    if CELERY:
        return None
    llm = registry.get_llm("smollm2")
    seen, real = [], llm.stream

    def stream(messages, cancel, model=None):
        seen.append(list(messages))
        return real(messages, cancel, model)

    monkeypatch.setattr(llm, "stream", stream)
    return seen


CLIENT_ID = "memory-test-client"  # the same board reconnecting: bound to its first Client-Id


async def test_the_bundled_default_remembers_the_user_across_a_reconnect(connect_device, say, bundled_llm_requests):
    """The memory is extracted and handed to the next session's prompt every time. Whether SmolLM2
    then answers with the name is left to benchmarks/memory_recall.py: it does in 7-9 of 10 trials,
    and gives it as the user's name (not its own) in 2-4, too unreliable to assert here."""
    device_id = "aa:bb:cc:00:00:01"
    first = await connect_device(device_id, client_id=CLIENT_ID)
    result = await first.turn(say(INTRODUCTION), mode="manual")
    assert result.stopped
    name = heard_name(result.stt)
    await first.close()
    remembered = await stored_memory(device_id)
    liked = re.search(r"i love ([\w ]+)", result.stt, re.I).group(1)  # "jazz"; Whisper has also written "Jess"
    assert remembered == f"The user's name is {name}. The user loves {liked}."

    second = await connect_device(device_id, client_id=CLIENT_ID)
    result = await second.turn(say(QUESTION), mode="manual")
    assert "name" in result.stt.lower() and result.stopped and result.sentences
    await second.close()
    if bundled_llm_requests is not None:
        first_prompt, second_prompt = bundled_llm_requests[0][0], bundled_llm_requests[-1][0]
        assert second_prompt == {"role": "system", "content": f"{first_prompt['content']} {remembered}"}
        assert bundled_llm_requests[-1][-1]["content"] == result.stt
    assert await stored_memory(device_id) == remembered  # a question adds nothing


class RemoteChat(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server: a memory request (its system prompt is the summary instructions)
    is answered with FAKE_MEMORY, any other with a short reply; every request body is kept."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
        summary = body["messages"][0]["content"].startswith("You keep a short memory")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in (FAKE_MEMORY if summary else "Hello there, nice to talk to you.").split(" "):
            chunk = {"choices": [{"delta": {"content": word + " "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def remote_llm(settings):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RemoteChat)
    httpd.daemon_threads = True
    httpd.lock, httpd.bodies = threading.Lock(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    settings.XIAOZHI_LLM_BASE_URL = f"http://127.0.0.1:{httpd.server_port}/v1"
    registry.forget("llm", "openai")
    yield httpd
    registry.forget("llm", "openai")
    httpd.shutdown()
    httpd.server_close()


def chats(server):
    return [b for b in server.bodies if not b["messages"][0]["content"].startswith("You keep a short memory")]


def summaries(server):
    return [b for b in server.bodies if b["messages"][0]["content"].startswith("You keep a short memory")]


@llm_in_this_process
async def test_the_openai_provider_summarises_and_the_next_session_is_told(connect_device, say, remote_llm):
    await AgentConfig.objects.acreate(name="remote", llm_provider="openai", llm_model="chat-model", is_default=True)
    device_id = "aa:bb:cc:00:00:02"
    first = await connect_device(device_id, client_id=CLIENT_ID)
    result = await first.turn(say(INTRODUCTION), mode="manual")
    assert result.stopped
    first_prompt = chats(remote_llm)[0]["messages"][0]["content"]
    await first.close()
    assert await stored_memory(device_id) == FAKE_MEMORY
    (summary,) = summaries(remote_llm)
    assert summary["model"] == "chat-model"
    asked = summary["messages"][1]["content"]
    assert "Old memory: (empty)" in asked and f"User: {result.stt}" in asked and heard_name(result.stt)

    second = await connect_device(device_id, client_id=CLIENT_ID)
    result = await second.turn(say(QUESTION), mode="manual")
    assert result.stopped
    await second.close()
    prompt = chats(remote_llm)[-1]["messages"][0]["content"]
    assert prompt == memory.prompt_with_memory(first_prompt, FAKE_MEMORY)
    assert await stored_memory(device_id) == FAKE_MEMORY
    old_memory_sent = summaries(remote_llm)[-1]["messages"][1]["content"]
    assert f"Old memory: {FAKE_MEMORY}" in old_memory_sent


@llm_in_this_process
async def test_an_agent_with_memory_off_neither_keeps_nor_tells_it(connect_device, say, remote_llm):
    agent = await AgentConfig.objects.acreate(name="kiosk", llm_provider="openai", memory_enabled=False)
    device_id = "aa:bb:cc:00:00:03"
    await Device.objects.acreate(device_id=device_id, activated=True, agent=agent, memory="The user's name is Bob.")
    device = await connect_device(device_id, client_id=CLIENT_ID)
    result = await device.turn(say(INTRODUCTION), mode="manual")
    assert result.stopped
    await device.close()
    assert await stored_memory(device_id) == "The user's name is Bob."
    assert summaries(remote_llm) == []
    assert "Bob" not in chats(remote_llm)[0]["messages"][0]["content"]


async def test_a_long_session_updates_the_memory_every_n_turns_before_it_ends(connect_device, say, settings):
    settings.XIAOZHI_MEMORY_EVERY_TURNS = 1
    device_id = "aa:bb:cc:00:00:04"
    device = await connect_device(device_id, client_id=CLIENT_ID)
    result = await device.turn(say(INTRODUCTION), mode="manual")
    assert result.stopped
    name = heard_name(result.stt)
    assert f"The user's name is {name}." in await stored_memory(device_id)  # still connected
    assert device.close_code is None
    await device.close()
