"""Per-agent provider selection in the admin: every registered provider is offered, and one this
server cannot start is refused on the form, naming the setting to fix."""
import re

import pytest

from devices.models import AgentConfig
from voice.providers import registry

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/devices/agentconfig/add/"


def form(**fields):
    return {"name": "Tutor", "system_prompt": "", "voice": "", "asr_provider": "", "llm_provider": "",
            "tts_provider": "", "llm_model": "", **fields}


def offered(html, field):
    select = re.search(rf'<select name="{field}"[^>]*>(.*?)</select>', html, re.S).group(1)
    return re.findall(r'<option value="([^"]*)"', select)


def field_errors(response, field):
    return " ".join(str(e) for e in response.context["adminform"].form.errors.get(field, []))


def test_the_form_offers_exactly_the_registered_providers(admin_client):
    html = admin_client.get(ADD_URL).content.decode()
    for kind in ("asr", "llm", "tts"):
        assert offered(html, f"{kind}_provider") == ["", *registry.BUILDERS[kind]]
    assert "edge" in offered(html, "tts_provider") and "openai" in offered(html, "llm_provider")


def test_openai_without_a_server_is_refused_naming_the_setting(admin_client, settings):
    settings.XIAOZHI_LLM_BASE_URL = ""
    response = admin_client.post(ADD_URL, form(llm_provider="openai"))
    assert response.status_code == 200
    assert "XIAOZHI_LLM_BASE_URL" in field_errors(response, "llm_provider")
    assert not AgentConfig.objects.exists()


def test_openai_with_a_server_is_saved(admin_client, settings):
    settings.XIAOZHI_LLM_BASE_URL = "http://127.0.0.1:11434/v1"
    response = admin_client.post(ADD_URL, form(llm_provider="openai", llm_model="qwen2.5"))
    assert response.status_code == 302
    assert AgentConfig.objects.get().llm_provider == "openai"


def test_funasr_without_its_model_folder_is_refused_naming_the_setting(admin_client, settings):
    settings.XIAOZHI_SENSEVOICE_MODEL_DIR = ""
    response = admin_client.post(ADD_URL, form(asr_provider="funasr"))
    assert response.status_code == 200
    assert "XIAOZHI_SENSEVOICE_MODEL_DIR" in field_errors(response, "asr_provider")
    assert not AgentConfig.objects.exists()


def test_edge_with_a_malformed_server_voice_is_refused_naming_the_setting(admin_client, settings):
    settings.XIAOZHI_EDGE_TTS_VOICE = "Aria"
    response = admin_client.post(ADD_URL, form(tts_provider="edge"))
    assert "XIAOZHI_EDGE_TTS_VOICE" in field_errors(response, "tts_provider")
    assert not AgentConfig.objects.exists()


def test_edge_refuses_a_voice_it_cannot_speak_and_saves_one_it_can(admin_client, settings):
    settings.XIAOZHI_EDGE_TTS_VOICE = "en-US-AriaNeural"
    response = admin_client.post(ADD_URL, form(tts_provider="edge", voice="en_US-joe-medium"))
    assert "not an Edge voice name" in field_errors(response, "voice")
    assert not AgentConfig.objects.exists()
    response = admin_client.post(ADD_URL, form(tts_provider="edge", voice="zh-CN-XiaoxiaoNeural"))
    assert response.status_code == 302
    agent = AgentConfig.objects.get()
    assert (agent.tts_provider, agent.voice) == ("edge", "zh-CN-XiaoxiaoNeural")


def test_a_provider_that_is_not_registered_is_refused(admin_client):
    response = admin_client.post(ADD_URL, form(tts_provider="espeak"))
    assert "espeak" in field_errors(response, "tts_provider")
    assert not AgentConfig.objects.exists()


def test_server_defaults_need_no_check(admin_client, settings):
    settings.XIAOZHI_LLM_BASE_URL = ""
    response = admin_client.post(ADD_URL, form())
    assert response.status_code == 302 and AgentConfig.objects.get().llm_provider == ""
