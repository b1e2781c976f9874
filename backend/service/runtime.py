"""The models the service owns: loaded once per process, in a background thread.

:class:`ModelRuntime` loads the foundation models of ``MODEL_PRESET`` (``backend.models``) off the
request path, so ``/health`` and ``/setup`` answer in milliseconds while loading takes minutes;
``/predict`` waits for it (up to ``MODEL_LOAD_WAIT`` seconds, then 503). It builds the method
facades (zero-guidance segmenter, FMbSeg predictor) on demand, caches them per settings, and
serialises inference (the facades keep per-image state).

The method packages are imported lazily, inside :class:`MethodLibrary`; tests hand the runtime a
fake library instead, so the service logic is tested without models.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from .config import ServiceConfig

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
FMBSEG_CHECKPOINT_SUBDIR = Path("checkpoints") / "fmbseg"


class ModelsNotReady(RuntimeError):
    """The models are still loading, or failed to load (the message says which)."""


class MethodLibrary(Protocol):
    """What the service needs from the method code (the real one is :class:`DefaultMethodLibrary`)."""

    def load_models(self, preset: str, device: str | None) -> Any:
        """Load (and warm up) the foundation models of ``preset``; slow."""

    def zero_guidance(self, models: Any, overrides: Mapping[str, Any]) -> Any:
        """An object with ``segment(image) -> result`` (``result.segments[i].mask/.text/.score``)."""

    def fmbseg(self, models: Any, overrides: Mapping[str, Any], checkpoint: Path | None) -> Any:
        """An object with ``predict(image, classes=[...], refine=bool) -> .label_map/.class_masks/.classes``."""


def build_settings(
    settings_class: type, preset_overrides: Mapping[str, Any], overrides: Mapping[str, Any], what: str
) -> Any:
    """The paper's settings with the preset's overrides, then ours (environment and tag attributes).

    Unknown field names raise a ``ValueError`` that lists the valid ones.
    """
    known = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{what}: unknown {settings_class.__name__} fields {unknown}; valid fields: {sorted(known)}")
    merged = {**dict(preset_overrides), **dict(overrides)}
    if hasattr(settings_class, "for_preset"):
        return settings_class.for_preset(merged)
    return settings_class(**merged)


class DefaultMethodLibrary:
    """The real methods: ``backend.models``, ``backend.zeroguide``, ``backend.fmbseg`` (lazy imports).

    ``cache_dir`` (``MODEL_DIR/caches``) holds what the methods may cache on disk, e.g. the retrieval
    captioner's vocabulary embeddings, so a restart does not recompute them.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir

    def load_models(self, preset: str, device: str | None) -> Any:
        from backend.models import load_models

        models = load_models(preset, device=device)
        started = time.monotonic()
        models.load()  # build CLIP, DINO, DINOv2 and SAM now, in this background thread
        logger.info("foundation models %s built in %.1f s", models.loaded(), time.monotonic() - started)
        return models

    def zero_guidance(self, models: Any, overrides: Mapping[str, Any]) -> Any:
        from backend.zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings

        settings = build_settings(
            ZeroGuideSettings, models.method_overrides("zeroguide"), overrides, "zero-guidance settings"
        )
        if (
            settings.captioner == "retrieval"
            and self.cache_dir is not None
            and "cache_dir" not in settings.captioner_options
        ):
            options = {**dict(settings.captioner_options), "cache_dir": str(self.cache_dir / "zeroguide-captioning")}
            settings = settings.replace(captioner_options=options)  # where it caches; not what it predicts
        return ZeroGuidanceSegmenter(models, settings)

    def fmbseg(self, models: Any, overrides: Mapping[str, Any], checkpoint: Path | None) -> Any:
        from backend.fmbseg import FMbSegPredictor, FMbSegSettings

        settings = build_settings(FMbSegSettings, models.method_overrides("fmbseg"), overrides, "FMbSeg settings")
        return FMbSegPredictor(models, settings, checkpoint=checkpoint)

    def warm_up(self, kind: str, facade: Any) -> None:
        """Pay a facade's one-off costs now (the retrieval captioner embeds its whole vocabulary)."""
        if kind == "zero-guidance":
            captioner = getattr(facade, "captioner", None)
            getattr(captioner, "vocabulary_embeddings", None)


LOADER_NICENESS = 10


def _lower_this_threads_priority() -> None:
    """Give the calling thread (and the threads it starts, e.g. torch's pool) a lower CPU priority.

    Loading keeps every core busy for minutes; at normal priority it delayed ``/health`` by up to
    0.8 s on a 2-core machine (Label Studio allows 1 s). Linux only; elsewhere a no-op.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
    except (AttributeError, OSError) as error:
        logger.debug("could not lower the loader thread's priority: %s", error)


def trained_classes(predictor: Any) -> list[str] | None:
    """The class list an FMbSeg predictor's alignment checkpoint was trained for (None: no checkpoint)."""
    method = getattr(predictor, "trained_classes", None)
    if callable(method):
        return method()
    classes = getattr(getattr(predictor, "checkpoint", None), "classes", None)
    return None if classes is None else [str(c) for c in classes]


def settings_key(overrides: Mapping[str, Any]) -> str:
    """A canonical JSON string for a settings-override mapping (cache key, version hash input)."""
    return json.dumps(dict(overrides), sort_keys=True, default=str)


class CheckpointLocator:
    """Which FMbSeg alignment checkpoint to predict with, and its version string."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._versions: dict[tuple, str] = {}

    @property
    def directory(self) -> Path:
        """Where training writes FMbSeg alignment checkpoints: ``MODEL_DIR/checkpoints/fmbseg``."""
        return self.config.model_dir / FMBSEG_CHECKPOINT_SUBDIR

    def path(self) -> Path | None:
        """``FMBSEG_CHECKPOINT`` if set, else the newest checkpoint file in :attr:`directory`."""
        if self.config.fmbseg_checkpoint is not None:
            return self.config.fmbseg_checkpoint
        if not self.directory.is_dir():
            return None
        candidates = [p for p in self.directory.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def version(self) -> str:
        """``"base"`` without a checkpoint, else ``"<file stem>-<first 8 hex of its SHA-256>"``."""
        path = self.path()
        if path is None:
            return "base"
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ValueError(f"FMbSeg checkpoint {path} does not exist (FMBSEG_CHECKPOINT)") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            version = self._versions.get(key)
        if version is None:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            version = f"{path.stem}-{digest.hexdigest()[:8]}"
            with self._lock:
                self._versions[key] = version
        return version


class ModelRuntime:
    """Owns the loaded models and the method facades built on them."""

    def __init__(self, config: ServiceConfig, methods: MethodLibrary | None = None) -> None:
        self.config = config
        self.methods: MethodLibrary = methods or DefaultMethodLibrary(cache_dir=config.model_dir / "caches")
        self._models: Any = None
        self._status = "idle"
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._facades: dict[tuple, Any] = {}
        self.checkpoints = CheckpointLocator(config)
        self.load_seconds: float | None = None
        # The facades keep per-image state (e.g. SAM's image embedding): one inference at a time.
        self.inference_lock = threading.Lock()

    # ---- loading ------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"idle"`` (not started), ``"loading"``, ``"ready"`` or ``"error: <message>"``."""
        return self._status

    def start_loading(self) -> None:
        """Start loading in a daemon thread (idempotent)."""
        with self._lock:
            if self._status != "idle":
                return
            self._status = "loading"
            self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        _lower_this_threads_priority()
        # Loading creates millions of long-lived objects; the cyclic garbage collector's full
        # passes over them held the interpreter for 0.4-0.8 s at a time, stalling /health.
        # Collect nothing while loading, then move everything loaded out of the collector's way.
        gc.disable()
        try:
            self._load_and_warm_up()
        finally:
            gc.enable()
            gc.freeze()

    def _load_and_warm_up(self) -> None:
        started = time.monotonic()
        logger.info("loading models for preset %r (device=%s)", self.config.model_preset, self.config.device or "auto")
        try:
            models = self.methods.load_models(self.config.model_preset, self.config.device)
        except Exception as error:  # reported by /health and /predict, never raised in a request
            logger.exception("loading models for preset %r failed", self.config.model_preset)
            with self._lock:
                self._status = f"error: {type(error).__name__}: {error}"
            self._ready.set()
            return
        self._warm_up(models)
        with self._lock:
            self._models = models
            self._status = "ready"
            self.load_seconds = time.monotonic() - started
        logger.info("models ready in %.1f s", self.load_seconds)
        self._ready.set()

    def _warm_up(self, models: Any) -> None:
        """Build the default facades before reporting "ready", so the first /predict is not the
        slow one. Failures are logged, not fatal: a method that cannot be built fails its tasks."""
        warm_up = getattr(self.methods, "warm_up", None)
        builders = {
            "zero-guidance": (
                ("zero-guidance", settings_key(self.config.zeroguide_settings)),
                lambda m: self.methods.zero_guidance(m, self.config.zeroguide_settings),
            ),
        }
        for kind, (key, build) in builders.items():
            started = time.monotonic()
            try:
                facade = self._facade(key, build, models=models)
                if warm_up is not None:
                    warm_up(kind, facade)
            except Exception:
                logger.warning("warming up %s failed; its tasks will report the error", kind, exc_info=True)
                continue
            logger.info("%s ready in %.1f s", kind, time.monotonic() - started)

    def wait_until_ready(self, timeout_s: float) -> Any:
        """The loaded models; starts loading if needed. Raises :class:`ModelsNotReady`.

        A failed load is not retried (it would fail the same way on every request): fix the
        cause (see the log) and restart the service.
        """
        if self._status == "idle":
            self.start_loading()
        self._ready.wait(timeout_s)
        status = self._status
        if status == "ready":
            return self._models
        if status.startswith("error"):
            raise ModelsNotReady(f"models failed to load ({status[len('error: '):]}); see the service log")
        raise ModelsNotReady(
            f"models are still loading (preset {self.config.model_preset!r}); retry in a minute "
            f"(waited {timeout_s:.0f} s, MODEL_LOAD_WAIT)"
        )

    # ---- method facades ---------------------------------------------------------------

    def zero_guidance(self, overrides: Mapping[str, Any]) -> Any:
        """The zero-guidance facade for these setting overrides (``segment(image)``)."""
        key = ("zero-guidance", settings_key(overrides))
        return self._facade(key, lambda models: self.methods.zero_guidance(models, overrides))

    def fmbseg(self, overrides: Mapping[str, Any]) -> Any:
        """The FMbSeg facade for these overrides and the current checkpoint (``predict(...)``)."""
        checkpoint = self.checkpoints.path()
        key = ("fmbseg", settings_key(overrides), str(checkpoint), self.checkpoints.version())
        return self._facade(key, lambda models: self.methods.fmbseg(models, overrides, checkpoint))

    def _facade(self, key: tuple, build: Callable[[Any], Any], models: Any = None) -> Any:
        if models is None:
            models = self.wait_until_ready(self.config.model_load_wait_s)
        with self._lock:
            facade = self._facades.get(key)
        if facade is None:
            facade = build(models)
            with self._lock:
                facade = self._facades.setdefault(key, facade)
        return facade

    def forget_facades(self) -> None:
        """Drop cached facades (after training wrote a new checkpoint)."""
        with self._lock:
            self._facades.clear()

    def run_training(self, hook: Callable[[Any], Any] | str, request: Any) -> Any:
        """Run a training hook next to the models (here: in this process).

        ``hook``: a callable, or a ``"package.module:function"`` path imported here.
        """
        if isinstance(hook, str):
            from .training import import_hook

            hook = import_hook(hook)
        return hook(request)

    def stop(self) -> None:
        """Nothing to stop: the loader thread is a daemon."""
