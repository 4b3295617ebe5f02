from django.apps import AppConfig


class SmolsiteConfig(AppConfig):
    """The site as an app, for what belongs to no one app: the deploy checks (`manage.py check
    --deploy`, smolsite.checks)."""
    name = "smolsite"
    verbose_name = "smolsite"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
