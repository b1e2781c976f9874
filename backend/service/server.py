"""``python -m backend``: serve the app with gunicorn.

One worker (the models are loaded once, in that worker, by a background thread) with
``GUNICORN_THREADS`` request threads (``gthread``), so ``/health`` and ``/setup`` answer while a
long ``/predict`` runs. ``HOST``/``PORT`` choose the address (default ``127.0.0.1:9090``: this machine only; the Docker
image sets ``HOST=0.0.0.0``).
"""

from __future__ import annotations

import gc
import importlib
import logging
import pkgutil
import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication

from .config import ServiceConfig

LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class GunicornServer(BaseApplication):
    """Gunicorn with the app factory: ``create_app(config)`` runs inside the worker."""

    def __init__(self, config: ServiceConfig) -> None:
        self.service_config = config
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": f"{self.service_config.host}:{self.service_config.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.service_config.threads,
            "timeout": self.service_config.worker_timeout_s,
            "graceful_timeout": 10,
            "loglevel": self.service_config.log_level.lower(),
            "errorlog": "-",
            "preload_app": False,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app(self.service_config)


# Imported before gunicorn forks its worker: the service's own stack; with MODEL_PROCESS=false
# also every module of the method packages (which import torch, open_clip, timm, ...).
SERVICE_MODULES = ("backend.service.app",)
METHOD_PACKAGES = ("backend.models", "backend.zeroguide", "backend.fmbseg")


def import_libraries(config: ServiceConfig) -> None:
    """Import (never build) the heavy libraries before gunicorn binds the port and forks.

    Once the port accepts connections the worker answers at once. By default the models live in
    a child process that imports its own libraries, so only Flask and label-studio-sdk are needed
    here; with ``MODEL_PROCESS=false`` the worker loads the models itself and torch, open_clip
    and friends are imported here too (imported in the worker's loader thread they held the
    interpreter and delayed ``/health``). Nothing is built and no thread started before the fork.
    A module that fails to import is only logged: the worker reports it where it matters.
    """
    log = logging.getLogger(__name__)
    names = list(SERVICE_MODULES)
    if not config.model_process:
        names.append("torch")
        for package_name in METHOD_PACKAGES:
            try:
                package = importlib.import_module(package_name)
            except Exception as error:
                log.warning("could not import %s before starting: %s: %s", package_name, type(error).__name__, error)
                continue
            names.extend(
                module.name
                for module in pkgutil.walk_packages(package.__path__, prefix=package_name + ".")
                if not module.name.endswith("__main__")
            )
    started = time.monotonic()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # reported again by the worker where it matters
            log.warning("could not import %s before starting: %s: %s", name, type(error).__name__, error)
    log.info("imported %d modules in %.1f s", len(names), time.monotonic() - started)
    gc.freeze()  # the imported modules live forever: keep them out of the worker's garbage collections


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: python -m backend\n\nStarts the Label Studio ML backend (gunicorn, 1 worker).\n"
            "Configured by environment variables: PORT (9090), HOST (127.0.0.1), MODEL_PRESET (cpu),\n"
            "MODEL_DIR, DEVICE, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ... (see docs/service.md)."
        )
        return 0
    if args:
        print(
            f"python -m backend takes no arguments (got {args}); configure it with environment variables",
            file=sys.stderr,
        )
        return 2
    try:
        config = ServiceConfig.from_env()
    except ValueError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    import_libraries(config)
    GunicornServer(config).run()
    return 0
