"""Where the workers run: Ray actors (``RayPool``) or threads of this process (``LocalPool``).

Both take batches of tasks and give back, per batch, the list of
:class:`~backend.prelabel.worker.TaskOutcome` or the exception that lost the whole batch (a worker
that died). The driver (:mod:`backend.prelabel.job`) keeps ``capacity`` batches in flight.

**Ray.** One actor per worker, each with its own :class:`~backend.prelabel.worker.TaskPredictor`
(one model set, loaded once), ``cpus_per_worker`` CPUs and, where the cluster has GPUs,
``gpus_per_worker`` of one (by default the cluster's GPUs shared among the workers, at most one
each; the models then run on CUDA). Each actor holds up to ``queue_depth`` batches, so it never
waits for the driver. ``address=None`` starts a private Ray on this machine that listens on
127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray keep its loopback address: on
Linux it otherwise advertises, and binds to, the machine's outward address), without dashboard or
usage reporting, with a bounded object store; it is shut down at the end. ``address="host:6379"``
or ``"auto"`` joins a cluster started with ``ray start`` (see docs/prelabel.md).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, Callable, Protocol

from .worker import TaskOutcome, TaskPredictor, WorkerSpec

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_OBJECT_STORE_BYTES = 500 * 1024 * 1024
# Passed to the workers of a cluster when set here (weights, offline hubs, threads).
FORWARDED_ENVIRONMENT = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "LOG_LEVEL",
)

BatchResult = tuple[list[dict], "list[TaskOutcome] | BaseException"]


class WorkerPool(Protocol):
    """What the job driver needs from an engine."""

    capacity: int  # batches in flight at most

    def start(self) -> list[dict]:
        """Start the workers and wait until their models are loaded; one description per worker."""

    def submit(self, batch: list[dict]) -> None: ...

    def in_flight(self) -> int: ...

    def wait(self, timeout_s: float) -> list[BatchResult]:
        """The batches finished within ``timeout_s`` (maybe none)."""

    def shutdown(self) -> None: ...


class LocalPool:
    """Workers as threads of this process, around ready-made predictors (the backend's own
    models for ``POST /prelabel``; fake methods in tests)."""

    def __init__(self, predictors: list[TaskPredictor], queue_depth: int = 1, ready_timeout_s: float = 1800.0) -> None:
        if not predictors:
            raise ValueError("LocalPool needs at least one predictor")
        self.predictors = predictors
        self.capacity = len(predictors) * max(1, queue_depth)
        self.ready_timeout_s = ready_timeout_s
        self._executor = ThreadPoolExecutor(len(predictors), thread_name_prefix="prelabel-worker")
        self._locks = [threading.Lock() for _ in predictors]  # a predictor serves one batch at a time
        self._futures: dict[Future, list[dict]] = {}
        self._next = 0

    def start(self) -> list[dict]:
        return [predictor.ready(self.ready_timeout_s) for predictor in self.predictors]

    def submit(self, batch: list[dict]) -> None:
        index = self._next % len(self.predictors)
        self._next += 1
        future = self._executor.submit(_locked_predict, self.predictors[index], self._locks[index], batch)
        self._futures[future] = batch

    def in_flight(self) -> int:
        return len(self._futures)

    def wait(self, timeout_s: float) -> list[BatchResult]:
        if not self._futures:
            return []
        done, _ = wait_futures(list(self._futures), timeout=timeout_s, return_when=FIRST_COMPLETED)
        results: list[BatchResult] = []
        for future in done:
            batch = self._futures.pop(future)
            error = future.exception()
            results.append((batch, error if error is not None else future.result()))
        return results

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for predictor in self.predictors:
            predictor.close()


def _locked_predict(predictor: TaskPredictor, lock: threading.Lock, batch: list[dict]) -> list[TaskOutcome]:
    with lock:
        return predictor.predict_batch(batch)


# ---- Ray ----------------------------------------------------------------------------------


def import_ray_for_local() -> Any:
    """``import ray`` with a private, loopback-only local Ray in mind (see the module docstring)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (read by Ray's processes)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # the same, for a ray imported before this call
    return ray


def _predictor_actor_class(ray: Any) -> Any:
    class PredictorActor:
        """A Ray actor around one :class:`TaskPredictor` (its models loaded once, in the actor)."""

        def __init__(self, spec: WorkerSpec, methods_path: str | None = None) -> None:
            logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING").upper())
            methods = None
            if methods_path:  # "package.module:factory" (tests: fake methods)
                from ..service.hooks import import_hook

                methods = import_hook(methods_path)()
            self.predictor = TaskPredictor.build(spec, methods)

        def ready(self, timeout_s: float) -> dict:
            info = self.predictor.ready(timeout_s)
            info["pid"] = os.getpid()
            info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
            return info

        def predict_batch(self, tasks: list[dict]) -> list[TaskOutcome]:
            return self.predictor.predict_batch(tasks)

    return PredictorActor


class RayPool:
    """One Ray actor per worker (see the module docstring)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int = 2,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        queue_depth: int = 2,
        object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
        ready_timeout_s: float = 1800.0,
        methods_path: str | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.spec = spec
        self.workers = workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.queue_depth = max(1, queue_depth)
        self.capacity = workers * self.queue_depth
        self.object_store_bytes = object_store_bytes
        self.ready_timeout_s = ready_timeout_s
        self.methods_path = methods_path
        self.ray: Any = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._load: dict[int, int] = {}
        self._refs: dict[Any, tuple[int, list[dict]]] = {}

    def _init_ray(self) -> None:
        env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
        env_vars.update({name: os.environ[name] for name in FORWARDED_ENVIRONMENT if name in os.environ})
        if self.address is None:
            ray = import_ray_for_local()
            if ray.is_initialized():
                raise RuntimeError("Ray is already initialised in this process; cannot start a private local Ray")
            ray.init(
                num_cpus=max(1, int(round(self.workers * self.cpus_per_worker))),
                num_gpus=None,
                include_dashboard=False,
                object_store_memory=self.object_store_bytes,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": env_vars},
                log_to_driver=False,
                configure_logging=False,
            )
            self._started_ray = True
            addresses = {node.get("NodeManagerAddress") for node in ray.nodes()}
            if addresses != {"127.0.0.1"}:
                ray.shutdown()
                raise RuntimeError(f"the local Ray is not on 127.0.0.1 only (nodes at {sorted(addresses)}); stopped it")
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            import ray

            ray.init(
                address=self.address, runtime_env={"env_vars": env_vars}, log_to_driver=False, configure_logging=False
            )
            self._started_ray = True  # our connection; the cluster itself lives on
        self.ray = ray

    def _gpus_each(self) -> float:
        if self.gpus_per_worker is not None:
            return max(0.0, self.gpus_per_worker)
        gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        if gpus <= 0:
            return 0.0
        return min(1.0, gpus / self.workers)

    def start(self) -> list[dict]:
        self._init_ray()
        ray = self.ray
        gpus = self._gpus_each()
        actor_class = ray.remote(_predictor_actor_class(ray)).options(
            num_cpus=self.cpus_per_worker, num_gpus=gpus, max_restarts=2, max_task_retries=0
        )
        self._actors = [actor_class.remote(self.spec, self.methods_path) for _ in range(self.workers)]
        self._load = {index: 0 for index in range(self.workers)}
        logger.info(
            "%d Ray workers, %.2g CPU and %.2g GPU each; loading their models", self.workers, self.cpus_per_worker, gpus
        )
        infos = ray.get(
            [actor.ready.remote(self.ready_timeout_s) for actor in self._actors], timeout=self.ready_timeout_s + 60
        )
        return infos

    def submit(self, batch: list[dict]) -> None:
        index = min(self._load, key=lambda i: (self._load[i], i))
        self._load[index] += 1
        ref = self._actors[index].predict_batch.remote(batch)
        self._refs[ref] = (index, batch)

    def in_flight(self) -> int:
        return len(self._refs)

    def wait(self, timeout_s: float) -> list[BatchResult]:
        if not self._refs:
            return []
        done, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout_s)
        if done:  # take whatever else has finished too
            done, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        results: list[BatchResult] = []
        for ref in done:
            index, batch = self._refs.pop(ref)
            self._load[index] -= 1
            try:
                results.append((batch, self.ray.get(ref)))
            except Exception as error:  # the actor died (it restarts) or the call could not run
                logger.warning("a batch of %d tasks was lost: %s", len(batch), type(error).__name__)
                results.append((batch, error))
        return results

    def shutdown(self) -> None:
        if self.ray is None:
            return
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self._actors = []
        if self._started_ray:
            self.ray.shutdown()
        self.ray = None


PoolFactory = Callable[[WorkerSpec], WorkerPool]
