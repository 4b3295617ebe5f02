"""The account pages, outside any namespace so LOGIN_URL="login" resolves."""
from django.contrib.auth import views as auth_views
from django.urls import path

from . import signin, signup, views

urlpatterns = [
    path("accounts/login/", signin.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", signup.signup, name="signup"),
    path("account/", views.account, name="account"),
    path("account/keys/", views.create_key, name="account-create-key"),
    path("account/keys/<int:pk>/revoke/", views.revoke_key, name="account-revoke-key"),
    path("account/export/", views.export_data, name="account-export"),
    path("account/delete/", views.delete_account, name="account-delete"),
]
