"""Credentials for calling Label Studio: a legacy token or a personal access token (PAT).

Label Studio 1.23 knows two kinds of API key:

* a *legacy token* (40 hex characters), sent as ``Authorization: Token <key>``; it only works
  when legacy tokens are enabled for the organization;
* a *personal access token* (the default in 1.23), which is a JWT **refresh** token. It is never
  sent as such: it is exchanged at ``POST /api/token/refresh/ {"refresh": PAT}`` for an access
  token valid about 300 s, which is sent as ``Authorization: Bearer <access>``.

:class:`LabelStudioAuth` tells them apart by inspection (a JWT is three base64url parts whose
middle part is a JSON object; a PAT has ``"token_type": "refresh"``), caches the access token,
refreshes it before it expires and again whenever Label Studio answers 401.

The key stays home: headers are only given out for URLs on ``base_url``'s origin
(:meth:`LabelStudioAuth.headers_for`), and the token exchange never follows a redirect (a 307
would carry the PAT in its body to wherever it points).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any, Callable

import requests

from .ssrf import origin_of

logger = logging.getLogger(__name__)

TOKEN_REFRESH_PATH = "/api/token/refresh/"
# Refresh this many seconds before the access token's `exp`, so a download started just before
# expiry does not carry a token that dies on the way.
EXPIRY_MARGIN_S = 30.0
# Used when an access token carries no `exp` claim (Label Studio's are valid 300 s).
DEFAULT_ACCESS_LIFETIME_S = 300.0


class LabelStudioAuthError(RuntimeError):
    """Label Studio refused the configured credentials (the message says what to check)."""


def decode_jwt_payload(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (without verifying the signature), or ``None`` if ``token`` is no JWT."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def classify_api_key(api_key: str) -> str:
    """``"pat"`` (JWT refresh token), ``"access"`` (a JWT access token) or ``"legacy"``."""
    claims = decode_jwt_payload(api_key)
    if claims is None:
        return "legacy"
    return "access" if claims.get("token_type") == "access" else "pat"


class LabelStudioAuth:
    """Authorization headers for requests to one Label Studio instance.

    Thread-safe: predictions run in several request threads; only one refreshes at a time.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty: set LABEL_STUDIO_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.origin = origin_of(self.base_url)
        if self.origin is None:
            raise ValueError(f"LABEL_STUDIO_URL must be an http(s) URL, got {base_url!r}")
        self.kind = classify_api_key(api_key)
        self._api_key = api_key
        self._session = session or requests.Session()
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token: str | None = api_key if self.kind == "access" else None
        self._access_expires_at = self._expiry_of(api_key) if self.kind == "access" else 0.0
        self.refresh_count = 0

    def __repr__(self) -> str:  # never print the key itself
        return f"LabelStudioAuth(base_url={self.base_url!r}, kind={self.kind!r})"

    def _expiry_of(self, token: str) -> float:
        claims = decode_jwt_payload(token) or {}
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):
            return float(exp)
        return self._clock() + DEFAULT_ACCESS_LIFETIME_S

    def is_home(self, url: str) -> bool:
        """Whether ``url`` is on Label Studio's origin (scheme, host and port), the only place the key goes."""
        return origin_of(url) == self.origin

    def headers_for(self, url: str) -> dict[str, str]:
        """:meth:`headers` for a URL on Label Studio's origin; ``{}`` (and no token exchange) elsewhere."""
        if not self.is_home(url):
            logger.warning("not sending Label Studio credentials to another origin")
            return {}
        return self.headers()

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header to send now (exchanging the PAT if needed)."""
        if self.kind == "legacy":
            return {"Authorization": f"Token {self._api_key}"}
        with self._lock:
            if self._access_token is None or self._clock() >= self._access_expires_at - EXPIRY_MARGIN_S:
                self._refresh_locked()
            return {"Authorization": f"Bearer {self._access_token}"}

    def invalidate(self) -> bool:
        """Forget the access token after a 401; returns whether a retry can help (PAT only)."""
        if self.kind != "pat":
            return False
        with self._lock:
            self._access_token = None
        return True

    def _refresh_locked(self) -> None:
        if self.kind != "pat":
            raise LabelStudioAuthError(
                "the Label Studio access token has expired and cannot be refreshed: set "
                "LABEL_STUDIO_API_KEY to the personal access token (the refresh token), not an access token"
            )
        url = self.base_url + TOKEN_REFRESH_PATH
        try:
            response = self._session.post(
                url, json={"refresh": self._api_key}, timeout=self._timeout_s, allow_redirects=False
            )
        except requests.RequestException as error:
            raise LabelStudioAuthError(
                f"could not reach {url} to exchange the personal access token: {error}"
            ) from None
        if response.is_redirect:
            raise LabelStudioAuthError(
                f"token refresh at {url} was redirected (HTTP {response.status_code}); the key is not sent "
                "after a redirect: set LABEL_STUDIO_URL to Label Studio's final address"
            )
        if response.status_code in (401, 403):
            raise LabelStudioAuthError(
                f"Label Studio rejected the personal access token at {url} (HTTP {response.status_code}): "
                "it may be revoked or expired; create a new one under Account & Settings > Personal Access Token"
            )
        if response.status_code != 200:
            raise LabelStudioAuthError(f"token refresh at {url} failed with HTTP {response.status_code}")
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise LabelStudioAuthError(f"token refresh at {url} returned no 'access' token") from None
        self._access_token = str(access)
        self._access_expires_at = self._expiry_of(self._access_token)
        self.refresh_count += 1
        logger.info("exchanged the personal access token for an access token (refresh #%d)", self.refresh_count)

    def explain_401(self, url: str) -> str:
        """A message for a 401 that survived the retry: what to check for this kind of key."""
        if self.kind == "legacy":
            return (
                f"Label Studio answered 401 for {url} with the legacy token in LABEL_STUDIO_API_KEY. "
                "Check the token, or note that Label Studio 1.23 disables legacy tokens by default: "
                "use a personal access token instead, or enable legacy tokens (Organization > API Tokens Settings)"
            )
        return (
            f"Label Studio answered 401 for {url} even with a freshly refreshed access token: "
            "the personal access token's user may lack access to this project"
        )
