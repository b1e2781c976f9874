"""Reliability tests: request limits, a fuzz of the endpoints, webhook crash consistency.

Each test prints its figures and writes them to ``bench/results/reliability-<name>.json``
(docs/reliability.md quotes them). Nothing here touches the network: the app's HTTP session
refuses every request, and the one real server binds 127.0.0.1.
"""

from __future__ import annotations

import json
import platform
import socket
import time
from pathlib import Path

import pytest
import requests

from backend.service.app import create_app
from backend.service.config import ServiceConfig
from tests.service.conftest import FakeMethods

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


class NoNetworkSession(requests.Session):
    """A session that refuses every request: fuzzed image URLs never leave the process."""

    def request(self, method, url, *args, **kwargs):
        raise requests.ConnectionError(f"network disabled in reliability tests ({method} {url!r})")


class ScopedOs:
    """Stands in for the ``os`` module inside one module (``monkeypatch.setattr(module, "os",
    ScopedOs(os, write=...))``): the given functions are replaced, everything else is the real
    ``os``. Faults injected this way stay inside that module (pytest's own writes are untouched)."""

    def __init__(self, real, **replacements) -> None:
        self._real = real
        self._replacements = replacements

    def __getattr__(self, name):
        if name in self._replacements:
            return self._replacements[name]
        return getattr(self._real, name)


def write_figures(name: str, figures: dict) -> Path:
    """Print ``figures`` and write them to bench/results/reliability-<name>.json."""
    record = {
        "test": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        **figures,
    }
    text = json.dumps(record, indent=1, sort_keys=False)
    print(f"\nreliability-{name}: {text}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"reliability-{name}.json"
    path.write_text(text + "\n")
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if anything resolves a name or connects anywhere but 127.0.0.1."""
    violations: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", None):
            violations.append(f"name lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "no network in reliability tests")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            violations.append(f"connect to {address!r}")
            raise ConnectionRefusedError("no network in reliability tests")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield violations
    assert violations == [], violations


@pytest.fixture
def config(tmp_path) -> ServiceConfig:
    return ServiceConfig(model_dir=tmp_path / "model_dir", model_load_wait_s=10.0, image_timeout_s=2.0)


@pytest.fixture
def make_app(config):
    """``make_app(**config_changes)`` -> a Flask app with fake methods and no network, models ready."""

    def build(**changes):
        # SSRF protection off: its guarded session would resolve fuzzed host names; this way every
        # image download goes to NoNetworkSession (the SSRF guard has its own tests: test_ssrf.py)
        changes = {"ssrf_protection_enabled": False, **changes}
        app = create_app(config.replace(**changes), methods=FakeMethods(), session=NoNetworkSession())
        service = app.extensions["segmentation_service"]
        assert isinstance(service.session, NoNetworkSession) and isinstance(service.image_session, NoNetworkSession)
        service.runtime.wait_until_ready(10)
        return app

    return build
