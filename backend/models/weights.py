"""Where pretrained weights come from, and the one error raised when they are missing.

Every foundation model loads its weights the library's standard way (an open_clip ``pretrained``
tag, a timm model name, a transformers model name, a SAM checkpoint file) or from a local path
named by an environment variable. Nothing is downloaded at import time, and a missing weight
fails at load time with :class:`MissingWeightsError`, whose message names the model, what was
expected, and the variable to set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "SAM_CHECKPOINTS",
    "CheckpointSource",
    "MissingWeightsError",
    "fetch_checkpoint",
    "go_offline_unless_hub_answers",
    "local_weights_path",
    "weights_dir",
]

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
_probe_lock = threading.Lock()
_probed = False


class MissingWeightsError(RuntimeError):
    """Pretrained weights for a foundation model could not be found.

    Args:
        model: the model that needs the weights, e.g. ``"CLIP ViT-L-14-336 (openai)"``.
        expected: the file or tag that was looked for.
        env_var: the environment variable that names a local copy.
        cause: optional short description of the underlying failure.
    """

    def __init__(self, model: str, expected: str, env_var: str, cause: str | None = None):
        self.model = model
        self.expected = expected
        self.env_var = env_var
        message = (
            f"Pretrained weights for {model} are missing: expected {expected}. "
            f"Download them once and set {env_var}=/path/to/the/file "
            f"(or use MODEL_PRESET=tiny for random weights, tests only)."
        )
        if cause:
            message += f" Underlying error: {cause}"
        super().__init__(message)


def local_weights_path(env_var: str, model: str, expected: str) -> Path | None:
    """The local path named by ``env_var``, or ``None`` when the variable is unset.

    Raises:
        MissingWeightsError: the variable is set but names no existing file or folder.
    """
    value = os.environ.get(env_var, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise MissingWeightsError(model, f"{expected} at {path} ({env_var} points there)", env_var)
    return path


def go_offline_unless_hub_answers(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Before a first download from the Hugging Face hub: is it reachable? Returns True if so.

    Without a network the hub clients retry for minutes before they give up, and the service's
    ``/health`` says "loading" all that time. One TCP connection to the hub (``HF_ENDPOINT``,
    default huggingface.co:443) with a short timeout decides instead: when it fails, this process
    sets ``HF_HUB_OFFLINE=1``, so open_clip, timm and transformers look only in their local
    caches and a missing weight fails at once with :class:`MissingWeightsError`. Skipped (False)
    when ``HF_HUB_OFFLINE`` is already set; probed once per process.
    """
    global _probed
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    with _probe_lock:
        if _probed:
            return os.environ.get("HF_HUB_OFFLINE") != "1"
        _probed = True
        endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return True
        except OSError as error:
            os.environ["HF_HUB_OFFLINE"] = "1"
            logger.warning(
                "the Hugging Face hub (%s:%s) did not answer within %.0f s (%s): working offline "
                "(HF_HUB_OFFLINE=1), from local files and caches only",
                host,
                port,
                timeout_s,
                type(error).__name__,
            )
            return False


@dataclass(frozen=True)
class CheckpointSource:
    """Where an official checkpoint file is published, and its published SHA-256."""

    url: str
    sha256: str


# segment-anything's official checkpoints (README of facebookresearch/segment-anything).
SAM_CHECKPOINTS: dict[str, CheckpointSource] = {
    "sam_vit_b_01ec64.pth": CheckpointSource(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "sam_vit_l_0b3195.pth": CheckpointSource(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_h_4b8939.pth": CheckpointSource(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}

DOWNLOAD_CONNECT_TIMEOUT_S = 10.0
DOWNLOAD_READ_TIMEOUT_S = 60.0


def weights_dir() -> Path:
    """Where downloaded checkpoint files go: ``WEIGHTS_DIR``, else ``MODEL_DIR/weights``."""
    explicit = os.environ.get("WEIGHTS_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("MODEL_DIR", "").strip() or "model_dir").expanduser() / "weights"


def fetch_checkpoint(name: str, directory: Path, source: CheckpointSource, env_var: str, progress: bool = True) -> Path:
    """``directory/name``, downloaded from ``source`` first if it is not there yet.

    The download goes to ``name.partial``, its SHA-256 is checked against the published one, and
    only then is it renamed (atomically) to ``name``: a wrong or interrupted download never
    leaves a file that looks finished. Raises :class:`MissingWeightsError` (naming ``env_var``)
    when the file cannot be had.
    """
    import requests
    from tqdm import tqdm

    target = directory / name
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{name}.partial"
    digest = hashlib.sha256()
    logger.info("downloading %s from %s into %s", name, source.url, directory)
    try:
        with requests.get(
            source.url, stream=True, timeout=(DOWNLOAD_CONNECT_TIMEOUT_S, DOWNLOAD_READ_TIMEOUT_S)
        ) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                partial.open("wb") as handle,
                tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar,
            ):
                for block in response.iter_content(1 << 20):
                    handle.write(block)
                    digest.update(block)
                    bar.update(len(block))
                handle.flush()
                os.fsync(handle.fileno())
    except (requests.RequestException, OSError) as error:
        partial.unlink(missing_ok=True)
        raise MissingWeightsError(
            name, f"the file {name} from {source.url} in {directory}", env_var, cause=f"download failed: {error}"
        ) from error
    if digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise MissingWeightsError(
            name,
            f"the file {name} from {source.url}",
            env_var,
            cause=f"the download's SHA-256 is {digest.hexdigest()}, the published one {source.sha256}",
        )
    os.replace(partial, target)
    return target
