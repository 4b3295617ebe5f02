"""System checks for deployments (`manage.py check --deploy`)."""
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

BOOTSTRAP_MODES = ("signup", "createsuperuser")


@register(Tags.security)
def admin_bootstrap_mode(app_configs, **kwargs):
    mode = getattr(settings, "SMOLSITE_ADMIN_BOOTSTRAP", "signup")
    if mode not in BOOTSTRAP_MODES:
        return [Error(f"SMOLSITE_ADMIN_BOOTSTRAP is {mode!r}; it must be one of {', '.join(BOOTSTRAP_MODES)}.",
                      id="smolsite.E001")]
    return []


@register(Tags.security, deploy=True)
def admin_bootstrap_deploy(app_configs, **kwargs):
    mode = getattr(settings, "SMOLSITE_ADMIN_BOOTSTRAP", "signup")
    if mode == "signup" and settings.SMOLSITE_SIGNUP_OPEN:
        return [Warning(
            "Sign-up is open and the first account signed up becomes the administrator: on a public "
            "server, whoever finds it first owns it.",
            hint="Set SMOLSITE_ADMIN_BOOTSTRAP=createsuperuser (sign-up stays closed until an administrator "
                 "exists; create one with `manage.py createsuperuser`), or SMOLSITE_SIGNUP_OPEN=0.",
            id="smolsite.W001")]
    return []
