from django import forms

from devices.models import AgentConfig


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
