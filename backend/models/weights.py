"""Where pretrained weights come from, and the one error raised when they are missing.

Every foundation model loads its weights the library's standard way (an open_clip ``pretrained``
tag, a timm model name, a transformers model name, a SAM checkpoint file) or from a local path
named by an environment variable. Nothing is downloaded at import time, and a missing weight
fails at load time with :class:`MissingWeightsError`, whose message names the model, what was
expected, and the variable to set.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MissingWeightsError", "local_weights_path"]


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
