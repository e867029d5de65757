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
        for kind in ("asr", "llm", "tts", "vllm"):
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


def _emotion_choices() -> list[tuple[str, str]]:
    from voice.protocol import EMOTIONS

    names = sorted(set(EMOTIONS.values()))
    return [(name, name) for name in names]


class AlertForm(forms.Form):
    """The firmware shows an alert only with all three strings: each is required here."""

    status = forms.CharField(max_length=100, help_text="Shown as the status line, e.g. \"Notice\".")
    message = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}),
                              help_text="The text the device shows.")
    emotion = forms.ChoiceField(choices=_emotion_choices, initial="neutral", help_text="The face the device shows.")


class ToolCallForm(forms.Form):
    """One of the tools the device's live connection listed, with JSON arguments."""

    tool = forms.ChoiceField(choices=())
    arguments = forms.CharField(
        initial="{}", required=False, widget=forms.Textarea(attrs={"rows": 4, "class": "vLargeTextField"}),
        help_text='A JSON object, e.g. {"volume": 30}.')

    def __init__(self, *args, tools: list[dict] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tool"].choices = [(t["name"], t["name"]) for t in tools]

    def clean_arguments(self) -> dict:
        from devices.device_commands import parse_arguments

        try:
            return parse_arguments(self.cleaned_data.get("arguments", ""))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


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
