"""``MODEL_DIR`` must be writable: checked once when the app starts (:func:`backend.service.app.create_app`).

Stored annotations, checkpoints and caches are written there; a directory the service cannot write
(e.g. a root-owned bind mount in a container running as uid 10001) would otherwise only show as a
``PermissionError`` in every zero-guidance task and webhook while ``/health`` said ready.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def model_dir_problem(model_dir: Path) -> str | None:
    """``None`` when this process can create ``model_dir`` (``mkdir -p``) and a file in it; else why not."""
    probe = Path(model_dir) / f".write-check-{os.getpid()}"
    try:
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as error:
        uid, gid = os.getuid(), os.getgid()
        message = (
            f"MODEL_DIR {str(model_dir)!r} is not writable by uid {uid} (gid {gid}): "
            f"{type(error).__name__}: {error.strerror or error}. Make it writable by uid {uid}, e.g. "
            f"`chown -R {uid}:{gid} DIR` on the host folder of a bind mount, and restart."
        )
        logger.error(message)
        return message
    return None
