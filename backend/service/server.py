"""``python -m backend``: serve the app with gunicorn.

One worker (the models are loaded once, in that worker, by a background thread) with
``GUNICORN_THREADS`` request threads (``gthread``), so ``/health`` and ``/setup`` answer while a
long ``/predict`` runs. ``HOST``/``PORT`` choose the address (default ``0.0.0.0:9090``).
"""

from __future__ import annotations

import logging
import sys
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: python -m backend\n\nStarts the Label Studio ML backend (gunicorn, 1 worker).\n"
            "Configured by environment variables: PORT (9090), HOST (0.0.0.0), MODEL_PRESET (cpu),\n"
            "MODEL_DIR, DEVICE, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ... (see docs/service.md)."
        )
        return 0
    if args:
        print(f"python -m backend takes no arguments (got {args}); configure it with environment variables", file=sys.stderr)
        return 2
    try:
        config = ServiceConfig.from_env()
    except ValueError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    # Import Flask and label-studio-sdk (seconds) before gunicorn binds the port, so that once the
    # port accepts connections the worker answers /health at once. Only imports: no threads or
    # models before the fork (those start in the worker, in create_app).
    from . import app  # noqa: F401

    GunicornServer(config).run()
    return 0
