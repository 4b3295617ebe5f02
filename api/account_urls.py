from django.urls import path

from . import account

urlpatterns = [
    path("account/", account.account, name="account"),
    path("account/keys/", account.create_key, name="account-create-key"),
    path("account/keys/<int:pk>/revoke/", account.revoke_key, name="account-revoke-key"),
]
