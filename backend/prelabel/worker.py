"""One worker's share of the job: the backend's own model class, predicting batches of tasks.

A worker builds exactly what ``POST /predict`` uses: a
:class:`~backend.service.segmentation_model.SegmentationMLBackend` for the project's label config
(same adapters, same settings resolved per tag, same ``model_version``) on a
:class:`~backend.service.runtime.ModelRuntime` holding one set of models, loaded once. Each task goes
through ``predict_task``, so a prediction imported by the job is the one ``/predict`` would answer
for that task. Images are fetched with the operator's credentials (``LABEL_STUDIO_URL`` /
``LABEL_STUDIO_API_KEY``), cloud URIs through Label Studio's presign route of the task, the next
images of a batch downloaded while the current one is predicted.

Nothing here knows Ray: :mod:`backend.prelabel.engines` wraps a :class:`TaskPredictor` in a Ray
actor (one per worker) or calls it in a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..service.adapters import CLASSES, ZERO_GUIDANCE
from ..service.config import ServiceConfig
from ..service.images import ImageFetcher, ImageFetchError, ImageLimits, ImageSource, LoadedImage, decode_image
from ..service.runtime import MethodLibrary, ModelRuntime, ModelsNotReady, Runtime
from ..service.segmentation_model import SegmentationMLBackend
from ..service.ssrf import SsrfPolicy
from .tiling import TiledClassMasks, TileSpec

logger = logging.getLogger(__name__)

# --methods names -> the adapters' modes
METHODS = {"zero-guidance": ZERO_GUIDANCE, "fmbseg": CLASSES, "classes": CLASSES}
PREFETCH_THREADS = 2


def parse_methods(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"zero-guidance,fmbseg"`` -> the adapter modes; ``None``/empty -> ``None`` (what the config asks for)."""
    if text is None:
        return None
    names = [part.strip().lower() for part in (text.split(",") if isinstance(text, str) else text)]
    names = [name for name in names if name]
    if not names:
        return None
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from zero-guidance, fmbseg")
    return tuple(sorted({METHODS[name] for name in names}))


def image_source(config: ServiceConfig, project_id: int | None = None) -> ImageSource:
    """Where the job's images come from: the operator's Label Studio credentials and limits."""
    limits = ImageLimits(
        max_bytes=config.image_max_bytes,
        timeout_s=config.image_timeout_s,
        max_pixels=config.image_max_pixels,
        model_max_pixels=config.model_max_pixels,
        decode_concurrency=config.image_decode_concurrency,
    )
    policy = SsrfPolicy(
        enabled=config.ssrf_protection_enabled,
        allowed_hosts=config.image_allowed_hosts,
        trusted_origin=config.label_studio_url,
    )
    return ImageSource(
        limits,
        label_studio_url=config.label_studio_url,
        api_key=config.label_studio_api_key,
        local_files_root=config.local_files_root,
        ssrf=policy,
        project_id=project_id,
    )


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (sent to every Ray actor)."""

    label_config: str
    project_id: int
    config: ServiceConfig
    modes: tuple[str, ...] | None = None  # None: every method the label config asks for
    images: ImageSource | None = None
    tiles: TileSpec | None = None  # tiled FMbSeg base prediction at the original resolution

    def image_source(self) -> ImageSource:
        return self.images or image_source(self.config, self.project_id)


class TiledSegmentationMLBackend(SegmentationMLBackend):
    """The backend's model with its class-mask tags tiled (:mod:`backend.prelabel.tiling`)."""

    tiles: TileSpec
    full_resolution: Callable[[LoadedImage], LoadedImage] | None = None  # set per task by the worker

    @property
    def model_version(self) -> str:
        return f"{super().model_version}-{self.tiles.suffix}"

    def use_tiles(self, tiles: TileSpec) -> None:
        self.tiles = tiles
        if not any(adapter.mode == CLASSES for adapter in self.adapters):
            raise ValueError(
                "--tiles tiles FMbSeg's class masks, but the label config (or --methods) has no class-mask tag"
            )
        self.adapters = [
            TiledClassMasks(adapter, tiles, self._full) if adapter.mode == CLASSES else adapter
            for adapter in self.adapters
        ]

    def _full(self, image: LoadedImage) -> LoadedImage:
        if self.full_resolution is None:
            raise RuntimeError("no full-resolution image source for this task")
        return self.full_resolution(image)


def build_model(spec: WorkerSpec, runtime: Runtime, fetcher_for: Any = None) -> SegmentationMLBackend:
    """The backend's model for the project, keeping only the adapters of ``spec.modes``
    (``spec.tiles``: class masks tiled, with their own model version).

    Raises ``LabelConfigError`` when the config cannot be served, ``ValueError`` when it asks for
    none of the chosen methods. Builds no models (cheap): the driver uses it for ``model_version``.
    """
    model_class = TiledSegmentationMLBackend if spec.tiles is not None else SegmentationMLBackend
    model = model_class(
        spec.label_config,
        str(spec.project_id),
        config=spec.config,
        runtime=runtime,
        fetcher_for=fetcher_for or (lambda: None),
    )
    model.check_config()
    if spec.modes is not None:
        kept = [adapter for adapter in model.adapters if adapter.mode in spec.modes]
        if not kept:
            asked = sorted({adapter.mode for adapter in model.adapters})
            raise ValueError(f"the label config asks for {asked}, none of the chosen methods {list(spec.modes)}")
        model.adapters = kept
    if spec.tiles is not None:
        model.use_tiles(spec.tiles)
    return model


def plan_version(spec: WorkerSpec) -> str:
    """The ``model_version`` the job's predictions carry (computed without loading any model).

    Raises ``ValueError`` for tiles without an FMbSeg alignment checkpoint (tiling is for Stage 2).
    """
    runtime = ModelRuntime(spec.config)
    model = build_model(spec, runtime)
    if spec.tiles is not None and runtime.checkpoints.path(spec.project_id) is None:
        raise ValueError(
            "--tiles tiles FMbSeg's Stage 2 base prediction, which needs an alignment checkpoint: this project "
            "has none (train one from corrections, or set FMBSEG_CHECKPOINT)"
        )
    return model.model_version


@dataclass
class TaskOutcome:
    """What one task came to: a prediction (``result``, ``score``, ``model_version``) or an error."""

    task_id: int
    prediction: dict | None = None
    error: str | None = None
    retryable: bool = True
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.prediction is not None


def _fetch_and_decode(fetcher: ImageFetcher, reference: str, task_id: int | None) -> tuple[bytes, LoadedImage]:
    data = fetcher.fetch_bytes(reference, task_id)
    return data, decode_image(data, fetcher.limits, source=_source_name(reference))


def _source_name(reference: str) -> str:
    from ..service.images import _short  # how the backend names an image in messages

    return _short(reference)


class _TaskFetcher:
    """The fetcher ``predict_task`` sees for one task: its images prefetched, cloud URIs presigned
    through this task's route; the bytes kept for a full-resolution decode (tiled mode)."""

    def __init__(self, fetcher: ImageFetcher, task_id: int, prefetched: dict[str, Future]) -> None:
        self._fetcher = fetcher
        self._task_id = task_id
        self._prefetched = prefetched
        self._bytes: dict[int, bytes] = {}  # id(LoadedImage) -> its file

    def load(self, reference: str) -> LoadedImage:
        future = self._prefetched.pop(reference, None) if isinstance(reference, str) else None
        if future is not None:
            data, image = future.result()
        else:
            data, image = _fetch_and_decode(self._fetcher, reference, self._task_id)
        self._bytes[id(image)] = data
        return image

    def full_resolution(self, image: LoadedImage) -> LoadedImage:
        """``image`` decoded again without the downscale to ``MODEL_MAX_PIXELS`` (still within
        ``IMAGE_MAX_PIXELS``)."""
        if not image.is_downscaled:
            return image
        data = self._bytes.get(id(image))
        if data is None:
            raise ImageFetchError(f"{image.source}: its bytes are gone; cannot decode it at full resolution")
        limits = dataclasses.replace(self._fetcher.limits, model_max_pixels=self._fetcher.limits.max_pixels)
        return decode_image(data, limits, source=image.source)


class TaskPredictor:
    """Predicts batches of tasks with one model set (see the module docstring)."""

    def __init__(self, model: SegmentationMLBackend, fetcher: ImageFetcher, runtime: Runtime | None = None) -> None:
        self.model = model
        self.fetcher = fetcher
        self.runtime = runtime or model.runtime
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")
        self.version = model.model_version
        self.tasks_done = 0

    @classmethod
    def build(cls, spec: WorkerSpec, methods: MethodLibrary | None = None) -> "TaskPredictor":
        """A worker's own models (``methods`` replaces the method code: tests). Loading starts now."""
        runtime = ModelRuntime(spec.config, methods)
        model = build_model(spec, runtime)
        runtime.start_loading()
        return cls(model, spec.image_source().fetcher(), runtime)

    def ready(self, timeout_s: float = 1800.0) -> dict[str, Any]:
        """Wait for the models (raises ``ModelsNotReady`` when loading failed); what this worker is."""
        started = time.monotonic()
        self.runtime.wait_until_ready(timeout_s)
        device = "unknown"  # fake methods in tests, or the models in another process
        torch = sys.modules.get("torch")  # never imported here: the backend's HTTP process stays torch-free
        if torch is not None and getattr(self.runtime, "_models", None) is not None:
            try:
                device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
            except Exception:
                pass
        return {
            "model_version": self.version,
            "host": socket.gethostname(),
            "device": device,
            "waited_s": round(time.monotonic() - started, 1),
        }

    def predict_batch(self, tasks: list[dict]) -> list[TaskOutcome]:
        """One outcome per task, in order; a failing task never fails the batch."""
        prefetched = [self._prefetch(task) for task in tasks]
        outcomes = []
        for task, futures in zip(tasks, prefetched):
            outcomes.append(self._predict_one(task, futures))
        return outcomes

    def _prefetch(self, task: dict) -> dict[str, Future]:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        futures: dict[str, Future] = {}
        for adapter in self.model.adapters:
            reference = data.get(adapter.image_key)
            if isinstance(reference, str) and reference not in futures:
                futures[reference] = self._pool.submit(_fetch_and_decode, self.fetcher, reference, task.get("id"))
        return futures

    def _predict_one(self, task: dict, futures: dict[str, Future]) -> TaskOutcome:
        task_id = int(task.get("id"))
        started = time.monotonic()
        task_fetcher = _TaskFetcher(self.fetcher, task_id, futures)
        if isinstance(self.model, TiledSegmentationMLBackend):
            self.model.full_resolution = task_fetcher.full_resolution
        try:
            prediction, problems = self.model.predict_task(task, self.version, task_fetcher)
        except ModelsNotReady as error:  # busy or not loaded: worth another try later
            return TaskOutcome(task_id, error=f"models not ready: {error}", seconds=time.monotonic() - started)
        except Exception as error:
            logger.warning("task %s failed: %s: %s", task_id, type(error).__name__, error)
            return TaskOutcome(task_id, error=f"{type(error).__name__}: {error}", seconds=time.monotonic() - started)
        finally:
            for future in futures.values():  # an image the adapters did not ask for
                future.cancel()
        self.tasks_done += 1
        return TaskOutcome(task_id, prediction=prediction, problems=problems, seconds=time.monotonic() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
