"""``python -m backend``: gunicorn with the app factory, configured by environment variables."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from backend.service.config import ServiceConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_config_from_env_defaults_and_errors(tmp_path):
    config = ServiceConfig.from_env({})
    assert (config.host, config.port, config.model_preset, config.failed_task_reply) == (
        "127.0.0.1",  # this machine only unless HOST says otherwise (the Docker image sets 0.0.0.0)
        9090,
        "cpu",
        "empty",
    )
    config = ServiceConfig.from_env(
        {
            "PORT": "9191",
            "MODEL_DIR": str(tmp_path),
            "LABEL_STUDIO_URL": "http://ls:8080/",
            "FMBSEG_SETTINGS": '{"clip_image_size": 448}',
            "MODEL_LOAD_ON_START": "no",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
        }
    )
    assert config.port == 9191 and config.model_dir == tmp_path and config.label_studio_url == "http://ls:8080"
    assert config.fmbseg_settings == {"clip_image_size": 448} and not config.load_models_on_start
    assert config.basic_auth_enabled
    for env, message in [
        ({"PORT": "abc"}, "PORT must be an integer"),
        ({"PORT": "70000"}, "PORT must be in"),
        ({"MODEL_SCORE_THRESHOLD": "2"}, "MODEL_SCORE_THRESHOLD"),
        ({"ZEROGUIDE_SETTINGS": "[1]"}, "ZEROGUIDE_SETTINGS must be a JSON object"),
        ({"BASIC_AUTH_USER": "only-user"}, "BASIC_AUTH_PASS"),
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "must start with http"),
        ({"FAILED_TASK_REPLY": "retry"}, "FAILED_TASK_REPLY"),
        ({"MODEL_LOAD_ON_START": "maybe"}, "MODEL_LOAD_ON_START must be true/false"),
        ({"TRAINING_HOOK": "module_only"}, "TRAINING_HOOK"),
    ]:
        try:
            ServiceConfig.from_env(env)
        except ValueError as error:
            assert message in str(error)
        else:
            raise AssertionError(f"{env} was accepted")


def test_python_m_backend_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_PRESET": "tiny",
        "MODEL_DIR": str(tmp_path / "state"),
        "MODEL_LOAD_ON_START": "false",  # this test is about the server, not the models
        "PYTHONPATH": str(REPO),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.3)
        assert health == {"status": "UP", "model_class": "SegmentationMLBackend", "models": "idle", "preset": "tiny"}
        setup = requests.post(
            f"http://127.0.0.1:{port}/setup",
            json={"project": "1.1", "schema": (REPO / "label_config.xml").read_text()},
            timeout=5,
        ).json()
        assert setup["model_version"].startswith("tiny-zg.")
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output[-3000:]
    assert "Booting worker" in output and "Traceback" not in output


def test_python_m_backend_rejects_bad_configuration():
    env = {**os.environ, "PORT": "not-a-port", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "backend"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "PORT must be an integer" in result.stderr
