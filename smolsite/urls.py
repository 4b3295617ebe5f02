from django.contrib import admin
from django.urls import include, path

from inference import health
from inference.plugins import get_plugin_manager
from smolsite.plugin_routes import mount as mount_plugin_routes

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("batches.api_urls")),  # before api.urls' catch-all for /v1/
    path("", include("api.urls")),
    path("", include("accounts.urls")),
    path("", include("batches.urls")),
    path("", include("chat.urls")),
]
# Plugins mount their own pages (e.g. the metrics plugin's /metrics) after ours: one that would
# answer a path of ours (/admin/, /accounts/login/, ...) refuses the start (smolsite.plugin_routes).
mount_plugin_routes(urlpatterns, get_plugin_manager())

# JSON errors under /v1/ (the API never answers with an HTML page), Django's pages elsewhere.
handler400 = "api.errors.handler400"
handler403 = "api.errors.handler403"
handler404 = "api.errors.handler404"
handler500 = "api.errors.handler500"
