"""Session fixtures of the end-to-end tests: a real Label Studio, our backend, pre-labelled projects.

Prerequisites (see docs/label-studio.md):

- ``label_config.xml`` at the repository root (or ``$E2E_LABEL_CONFIG``);

- Label Studio 1.23.2 in its own venv: ``scripts/install-label-studio.sh`` (``$LS_VENV``,
  default ``<repo>/.ls-venv``);
- for the ``browser`` tests, Debian's chromium (``scripts/install-browser.sh``) and the
  Python ``playwright`` package.

A missing prerequisite skips the tests with the reason, except when ``REQUIRE_E2E=1``
(CI): then it fails them. Every process started here is stopped at the end of the
session, also when a test or a start-up fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from tests.e2e.servers import (
    LABEL_STUDIO_VERSION,
    REPO_ROOT,
    BackendServer,
    LabelStudioServer,
    ServerError,
    log_tail,
    start_backend,
    start_label_studio,
)

TOKEN_KINDS = ("legacy", "pat")
# The project's label config; E2E_LABEL_CONFIG points the tests at another file.
LABEL_CONFIG = Path(os.environ.get("E2E_LABEL_CONFIG", REPO_ROOT / "label_config.xml"))
ARTIFACTS = REPO_ROOT / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a real Label Studio server (scripts/install-label-studio.sh)")
    config.addinivalue_line(
        "markers", "browser: needs Debian's chromium and Python playwright (scripts/install-browser.sh)"
    )


def e2e_required() -> bool:
    """``REQUIRE_E2E=1``: a missing prerequisite is a failure, not a skip."""
    return os.environ.get("REQUIRE_E2E", "").strip() == "1"


def missing_prerequisite(reason: str) -> None:
    """Skip the test (or fail it under ``REQUIRE_E2E=1``) because ``reason``."""
    if e2e_required():
        pytest.fail(f"{reason} (REQUIRE_E2E=1, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ----------------------------------------------------------------------------- Label Studio
@pytest.fixture(scope="session")
def ls_venv() -> Path:
    """The venv holding Label Studio (``$LS_VENV``, default ``<repo>/.ls-venv``)."""
    venv = Path(os.environ.get("LS_VENV", REPO_ROOT / ".ls-venv"))
    if not (venv / "bin" / "label-studio").exists():
        missing_prerequisite(
            f"Label Studio is not installed in {venv}: run scripts/install-label-studio.sh (or set LS_VENV)"
        )
    return venv


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scratch space of the session: Label Studio's data, MODEL_DIRs, images, exports."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    """``test-artifacts/e2e-logs``: the servers' logs, kept after the run (pytest prunes tmp dirs)."""
    folder = ARTIFACTS / "e2e-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def label_studio(ls_venv: Path, e2e_workdir: Path, logs_dir: Path):
    """A fresh Label Studio (SQLite in a temp dir) with an admin, a legacy token and a PAT.

    Its database starts as a copy of ``$LS_VENV/e2e-template/`` (made by the first session:
    a migrated, empty database), which saves the migrations' minute.
    """
    try:
        server = start_label_studio(
            ls_venv,
            e2e_workdir / "label-studio",
            logs_dir / "label-studio.log",
            template_dir=ls_venv / "e2e-template",
        )
    except ServerError as error:
        pytest.fail(f"Label Studio {LABEL_STUDIO_VERSION} did not start: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="session")
def api_keys(label_studio: LabelStudioServer) -> dict[str, str]:
    """``{"legacy": <legacy token>, "pat": <personal access token>}``."""
    return {"legacy": label_studio.legacy_token, "pat": label_studio.personal_access_token}


# ---------------------------------------------------------------------------------- backend
def backend_extra_env() -> dict[str, str]:
    """More environment for the backend from ``$E2E_BACKEND_ENV`` (a JSON object), e.g.
    ``E2E_BACKEND_ENV='{"ZEROGUIDE_SETTINGS": "{\\"use_crf\\": false}"}'``."""
    raw = os.environ.get("E2E_BACKEND_ENV", "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("E2E_BACKEND_ENV must be a JSON object of environment variables")
    return {str(key): str(item) for key, item in value.items()}


@pytest.fixture(scope="session")
def backend_for(label_studio: LabelStudioServer, api_keys: dict[str, str], e2e_workdir: Path, logs_dir: Path):
    """``backend_for(kind)``: our ``python -m backend`` authenticated with that kind of key.

    Started on first use (tiny preset, own MODEL_DIR), kept for the session.
    """
    if not (REPO_ROOT / "backend" / "__main__.py").exists():
        missing_prerequisite("backend/__main__.py is missing: `python -m backend` cannot start")
    started: dict[str, BackendServer] = {}
    failures: dict[str, str] = {}  # reported again without a second start-up

    def get(kind: str) -> BackendServer:
        if kind not in started and kind not in failures:
            try:
                started[kind] = start_backend(
                    Path(sys.executable),
                    e2e_workdir / f"backend-{kind}",
                    label_studio.url,
                    api_keys[kind],
                    log_path=logs_dir / f"backend-{kind}.log",
                    extra_env=backend_extra_env(),
                )
            except ServerError as error:
                failures[kind] = f"the backend ({kind} key) did not start: {error}"
        if kind in failures:
            pytest.fail(failures[kind], pytrace=False)
        return started[kind]

    try:
        yield get
    finally:
        for server in started.values():
            server.process.stop()


# ------------------------------------------------------------------------------ test images
def synthetic_image(width: int, height: int, seed: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: a smooth background with a disc and a rectangle of other colours."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (40 + 60 * cols / width).astype(np.uint8)
    image[..., 1] = (90 + 50 * rows / height).astype(np.uint8)
    image[..., 2] = 150
    centre_r, centre_c = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, width // 2)
    disc = (rows - centre_r) ** 2 + (cols - centre_c) ** 2 <= (min(width, height) // 5) ** 2
    image[disc] = (230, 200, 40)
    top, left = rng.integers(2, height // 3), rng.integers(width // 2, 2 * width // 3)
    image[top : top + height // 3, left : left + width // 4] = (200, 40, 60)
    return image


@pytest.fixture(scope="session")
def e2e_images(e2e_workdir: Path) -> Path:
    """A folder with two small synthetic PNGs (one with a space in its name)."""
    folder = e2e_workdir / "images"
    folder.mkdir()
    for index, name in enumerate(("shapes one.png", "shapes-2.png")):
        Image.fromarray(synthetic_image(96, 64, seed=index)).save(folder / name)
    return folder


# --------------------------------------------------------------------------- set-up results
@dataclass
class PrelabelledProject:
    """A project set up by ``python -m plugin setup`` and pre-labelled by our backend."""

    kind: str
    api_key: str
    project_id: int
    task_ids: list[int]
    backend: BackendServer
    setup_output: str


def run_plugin(args: list[str], url: str, api_key: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """``python -m plugin ARGS`` as a user would run it, with the connection in the environment."""
    env = dict(os.environ, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=api_key)
    return subprocess.run(
        [sys.executable, "-m", "plugin", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="session")
def prelabelled(
    label_studio: LabelStudioServer, api_keys, backend_for, e2e_images
) -> Callable[[str], PrelabelledProject]:
    """``prelabelled(kind)``: a project set up with ``python -m plugin setup`` using that key kind."""
    if not LABEL_CONFIG.exists():
        missing_prerequisite(f"{LABEL_CONFIG} is missing")
    done: dict[str, PrelabelledProject | str] = {}  # a str is the failure, reported again without retrying

    def get(kind: str) -> PrelabelledProject:
        if kind not in done:
            done[kind] = set_up(kind)
        if isinstance(done[kind], str):
            pytest.fail(done[kind], pytrace=False)
        return done[kind]

    def set_up(kind: str) -> PrelabelledProject | str:
        backend = backend_for(kind)
        result = run_plugin(
            [
                "setup",
                "--title",
                f"e2e {kind}",
                "--config",
                str(LABEL_CONFIG),
                "--backend-url",
                backend.url,
                "--images",
                str(e2e_images),
                "--batch-size",
                "2",
                "--json",
            ],
            label_studio.url,
            api_keys[kind],
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            return (
                f"plugin setup ({kind} key) exited {result.returncode}:\n{output}\n"
                f"--- backend log ---\n{log_tail(backend.process.log_path)}"
            )
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        return PrelabelledProject(
            kind=kind,
            api_key=api_keys[kind],
            project_id=summary["project_id"],
            task_ids=summary["task_ids"],
            backend=backend,
            setup_output=output,
        )

    return get


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``<repo>/test-artifacts`` (git-ignored): screenshots and logs worth keeping."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class InteractiveProject:
    """A project whose ML backend is connected with ``is_interactive`` (``plugin setup --interactive``)."""

    api_key: str
    project_id: int
    task_ids: list[int]
    ml_backend_id: int
    backend: BackendServer


@pytest.fixture(scope="session")
def interactive_project(label_studio: LabelStudioServer, api_keys, backend_for, e2e_images) -> InteractiveProject:
    """label_config.xml (with its smart tools), the legacy-key backend connected as interactive,
    the two images uploaded, no predictions asked for (the clicks are the test)."""
    if not LABEL_CONFIG.exists():
        missing_prerequisite(f"{LABEL_CONFIG} is missing")
    backend = backend_for("legacy")
    result = run_plugin(
        [
            "setup",
            "--title",
            "e2e interactive",
            "--config",
            str(LABEL_CONFIG),
            "--backend-url",
            backend.url,
            "--interactive",
            "--images",
            str(e2e_images),
            "--no-predictions",
            "--json",
        ],
        label_studio.url,
        api_keys["legacy"],
    )
    if result.returncode != 0:
        pytest.fail(
            f"plugin setup --interactive exited {result.returncode}:\n{result.stdout}{result.stderr}\n"
            f"--- backend log ---\n{log_tail(backend.process.log_path)}",
            pytrace=False,
        )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return InteractiveProject(
        api_key=api_keys["legacy"],
        project_id=summary["project_id"],
        task_ids=summary["created_task_ids"],  # with --no-predictions, "task_ids" lists the tasks before the upload
        ml_backend_id=summary["backend_id"],
        backend=backend,
    )
