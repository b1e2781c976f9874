import base64
import json

import httpx
import pytest
from label_studio_sdk import LabelStudio

from plugin.connection import (
    ConnectionSettings,
    LabelStudioConnection,
    describe_key,
    error_text,
    jwt_claims,
    unauthorized_hint,
)
from plugin.errors import PluginError

URL = "http://ls.test:8080"
LEGACY = "0123456789abcdef0123456789abcdef01234567"


def fake_jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


PAT = fake_jwt({"token_type": "refresh", "exp": 8102507055, "user_id": "1"})  # the shape Label Studio issues
ACCESS = fake_jwt({"token_type": "access", "exp": 8102507055, "user_id": "1"})


def connect(handler, api_key=LEGACY) -> LabelStudioConnection:
    client = LabelStudio(
        base_url=URL, api_key=api_key, httpx_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    return LabelStudioConnection(ConnectionSettings(url=URL, api_key=api_key), client=client)


def test_settings_from_environment():
    settings = ConnectionSettings.from_environment(
        {"LABEL_STUDIO_URL": "http://h:8080/", "LABEL_STUDIO_API_KEY": " k "}
    )
    assert (settings.url, settings.api_key) == ("http://h:8080", "k")
    with pytest.raises(PluginError, match="set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        ConnectionSettings.from_environment({})
    with pytest.raises(PluginError, match="not an http"):
        ConnectionSettings(url="localhost:8080", api_key="k")


def test_key_kinds():
    assert jwt_claims(LEGACY) is None
    assert jwt_claims(PAT)["token_type"] == "refresh"
    assert [describe_key(key) for key in (LEGACY, PAT, ACCESS)] == [
        "legacy token",
        "personal access token",
        "access token",
    ]
    assert "legacy_api_tokens_enabled" in unauthorized_hint(LEGACY)
    assert "Personal Access Token" in unauthorized_hint(PAT)
    assert "short-lived" in unauthorized_hint(ACCESS)


def test_verify_reports_an_unreachable_server():
    def refuse(request):
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(PluginError, match=f"cannot reach Label Studio at {URL}"):
        connect(refuse).verify()


def test_verify_turns_401_into_a_hint_and_returns_the_user():
    def handler(request):
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "UP"})
        if request.headers["Authorization"] == f"Token {LEGACY}":
            return httpx.Response(200, json={"id": 1, "email": "a@example.com", "username": ""})
        return httpx.Response(401, json={"detail": "Invalid token."})

    assert connect(handler).verify() == "a@example.com"
    with pytest.raises(PluginError, match=r"\(401\), read as a legacy token"):
        connect(handler, api_key="f" * 40).verify()


def test_a_pat_is_exchanged_for_an_access_token():
    seen = []

    def handler(request):
        seen.append((request.url.path, request.headers.get("Authorization")))
        if request.url.path == "/api/token/refresh/":
            assert json.loads(request.content) == {"refresh": PAT}
            return httpx.Response(200, json={"access": ACCESS})
        return httpx.Response(200, content=b"png")

    assert connect(handler, api_key=PAT).download("/data/upload/1/x.png") == b"png"
    assert seen == [("/api/token/refresh/", None), ("/data/upload/1/x.png", f"Bearer {ACCESS}")]


def test_downloads_send_credentials_only_to_label_studio():
    seen = {}

    def handler(request):
        seen[str(request.url)] = request.headers.get("Authorization")
        return httpx.Response(200, content=b"img")

    connection = connect(handler)
    connection.download("/data/upload/1/a.png")
    connection.download("https://images.example.com/b.png")
    assert seen == {f"{URL}/data/upload/1/a.png": f"Token {LEGACY}", "https://images.example.com/b.png": None}


def test_upload_files_posts_multipart_and_returns_task_ids(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for path in paths:
        path.write_bytes(path.name.encode())
    requests = []

    def handler(request):
        requests.append(request)
        return httpx.Response(201, json={"task_count": 2, "task_ids": [11, 12]})

    assert connect(handler).upload_files(4, paths) == [11, 12]
    (request,) = requests
    assert request.url.path == "/api/projects/4/import"
    assert request.url.params["return_task_ids"] == "true"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    body = request.content
    assert b'filename="a.png"' in body and b"Content-Type: image/png" in body
    assert b'filename="b.jpg"' in body and b"Content-Type: image/jpeg" in body


def test_error_text():
    body = {
        "detail": "Validation error",
        "validation_errors": {"non_field_errors": ["Can't connect. <a href='x'>Learn</a>"], "title": ["too short"]},
    }
    assert error_text(body) == "Can't connect. Learn; title: too short"
    assert error_text({"detail": "Not found."}) == "Not found."
    assert error_text("plain") == "plain"


def test_an_expired_pat_is_reported_before_any_request():
    expired = fake_jwt({"token_type": "refresh", "exp": 1000, "user_id": "1"})
    with pytest.raises(PluginError, match="API key has expired.*read as a personal access token"):
        LabelStudioConnection(ConnectionSettings(url=URL, api_key=expired))
