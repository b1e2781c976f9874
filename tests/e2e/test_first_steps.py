"""A newcomer's first ``plugin setup`` against a real Label Studio: with no backend to connect, the
project it made is not left half-made."""

from __future__ import annotations

import socket

import pytest
from label_studio_sdk import LabelStudio

from tests.e2e.conftest import LABEL_CONFIG, run_plugin

pytestmark = pytest.mark.e2e


def test_an_unreachable_backend_leaves_no_half_made_project(label_studio, api_keys, e2e_images):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    title = "e2e half-made project"
    result = run_plugin(
        [
            "setup",
            "--title",
            title,
            "--config",
            str(LABEL_CONFIG),
            "--backend-url",
            closed,
            "--images",
            str(e2e_images),
        ],
        label_studio.url,
        api_keys["legacy"],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "created by this run, was deleted again" in output
    client = LabelStudio(base_url=label_studio.url, api_key=api_keys["legacy"])
    assert title not in [project.title for project in client.projects.list()]
