"""The admin's upstream servers. Rows marked ``from_env`` mirror SMOLSITE_UPSTREAMS (read-only in the
admin, their key never stored here); the others are edited in the admin and used at the next probe."""
from django.core.exceptions import ValidationError
from django.db import models as db

from . import config


def _check_name(value):
    if not config.NAME.match(value or ""):
        raise ValidationError("1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.")


def _check_url(value):
    try:
        config.check_base_url(value)
    except config.ConfigError as exc:
        raise ValidationError(str(exc)) from None


class UpstreamServer(db.Model):
    name = db.CharField(max_length=64, unique=True, validators=[_check_name],
                            help_text="Shown in /v1/models, /metrics and the admin's review as where a model is served.")
    base_url = db.CharField("base URL", max_length=500, validators=[_check_url],
                                help_text="The OpenAI-compatible root, e.g. http://gpu-1:8000/v1 (vLLM), "
                                          "http://host:8080/v1 (llama.cpp's server), http://host:11434/v1 (Ollama).")
    api_key = db.CharField("API key", max_length=500, blank=True, default="",
                               help_text="Sent as 'Authorization: Bearer …'. Write-only: never shown again.")
    models = db.TextField("model allowlist", blank=True, default="",
                              help_text="The upstream's model ids to serve, one per line; empty: every model it lists.")
    prefix = db.CharField(max_length=64, blank=True, default="",
                              help_text="Put before each model's name here, e.g. 'gpu/'.")
    max_concurrency = db.PositiveIntegerField(default=16, help_text="Requests sent to it at once; more wait in line.")
    connect_timeout = db.FloatField(default=5.0, help_text="Seconds.")
    read_timeout = db.FloatField(default=60.0, help_text="Seconds of silence within an answer before it is "
                                                              "given up (and the upstream counted as failing).")
    n_ctx = db.PositiveIntegerField("context", default=8192, help_text="Tokens of prompt plus answer its models take.")
    tokenizer = db.CharField(max_length=500, blank=True, default="",
                                 help_text="A GGUF file on this server whose vocabulary counts tokens when the "
                                           "upstream reports no usage (else about 4 bytes a token).")
    structured_output = db.CharField(max_length=16, blank=True, default="", choices=[
        ("", "not supported (structured output requests fail)"),
        ("grammar", "GBNF in 'grammar' (llama.cpp's server, llama-cpp-python)")])
    tools = db.BooleanField(default=True, help_text="Pass 'tools' through (OpenAI function calling).")
    enabled = db.BooleanField(default=True)
    from_env = db.BooleanField(default=False, editable=False,
                                   help_text="Configured by SMOLSITE_UPSTREAMS: read-only here.")

    class Meta:
        ordering = ["name"]
        verbose_name = "upstream server"

    def __str__(self):
        return self.name

    def as_config(self):
        data = {f: getattr(self, f) for f in config.FIELDS}
        data["models"] = self.models
        return data
