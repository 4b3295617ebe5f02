"""Forms for the chat pages: per-conversation settings, model, rename."""
from django import forms
from django.conf import settings

from inference.model_configs import UnknownModel, all_models, get_model

from .models import Conversation


def model_choices():
    return [(m.name, m.name) for m in all_models()]


class ModelForm(forms.Form):
    model = forms.ChoiceField(choices=model_choices)


def tool_choices():
    from .agent import available_tools

    return [(name, name) for name in available_tools()]


class SettingsForm(forms.ModelForm):
    """Sampling settings; the thinking toggle exists only for models that can think, the Tools
    section only where the server has tools."""

    tools = forms.MultipleChoiceField(
        choices=tool_choices, required=False, widget=forms.CheckboxSelectMultiple, label="Tools",
        help_text="The model may call the ones ticked; the server runs them and the model reads the results. "
                  "None ticked: tools off.")

    class Meta:
        model = Conversation
        fields = ["system_prompt", "temperature", "top_p", "max_tokens", "thinking", "tools", "tool_choice",
                  "tools_ask"]
        labels = {"top_p": "Top p", "max_tokens": "Max tokens", "thinking": "Think before answering",
                  "tool_choice": "Call a tool", "tools_ask": "Ask before running"}
        help_texts = {
            "system_prompt": "Instructions the model sees before every turn of this chat.",
            "temperature": "0 answers the same way every time; higher values vary more (0 to 2).",
            "top_p": "Sample only from the most likely tokens that add up to this probability (above 0, up to 1).",
            "max_tokens": "The longest answer, in tokens.",
            "tools_ask": "Each call waits in the chat for your Approve or Deny.",
        }
        widgets = {
            "system_prompt": forms.Textarea(attrs={"rows": 4, "placeholder": "You are a helpful assistant."}),
            "temperature": forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "2"}),
            "top_p": forms.NumberInput(attrs={"step": "0.01", "min": "0", "max": "1"}),
            "max_tokens": forms.NumberInput(attrs={"step": "1", "min": "1"}),
        }

    def __init__(self, *args, features=(), **kwargs):
        super().__init__(*args, **kwargs)
        if "thinking" not in features:
            del self.fields["thinking"]
        if not self.fields["tools"].choices:
            for name in ("tools", "tool_choice", "tools_ask"):
                del self.fields[name]
        else:
            self.fields["tool_choice"].required = False  # a form without it (no tools ticked) keeps "auto"
        self.fields["max_tokens"].widget.attrs["max"] = str(self.context_limit())

    def context_limit(self):
        try:
            return get_model(self.instance.model).n_ctx
        except UnknownModel:
            return 8192

    def clean_tool_choice(self):
        return self.cleaned_data.get("tool_choice") or "auto"

    def clean_system_prompt(self):
        text = self.cleaned_data["system_prompt"].strip()
        limit = settings.SMOLSITE_MAX_MESSAGE_CHARS
        if len(text) > limit:
            raise forms.ValidationError(f"The system prompt is {len(text):,} characters; the limit is {limit:,}.")
        return text

    def clean_temperature(self):
        value = self.cleaned_data["temperature"]
        if not 0 <= value <= 2:
            raise forms.ValidationError("Temperature must be between 0 and 2.")
        return value

    def clean_top_p(self):
        value = self.cleaned_data["top_p"]
        if not 0 < value <= 1:
            raise forms.ValidationError("Top p must be above 0 and at most 1.")
        return value

    def clean_max_tokens(self):
        value = self.cleaned_data["max_tokens"]
        limit = self.context_limit()
        if not 1 <= value <= limit:
            raise forms.ValidationError(f"Max tokens must be between 1 and {limit:,} (this model's context).")
        return value


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)
