"""MODEL_DIR is checked for writing once at start; /health answers 503 naming it and the uid when not."""

import os

import pytest

from backend.service.app import create_app
from backend.service.model_dir import model_dir_problem


def test_a_missing_model_dir_is_created_and_left_clean(tmp_path):
    model_dir = tmp_path / "a" / "model_dir"
    assert model_dir_problem(model_dir) is None
    assert model_dir.is_dir() and list(model_dir.iterdir()) == []


def test_unwritable_model_dir_makes_health_503(config, fake_methods, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    client = create_app(config.replace(model_dir=blocker / "model_dir"), methods=fake_methods).test_client()
    for path in ("/health", "/"):
        reply = client.get(path)
        assert reply.status_code == 503
        assert reply.json["status"] == "ERROR"
        assert "MODEL_DIR" in reply.json["error"] and f"uid {os.getuid()}" in reply.json["error"]
        assert str(blocker / "model_dir") in reply.json["error"]


@pytest.mark.skipif(os.getuid() == 0, reason="root writes into a read-only directory")
def test_read_only_model_dir_is_reported(tmp_path):
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir()
    model_dir.chmod(0o500)
    try:
        assert "PermissionError" in model_dir_problem(model_dir)
    finally:
        model_dir.chmod(0o700)


def test_writable_model_dir_keeps_health_200(config, fake_methods):
    client = create_app(config, methods=fake_methods).test_client()
    assert client.get("/health").status_code == 200
    assert list(config.model_dir.glob(".write-check-*")) == []
