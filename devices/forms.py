from django import forms
from django.core.validators import MaxLengthValidator

from devices.models import AgentConfig, Device


class BindActivationCodeForm(forms.Form):
    code = forms.RegexField(
        regex=r"^\d{6}$",
        max_length=6,
        label="Activation code",
        help_text="The 6 digits the device shows or speaks.",
        error_messages={"invalid": "An activation code is 6 digits."},
        widget=forms.TextInput(attrs={"autofocus": True, "inputmode": "numeric", "autocomplete": "off"}),
    )
    agent = forms.ModelChoiceField(
        AgentConfig.objects.all(),
        required=False,
        empty_label="(the default agent)",
        help_text="Optional: the agent this device talks to.",
    )


class AgentConfigForm(forms.ModelForm):
    """The agent form refuses providers this server cannot start (a missing setting, package or
    model folder) and voices the chosen TTS cannot speak, so the mistake shows here, naming what
    to fix, rather than as an apology on a device's next turn."""

    class Meta:
        model = AgentConfig
        fields = "__all__"

    def clean(self):
        from voice.providers import registry, requirements

        cleaned = super().clean()
        for kind in ("asr", "llm", "tts"):
            field = f"{kind}_provider"
            name = cleaned.get(field)
            problem = requirements.problem(kind, name) if name else None
            if problem:
                self.add_error(field, f"Not available on this server: {problem}.")
        tts = registry.resolve("tts", cleaned.get("tts_provider"))
        voice = cleaned.get("voice")
        if tts == "edge" and voice:
            from voice.providers.tts.edge import voice_problem

            problem = voice_problem(voice, where="voice")
            if problem:
                self.add_error("voice", f"{problem}.")
        return cleaned


class DeviceForm(forms.ModelForm):
    """The device page: its memory may be edited, within the bound the server keeps it to."""

    class Meta:
        model = Device
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        from django.conf import settings

        super().__init__(*args, **kwargs)
        if "memory" in self.fields:
            limit = settings.XIAOZHI_MEMORY_MAX_CHARS
            self.fields["memory"].max_length = limit
            self.fields["memory"].validators.append(MaxLengthValidator(limit))
            self.fields["memory"].widget.attrs.update(maxlength=str(limit), rows=4)
            self.fields["memory"].help_text += f" At most {limit} characters (XIAOZHI_MEMORY_MAX_CHARS)."
