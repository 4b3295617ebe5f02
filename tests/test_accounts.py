"""The account pages are one app's (accounts/), at the paths and URL names templates, browser tests
and bookmarks use."""
import pytest
from django.urls import resolve, reverse

pytestmark = pytest.mark.nodb

PAGES = [
    ("login", (), "/accounts/login/", "accounts.signin"),
    ("logout", (), "/accounts/logout/", "django.contrib.auth.views"),
    ("signup", (), "/accounts/signup/", "accounts.signup"),
    ("account", (), "/account/", "accounts.views"),
    ("account-create-key", (), "/account/keys/", "accounts.views"),
    ("account-revoke-key", (7,), "/account/keys/7/revoke/", "accounts.views"),
    ("account-export", (), "/account/export/", "accounts.views"),
    ("account-delete", (), "/account/delete/", "accounts.views"),
]


@pytest.mark.parametrize(("name", "args", "path", "module"), PAGES, ids=[page[0] for page in PAGES])
def test_an_account_page_keeps_its_path_and_name(name, args, path, module):
    assert reverse(name, args=args) == path
    match = resolve(path)
    assert match.url_name == name and match.func.__module__ == module

