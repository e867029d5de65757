"""Devices, the agent configuration they talk to, their connections and their conversation turns."""
from __future__ import annotations

from django.conf import settings
from django.db import models, transaction


# The choices come from the provider registry, so every registered provider is offered and none
# that is not. Callables: a new provider needs no migration.
def _provider_choices(kind: str) -> list[tuple[str, str]]:
    from voice.providers import registry

    return [("", "Server default")] + [(name, registry.label(name)) for name in registry.names(kind)]


def asr_choices() -> list[tuple[str, str]]:
    return _provider_choices("asr")


def llm_choices() -> list[tuple[str, str]]:
    return _provider_choices("llm")


def tts_choices() -> list[tuple[str, str]]:
    return _provider_choices("tts")


def vllm_choices() -> list[tuple[str, str]]:
    from voice.providers import registry

    return [*_provider_choices("vllm")[:1], (registry.NONE, "None (no vision)"), *_provider_choices("vllm")[1:]]


def default_session_config(agent: AgentConfig | None = None) -> dict:
    """What a voice session uses; blank agent fields fall back to the server-wide settings."""
    from voice.providers import registry

    return {
        "system_prompt": (agent and agent.system_prompt) or settings.XIAOZHI_SYSTEM_PROMPT,
        "voice": (agent and agent.voice) or "",
        "asr_provider": registry.resolve("asr", agent and agent.asr_provider),
        "llm_provider": registry.resolve("llm", agent and agent.llm_provider),
        "tts_provider": registry.resolve("tts", agent and agent.tts_provider),
        "llm_model": (agent and agent.llm_model) or settings.XIAOZHI_LLM_MODEL,
        # "" = no vision for this agent (none on the server, or the agent chose none)
        "vllm_provider": registry.resolve("vllm", agent and agent.vllm_provider),
        "vllm_model": (agent and agent.vllm_model) or settings.XIAOZHI_VLLM_MODEL,
        "wake_greeting": (agent and agent.wake_greeting) or "",
        "memory_enabled": agent.memory_enabled if agent else settings.XIAOZHI_MEMORY_ENABLED,
    }


class AgentConfig(models.Model):
    """A persona: prompt, voice and providers. Blank fields mean "use the server default"."""

    name = models.CharField(max_length=100, unique=True)
    system_prompt = models.TextField(blank=True, help_text="Blank = the server's XIAOZHI_SYSTEM_PROMPT.")
    voice = models.CharField(
        max_length=100, blank=True, help_text="TTS voice, e.g. zh-CN-XiaoxiaoNeural for Edge (Piper has one voice); blank = the provider's default.",
    )
    asr_provider = models.CharField(max_length=20, blank=True, choices=asr_choices)
    llm_provider = models.CharField(max_length=20, blank=True, choices=llm_choices)
    tts_provider = models.CharField(max_length=20, blank=True, choices=tts_choices)
    llm_model = models.CharField(max_length=200, blank=True, help_text="Blank = the server's XIAOZHI_LLM_MODEL.")
    vllm_provider = models.CharField(
        "vision provider", max_length=20, blank=True, choices=vllm_choices,
        help_text="Answers the camera tool's photo questions. Server default = XIAOZHI_VLLM_PROVIDER (blank there: none).")
    vllm_model = models.CharField("vision model", max_length=200, blank=True,
                                  help_text="Blank = the server's XIAOZHI_VLLM_MODEL.")
    wake_greeting = models.CharField(
        max_length=200, blank=True,
        help_text="Said when the device hears its wake word, e.g. \"Yes?\" (synthesised once, then replayed); "
                  "blank = no greeting.")
    is_default = models.BooleanField(default=False, help_text="Used by devices that have no agent of their own.")
    memory_enabled = models.BooleanField(
        default=True, help_text="Keep a short memory of what the user says about themselves (per device, shown on "
        "the device page) and give it to the next session. Turn off for shared or public devices.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        # Only one default agent, or which one a device gets would depend on query order.
        with transaction.atomic():
            if self.is_default:
                AgentConfig.objects.filter(is_default=True).exclude(pk=self.pk).update(is_default=False)
            super().save(*args, **kwargs)

    def session_config(self) -> dict:
        return default_session_config(self)


class Device(models.Model):
    device_id = models.CharField(max_length=64, unique=True, help_text="MAC address, lower case with ':'.")
    client_id = models.CharField(max_length=128, blank=True)
    # The Client-Id the device was bound to when activated (with activation off: the first one seen).
    # Tokens and sessions go to that Client-Id only; the admin's "Reset binding" action clears it.
    bound_client_id = models.CharField(max_length=128, blank=True)
    bound_at = models.DateTimeField(null=True, blank=True)
    board = models.CharField(max_length=100, blank=True)
    firmware_version = models.CharField(max_length=64, blank=True)
    activated = models.BooleanField(default=False)
    activation_code = models.CharField(max_length=6, blank=True, db_index=True)
    activation_code_expires_at = models.DateTimeField(null=True, blank=True)
    agent = models.ForeignKey(AgentConfig, null=True, blank=True, on_delete=models.SET_NULL, related_name="devices")
    online = models.BooleanField(default=False, db_index=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Bounded by XIAOZHI_MEMORY_MAX_CHARS where it is written (voice/memory.py, the admin form).
    memory = models.TextField(
        blank=True, help_text="What the user said about themselves, given to the next session's system prompt "
        "(kept by the server when the agent's memory is on; edit or clear it here).")
    memory_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["device_id"]

    def __str__(self) -> str:
        return self.device_id


class DeviceSession(models.Model):
    """One WebSocket connection, kept so overlapping reconnects can be told apart."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="sessions")
    session_id = models.UUIDField(unique=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    remote_addr = models.CharField(max_length=64, blank=True)
    protocol_version = models.PositiveSmallIntegerField(default=1)
    close_reason = models.CharField(max_length=200, blank=True)
    # The server process holding the socket (devices/session_owner.py): a row whose owner died is closed
    # at the next start on its host, or once its heartbeat is older than 3 periods (any host).
    server_host = models.CharField(max_length=255, blank=True)
    server_pid = models.PositiveIntegerField(null=True, blank=True)
    server_started_at = models.FloatField(null=True, blank=True, help_text="The owner process's start (epoch s).")
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["device", "ended_at"], name="devices_session_open_idx")]

    def __str__(self) -> str:
        return str(self.session_id)


class Turn(models.Model):
    """One user utterance and its reply, with latency marks in ms after the end of speech."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="turns")
    session = models.ForeignKey(DeviceSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="turns")
    user_text = models.TextField(blank=True)
    reply_text = models.TextField(blank=True)
    error = models.CharField(max_length=255, blank=True)
    interrupted = models.BooleanField(
        default=False, help_text="The reply was cut short (abort, barge-in); the reply text is what was played.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    speech_end_at = models.DateTimeField(null=True, blank=True)
    asr_done_ms = models.FloatField(null=True, blank=True)
    llm_first_token_ms = models.FloatField(null=True, blank=True)
    first_sentence_ms = models.FloatField(null=True, blank=True)
    tts_first_audio_ms = models.FloatField(null=True, blank=True)
    first_audio_sent_ms = models.FloatField(null=True, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    tool_calls = models.JSONField(
        default=list, blank=True,
        help_text="The tools the reply called, in order: name, arguments, result, is_error, seconds.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.device} @ {self.created_at:%Y-%m-%d %H:%M:%S}" if self.created_at else str(self.device)


class VisionQuery(models.Model):
    """One photo question from a device's camera tool (POST /xiaozhi/vision/) and what it was told.
    The photo itself is kept only with XIAOZHI_VISION_KEEP_IMAGES, bounded by the upload limit."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="vision_queries")
    session = models.ForeignKey(DeviceSession, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="vision_queries", help_text="The device's open connection when it asked.")
    turn = models.ForeignKey(Turn, null=True, blank=True, on_delete=models.SET_NULL, related_name="vision_queries",
                             help_text="The turn whose tool call took the photo (set when that turn is recorded).")
    asked_at = models.DateTimeField(db_index=True, help_text="When the checked upload was put to the vision service.")
    question = models.TextField()
    answer = models.TextField(blank=True, help_text="The text handed back to the device (a busy notice or apology on failure).")
    error = models.CharField(max_length=255, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    model = models.CharField(max_length=200, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="From the upload's arrival to the answer.")
    image_bytes = models.PositiveIntegerField(default=0)
    image_type = models.CharField(max_length=20, blank=True)
    image = models.BinaryField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-asked_at"]
        verbose_name = "photo question"

    def __str__(self) -> str:
        return f"{self.device} @ {self.asked_at:%Y-%m-%d %H:%M:%S}" if self.asked_at else str(self.device)
