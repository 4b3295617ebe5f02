"""Account pages, outside the chat namespace so LOGIN_URL="login" resolves."""
from django.contrib.auth import views as auth_views
from django.urls import path

from . import account_data, accounts

urlpatterns = [
    path("accounts/login/", accounts.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("account/export/", account_data.export_data, name="account-export"),
    path("account/delete/", account_data.delete_account, name="account-delete"),
]
