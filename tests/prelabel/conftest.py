"""Fixtures of the pre-labelling tests: a fake Label Studio API with a project of small images,
and the backend's service config pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.service.config import ServiceConfig
from tests.service.conftest import FakeMethods, png_bytes, sample_image

from .fake_label_studio import LEGACY_TOKEN, FakeLabelStudioAPI

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (REPO_ROOT / "label_config.xml").read_text()


def make_methods() -> FakeMethods:
    """Fake method code for workers in other processes (Ray actors import it by name)."""
    return FakeMethods()


@pytest.fixture
def fake_ls():
    with FakeLabelStudioAPI() as server:
        server.state.label_config = LABEL_CONFIG
        for task_id in range(1, 11):
            path = f"/data/upload/1/img{task_id}.png"
            server.state.files[path] = png_bytes(sample_image(32 + task_id, 24))
            server.state.tasks[task_id] = {"image": path}
        yield server


@pytest.fixture
def config(tmp_path, fake_ls) -> ServiceConfig:
    return ServiceConfig(
        model_dir=tmp_path / "model_dir",
        model_process=False,
        model_load_wait_s=20.0,
        image_timeout_s=5.0,
        label_studio_url=fake_ls.url,
        label_studio_api_key=LEGACY_TOKEN,
        image_allowed_hosts=("localhost",),  # the fake bucket (Label Studio itself is exempt)
    )
