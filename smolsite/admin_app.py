"""Django admin with the site's own AdminSite (accounts.signin.ThrottledAdminSite: failed sign-ins
throttled like the site's), through the admin's documented ``default_site``: ``admin.site`` and
every ``@admin.register`` stay as they are."""
from django.contrib.admin.apps import AdminConfig


class SmolsiteAdminConfig(AdminConfig):
    default_site = "accounts.signin.ThrottledAdminSite"
