"""The models the service owns: loaded once per process, in a background thread.

:class:`ModelRuntime` loads the foundation models of ``MODEL_PRESET`` (``backend.models``) off the
request path, so ``/health`` and ``/setup`` answer in milliseconds while loading takes minutes;
``/predict`` waits for it (up to ``MODEL_LOAD_WAIT`` seconds, then 503). It builds the method
facades (zero-guidance segmenter, FMbSeg predictor, interactive click segmenter) on demand, caches
them per settings, and serialises inference (the facades keep per-image state): one call at a time,
the others wait at most ``MODEL_QUEUE_WAIT`` seconds (:class:`CallGate`), then :class:`ModelsBusy`
(503 with ``Retry-After``).

The method packages are imported lazily, inside :class:`MethodLibrary`; tests hand the runtime a
fake library instead, so the service logic is tested without models.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol, Sequence

import numpy as np

from ..fmbseg.results import ClassMaskPrediction
from ..fmbseg.settings import FMbSegSettings
from ..interactive.results import ClickResult
from ..interactive.settings import ClickSettings
from ..zeroguide.results import ZeroGuidanceResult
from ..zeroguide.settings import ZeroGuideSettings
from .config import ServiceConfig
from .hooks import TrainingHook, TrainingRequest, import_hook

if TYPE_CHECKING:  # torch: never imported by the HTTP process
    from ..models.registry import FoundationModels

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
FMBSEG_CHECKPOINT_SUBDIR = Path("checkpoints") / "fmbseg"


class ModelsNotReady(RuntimeError):
    """The models are still loading, failed to load, or cannot take a call now (the message says
    which); the whole request answers 503, with ``Retry-After`` when ``retry_after_s`` is known."""

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelsBusy(ModelsNotReady):
    """Too many model calls in flight: this one waited ``MODEL_QUEUE_WAIT`` seconds for a slot."""


class CallGate:
    """At most ``slots`` model calls at once; a caller waits at most ``wait_s`` for a slot, then
    :class:`ModelsBusy`. Usable as a context manager (``with gate:``), like a lock.

    ``Retry-After`` is estimated from the recent call durations: the time the calls in flight
    need to finish (at least 1 s).
    """

    def __init__(self, slots: int, wait_s: float) -> None:
        if slots < 1:
            raise ValueError(f"MODEL_MAX_IN_FLIGHT must be >= 1, got {slots}")
        self.slots = slots
        self.wait_s = wait_s
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._holders: dict[int, float] = {}  # thread id -> monotonic time the slot was taken
        self.in_use = 0
        self.refused = 0
        self.average_call_s: float | None = None  # exponential moving average of slot holding times

    def acquire(self) -> None:
        if not self._semaphore.acquire(timeout=self.wait_s):
            with self._lock:
                self.refused += 1
            raise ModelsBusy(
                f"the models are busy: {self.slots} calls in flight (MODEL_MAX_IN_FLIGHT) and this one "
                f"waited {self.wait_s:g} s (MODEL_QUEUE_WAIT); retry later",
                retry_after_s=self.retry_after_s(),
            )
        with self._lock:
            self.in_use += 1
            self._holders[threading.get_ident()] = time.monotonic()

    def release(self) -> None:
        with self._lock:
            self.in_use -= 1
            started = self._holders.pop(threading.get_ident(), None)
            if started is not None:
                held = time.monotonic() - started
                average = self.average_call_s
                self.average_call_s = held if average is None else 0.8 * average + 0.2 * held
        self._semaphore.release()

    def retry_after_s(self) -> float:
        average = self.average_call_s if self.average_call_s is not None else 1.0
        return float(min(300, max(1, math.ceil(average * self.slots))))

    def __enter__(self) -> "CallGate":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


@dataclass(frozen=True)
class RuntimeHealth:
    """What ``/health`` reports about the models' owner: ``ok`` False -> 503 (Label Studio then
    shows the backend as disconnected and asks for no predictions)."""

    ok: bool
    retry_after_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class MethodLibrary(Protocol):
    """What the service needs from the method code (the real one is :class:`DefaultMethodLibrary`)."""

    def load_models(self, preset: str, device: str | None) -> FoundationModels:
        """Load (and warm up) the foundation models of ``preset``; slow."""

    def zero_guidance(self, models: FoundationModels, settings: ZeroGuideSettings) -> Segmenter:
        """The zero-guidance facade for these settings."""

    def fmbseg(self, models: FoundationModels, settings: FMbSegSettings, checkpoint: Path | None) -> ClassPredictor:
        """The FMbSeg facade for these settings and alignment checkpoint."""

    def click(
        self, models: FoundationModels, settings: ZeroGuideSettings, click_settings: ClickSettings, describer: Segmenter
    ) -> Clicker:
        """The interactive facade; ``describer``: the zero-guidance facade of ``settings`` (reused)."""


class Segmenter(Protocol):
    """What the service calls on a zero-guidance facade (``ZeroGuidanceSegmenter``)."""

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult: ...

    def warm_up(self) -> None: ...


class ClassPredictor(Protocol):
    """What the service calls on an FMbSeg facade (``FMbSegPredictor``)."""

    def predict(
        self,
        image: np.ndarray,
        classes: Sequence[str],
        refine: bool | None = None,
        open_vocabulary: bool = False,
        **options: bool,  # stage1_agreement=True (INFORMATIVENESS_STAGE1)
    ) -> ClassMaskPrediction: ...

    def trained_classes(self) -> list[str] | None: ...


class Clicker(Protocol):
    """What the service calls on an interactive facade (``ClickSegmenter``)."""

    def segment(
        self,
        image: np.ndarray,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        classes: Sequence[str] = (),
        task_key: str | None = None,
        class_template: str = "a photo of a {}",
    ) -> ClickResult: ...


class Runtime(Protocol):
    """The models' owner as the service sees it: :class:`ModelRuntime` (this process) or
    ``ProcessModelRuntime`` (a child process)."""

    config: ServiceConfig
    checkpoints: CheckpointLocator
    inference_lock: ContextManager[Any]  # held around one inference call (may raise ModelsBusy)
    load_seconds: float | None

    @property
    def status(self) -> str: ...

    def health(self) -> RuntimeHealth: ...

    def start_loading(self) -> None: ...

    def wait_until_ready(self, timeout_s: float) -> object: ...

    def zero_guidance(self, settings: ZeroGuideSettings) -> Segmenter: ...

    def fmbseg(self, settings: FMbSegSettings, project: int | None = None) -> ClassPredictor: ...

    def click(self, settings: ZeroGuideSettings, click_settings: ClickSettings) -> Clicker: ...

    def forget_facades(self) -> None: ...

    def run_training(self, hook: TrainingHook | str, request: TrainingRequest) -> Any: ...

    def stop(self) -> None: ...


class DefaultMethodLibrary:
    """The real methods: ``backend.models``, ``backend.zeroguide``, ``backend.fmbseg`` (lazy imports).

    ``cache_dir`` (``MODEL_DIR/caches``) holds what the methods may cache on disk, e.g. the retrieval
    captioner's vocabulary embeddings, so a restart does not recompute them.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._embedding_caches: dict[tuple[int, int], Any] = {}

    def load_models(self, preset: str, device: str | None) -> FoundationModels:
        from backend.models import load_models

        models = load_models(preset, device=device)
        started = time.monotonic()
        models.load()  # build CLIP, DINO, DINOv2 and SAM now, in this background thread
        logger.info("foundation models %s built in %.1f s", models.loaded(), time.monotonic() - started)
        return models

    def zero_guidance(self, models: FoundationModels, settings: ZeroGuideSettings) -> Segmenter:
        from backend.zeroguide import ZeroGuidanceSegmenter

        if self.cache_dir is not None:  # where a captioner may cache; not what it predicts
            options = settings.captioner_options.with_cache_dir(str(self.cache_dir / "zeroguide-captioning"))
            settings = settings.replace(captioner_options=options)
        return ZeroGuidanceSegmenter(models, settings)

    def fmbseg(self, models: FoundationModels, settings: FMbSegSettings, checkpoint: Path | None) -> ClassPredictor:
        from backend.fmbseg import FMbSegPredictor

        return FMbSegPredictor(models, settings, checkpoint=checkpoint)

    def click(
        self, models: FoundationModels, settings: ZeroGuideSettings, click_settings: ClickSettings, describer: Segmenter
    ) -> Clicker:
        """A ``ClickSegmenter``; every one of this library shares one embedding cache (its bounds
        are the operator's, the same for every project)."""
        from backend.interactive import ClickSegmenter, EmbeddingCache

        bounds = (click_settings.embedding_cache_entries, click_settings.embedding_cache_bytes)
        cache = self._embedding_caches.get(bounds)
        if cache is None:
            cache = self._embedding_caches[bounds] = EmbeddingCache(*bounds)
        return ClickSegmenter(models, settings, click_settings, describer=describer, cache=cache)


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

    def path(self, project: int | None = None) -> Path | None:
        """The checkpoint ``project`` is served with.

        ``FMBSEG_CHECKPOINT`` if set (the operator's, for every project); else the newest of the
        project's own checkpoints (``fmbseg-project-<id>-*``, written by retraining on its
        corrections); else the newest checkpoint that belongs to no project (one the operator put
        in :attr:`directory`); else ``None`` (FMbSeg Stage 1). Retraining one project never
        changes another's checkpoint.
        """
        if self.config.fmbseg_checkpoint is not None:
            return self.config.fmbseg_checkpoint
        if not self.directory.is_dir():
            return None
        files = [p for p in self.directory.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
        own = [p for p in files if p.name.startswith(project_checkpoint_prefix(project))]
        shared = [p for p in files if not p.name.startswith(PROJECT_CHECKPOINT_PREFIX)]
        candidates = own or shared
        if not candidates:
            return None
        return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def version(self, project: int | None = None) -> str:
        """``"base"`` without a checkpoint, else ``"<file stem>-<first 8 hex of its SHA-256>"``."""
        path = self.path(project)
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


PROJECT_CHECKPOINT_PREFIX = "fmbseg-project-"


def project_checkpoint_prefix(project: int | None) -> str:
    """The file-name prefix of ``project``'s alignment checkpoints: ``fmbseg-project-<id>-``."""
    return f"{PROJECT_CHECKPOINT_PREFIX}{'none' if project is None else int(project)}-"


def project_number(project: str | int | None) -> int | None:
    """Label Studio's project id as a number (``"7"`` or ``"7.1795304640"`` -> 7; None when absent or odd)."""
    if project is None:
        return None
    try:
        return int(str(project).split(".")[0])
    except ValueError:
        return None


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
        # The facades keep per-image state (e.g. SAM's image embedding): one inference at a time;
        # the others wait at most MODEL_QUEUE_WAIT seconds (then 503 with Retry-After).
        self.inference_lock = CallGate(1, config.model_queue_wait_s)

    # ---- loading ------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"idle"`` (not started), ``"loading"``, ``"ready"`` or ``"error: <message>"``."""
        return self._status

    def health(self) -> RuntimeHealth:
        """Not ok once loading failed (not retried: fix the cause, restart the service)."""
        return RuntimeHealth(ok=not self._status.startswith("error"))

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

    def _warm_up(self, models: FoundationModels) -> None:
        """Build the default zero-guidance facade and pay its one-off costs (the retrieval
        captioner embeds its vocabulary) before reporting "ready", so the first /predict is not
        the slow one. A failure is logged, not fatal: a method that cannot be built fails its tasks."""
        from .method_settings import zero_guidance_settings

        started = time.monotonic()
        try:
            settings = zero_guidance_settings(self.config)
            self._zero_guidance_facade(settings, models).warm_up()
        except Exception:
            logger.warning("warming up zero-guidance failed; its tasks will report the error", exc_info=True)
            return
        logger.info("zero-guidance ready in %.1f s", time.monotonic() - started)

    def wait_until_ready(self, timeout_s: float) -> FoundationModels:
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

    def zero_guidance(self, settings: ZeroGuideSettings) -> Segmenter:
        """The zero-guidance facade for these settings (``segment(image)``)."""
        return self._zero_guidance_facade(settings, self.wait_until_ready(self.config.model_load_wait_s))

    def _zero_guidance_facade(self, settings: ZeroGuideSettings, models: FoundationModels) -> Segmenter:
        key = ("zero-guidance", settings.fingerprint())
        return self._facade(key, lambda: self.methods.zero_guidance(models, settings))

    def fmbseg(self, settings: FMbSegSettings, project: int | None = None) -> ClassPredictor:
        """The FMbSeg facade for these settings and ``project``'s current checkpoint (``predict(...)``)."""
        models = self.wait_until_ready(self.config.model_load_wait_s)
        checkpoint = self.checkpoints.path(project)
        key = ("classes", settings.fingerprint(), str(checkpoint), self.checkpoints.version(project))
        return self._facade(key, lambda: self.methods.fmbseg(models, settings, checkpoint))

    def click(self, settings: ZeroGuideSettings, click_settings: ClickSettings) -> Clicker:
        """The interactive facade (``segment(image, points, labels, box, classes, task_key)``); it
        names segments with the zero-guidance facade of ``settings``."""
        models = self.wait_until_ready(self.config.model_load_wait_s)
        describer = self._zero_guidance_facade(settings, models)
        key = ("click", settings.fingerprint(), click_settings.fingerprint())
        return self._facade(key, lambda: self.methods.click(models, settings, click_settings, describer))

    def _facade(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            facade = self._facades.get(key)
        if facade is None:
            facade = build()
            with self._lock:
                facade = self._facades.setdefault(key, facade)
        return facade

    def forget_facades(self) -> None:
        """Drop cached facades (after training wrote a new checkpoint)."""
        with self._lock:
            self._facades.clear()

    def run_training(self, hook: TrainingHook | str, request: TrainingRequest) -> Any:
        """Run a training hook next to the models (here: in this process).

        ``hook``: a callable, or a ``"package.module:function"`` path imported here.
        """
        if isinstance(hook, str):
            hook = import_hook(hook)
        return hook(request)

    def stop(self) -> None:
        """Nothing to stop: the loader thread is a daemon."""
