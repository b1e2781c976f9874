"""Start and stop the real servers of the end-to-end tests: Label Studio and ``python -m backend``.

Every process is started in its own session (process group), so stopping it also stops
its children (Label Studio's Django server, gunicorn's worker). `ManagedProcess.stop`
sends SIGTERM to the group, waits a bounded time, then SIGKILLs it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO_VERSION = "1.23.2"
ADMIN_EMAIL = "admin@example.com"  # the login form rejects e-mails without a real-looking domain


class ServerError(RuntimeError):
    """A server did not start, or did not answer as expected; the message has its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path, characters: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def fail(self, message: str) -> ServerError:
        return ServerError(f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}")

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` every 0.5 s until it holds; raise `ServerError` on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise self.fail(f"exited with status {self.process.returncode} while waiting for {what}")
            try:
                if condition():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise self.fail(f"no {what} after {timeout_s:.0f} s")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; idempotent."""
        if self.running():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # children may outlive the leader: kill whatever is left of the group
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


@dataclass
class LabelStudioServer:
    """A running Label Studio and the credentials of its admin.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        email, password: the admin's login (web page).
        legacy_token: the admin's legacy API token (``Authorization: Token ...``).
        personal_access_token: a PAT of the admin (a JWT refresh token).
        data_dir: LABEL_STUDIO_BASE_DATA_DIR (SQLite database, uploads).
        process: the managed process.
    """

    url: str
    email: str
    password: str
    legacy_token: str
    personal_access_token: str
    data_dir: Path
    process: ManagedProcess

    def api(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        """A request to Label Studio authenticated with the legacy token."""
        headers = {"Authorization": f"Token {token or self.legacy_token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)


def label_studio_environment(data_dir: Path, email: str, password: str, legacy_token: str) -> dict[str, str]:
    """Environment for an isolated, offline Label Studio (see shared/notes/label-studio.md)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABEL_STUDIO_")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        LABEL_STUDIO_USERNAME=email,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=legacy_token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        ML_BLOCK_LOCAL_IP="false",  # else POST /api/ml with a 127.0.0.1 URL is refused
        SSRF_PROTECTION_ENABLED="false",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        SECRET_KEY=secrets.token_hex(32),
    )
    return env


DATABASE_FILE = "label_studio.sqlite3"  # in LABEL_STUDIO_BASE_DATA_DIR
ADMIN_FILE = "admin.json"


@dataclass(frozen=True)
class Admin:
    """Label Studio's first user, created from LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN."""

    email: str
    password: str
    legacy_token: str

    @classmethod
    def new(cls) -> "Admin":
        return cls(ADMIN_EMAIL, secrets.token_urlsafe(12), secrets.token_hex(20))


def _launch_label_studio(
    ls_venv: Path, data_dir: Path, admin: Admin, log_path: Path, timeout_s: float
) -> tuple[ManagedProcess, str]:
    """Start Label Studio on a free port; return (process, url) once it answers as ours.

    Label Studio silently moves to the next port when the asked one is busy, so after
    ``/health`` answers we also check that the port serves *this* instance (the admin's
    random legacy token is accepted).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(ls_venv / "bin" / "label-studio"), "start", "--no-browser"]
    command += ["--internal-host", "127.0.0.1", "--port", str(port)]
    env = label_studio_environment(data_dir, admin.email, admin.password, admin.legacy_token)
    process = ManagedProcess("label-studio", command, env, cwd=data_dir, log_path=log_path)
    try:
        process.wait_until(
            lambda: requests.get(f"{url}/health", timeout=2).status_code == 200,
            timeout_s,
            f"answer on {url}/health",
        )
        whoami = requests.get(
            f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {admin.legacy_token}"}, timeout=10
        )
        if whoami.status_code != 200 or whoami.json().get("email") != admin.email:
            raise process.fail(f"{url} is not the Label Studio we started (whoami: {whoami.status_code})")
    except BaseException:
        process.stop()
        raise
    return process, url


def _load_template(template_dir: Path, data_dir: Path) -> Admin | None:
    """Copy a migrated database into ``data_dir``; return its admin, or None without template."""
    database, admin_file = template_dir / DATABASE_FILE, template_dir / ADMIN_FILE
    if not (database.is_file() and admin_file.is_file()):
        return None
    shutil.copyfile(database, data_dir / DATABASE_FILE)
    return Admin(**json.loads(admin_file.read_text()))


def _save_template(data_dir: Path, admin: Admin, template_dir: Path) -> None:
    """Keep a just-migrated database (Label Studio stopped) for the next sessions."""
    template_dir.mkdir(parents=True, exist_ok=True)
    for name, write in (
        (DATABASE_FILE, lambda path: shutil.copyfile(data_dir / DATABASE_FILE, path)),
        (ADMIN_FILE, lambda path: path.write_text(json.dumps(admin.__dict__))),
    ):
        partial = template_dir / f"{name}.{os.getpid()}.partial"
        write(partial)
        os.replace(partial, template_dir / name)  # atomic: a concurrent session sees all or nothing


def start_label_studio(
    ls_venv: Path,
    work_dir: Path,
    log_path: Path,
    template_dir: Path | None = None,
    startup_timeout_s: float = 300.0,
) -> LabelStudioServer:
    """Start an isolated Label Studio from ``ls_venv`` and create a personal access token.

    The first start of an empty database runs Django's migrations (30 s on an idle 2-core
    machine, several minutes on a busy one); a restart takes a few seconds. So with
    ``template_dir``, a freshly migrated database (admin included) is kept there and later
    sessions start from a copy of it. The PAT is created with ``POST /api/token/``,
    authenticated with the legacy token.
    """
    data_dir = work_dir / "label-studio-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    admin = _load_template(template_dir, data_dir) if template_dir is not None else None
    fresh = admin is None
    admin = admin or Admin.new()
    process, url = _launch_label_studio(ls_venv, data_dir, admin, log_path, startup_timeout_s)
    if fresh and template_dir is not None:
        process.stop()
        _save_template(data_dir, admin, template_dir)
        process, url = _launch_label_studio(ls_venv, data_dir, admin, log_path, startup_timeout_s)
    try:
        created = requests.post(
            f"{url}/api/token/", headers={"Authorization": f"Token {admin.legacy_token}"}, timeout=10
        )
        if created.status_code != 201:
            raise process.fail(f"POST /api/token/ answered {created.status_code}: {created.text[:300]}")
    except BaseException:
        process.stop()
        raise
    return LabelStudioServer(
        url=url,
        email=admin.email,
        password=admin.password,
        legacy_token=admin.legacy_token,
        personal_access_token=created.json()["token"],
        data_dir=data_dir,
        process=process,
    )


@dataclass
class BackendServer:
    """A running ``python -m backend``.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        model_dir: its MODEL_DIR.
        process: the managed process.
    """

    url: str
    model_dir: Path
    process: ManagedProcess


def start_backend(
    python: Path,
    work_dir: Path,
    label_studio_url: str,
    api_key: str,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 180.0,
) -> BackendServer:
    """Start ``python -m backend`` (tiny preset) on a free port; return once its models are loaded."""
    model_dir = work_dir / "model_dir"
    model_dir.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.update(
        MODEL_PRESET="tiny",
        HOST="127.0.0.1",
        PORT=str(port),
        MODEL_DIR=str(model_dir),
        LABEL_STUDIO_URL=label_studio_url,
        LABEL_STUDIO_API_KEY=api_key,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GUNICORN_THREADS="4",
    )
    env.update(extra_env or {})
    process = ManagedProcess("backend", [str(python), "-m", "backend"], env, cwd=REPO_ROOT, log_path=log_path)
    url = f"http://127.0.0.1:{port}"

    def models_ready() -> bool:
        health = requests.get(f"{url}/health", timeout=2)
        if health.status_code != 200:
            return False
        state = str(health.json().get("models", "ready"))
        if state.startswith("error"):
            raise process.fail(f"model loading failed: {health.text}")
        return state == "ready"

    try:
        process.wait_until(models_ready, startup_timeout_s, f"ready models on {url}/health")
    except BaseException:
        process.stop()
        raise
    return BackendServer(url=url, model_dir=model_dir, process=process)
