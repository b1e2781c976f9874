"""Connect to Label Studio with the key from the environment, and fail with a useful message.

Every command reads two variables:

- ``LABEL_STUDIO_URL``: where Label Studio answers, e.g. ``http://localhost:8080``;
- ``LABEL_STUDIO_API_KEY``: either a *legacy token* (40 hex characters, sent as
  ``Authorization: Token <key>``) or a *personal access token* (PAT, a JWT refresh token
  that the SDK exchanges at ``/api/token/refresh/`` for a 5-minute access token sent as
  ``Authorization: Bearer <access>``). ``label_studio_sdk.LabelStudio`` tells them apart.

`LabelStudioConnection` wraps the SDK client and adds the two things the SDK does not do:
plain HTTP transfers with the same credentials (multipart upload of image files, download
of ``/data/upload/...`` images) and checks that turn "connection refused" or "401" into a
`PluginError` that says what to do.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urljoin, urlsplit

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from plugin.errors import PluginError

URL_VARIABLE = "LABEL_STUDIO_URL"
KEY_VARIABLE = "LABEL_STUDIO_API_KEY"


@dataclass(frozen=True)
class ConnectionSettings:
    """Where Label Studio is and how to authenticate.

    Attributes:
        url: base URL of Label Studio, scheme included, no trailing slash.
        api_key: legacy token or personal access token.
        timeout_s: timeout of one HTTP request, seconds. Asking for predictions waits for
            the ML backend, which Label Studio itself gives up on after ``ML_TIMEOUT_PREDICT``
            (100 s by default), so the default leaves room for that.
    """

    url: str
    api_key: str
    timeout_s: float = 150.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PluginError(
                f"{URL_VARIABLE}={self.url!r} is not an http(s) URL; " "expected something like http://localhost:8080"
            )
        if self.url.endswith("/"):
            raise PluginError(f"{URL_VARIABLE}={self.url!r}: drop the trailing slash")
        if not self.api_key.strip():
            raise PluginError(f"{KEY_VARIABLE} is empty")
        if self.timeout_s <= 0:
            raise PluginError(f"timeout_s must be positive, got {self.timeout_s}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "ConnectionSettings":
        """Read ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``; raise `PluginError` if unset."""
        environ = os.environ if environ is None else environ
        url = environ.get(URL_VARIABLE, "").strip()
        key = environ.get(KEY_VARIABLE, "").strip()
        meaning = {
            URL_VARIABLE: f"{URL_VARIABLE} is Label Studio's address, e.g. http://localhost:8080",
            KEY_VARIABLE: f"{KEY_VARIABLE} is a key from Label Studio's Account & Settings page "
            "(a personal access token, or a legacy token)",
        }
        missing = [name for name, value in ((URL_VARIABLE, url), (KEY_VARIABLE, key)) if not value]
        if missing:
            raise PluginError(f"set {' and '.join(missing)}: " + "; ".join(meaning[name] for name in missing))
        return cls(url=url.rstrip("/"), api_key=key)


def jwt_claims(token: str) -> dict | None:
    """The (unverified) payload of a JWT, or None when ``token`` is not a JWT (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def describe_key(api_key: str) -> str:
    """'personal access token', 'access token' or 'legacy token': what kind of key this is."""
    claims = jwt_claims(api_key)
    if claims is None:
        return "legacy token"
    if claims.get("token_type") == "access":
        return "access token"
    return "personal access token"


def unauthorized_hint(api_key: str) -> str:
    """What to tell a user whose key Label Studio rejected with 401."""
    kind = describe_key(api_key)
    if kind == "legacy token":
        return (
            f"Label Studio rejected {KEY_VARIABLE} (401), read as a legacy token. Check it on "
            "Account & Settings > Legacy Token. Since Label Studio 1.20 legacy tokens are off by "
            "default: an administrator switches them on under Organization > API Tokens Settings "
            '(or POST /api/jwt/settings {"legacy_api_tokens_enabled": true}), or start Label Studio '
            "the first time with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true. Or use a personal "
            "access token instead."
        )
    if kind == "access token":
        return (
            f"{KEY_VARIABLE} is a short-lived *access* token; give the personal access token "
            "itself (Account & Settings > Personal Access Token), which is exchanged for access "
            "tokens automatically."
        )
    return (
        f"Label Studio rejected {KEY_VARIABLE} (401), read as a personal access token (JWT). It "
        "may be revoked, expired or from another Label Studio instance: create a new one under "
        "Account & Settings > Personal Access Token. Personal access tokens must be enabled under "
        "Organization > API Tokens Settings."
    )


def error_text(body: object) -> str:
    """The readable part of a Label Studio error body (validation messages, or ``detail``)."""
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        if isinstance(errors, dict) and errors:
            parts = []
            for field_name, messages in errors.items():
                messages = messages if isinstance(messages, list) else [messages]
                text = " ".join(str(message) for message in messages)
                parts.append(text if field_name == "non_field_errors" else f"{field_name}: {text}")
            return re.sub(r"<[^>]+>", "", "; ".join(parts))
        if body.get("detail"):
            return str(body["detail"])
    return str(body)


class LabelStudioConnection:
    """An authenticated SDK client plus HTTP transfers with the same credentials.

    Attributes:
        settings: where and how we connect.
        client: the ``label_studio_sdk.LabelStudio`` client; use it for everything the SDK has.
    """

    def __init__(self, settings: ConnectionSettings, client: LabelStudio | None = None) -> None:
        self.settings = settings
        if client is None:
            try:
                client = LabelStudio(base_url=settings.url, api_key=settings.api_key, timeout=settings.timeout_s)
            except ApiError as error:  # the SDK checks a JWT's expiry up front
                raise PluginError(f"{error_text(error.body)} {unauthorized_hint(settings.api_key)}") from error
        self.client = client
        # The SDK's own httpx.Client (no auth headers of its own: the SDK adds them per request),
        # reused for the transfers the SDK has no method for.
        self._http: httpx.Client = client._client_wrapper.httpx_client.httpx_client

    @classmethod
    def from_environment(cls) -> "LabelStudioConnection":
        """Connect with ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` and verify both work."""
        connection = cls(ConnectionSettings.from_environment())
        connection.verify()
        return connection

    # ---------------------------------------------------------------- checks
    def verify(self) -> str:
        """Check that Label Studio answers and accepts the key; return the user's e-mail.

        Raises:
            PluginError: server unreachable, not Label Studio, or key rejected.
        """
        health_url = f"{self.settings.url}/health"
        try:
            response = self._http.get(health_url, timeout=10.0, follow_redirects=True)
        except httpx.HTTPError as error:
            raise PluginError(
                f"cannot reach Label Studio at {self.settings.url} ({error.__class__.__name__}: "
                f"{error}). Is it running, and is {URL_VARIABLE} right?"
            ) from error
        if response.status_code != 200:
            raise PluginError(
                f"{health_url} answered {response.status_code}; is {self.settings.url} a Label Studio server?"
            )
        user = self.call(self.client.users.whoami)
        return user.email or user.username or str(user.id)

    def call(self, function, *args, **kwargs):
        """Call an SDK method, turning transport errors and 401/403 into `PluginError`."""
        try:
            return function(*args, **kwargs)
        except httpx.HTTPError as error:
            raise PluginError(f"lost the connection to Label Studio at {self.settings.url}: {error}") from error
        except ApiError as error:
            raise self.explain(error) from error

    def explain(self, error: ApiError) -> PluginError:
        """A `PluginError` with a hint for an SDK ``ApiError``."""
        if error.status_code == 401:
            return PluginError(unauthorized_hint(self.settings.api_key))
        if error.status_code == 403:
            return PluginError(
                f"Label Studio refused the request (403: {error_text(error.body)}). If this happened while "
                "connecting an ML backend on localhost or a private address, start Label Studio "
                "with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false."
            )
        return PluginError(f"Label Studio answered {error.status_code}: {error_text(error.body)}")

    # ------------------------------------------------------------- transfers
    def _headers(self) -> dict[str, str]:
        # The SDK keeps its auth (and refreshes a PAT's access token) in the client wrapper;
        # there is no public accessor, so this is the one place that reaches into it.
        try:
            return dict(self.client._client_wrapper.get_headers())
        except ApiError as error:  # a PAT refresh failed
            raise self.explain(error) from error

    def absolute_url(self, url_or_path: str) -> str:
        """Resolve a task's image reference (``/data/upload/...`` or a full URL)."""
        return urljoin(self.settings.url + "/", url_or_path)

    def is_label_studio_url(self, url: str) -> bool:
        """True when ``url`` is served by this Label Studio (so it needs our credentials)."""
        return urlsplit(self.absolute_url(url)).netloc == urlsplit(self.settings.url).netloc

    def download(self, url_or_path: str) -> bytes:
        """Fetch a task's image; Label Studio-hosted files are fetched with our credentials."""
        url = self.absolute_url(url_or_path)
        headers = self._headers() if self.is_label_studio_url(url) else {}
        try:
            response = self._http.get(url, headers=headers, timeout=self.settings.timeout_s, follow_redirects=True)
        except httpx.HTTPError as error:
            raise PluginError(f"cannot download {url}: {error}") from error
        if response.status_code == 401:
            raise PluginError(f"downloading {url}: {unauthorized_hint(self.settings.api_key)}")
        if response.status_code != 200:
            raise PluginError(f"downloading {url}: HTTP {response.status_code}")
        return response.content

    def upload_files(self, project_id: int, paths: Sequence[Path]) -> list[int]:
        """Upload files as new tasks of a project (one task per image); return their task ids.

        This is ``POST /api/projects/{id}/import`` with multipart files, what the web
        page's "Upload files" does; Label Studio stores each under ``/data/upload/{id}/``.
        """
        if not paths:
            return []
        files = []
        handles = []
        try:
            for index, path in enumerate(paths):
                handle = open(path, "rb")
                handles.append(handle)
                files.append((f"file{index}", (path.name, handle, _content_type(path))))
            try:
                response = self._http.post(
                    f"{self.settings.url}/api/projects/{project_id}/import",
                    params={"return_task_ids": "true", "commit_to_project": "true"},
                    files=files,
                    headers=self._headers(),
                    timeout=self.settings.timeout_s,
                )
            except httpx.HTTPError as error:
                raise PluginError(f"uploading {len(paths)} file(s) failed: {error}") from error
        finally:
            for handle in handles:
                handle.close()
        if response.status_code == 401:
            raise PluginError(unauthorized_hint(self.settings.api_key))
        if response.status_code not in (200, 201):
            raise PluginError(
                f"uploading {len(paths)} file(s) to project {project_id} failed: "
                f"HTTP {response.status_code}: {response.text[:500]}"
            )
        return [int(task_id) for task_id in response.json().get("task_ids", [])]


_CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


def _content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


IMAGE_SUFFIXES = frozenset(_CONTENT_TYPES)


def as_dict(item) -> dict:
    """A record of the SDK (a pydantic model) or of a plain JSON answer, as a dict."""
    return dict(item) if isinstance(item, Mapping) else item.model_dump()
