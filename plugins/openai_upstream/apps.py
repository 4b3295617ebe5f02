from django.apps import AppConfig


class OpenAIUpstreamConfig(AppConfig):
    name = "plugins.openai_upstream"
    label = "openai_upstream"
    verbose_name = "Upstream servers (OpenAI-compatible engines)"
    default_auto_field = "django.db.models.BigAutoField"
