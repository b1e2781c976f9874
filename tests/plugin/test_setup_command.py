"""``plugin setup``'s first steps: a local backend is found (or its absence said loudly), and a
project this run created is not left half-made."""

from __future__ import annotations

import argparse
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from plugin.commands import setup
from plugin.project import ProjectHandle
from tests.plugin.conftest import FakeConnection


class _Health(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def local_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def args(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"backend_url": None, "no_backend": False, **values})


def test_the_local_backend_is_used_when_it_answers(monkeypatch, local_backend, capsys):
    monkeypatch.setattr(setup, "DEFAULT_BACKEND_URL", local_backend)
    assert setup.default_backend_url(args()) == local_backend
    assert f"using the ML backend at {local_backend}" in capsys.readouterr().out


def test_no_backend_is_said_loudly(monkeypatch, capsys):
    url = closed_port_url()
    monkeypatch.setattr(setup, "DEFAULT_BACKEND_URL", url)
    assert setup.default_backend_url(args()) is None
    assert f"NOTE: no ML backend answers at {url}" in capsys.readouterr().err
    assert setup.default_backend_url(args(no_backend=True)) is None and capsys.readouterr().err == ""
    assert setup.default_backend_url(args(backend_url="http://b:9090")) == "http://b:9090"


def test_a_project_this_run_made_is_deleted_when_the_backend_cannot_be_connected():
    deleted = []
    connection = FakeConnection(SimpleNamespace(projects=SimpleNamespace(delete=lambda id: deleted.append(id))))
    created = ProjectHandle(id=12, created=True, label_config="<View/>")
    assert setup.half_made_project(connection, created) == "Project 12, created by this run, was deleted again."
    assert deleted == [12]
    existing = ProjectHandle(id=3, created=False, label_config="<View/>")
    assert "left as it was" in setup.half_made_project(connection, existing) and deleted == [12]
