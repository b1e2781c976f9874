"""The models in a child process, so that model code never stalls the HTTP threads.

Some model code holds Python's interpreter lock for long stretches: pydensecrf's CRF inference
held it 0.2-0.8 s on a 320x240 image and over a minute on 1024x768 with 20 labels on this
machine; while it does, no other thread of the process runs, and Label Studio's 1 s ``/health``
check times out. :class:`ProcessModelRuntime` keeps the HTTP process free of models (it never
imports torch): a spawned child process (at lower CPU priority) owns an in-process
:class:`~backend.service.runtime.ModelRuntime`, and the parent talks to it over a pipe:

* parent -> child: ``("call", id, kind, settings, arguments)``, ``("train", id, hook, request)``,
  ``("forget",)``, ``("stop",)``;
* child -> parent: ``("status", status, load_seconds)``, ``("result", id, value)``,
  ``("error", id, type name, message, models_not_ready)``.

The parent's facade proxies (``segment``, ``predict``, the click facade's ``segment``) have the
same signatures as the real facades and return the methods' own result types
(``ZeroGuidanceResult``, ``ClassMaskPrediction``, ``ClickResult``:
numpy arrays and plain values, importable without torch); settings cross as the methods' typed,
already validated settings objects. Calls are answered one at a time, in order; a
training run has its own thread in the child. If the child dies (e.g. killed for memory), pending
calls fail, ``/health`` reports it, and the next request starts a new child (up to
``MAX_RESTARTS`` times).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..fmbseg.results import ClassMaskPrediction
from ..fmbseg.settings import FMbSegSettings
from ..interactive.results import ClickResult
from ..interactive.settings import ClickSettings
from ..zeroguide.results import ZeroGuidanceResult
from ..zeroguide.settings import ZeroGuideSettings
from .config import ServiceConfig
from .hooks import TrainingHook, TrainingRequest
from .runtime import CheckpointLocator, DefaultMethodLibrary, MethodLibrary, ModelRuntime, ModelsNotReady

logger = logging.getLogger(__name__)

CHILD_NICENESS = 10
MAX_RESTARTS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class MethodError(RuntimeError):
    """A method raised in the model process; the message starts with the original type."""


def default_method_library(config: ServiceConfig) -> MethodLibrary:
    """The real methods, caching under ``MODEL_DIR/caches`` (module-level: picklable for spawn)."""
    return DefaultMethodLibrary(cache_dir=config.model_dir / "caches")


# ---- the child --------------------------------------------------------------------------------


def _child_main(conn: Any, config: ServiceConfig, methods_factory: Callable[[ServiceConfig], MethodLibrary]) -> None:
    """Entry point of the model process."""
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    try:
        os.nice(CHILD_NICENESS)
    except (AttributeError, OSError):
        pass
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    runtime = ModelRuntime(config, methods_factory(config))
    send(("status", "loading", None))
    runtime.start_loading()

    def report_when_loaded() -> None:
        runtime._ready.wait()
        send(("status", runtime.status, runtime.load_seconds))

    threading.Thread(target=report_when_loaded, name="status-reporter", daemon=True).start()

    def answer(request_id: int, work: Callable[[], Any]) -> None:
        try:
            value = work()
        except ModelsNotReady as error:
            send(("error", request_id, "ModelsNotReady", str(error), True))
        except Exception as error:  # reported to the parent, which fails that task only
            logger.exception("model process: request %s failed", request_id)
            send(("error", request_id, type(error).__name__, str(error), False))
        else:
            send(("result", request_id, value))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        kind = message[0]
        if kind == "stop":
            break
        if kind == "forget":
            runtime.forget_facades()
        elif kind == "call":
            _, request_id, method, settings, arguments = message
            answer(request_id, lambda: _call(runtime, method, settings, arguments))
        elif kind == "train":
            _, request_id, hook, request = message
            threading.Thread(
                target=answer,
                args=(request_id, lambda: runtime.run_training(hook, request)),
                name="training",
                daemon=True,
            ).start()


def _call(
    runtime: ModelRuntime, method: str, settings: ZeroGuideSettings | FMbSegSettings | ClickSettings, arguments: dict
) -> ZeroGuidanceResult | ClassMaskPrediction | ClickResult | list[str] | None:
    wait = max(runtime.config.model_load_wait_s, 1.0)
    runtime.wait_until_ready(wait)
    if method == "segment" and isinstance(settings, ZeroGuideSettings):
        return runtime.zero_guidance(settings).segment(arguments["image"])
    if method == "predict" and isinstance(settings, FMbSegSettings):
        project = arguments.pop("project")
        return runtime.fmbseg(settings, project).predict(**arguments)
    if method == "trained_classes" and isinstance(settings, FMbSegSettings):
        return runtime.fmbseg(settings, arguments["project"]).trained_classes()
    if method == "click" and isinstance(settings, ClickSettings):
        zero_guidance = arguments.pop("zeroguide_settings")
        if not isinstance(zero_guidance, ZeroGuideSettings):
            raise ValueError(f"click needs ZeroGuideSettings, got {type(zero_guidance).__name__}")
        return runtime.click(zero_guidance, settings).segment(**arguments)
    raise ValueError(f"unknown method {method!r} for {type(settings).__name__}")


# ---- the parent -------------------------------------------------------------------------------


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ProcessModelRuntime:
    """Same interface as :class:`ModelRuntime`; the models live in a child process."""

    def __init__(
        self,
        config: ServiceConfig,
        methods_factory: Callable[[ServiceConfig], MethodLibrary] = default_method_library,
    ) -> None:
        self.config = config
        self.methods_factory = methods_factory
        self.checkpoints = CheckpointLocator(config)
        self.inference_lock = threading.Lock()  # the child answers one call at a time anyway
        self.load_seconds: float | None = None
        self.restarts = 0
        self._status = "idle"
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._process: Any = None
        self._conn: Any = None

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    def start_loading(self) -> None:
        with self._lock:
            if self._status != "idle":
                return
            self._spawn_locked()

    def _spawn_locked(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded process
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_child_main,
            args=(child_end, self.config, self.methods_factory),
            name="model-process",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._process, self._conn = process, parent_end
        self._status = "loading"
        self._ready.clear()
        threading.Thread(
            target=self._read, args=(parent_end, process), name="model-process-reader", daemon=True
        ).start()
        logger.info("model process %s started (preset %r)", process.pid, self.config.model_preset)

    def _read(self, conn: Any, process: Any) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "status":
                _, status, load_seconds = message
                with self._lock:
                    if self._conn is conn:
                        self._status = status
                        self.load_seconds = load_seconds
                if status != "loading":
                    self._ready.set()
            elif kind in ("result", "error"):
                with self._lock:
                    pending = self._pending.pop(message[1], None)
                if pending is None:
                    continue
                if kind == "result":
                    pending.value = message[2]
                else:
                    _, _, type_name, text, not_ready = message
                    pending.error = ModelsNotReady(text) if not_ready else MethodError(f"{type_name}: {text}")
                pending.done.set()
        process.join(timeout=5)
        self._child_exited(conn, process.exitcode)

    def _child_exited(self, conn: Any, exitcode: int | None) -> None:
        with self._lock:
            if self._conn is not conn:
                return  # an old child, already replaced or stopped
            stopped = self._status == "stopped"
            if not stopped:
                self._status = f"error: the model process exited (exit code {exitcode})"
                logger.error("%s", self._status)
            pending, self._pending = self._pending, {}
            self._conn = None
        self._ready.set()
        for item in pending.values():
            item.error = ModelsNotReady("the model process exited while working on this request; see the log")
            item.done.set()

    def wait_until_ready(self, timeout_s: float) -> None:
        """Raise :class:`ModelsNotReady` unless the child has loaded its models (restarts a dead child)."""
        with self._lock:
            if self._status == "idle":
                self._spawn_locked()
            elif self._status.startswith("error: the model process exited") and self.restarts < MAX_RESTARTS:
                self.restarts += 1
                logger.warning("restarting the model process (restart %d of %d)", self.restarts, MAX_RESTARTS)
                self._spawn_locked()
        self._ready.wait(timeout_s)
        status = self._status
        if status == "ready":
            return
        if status.startswith("error"):
            raise ModelsNotReady(f"models failed to load ({status[len('error: '):]}); see the service log")
        raise ModelsNotReady(
            f"models are still loading (preset {self.config.model_preset!r}); retry in a minute "
            f"(waited {timeout_s:.0f} s, MODEL_LOAD_WAIT)"
        )

    def stop(self) -> None:
        with self._lock:
            conn, process = self._conn, self._process
            self._status = "stopped"
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(("stop",))
            except (OSError, EOFError):
                pass
        if process is not None:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)

    # ---- requests --------------------------------------------------------------------------

    def _request(self, message_head: tuple, *rest: Any, timeout_s: float | None = None) -> Any:
        request_id = next(self._ids)
        pending = _Pending()
        with self._lock:
            conn = self._conn
            if conn is None:
                raise ModelsNotReady(f"the model process is not running ({self._status})")
            self._pending[request_id] = pending
        try:
            with self._send_lock:
                conn.send((*message_head[:1], request_id, *message_head[1:], *rest))
        except (OSError, EOFError, pickle.PicklingError) as error:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ModelsNotReady(f"could not reach the model process: {error}") from None
        if not pending.done.wait(timeout_s):
            raise TimeoutError(f"the model process did not answer within {timeout_s} s")
        if pending.error is not None:
            raise pending.error
        return pending.value

    def zero_guidance(self, settings: ZeroGuideSettings) -> "_RemoteSegmenter":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemoteSegmenter(self, settings)

    def fmbseg(self, settings: FMbSegSettings, project: int | None = None) -> "_RemotePredictor":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemotePredictor(self, settings, project)

    def click(self, settings: ZeroGuideSettings, click_settings: ClickSettings) -> "_RemoteClicker":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemoteClicker(self, settings, click_settings)

    def forget_facades(self) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None:
            with self._send_lock:
                conn.send(("forget",))

    def run_training(self, hook: TrainingHook | str, request: TrainingRequest) -> Any:
        """Run the hook in the model process (next to the models). A callable that cannot be
        pickled (a lambda, a closure) runs here instead, without the child's models."""
        self.wait_until_ready(self.config.model_load_wait_s)
        if not isinstance(hook, str):
            try:
                pickle.dumps(hook)
            except (pickle.PicklingError, AttributeError, TypeError):
                logger.warning("training hook %r cannot be sent to the model process; running it here", hook)
                return hook(request)
        return self._request(("train",), hook, request)


class _RemoteSegmenter:
    """A zero-guidance facade whose work runs in the model process."""

    def __init__(self, runtime: ProcessModelRuntime, settings: ZeroGuideSettings) -> None:
        self.runtime, self.settings = runtime, settings

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult:
        return self.runtime._request(("call", "segment", self.settings), {"image": image})

    def warm_up(self) -> None:
        """The model process warms its own facades up."""


class _RemotePredictor:
    """An FMbSeg facade whose work runs in the model process."""

    def __init__(self, runtime: ProcessModelRuntime, settings: FMbSegSettings, project: int | None) -> None:
        self.runtime, self.settings, self.project = runtime, settings, project

    def predict(
        self, image: np.ndarray, classes: Sequence[str], refine: bool | None = None, open_vocabulary: bool = False
    ) -> ClassMaskPrediction:
        arguments = {
            "image": image,
            "classes": list(classes),
            "refine": refine,
            "open_vocabulary": open_vocabulary,
            "project": self.project,
        }
        return self.runtime._request(("call", "predict", self.settings), arguments)

    def trained_classes(self) -> list[str] | None:
        return self.runtime._request(("call", "trained_classes", self.settings), {"project": self.project})


class _RemoteClicker:
    """An interactive facade whose work runs in the model process."""

    def __init__(
        self, runtime: ProcessModelRuntime, settings: ZeroGuideSettings, click_settings: ClickSettings
    ) -> None:
        self.runtime, self.settings, self.click_settings = runtime, settings, click_settings

    def segment(
        self,
        image: np.ndarray,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        classes: Sequence[str] = (),
        task_key: str | None = None,
        class_template: str = "a photo of a {}",
    ) -> ClickResult:
        arguments = {
            "zeroguide_settings": self.settings,
            "image": image,
            "points": points,
            "labels": labels,
            "box": box,
            "classes": list(classes),
            "task_key": task_key,
            "class_template": class_template,
        }
        return self.runtime._request(("call", "click", self.click_settings), arguments)
