from django.apps import AppConfig


class VoiceConfig(AppConfig):
    name = "voice"
    verbose_name = "Voice pipeline"

    def ready(self):
        from voice import checks  # noqa: F401  (registers the start-up checks)
