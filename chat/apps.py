from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # In ready(), not at the top: Django imports this module while it loads the apps, before
        # any model may be imported, and usage.quotas and chat.models define or read models.
        from usage import quotas

        from .models import generations_in_flight

        quotas.count_in_flight_with(generations_in_flight)  # usage sits below chat: it never imports it
