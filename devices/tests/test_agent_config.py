import pytest

from devices.models import AgentConfig, default_session_config

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def server_defaults(settings):
    settings.XIAOZHI_SYSTEM_PROMPT = "Server prompt"
    settings.XIAOZHI_ASR_PROVIDER, settings.XIAOZHI_LLM_PROVIDER = "whisper", "smollm2"
    settings.XIAOZHI_TTS_PROVIDER, settings.XIAOZHI_LLM_MODEL = "piper", ""
    settings.XIAOZHI_VLLM_PROVIDER, settings.XIAOZHI_VLLM_MODEL = "", ""


def test_without_an_agent_the_session_uses_the_server_defaults():
    assert default_session_config() == {
        "system_prompt": "Server prompt", "voice": "", "asr_provider": "whisper",
        "llm_provider": "smollm2", "tts_provider": "piper", "llm_model": "",
        "vllm_provider": "", "vllm_model": "",
        "wake_greeting": "", "memory_enabled": True,
    }


def test_blank_agent_fields_fall_back_to_the_server_defaults():
    agent = AgentConfig(name="Mixed", voice="zh_CN-huayan", tts_provider="edge", llm_model="gpt-4o-mini",
                        wake_greeting="Yes?")
    assert agent.session_config() == {
        "system_prompt": "Server prompt", "voice": "zh_CN-huayan", "asr_provider": "whisper",
        "llm_provider": "smollm2", "tts_provider": "edge", "llm_model": "gpt-4o-mini",
        "vllm_provider": "", "vllm_model": "",
        "wake_greeting": "Yes?", "memory_enabled": True,
    }


def test_the_agents_memory_switch_and_the_server_setting_decide_whether_a_session_keeps_one(settings):
    assert AgentConfig(name="Kiosk", memory_enabled=False).session_config()["memory_enabled"] is False
    settings.XIAOZHI_MEMORY_ENABLED = False
    assert default_session_config()["memory_enabled"] is False
    assert AgentConfig(name="Home").session_config()["memory_enabled"] is True


def test_only_one_agent_is_the_default():
    first = AgentConfig.objects.create(name="First", is_default=True)
    AgentConfig.objects.create(name="Second", is_default=True)
    first.refresh_from_db()
    assert not first.is_default
    assert list(AgentConfig.objects.filter(is_default=True).values_list("name", flat=True)) == ["Second"]
