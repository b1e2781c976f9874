"""The models in a child process, so that model code never stalls the HTTP threads.

Some model code holds Python's interpreter lock for long stretches: pydensecrf's CRF inference
held it 0.2-0.8 s on a 320x240 image and over a minute on 1024x768 with 20 labels on this
machine; while it does, no other thread of the process runs, and Label Studio's 1 s ``/health``
check times out. :class:`ProcessModelRuntime` keeps the HTTP process free of models (it never
imports torch): a spawned child process (at lower CPU priority) owns an in-process
:class:`~backend.service.runtime.ModelRuntime`, and the parent talks to it over a pipe:

* parent -> child: ``("call", id, kind, settings, arguments)``, ``("train", id, hook, request)``,
  ``("forget",)``, ``("stop",)``;
* child -> parent: ``("status", status, load_seconds)``, ``("started", id)``,
  ``("result", id, value)``, ``("error", id, type name, message, models_not_ready)``.

The parent's facade proxies (``segment``, ``predict``, the click facade's ``segment``) have the
same signatures as the real facades and return the methods' own result types
(``ZeroGuidanceResult``, ``ClassMaskPrediction``, ``ClickResult``:
numpy arrays and plain values, importable without torch); settings cross as the methods' typed,
already validated settings objects. The child answers calls one at a time, in order; a training
run has its own thread there.

Reliability (docs/reliability.md, "The model process"):

* **a deadline per call**: ``PREDICT_TIMEOUT`` seconds from the moment the child starts a call
  (default by preset: :data:`PRESET_PREDICT_TIMEOUTS_S`; 0: none). On expiry the call raises
  :class:`CallTimeout` (its task gets an empty prediction and the error in ``warnings``), the
  child is killed and restarted. A training run has its own deadline, ``TRAINING_TIMEOUT``, and
  a call's deadline never kills one: while a training run is in the child, a stuck call fails
  alone, the child takes no more calls (503), and it is restarted when the training run ends.
* **at most** ``MODEL_MAX_IN_FLIGHT`` **calls in flight** (:class:`~.runtime.CallGate`); the others
  wait up to ``MODEL_QUEUE_WAIT`` seconds, then 503 with ``Retry-After``.
* **restarts with backoff and a budget**: a child that exits (crash, kill -9, out of memory) or
  is killed at a deadline is restarted after ``MODEL_RESTART_BACKOFF`` seconds, doubling for each
  restart in a row up to ``MODEL_RESTART_BACKOFF_MAX`` (a child that stayed ready that long
  resets the doubling). Each restart spends a token of ``MODEL_RESTART_BUDGET``; a token comes
  back every ``MODEL_RESTART_REFILL`` seconds. With no token left the service is in an error
  state (``/health`` answers 503) until one comes back, then restarts the child by itself.
* a call the child had not started when it died is sent again to the next child; the call it
  was working on fails its task (:class:`ModelProcessDied`), so a task that kills the model
  process fails alone instead of taking the service down again and again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import queue
import threading
import time
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
from .runtime import (
    CallGate,
    CheckpointLocator,
    DefaultMethodLibrary,
    MethodLibrary,
    ModelRuntime,
    ModelsNotReady,
    RuntimeHealth,
)

logger = logging.getLogger(__name__)

CHILD_NICENESS = 10
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"  # unless the operator set OMP_WAIT_POLICY
LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
# PREDICT_TIMEOUT when unset: several times the slowest call seen on the preset's usual hardware
# (tiny: random weights, ~1-3 s a call on 2 cores; cpu: ~10-60 s on a laptop CPU; paper: big
# models, meant for a GPU, minutes on a CPU).
PRESET_PREDICT_TIMEOUTS_S = {"tiny": 60.0, "cpu": 300.0, "paper": 600.0}
OTHER_PRESET_PREDICT_TIMEOUT_S = 600.0
# A call the child has not started yet waits behind at most MODEL_MAX_IN_FLIGHT others, each
# bounded by its own deadline; past that (plus this grace) the child is taken to be stuck.
NOT_STARTED_GRACE_S = 5.0
LOADING_RETRY_AFTER_S = 30.0


def predict_timeout_s(config: ServiceConfig) -> float | None:
    """The deadline of one model call: ``PREDICT_TIMEOUT``, else the preset's default; ``None``: none."""
    value = config.predict_timeout_s
    if value is None:
        value = PRESET_PREDICT_TIMEOUTS_S.get(config.model_preset, OTHER_PRESET_PREDICT_TIMEOUT_S)
    return float(value) if value > 0 else None


class MethodError(RuntimeError):
    """A method raised in the model process; the message starts with the original type."""


class CallTimeout(RuntimeError):
    """A model call (``PREDICT_TIMEOUT``) or training run (``TRAINING_TIMEOUT``) passed its deadline."""


class ModelProcessDied(RuntimeError):
    """The model process died while working on this call (its task fails; the process restarts)."""


class _NotStarted(ModelsNotReady):
    """The model process went away before it started this call: safe to send it again.

    ``dead_conn``: the pipe the call could not be sent on, when the child behind it has died but
    its reader has not yet noticed (the call must wait for *that* child's exit, not its readiness).
    """

    def __init__(self, message: str, retry_after_s: float | None = None, dead_conn: Any = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.dead_conn = dead_conn


def default_method_library(config: ServiceConfig) -> MethodLibrary:
    """The real methods, caching under ``MODEL_DIR/caches`` (module-level: picklable for spawn)."""
    return DefaultMethodLibrary(cache_dir=config.model_dir / "caches")


# ---- the child --------------------------------------------------------------------------------


def _child_main(conn: Any, config: ServiceConfig, methods_factory: Callable[[ServiceConfig], MethodLibrary]) -> None:
    """Entry point of the model process."""
    # Before torch loads (OpenMP reads it once): idle OpenMP threads sleep instead of spinning, so
    # they do not starve the HTTP process and other jobs on a small machine (docs/models.md).
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)
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

    # Read the pipe in a thread of its own, so the parent's sends never block behind a long call.
    inbox: queue.Queue = queue.Queue()

    def receive() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                inbox.put(("stop",))  # the parent is gone
                return
            inbox.put(message)
            if message[0] == "stop":
                return

    threading.Thread(target=receive, name="model-process-receiver", daemon=True).start()

    def answer(request_id: int, work: Callable[[], Any]) -> None:
        send(("started", request_id))
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
        message = inbox.get()
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
    """One request sent to the child: started (the child said so), then finished."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "call" or "train"
        self.cond = threading.Condition()
        self.sent_at = time.monotonic()
        self.started_at: float | None = None
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None

    def start(self) -> None:
        with self.cond:
            self.started_at = time.monotonic()
            self.cond.notify_all()

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        with self.cond:
            if not self.finished:
                self.value, self.error, self.finished = value, error, True
                self.cond.notify_all()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


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
        # The child keeps its own order; admission is per call, in _request (self.gate).
        self.inference_lock = contextlib.nullcontext()
        self.gate = CallGate(config.model_max_in_flight, config.model_queue_wait_s)
        self.predict_timeout_s = predict_timeout_s(config)
        self.training_timeout_s = config.training_timeout_s if config.training_timeout_s > 0 else None
        self.load_seconds: float | None = None
        self.restarts = 0  # children started after the first
        self.exits = 0  # children that died or were killed (not stopped)
        self.timeouts = 0  # calls and training runs past their deadline
        self._status = "idle"
        self._ready = threading.Event()  # set when the status is final: ready or error
        self._lock = threading.Lock()
        self._child_gone = threading.Condition(self._lock)  # notified when a child's exit is handled
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._process: Any = None
        self._conn: Any = None
        self._kill_reason: str | None = None  # why this side killed the current child
        self._stuck_call: int | None = None  # a call past its deadline, left running for a training run
        # restarts: a token bucket refilled with time, and a backoff doubling per restart in a row
        self._tokens = float(config.restart_budget)
        self._tokens_at = time.monotonic()
        self._streak = 0
        self._ready_since: float | None = None
        self._next_restart_at: float | None = None
        self._restart_timer: threading.Timer | None = None

    # ---- state -------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"idle"``, ``"loading"``, ``"ready"``, ``"restarting: <why>"``, ``"error: <why>"`` or
        ``"stopped"``; while a restart is planned, the seconds until it."""
        status, due = self._status, self._next_restart_at
        if due is not None and status.startswith(("restarting", "error")):
            return f"{status} (next start in {max(0.0, due - time.monotonic()):.0f} s)"
        return status

    def _tokens_now(self, now: float) -> float:
        refilled = self._tokens + (now - self._tokens_at) / self.config.restart_refill_s
        return min(float(self.config.restart_budget), refilled)

    def _retry_after_s(self) -> float | None:
        now = time.monotonic()
        due = self._next_restart_at
        if due is not None:
            return float(max(1, math.ceil(due - now + (self.load_seconds or 0.0))))
        if self._status in ("idle", "loading"):
            return LOADING_RETRY_AFTER_S
        return None

    def health(self) -> RuntimeHealth:
        """``ok`` unless the models failed to load, or the child is down and cannot be restarted
        now (restart budget spent), or it is stuck on a call and kept for a training run.
        Reads without locks: ``/health`` must answer in milliseconds."""
        status = self.status
        process = self._process
        details = {
            "pid": process.pid if process is not None and self._conn is not None else None,
            "restarts": self.restarts,
            "restart_budget_left": round(self._tokens_now(time.monotonic()), 2),
            "calls_in_flight": self.gate.in_use,
            "calls_refused": self.gate.refused,
            "timeouts": self.timeouts,
            "predict_timeout_s": self.predict_timeout_s,
        }
        return RuntimeHealth(ok=not status.startswith("error"), retry_after_s=self._retry_after_s(), details=details)

    # ---- lifecycle -----------------------------------------------------------------------

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
        self._kill_reason = None
        self._stuck_call = None
        self._next_restart_at = None
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
            except Exception:  # a reply that cannot be unpickled: its caller meets its deadline
                logger.exception("unreadable message from the model process")
                continue
            kind = message[0]
            if kind == "status":
                _, status, load_seconds = message
                with self._lock:
                    current = self._conn is conn
                    if current:
                        self._status = status
                        self.load_seconds = load_seconds
                        if status == "ready":
                            self._ready_since = time.monotonic()
                if current and status != "loading":
                    self._ready.set()
            elif kind == "started":
                with self._lock:
                    pending = self._pending.get(message[1])
                if pending is not None:
                    pending.start()
            elif kind in ("result", "error"):
                self._answered(conn, message)
        process.join(timeout=5)
        if process.is_alive():  # it closed the pipe but lingers: never run two children
            process.kill()
            process.join(timeout=5)
        self._child_exited(conn, process.exitcode)

    def _answered(self, conn: Any, message: tuple) -> None:
        request_id = message[1]
        with self._lock:
            pending = self._pending.pop(request_id, None)
            current = self._conn is conn
            if current and self._stuck_call == request_id:  # the stuck call came back after all
                logger.warning("the model call that passed its deadline finished; taking calls again")
                self._stuck_call = None
                self._status = "ready"
            kill_now = (
                current
                and self._stuck_call is not None
                and pending is not None
                and pending.kind == "train"
                and not self._training_in_child_locked()
            )
            if kill_now:
                self._kill_locked(
                    "the model process was killed: a model call passed its deadline "
                    f"(PREDICT_TIMEOUT={self.predict_timeout_s:g} s) during a training run, which has ended"
                )
        if pending is None:
            return
        if message[0] == "result":
            pending.finish(value=message[2])
        else:
            _, _, type_name, text, not_ready = message
            pending.finish(error=ModelsNotReady(text) if not_ready else MethodError(f"{type_name}: {text}"))

    def _training_in_child_locked(self) -> bool:
        return any(item.kind == "train" for item in self._pending.values())

    def _kill_locked(self, reason: str) -> None:
        if self._kill_reason is None:
            self._kill_reason = reason
        logger.error("%s", reason)
        try:
            self._process.kill()  # SIGKILL: a stuck call may hold the interpreter or sit in C code
        except Exception as error:
            logger.warning("could not kill the model process: %s", error)

    def _child_exited(self, conn: Any, exitcode: int | None) -> None:
        with self._lock:
            if self._conn is not conn:
                return  # an old child, already replaced or stopped
            self._conn = None
            self._child_gone.notify_all()
            pending, self._pending = self._pending, {}
            reason = self._kill_reason or f"the model process exited (exit code {exitcode})"
            self._kill_reason = None
            self._stuck_call = None
            if self._status == "stopped":
                self._ready.set()
            else:
                self.exits += 1
                logger.error("%s", reason)
                self._schedule_restart_locked(reason)
        for item in pending.values():
            if item.started_at is None:
                item.finish(error=_NotStarted(f"{reason} before it started this call"))
            else:
                what = "training run" if item.kind == "train" else "call"
                item.finish(error=ModelProcessDied(f"{reason} while working on this {what}; it is restarted"))

    def _schedule_restart_locked(self, reason: str) -> None:
        now = time.monotonic()
        if self._ready_since is not None and now - self._ready_since >= self.config.restart_backoff_max_s:
            self._streak = 0  # that child was healthy for a while: not a crash loop
        self._ready_since = None
        tokens = self._tokens_now(now)
        self._tokens, self._tokens_at = tokens, now
        if tokens >= 1.0:
            delay = min(self.config.restart_backoff_s * 2**self._streak, self.config.restart_backoff_max_s)
            self._streak += 1
            self._status = f"restarting: {reason}"
            self._ready.clear()
            logger.warning("restarting the model process in %.1f s (%.1f restarts left)", delay, tokens - 1)
        else:
            delay = (1.0 - tokens) * self.config.restart_refill_s
            self._status = (
                f"error: {reason}; the restart budget is spent ({self.config.restart_budget} restarts, "
                f"one more every {self.config.restart_refill_s:g} s: MODEL_RESTART_BUDGET, MODEL_RESTART_REFILL)"
            )
            self._ready.set()  # waiting callers fail now
            logger.error("not restarting the model process: %s", self._status)
        self._next_restart_at = now + delay
        timer = threading.Timer(delay, self._restart_due)
        timer.daemon = True
        self._restart_timer = timer
        timer.start()

    def _restart_due(self) -> None:
        with self._lock:
            if self._status == "stopped" or self._conn is not None:
                return
            now = time.monotonic()
            tokens = self._tokens_now(now)
            if tokens < 1.0 - 1e-6:  # not yet (a timer may fire a hair early)
                self._next_restart_at = now + (1.0 - tokens) * self.config.restart_refill_s
                timer = threading.Timer(self._next_restart_at - now, self._restart_due)
                timer.daemon = True
                self._restart_timer = timer
                timer.start()
                return
            self._tokens, self._tokens_at = max(0.0, tokens - 1.0), now
            self.restarts += 1
            logger.warning("restarting the model process (restart %d)", self.restarts)
            self._spawn_locked()

    def wait_until_ready(self, timeout_s: float) -> None:
        """Raise :class:`ModelsNotReady` unless the child has loaded its models (starts an idle one)."""
        with self._lock:
            if self._status == "idle":
                self._spawn_locked()
        self._ready.wait(timeout_s)
        status = self.status
        if status == "ready":
            return
        retry_after = self._retry_after_s()
        if status.startswith("error"):
            detail = status[len("error: ") :]
            if self._conn is not None and self._stuck_call is None:  # the child runs, its models did not load
                raise ModelsNotReady(f"models failed to load ({detail}); see the service log")
            raise ModelsNotReady(f"the model process cannot take calls now ({detail})", retry_after_s=retry_after)
        if status.startswith("restarting"):
            raise ModelsNotReady(
                f"the model process is restarting ({status[len('restarting: ') :]}); retry shortly "
                f"(waited {timeout_s:.0f} s, MODEL_LOAD_WAIT)",
                retry_after_s=retry_after,
            )
        raise ModelsNotReady(
            f"models are still loading (preset {self.config.model_preset!r}); retry in a minute "
            f"(waited {timeout_s:.0f} s, MODEL_LOAD_WAIT)",
            retry_after_s=retry_after,
        )

    def stop(self) -> None:
        with self._lock:
            conn, process = self._conn, self._process
            self._status = "stopped"
            self._next_restart_at = None
            timer = self._restart_timer
        if timer is not None:
            timer.cancel()
        self._ready.set()
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

    def _request_resending(self, head: tuple, *rest: Any, deadline_s: float | None, gated: bool) -> Any:
        """:meth:`_request`, sent again to the next child whenever the last one died before
        starting it (it was not the cause), for up to ``MODEL_LOAD_WAIT`` seconds in all."""
        wait_s = self.config.model_load_wait_s
        give_up_at = time.monotonic() + wait_s
        while True:
            try:
                return self._request(head, *rest, deadline_s=deadline_s, gated=gated)
            except _NotStarted as error:
                left_s = give_up_at - time.monotonic()
                if left_s <= 0:
                    raise
                dead = error.dead_conn
                if dead is not None:  # the child died; its reader may not know yet
                    with self._lock:
                        self._child_gone.wait_for(lambda: self._conn is not dead, left_s)
                self.wait_until_ready(max(0.0, give_up_at - time.monotonic()))

    def _request(self, head: tuple, *rest: Any, deadline_s: float | None, gated: bool) -> Any:
        if not gated:
            return self._send_and_wait(head, rest, deadline_s)
        with self.gate:
            return self._send_and_wait(head, rest, deadline_s)

    def _send_and_wait(self, head: tuple, rest: tuple, deadline_s: float | None) -> Any:
        request_id = next(self._ids)
        pending = _Pending(head[0])
        with self._lock:
            conn = self._conn
            if conn is None:
                raise _NotStarted(f"the model process is not running ({self.status})", self._retry_after_s())
            if self._stuck_call is not None:
                raise ModelsNotReady(f"the model process cannot take calls now ({self.status})")
            self._pending[request_id] = pending
        try:
            with self._send_lock:
                conn.send((head[0], request_id, *head[1:], *rest))
        except (OSError, EOFError) as error:
            with self._lock:
                self._pending.pop(request_id, None)
            raise _NotStarted(f"could not reach the model process: {error}", dead_conn=conn) from None
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            with self._lock:
                self._pending.pop(request_id, None)
            raise MethodError(f"could not send this call to the model process: {error}") from None
        with pending.cond:
            while not pending.finished:
                timeout = self._time_left(pending, deadline_s)
                if timeout is not None and timeout <= 0:
                    break
                pending.cond.wait(timeout)
            if pending.finished:
                return pending.outcome()
        return self._expired(conn, request_id, pending, deadline_s)

    def _time_left(self, pending: _Pending, deadline_s: float | None) -> float | None:
        if deadline_s is None:
            return None
        if pending.started_at is not None:
            return pending.started_at + deadline_s - time.monotonic()
        queued_limit = deadline_s * (self.gate.slots + 1) + NOT_STARTED_GRACE_S
        return pending.sent_at + queued_limit - time.monotonic()

    def _expired(self, conn: Any, request_id: int, pending: _Pending, deadline_s: float) -> Any:
        training = pending.kind == "train"
        variable = "TRAINING_TIMEOUT" if training else "PREDICT_TIMEOUT"
        what = "training run" if training else "model call"
        started = pending.started_at is not None
        refused: list[_Pending] = []
        with self._lock:
            owned = self._pending.pop(request_id, None) is not None
            if owned and self._conn is conn:
                self.timeouts += 1
                if not training and self._training_in_child_locked():
                    # A training run shares the child: never kill it for a call. The call fails, the
                    # child takes no new calls, and it is restarted when the training run ends.
                    self._stuck_call = request_id
                    self._status = (
                        f"error: a model call passed its deadline ({variable}={deadline_s:g} s) while a "
                        "training run is in the model process; it restarts when the training run ends"
                    )
                    for other_id, other in list(self._pending.items()):
                        if other.kind == "call" and other.started_at is None:
                            del self._pending[other_id]
                            refused.append(other)
                    action = "is restarted when the training run in it ends"
                    logger.error("%s", self._status)
                else:
                    self._kill_locked(
                        f"the model process was killed: a {what} passed its deadline ({variable}={deadline_s:g} s)"
                    )
                    action = "was killed and is restarted"
            else:
                action = "is restarted"
        for other in refused:
            other.finish(error=ModelsNotReady("the model process is stuck on an earlier call; retry later"))
        if not owned:  # answered (or failed) at the very last moment
            with pending.cond:
                while not pending.finished:
                    pending.cond.wait()
            return pending.outcome()
        if started:
            raise CallTimeout(f"no answer within {deadline_s:g} s ({variable}); the model process {action}")
        raise CallTimeout(
            f"the model process did not start this {what} within {deadline_s * (self.gate.slots + 1):g} s "
            f"({variable} x (MODEL_MAX_IN_FLIGHT + 1)); it {action}"
        )

    def zero_guidance(self, settings: ZeroGuideSettings) -> "_RemoteSegmenter":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemoteSegmenter(self, settings)

    def fmbseg(self, settings: FMbSegSettings, project: int | None = None) -> "_RemotePredictor":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemotePredictor(self, settings, project)

    def click(self, settings: ZeroGuideSettings, click_settings: ClickSettings) -> "_RemoteClicker":
        self.wait_until_ready(self.config.model_load_wait_s)
        return _RemoteClicker(self, settings, click_settings)

    def call(self, method: str, settings: ZeroGuideSettings | FMbSegSettings | ClickSettings, arguments: dict) -> Any:
        """One method call in the child, under the in-flight limit and ``PREDICT_TIMEOUT``."""
        return self._request_resending(
            ("call", method, settings), arguments, deadline_s=self.predict_timeout_s, gated=True
        )

    def forget_facades(self) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(("forget",))
            except (OSError, EOFError):
                pass  # a new child builds new facades anyway

    def run_training(self, hook: TrainingHook | str, request: TrainingRequest) -> Any:
        """Run the hook in the model process (next to the models), under ``TRAINING_TIMEOUT``.
        A callable that cannot be pickled (a lambda, a closure) runs here instead, without the
        child's models (and without a deadline)."""
        self.wait_until_ready(self.config.model_load_wait_s)
        if not isinstance(hook, str):
            try:
                pickle.dumps(hook)
            except (pickle.PicklingError, AttributeError, TypeError):
                logger.warning("training hook %r cannot be sent to the model process; running it here", hook)
                return hook(request)
        return self._request_resending(("train",), hook, request, deadline_s=self.training_timeout_s, gated=False)


class _RemoteSegmenter:
    """A zero-guidance facade whose work runs in the model process."""

    def __init__(self, runtime: ProcessModelRuntime, settings: ZeroGuideSettings) -> None:
        self.runtime, self.settings = runtime, settings

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult:
        return self.runtime.call("segment", self.settings, {"image": image})

    def warm_up(self) -> None:
        """The model process warms its own facades up."""


class _RemotePredictor:
    """An FMbSeg facade whose work runs in the model process."""

    def __init__(self, runtime: ProcessModelRuntime, settings: FMbSegSettings, project: int | None) -> None:
        self.runtime, self.settings, self.project = runtime, settings, project

    def predict(
        self,
        image: np.ndarray,
        classes: Sequence[str],
        refine: bool | None = None,
        open_vocabulary: bool = False,
        stage1_agreement: bool = False,
    ) -> ClassMaskPrediction:
        arguments = {
            "image": image,
            "classes": list(classes),
            "refine": refine,
            "open_vocabulary": open_vocabulary,
            "project": self.project,
        }
        if stage1_agreement:
            arguments["stage1_agreement"] = True
        return self.runtime.call("predict", self.settings, arguments)

    def trained_classes(self) -> list[str] | None:
        return self.runtime.call("trained_classes", self.settings, {"project": self.project})


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
        return self.runtime.call("click", self.click_settings, arguments)
