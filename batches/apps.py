from django.apps import AppConfig


def _account_closing(sender, user, **kwargs):
    from .service import cancel_all_of

    cancel_all_of(user)


class BatchesConfig(AppConfig):
    name = "batches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # chat sits below batches (docs/architecture.md, Layers): batches plugs its parts into
        # chat's retention pass and account deletion rather than chat importing batches. In ready():
        # Django imports this module while it loads the apps, before chat's models may be imported.
        from chat import retention as chat_retention
        from chat.signals import account_closing

        from . import retention

        chat_retention.register(run=retention.run_pass, busy_conversations=retention.busy_conversations)
        account_closing.connect(_account_closing, dispatch_uid="batches.cancel_all_of")
