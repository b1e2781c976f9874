"""Legacy token vs personal access token: detection, exchange, expiry, 401 handling."""

import time

import pytest

from backend.service.ls_auth import LabelStudioAuth, LabelStudioAuthError, classify_api_key, decode_jwt_payload

from .conftest import LEGACY_TOKEN, make_jwt, make_pat


def test_classify_api_keys():
    assert classify_api_key(LEGACY_TOKEN) == "legacy"
    assert classify_api_key(make_pat()) == "pat"
    assert classify_api_key(make_jwt({"token_type": "access", "exp": 1})) == "access"
    assert classify_api_key("a.b.c") == "legacy"  # three parts, but not base64 JSON
    assert decode_jwt_payload(make_jwt({"x": 1})) == {"x": 1}
    assert decode_jwt_payload("not-a-jwt") is None


def test_legacy_token_is_sent_as_token_header():
    auth = LabelStudioAuth("http://ls.invalid", LEGACY_TOKEN)
    assert auth.headers() == {"Authorization": f"Token {LEGACY_TOKEN}"}
    assert auth.invalidate() is False  # nothing to refresh
    assert LEGACY_TOKEN not in repr(auth)


def test_pat_is_exchanged_and_access_token_reused_until_expiry(fake_ls):
    now = [time.time()]
    auth = LabelStudioAuth(fake_ls.url, fake_ls.state.pat, clock=lambda: now[0])
    first = auth.headers()["Authorization"]
    assert first.startswith("Bearer ") and first != f"Bearer {fake_ls.state.pat}"
    assert fake_ls.state.refresh_calls == 1
    assert auth.headers()["Authorization"] == first  # cached
    assert fake_ls.state.refresh_calls == 1
    now[0] += 290  # within 30 s of the 300 s lifetime: refreshed before it dies
    second = auth.headers()["Authorization"]
    assert fake_ls.state.refresh_calls == 2 and second != first


def test_invalidate_forces_a_new_exchange(fake_ls):
    auth = LabelStudioAuth(fake_ls.url, fake_ls.state.pat)
    auth.headers()
    assert auth.invalidate() is True
    auth.headers()
    assert fake_ls.state.refresh_calls == 2


def test_rejected_pat_explains_what_to_do(fake_ls):
    auth = LabelStudioAuth(fake_ls.url, make_pat("another"))  # not the server's PAT
    with pytest.raises(LabelStudioAuthError, match="rejected the personal access token"):
        auth.headers()


def test_unreachable_label_studio_is_reported():
    auth = LabelStudioAuth("http://127.0.0.1:9", make_pat(), timeout_s=2)
    with pytest.raises(LabelStudioAuthError, match="could not reach"):
        auth.headers()


def test_empty_key_is_rejected():
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioAuth("http://x", "")
