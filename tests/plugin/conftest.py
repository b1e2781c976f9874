"""Offline doubles for the plugin tests: a duck-typed connection whose SDK client is scripted."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

# Copies of ../shared/label-studio-requests (request bodies a real Label Studio 1.23.2 sent).
RECORDED = str(Path(__file__).resolve().parents[1] / "service" / "fixtures" / "label-studio-requests")


class FakeConnection:
    """Stands in for `plugin.connection.LabelStudioConnection`: ``call`` just calls, and
    ``client`` is whatever SimpleNamespace tree a test builds."""

    def __init__(self, client=None, files: dict[str, bytes] | None = None, url: str = "http://ls.test:8080"):
        self.client = client or SimpleNamespace()
        self.files = files or {}
        self.settings = SimpleNamespace(url=url)
        self.uploads: list[tuple[int, list[str]]] = []
        self.downloads: list[str] = []

    def call(self, function, *args, **kwargs):
        return function(*args, **kwargs)

    def download(self, url_or_path: str) -> bytes:
        self.downloads.append(url_or_path)
        return self.files[url_or_path]

    def upload_files(self, project_id, paths):
        self.uploads.append((project_id, [path.name for path in paths]))
        first = 100 + sum(len(names) for _, names in self.uploads[:-1])
        return list(range(first, first + len(paths)))


def png_bytes(width: int, height: int, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def label_config() -> str:
    """The label config a real Label Studio sent to /setup (shared/label-studio-requests/setup.json)."""
    import json

    with open(f"{RECORDED}/setup.json") as handle:
        return json.load(handle)["body"]["schema"]
