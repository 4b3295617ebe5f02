import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smolsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from batches.uploads import UploadCap  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from smolsite.nul_guard import NulCookieGuard  # noqa: E402
from smolsite.startup import start_services  # noqa: E402
# The URLconf now, not at the first request: a plugin whose routes collide with the site's
# refuses the start (smolsite.plugin_routes) instead of every request failing.
import smolsite.urls  # noqa: E402,F401

application = ProtocolTypeRouter(
    {
        # Static files are served by the app itself, through WhiteNoise (smolsite.staticfiles).
        # Upload size limits before Django spools the body (batches.uploads).
        "http": UploadCap(django_asgi_app),
        # A cookie with a NUL in it never reaches the session lookup (smolsite.nul_guard).
        "websocket": AllowedHostsOriginValidator(
            NulCookieGuard(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)

# Tests start workers themselves; a served process starts its reaper (and, embedded, its worker).
if not hasattr(sys, "_called_from_test"):
    start_services()
