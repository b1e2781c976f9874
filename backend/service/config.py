"""Service settings, read from the environment by :meth:`ServiceConfig.from_env`.

Nothing is read at import time: the app factory calls ``ServiceConfig.from_env()``
(or receives a ready ``ServiceConfig`` from a test). Every variable is documented in
docs/service.md; bad values raise ``ValueError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .ssrf import parse_allowed_hosts

FAILED_TASK_REPLIES = ("empty", "none")


def _text(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


DEFAULT_TRAINING_HOOK = "backend.service.retraining:retrain_fmbseg"


def _training_hook(environ: Mapping[str, str]) -> str | None:
    """``TRAINING_HOOK``: unset -> retrain FMbSeg on human corrections; ``none`` -> no training."""
    value = _text(environ, "TRAINING_HOOK", DEFAULT_TRAINING_HOOK)
    return None if value.lower() in ("none", "off", "false") else value


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _text(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = _text(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def parse_bool(raw: str, name: str) -> bool:
    """``"1"/"true"/"yes"/"on"`` -> True, ``"0"/"false"/"no"/"off"`` -> False (any case)."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true/false, got {raw!r}")


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _text(environ, name)
    return default if raw is None else parse_bool(raw, name)


def parse_settings_json(raw: str | None, name: str) -> dict[str, Any]:
    """A JSON object of method-setting overrides (``{"field": value}``); ``None``/empty -> ``{}``."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} must be a JSON object, e.g. '{{\"field\": 1}}': {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from the environment (see docs/service.md)."""

    # --- server -------------------------------------------------------------------------
    host: str = "127.0.0.1"  # HOST: this machine only; the Docker image sets 0.0.0.0
    port: int = 9090  # PORT
    threads: int = 32  # GUNICORN_THREADS: request threads of the single gunicorn worker (/health needs a free one)
    worker_timeout_s: int = 600  # GUNICORN_TIMEOUT
    log_level: str = "INFO"  # LOG_LEVEL
    basic_auth_user: str | None = None  # BASIC_AUTH_USER
    basic_auth_pass: str | None = None  # BASIC_AUTH_PASS

    # --- models -------------------------------------------------------------------------
    model_preset: str = "cpu"  # MODEL_PRESET: paper | cpu | tiny (backend.models registry)
    device: str | None = None  # DEVICE: e.g. cpu, cuda, cuda:1; None lets backend.models choose
    model_dir: Path = Path("model_dir")  # MODEL_DIR: annotations, checkpoints, caches
    load_models_on_start: bool = True  # MODEL_LOAD_ON_START (false: on the first /predict)
    model_process: bool = True  # MODEL_PROCESS: models in a child process (false: in the HTTP process)
    model_load_wait_s: float = 60.0  # MODEL_LOAD_WAIT: /predict waits this long for loading
    fmbseg_checkpoint: Path | None = None  # FMBSEG_CHECKPOINT; default: newest in MODEL_DIR
    zeroguide_settings: Mapping[str, Any] = field(default_factory=dict)  # ZEROGUIDE_SETTINGS
    fmbseg_settings: Mapping[str, Any] = field(default_factory=dict)  # FMBSEG_SETTINGS
    click_settings: Mapping[str, Any] = field(default_factory=dict)  # CLICK_SETTINGS (interactive mode)
    training_hook: str | None = None  # TRAINING_HOOK: "package.module:function"; from_env: retraining, "none": off

    # --- per-tag defaults (tag attributes override them) --------------------------------
    score_threshold: float = 0.0  # MODEL_SCORE_THRESHOLD
    max_regions: int = 50  # MODEL_MAX_REGIONS (zero-guidance segments per image)
    min_region_area: int = 0  # MODEL_MIN_AREA: pixels at the original size
    polygon_tolerance: float = 1.0  # MODEL_POLYGON_TOLERANCE: Douglas-Peucker, pixels
    fmbseg_refine: bool | None = None  # FMBSEG_REFINE: SAM refinement (None: FMbSegSettings.refine)
    fmbseg_open_vocabulary: bool = False  # FMBSEG_OPEN_VOCABULARY: labels outside the checkpoint zero-shot

    # --- Label Studio and images ----------------------------------------------------------
    label_studio_url: str | None = None  # LABEL_STUDIO_URL
    label_studio_api_key: str | None = None  # LABEL_STUDIO_API_KEY (legacy token or PAT)
    local_files_root: Path | None = None  # LOCAL_FILES_DOCUMENT_ROOT
    image_max_bytes: int = 50 * 1024 * 1024  # IMAGE_MAX_BYTES
    image_timeout_s: float = 30.0  # IMAGE_DOWNLOAD_TIMEOUT: whole download
    image_max_pixels: int = 40_000_000  # IMAGE_MAX_PIXELS: larger images are refused
    model_max_pixels: int = 1024 * 1024  # MODEL_MAX_PIXELS: larger images are downscaled
    failed_task_reply: str = "empty"  # FAILED_TASK_REPLY: empty | none
    # INFORMATIVENESS_STAGE1: with a trained alignment module, also run FMbSeg Stage 1 on every
    # task (SAM: seconds on a CPU) so that its disagreement with Stage 2 enters the task's score
    informativeness_stage1: bool = False

    # --- image fetching safety (docs/reliability.md) ----------------------------------------
    image_allowed_hosts: tuple[str, ...] = ()  # IMAGE_ALLOWED_HOSTS: host or host:port, exempt from SSRF checks
    ssrf_protection_enabled: bool = True  # SSRF_PROTECTION_ENABLED (Label Studio's name); false: closed networks
    image_decode_concurrency: int = 2  # IMAGE_DECODE_CONCURRENCY: images decoded at once

    # --- request limits (checked before a body is parsed; see docs/reliability.md) ----------
    max_request_bytes: int = 20 * 1024 * 1024  # MAX_REQUEST_BYTES: larger bodies get 413
    max_tasks_per_request: int = 100  # MAX_TASKS_PER_REQUEST: more tasks in one /predict get 400
    max_json_depth: int = 64  # MAX_JSON_DEPTH: deeper nesting of arrays/objects gets 400
    max_json_containers: int = 1_000_000  # MAX_JSON_CONTAINERS: more arrays+objects in one body get 400

    # --- the model process (backend.service.model_process; docs/reliability.md) ------------
    predict_timeout_s: float | None = None  # PREDICT_TIMEOUT: per model call; None: by preset; 0: none
    training_timeout_s: float = 21600.0  # TRAINING_TIMEOUT: per training run; 0: none
    model_max_in_flight: int = 2  # MODEL_MAX_IN_FLIGHT: model calls sent to the model process at once
    model_queue_wait_s: float = 30.0  # MODEL_QUEUE_WAIT: wait for a call slot, then 503 + Retry-After
    restart_budget: int = 5  # MODEL_RESTART_BUDGET: restarts in a row before waiting for a refill
    restart_refill_s: float = 600.0  # MODEL_RESTART_REFILL: seconds per restart token regained
    restart_backoff_s: float = 1.0  # MODEL_RESTART_BACKOFF: first delay before a restart, doubling
    restart_backoff_max_s: float = 60.0  # MODEL_RESTART_BACKOFF_MAX: longest delay before a restart

    # --- corrections (backend.service.reconcile) ----------------------------------------------
    reconcile_interval_s: float = 0.0  # RECONCILE_INTERVAL: seconds between reconciliations with Label Studio; 0: off

    # --- pre-labelling jobs (POST /prelabel; docs/prelabel.md) --------------------------------
    prelabel_ray_address: str | None = (
        None  # PRELABEL_RAY_ADDRESS: Ray cluster for the jobs; None: this backend's models
    )
    prelabel_workers: int = 2  # PRELABEL_WORKERS: Ray workers of a job (with PRELABEL_RAY_ADDRESS)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be in 1..65535, got {self.port}")
        if self.threads < 1:
            raise ValueError(f"GUNICORN_THREADS must be >= 1, got {self.threads}")
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"MODEL_SCORE_THRESHOLD must be in [0, 1], got {self.score_threshold}")
        if self.image_max_bytes < 1 or self.image_max_pixels < 1 or self.model_max_pixels < 1:
            raise ValueError("IMAGE_MAX_BYTES, IMAGE_MAX_PIXELS and MODEL_MAX_PIXELS must be >= 1")
        if self.image_timeout_s <= 0:
            raise ValueError(f"IMAGE_DOWNLOAD_TIMEOUT must be > 0, got {self.image_timeout_s}")
        if self.failed_task_reply not in FAILED_TASK_REPLIES:
            raise ValueError(f"FAILED_TASK_REPLY must be one of {FAILED_TASK_REPLIES}, got {self.failed_task_reply!r}")
        if self.training_hook is not None and ":" not in self.training_hook:
            raise ValueError(f"TRAINING_HOOK must look like 'package.module:function', got {self.training_hook!r}")
        if self.label_studio_url is not None:
            if not self.label_studio_url.startswith(("http://", "https://")):
                raise ValueError(f"LABEL_STUDIO_URL must start with http:// or https://, got {self.label_studio_url!r}")
            object.__setattr__(self, "label_studio_url", self.label_studio_url.rstrip("/"))
        if self.label_studio_api_key is not None and self.label_studio_url is None:
            raise ValueError(
                "LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: set LABEL_STUDIO_URL to Label Studio's "
                "address (the key is only ever sent there, never to a hostname from /setup or a task)"
            )
        if isinstance(self.image_allowed_hosts, str):
            object.__setattr__(self, "image_allowed_hosts", tuple(self.image_allowed_hosts.split(",")))
        object.__setattr__(self, "image_allowed_hosts", tuple(h.strip() for h in self.image_allowed_hosts if h.strip()))
        parse_allowed_hosts(self.image_allowed_hosts)  # ValueError naming IMAGE_ALLOWED_HOSTS
        if self.image_decode_concurrency < 1:
            raise ValueError(f"IMAGE_DECODE_CONCURRENCY must be >= 1, got {self.image_decode_concurrency}")

    @property
    def basic_auth_enabled(self) -> bool:
        return self.basic_auth_user is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServiceConfig":
        """Build the configuration from ``environ`` (default: ``os.environ``).

        Raises ``ValueError`` naming the variable, also for ``MODEL_PRESET`` and method settings
        (``ZEROGUIDE_SETTINGS`` / ``FMBSEG_SETTINGS`` / ``CLICK_SETTINGS``) that the methods would refuse.
        """
        from .method_settings import check_operator_settings

        config = cls._from_env(os.environ if environ is None else environ)
        check_operator_settings(config)
        return config

    @classmethod
    def _from_env(cls, env: Mapping[str, str]) -> "ServiceConfig":
        checkpoint = _text(env, "FMBSEG_CHECKPOINT")
        local_root = _text(env, "LOCAL_FILES_DOCUMENT_ROOT")
        return cls(
            host=_text(env, "HOST", "127.0.0.1"),
            port=_int(env, "PORT", 9090, minimum=1),
            threads=_int(env, "GUNICORN_THREADS", 32, minimum=1),
            worker_timeout_s=_int(env, "GUNICORN_TIMEOUT", 600, minimum=0),
            log_level=_text(env, "LOG_LEVEL", "INFO").upper(),
            basic_auth_user=_text(env, "BASIC_AUTH_USER"),
            basic_auth_pass=_text(env, "BASIC_AUTH_PASS"),
            model_preset=_text(env, "MODEL_PRESET", "cpu"),
            device=_text(env, "DEVICE"),
            model_dir=Path(_text(env, "MODEL_DIR", "model_dir")),
            load_models_on_start=_bool(env, "MODEL_LOAD_ON_START", True),
            model_process=_bool(env, "MODEL_PROCESS", True),
            model_load_wait_s=_float(env, "MODEL_LOAD_WAIT", 60.0),
            fmbseg_checkpoint=Path(checkpoint) if checkpoint else None,
            zeroguide_settings=parse_settings_json(_text(env, "ZEROGUIDE_SETTINGS"), "ZEROGUIDE_SETTINGS"),
            fmbseg_settings=parse_settings_json(_text(env, "FMBSEG_SETTINGS"), "FMBSEG_SETTINGS"),
            click_settings=parse_settings_json(_text(env, "CLICK_SETTINGS"), "CLICK_SETTINGS"),
            training_hook=_training_hook(env),
            score_threshold=_float(env, "MODEL_SCORE_THRESHOLD", 0.0),
            max_regions=_int(env, "MODEL_MAX_REGIONS", 50, minimum=1),
            min_region_area=_int(env, "MODEL_MIN_AREA", 0),
            polygon_tolerance=_float(env, "MODEL_POLYGON_TOLERANCE", 1.0),
            fmbseg_refine=None if _text(env, "FMBSEG_REFINE") is None else _bool(env, "FMBSEG_REFINE", True),
            fmbseg_open_vocabulary=_bool(env, "FMBSEG_OPEN_VOCABULARY", False),
            label_studio_url=_text(env, "LABEL_STUDIO_URL"),
            label_studio_api_key=_text(env, "LABEL_STUDIO_API_KEY"),
            local_files_root=Path(local_root) if local_root else None,
            image_max_bytes=_int(env, "IMAGE_MAX_BYTES", 50 * 1024 * 1024, minimum=1),
            image_timeout_s=_float(env, "IMAGE_DOWNLOAD_TIMEOUT", 30.0),
            image_max_pixels=_int(env, "IMAGE_MAX_PIXELS", 40_000_000, minimum=1),
            model_max_pixels=_int(env, "MODEL_MAX_PIXELS", 1024 * 1024, minimum=1),
            failed_task_reply=_text(env, "FAILED_TASK_REPLY", "empty").lower(),
            informativeness_stage1=_bool(env, "INFORMATIVENESS_STAGE1", False),
            image_allowed_hosts=tuple((_text(env, "IMAGE_ALLOWED_HOSTS") or "").split(",")),
            ssrf_protection_enabled=_bool(env, "SSRF_PROTECTION_ENABLED", True),
            image_decode_concurrency=_int(env, "IMAGE_DECODE_CONCURRENCY", 2, minimum=1),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 20 * 1024 * 1024, minimum=1),
            max_tasks_per_request=_int(env, "MAX_TASKS_PER_REQUEST", 100, minimum=1),
            max_json_depth=_int(env, "MAX_JSON_DEPTH", 64, minimum=2),
            max_json_containers=_int(env, "MAX_JSON_CONTAINERS", 1_000_000, minimum=1),
            predict_timeout_s=None if _text(env, "PREDICT_TIMEOUT") is None else _float(env, "PREDICT_TIMEOUT", 0.0),
            training_timeout_s=_float(env, "TRAINING_TIMEOUT", 21600.0),
            model_max_in_flight=_int(env, "MODEL_MAX_IN_FLIGHT", 2, minimum=1),
            model_queue_wait_s=_float(env, "MODEL_QUEUE_WAIT", 30.0),
            restart_budget=_int(env, "MODEL_RESTART_BUDGET", 5, minimum=1),
            restart_refill_s=_float(env, "MODEL_RESTART_REFILL", 600.0, minimum=1.0),
            restart_backoff_s=_float(env, "MODEL_RESTART_BACKOFF", 1.0),
            restart_backoff_max_s=_float(env, "MODEL_RESTART_BACKOFF_MAX", 60.0),
            reconcile_interval_s=_float(env, "RECONCILE_INTERVAL", 0.0),
            prelabel_ray_address=_text(env, "PRELABEL_RAY_ADDRESS"),
            prelabel_workers=_int(env, "PRELABEL_WORKERS", 2, minimum=1),
        )

    def replace(self, **changes: Any) -> "ServiceConfig":
        """A copy with some fields changed (tests, CLI overrides)."""
        return dataclasses.replace(self, **changes)
