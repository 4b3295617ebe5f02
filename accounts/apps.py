from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The account pages: sign-up, sign-in (the site's and the admin's, throttled), the account
    page with its API keys and usage, the export of a user's data and the deletion of an account.
    It owns no models: it works on auth's users, api's keys, chat's conversations and usage's
    records."""
    name = "accounts"
    verbose_name = "Accounts"
