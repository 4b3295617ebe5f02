"""The credential review of issue 16 §5, through real HTTP: API keys (only a hash stored; revoked,
expired and deactivated owners' keys refused at once) and the metrics token (only the whole token;
compared in constant time, inference.health.probe_access)."""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.utils import timezone

from api.models import ApiKey

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-credential-tests-0123"


def models_status(raw):
    return Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code


def test_a_key_works_until_revoked_expired_or_its_owner_deactivated():
    users = get_user_model().objects
    ann, bob = users.create_user("ann"), users.create_user("bob")
    key, raw = ApiKey.create_for(ann, "laptop")
    soon, soon_raw = ApiKey.create_for(ann, "soon", expires_at=timezone.now() + timedelta(days=1))
    _, bob_raw = ApiKey.create_for(bob, "bob's")
    assert models_status(raw) == models_status(soon_raw) == models_status(bob_raw) == 200
    assert raw not in str(list(ApiKey.objects.values()))  # only its hash is kept

    key.revoke()
    assert models_status(raw) == 401
    ApiKey.objects.filter(pk=soon.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert models_status(soon_raw) == 401
    users.filter(pk=bob.pk).update(is_active=False)
    assert models_status(bob_raw) == 401


@override_settings(SMOLSITE_METRICS_TOKEN=TOKEN)
def test_the_metrics_token_is_only_accepted_whole():
    def status(token):
        return Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code

    assert status(TOKEN) == 200
    for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "X", TOKEN.upper(), "x" * len(TOKEN), "é" * 3):
        assert status(wrong) == 401, wrong
