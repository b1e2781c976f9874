"""The driver of a pre-labelling job: list, skip, dispatch, import, retry, report.

1. Read the project's label config and compute the ``model_version`` the backend's ``/predict``
   gives it (:func:`~backend.prelabel.worker.plan_version`; the workers check they agree).
2. List the project's tasks in pages (or the ``--tasks`` given), skipping every task that already
   holds a prediction of that version: Label Studio itself is the record of what is done, so a
   killed run, rerun, continues where it stopped and imports nothing twice.
3. Keep the workers busy with batches; as batches come back, import their predictions in bulk
   (``import_every`` predictions a request) with the model version.
4. A failed task goes back in the queue, at most ``retries`` more times; then it is listed in the
   summary and in ``<state dir>/project-<id>.json``.
5. ``stop`` (Ctrl-C, ``POST /prelabel`` cancelled) stops dispatching; the batches in flight are
   finished and imported, then the job ends cleanly.

An import that failed may still have been stored (a timeout after Label Studio committed): before
sending it again the job asks Label Studio which of those tasks hold the version now, and sends
only the others. One job at a time per project and state directory (a lock file).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .client import LabelStudioClient, LabelStudioError, ListedTask
from .engines import WorkerPool
from .worker import TaskOutcome, WorkerSpec, plan_version

logger = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot run (label config, credentials, a worker disagreeing on the version...)."""


class _NothingToDo(Exception):
    """Every task already holds a prediction of the version."""


@dataclass(frozen=True)
class JobOptions:
    project_id: int
    modes: tuple[str, ...] | None = None  # None: every method the label config asks for
    limit: int | None = None  # at most this many tasks predicted in this run
    task_ids: tuple[int, ...] | None = None  # only these tasks
    batch_size: int = 4
    retries: int = 2  # more attempts after the first, per task
    import_every: int = 32  # predictions per import request
    page_size: int = 500
    state_dir: Path = Path("prelabel-state")
    retry_failed: bool = True  # False: skip the tasks a previous run listed as failed

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.import_every < 1 or self.page_size < 1:
            raise ValueError("batch size, import size and page size must be >= 1")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


class JobProgress:
    """Thread-safe counters of a running job (the progress bar and ``/metrics`` read them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = "starting"
        self.model_version: str | None = None
        self.project_tasks = 0  # tasks in the project (as listed)
        self.listed = 0
        self.skipped = 0  # already holding a prediction of the version
        self.queued = 0  # to predict in this run (grows while listing)
        self.predicted = 0
        self.imported = 0
        self.failed = 0  # gave up on (after the retries)
        self.retried = 0  # attempts repeated
        self.listing_done = False
        self.workers: list[dict] = []
        self.error: str | None = None
        self.started_at = time.time()
        self._first_done_at: float | None = None
        self.running_since: float | None = None  # the workers' models are loaded
        self.finished_at: float | None = None

    def update(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def add(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)
            if increments.get("predicted") and self._first_done_at is None:
                self._first_done_at = time.time()

    @property
    def done(self) -> int:
        return self.imported + self.failed

    def images_per_s(self) -> float | None:
        """Tasks finished (imported or given up) per second since the workers' models were loaded."""
        with self._lock:
            return self._rate_locked()

    def _rate_locked(self) -> float | None:
        end = self.finished_at or time.time()
        if self._first_done_at is None or self.running_since is None:
            return None
        elapsed = end - self.running_since
        return (self.imported + self.failed) / elapsed if elapsed > 0 else None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            rate = self._rate_locked()
            remaining = max(0, self.queued - self.imported - self.failed)
            eta = remaining / rate if rate and self.listing_done else None
            return {
                "status": self.status,
                "model_version": self.model_version,
                "project_tasks": self.project_tasks,
                "listed": self.listed,
                "skipped": self.skipped,
                "to_predict": self.queued,
                "predicted": self.predicted,
                "imported": self.imported,
                "failed": self.failed,
                "retried": self.retried,
                "images_per_s": round(rate, 3) if rate is not None else None,
                "eta_s": round(eta, 1) if eta is not None else None,
                "elapsed_s": round((self.finished_at or time.time()) - self.started_at, 1),
                "workers": len(self.workers),
                "error": self.error,
            }


@dataclass
class JobSummary:
    project_id: int
    model_version: str | None
    status: str  # done | stopped | failed
    skipped: int = 0
    imported: int = 0
    failed: list[dict] = field(default_factory=list)  # {"task", "attempts", "error"}
    seconds: float = 0.0
    images_per_s: float | None = None
    state_file: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateFile:
    """``<state dir>/project-<id>.json``: the last run's summary and failures; and the lock that keeps
    two jobs of one project apart (``project-<id>.lock``)."""

    def __init__(self, state_dir: Path, project_id: int) -> None:
        self.path = Path(state_dir) / f"project-{int(project_id)}.json"
        self.lock_path = Path(state_dir) / f"project-{int(project_id)}.lock"
        self._lock_handle: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise JobError(f"another pre-labelling job holds {self.lock_path}: one job per project at a time") from None
        self._lock_handle = handle

    def release(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def read(self) -> dict:
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def previous_failures(self, model_version: str) -> set[int]:
        state = self.read()
        if state.get("model_version") != model_version:
            return set()
        return {int(item["task"]) for item in state.get("failed", []) if isinstance(item, dict) and "task" in item}

    def write(self, summary: JobSummary) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {**summary.as_dict(), "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        partial = self.path.with_suffix(f".json.{os.getpid()}.partial")
        partial.write_text(json.dumps(body, indent=1))
        os.replace(partial, self.path)


class PrelabelJob:
    """One run over one project (see the module docstring)."""

    def __init__(
        self,
        client: LabelStudioClient,
        spec_for: Callable[[str], WorkerSpec],
        pool_for: Callable[[WorkerSpec], WorkerPool],
        options: JobOptions,
        progress: JobProgress | None = None,
        on_tick: Callable[[JobProgress], None] | None = None,
    ) -> None:
        self.client = client
        self.spec_for = spec_for  # label config -> the workers' spec
        self.pool_for = pool_for
        self.options = options
        self.progress = progress or JobProgress()
        self.on_tick = on_tick
        self.state = StateFile(options.state_dir, options.project_id)
        self._attempts: dict[int, int] = {}
        self._errors: dict[int, str] = {}
        self._failed: list[dict] = []
        self._to_import: list[dict] = []

    # ---- the run --------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> JobSummary:
        stop = stop or threading.Event()
        options, progress = self.options, self.progress
        started = time.monotonic()
        version: str | None = None
        pool: WorkerPool | None = None
        status = "failed"
        error_text: str | None = None
        self.state.acquire()
        try:
            project = self.client.project(options.project_id)
            spec = self.spec_for(project["label_config"])
            try:
                version = plan_version(spec)
            except ValueError as error:  # LabelConfigError is one
                raise JobError(f"project {options.project_id}: {error}") from None
            progress.update(model_version=version, status="starting workers")
            skip = set() if options.retry_failed else self.state.previous_failures(version)
            tasks = self._tasks_to_predict(version, skip)
            first = next(tasks, None)
            if first is None:  # nothing to do: no workers started
                raise _NothingToDo()
            tasks = itertools.chain([first], tasks)
            pool = self.pool_for(spec)
            infos = pool.start()
            for info in infos:
                if info.get("model_version") != version:
                    raise JobError(
                        f"a worker on {info.get('host')} predicts as {info.get('model_version')!r}, not {version!r}: "
                        "the same backend version, MODEL_PRESET, settings and FMbSeg checkpoint are needed on every node"
                    )
            progress.update(workers=infos, status="running", running_since=time.time())
            logger.info("project %s: model version %s, %d workers ready", options.project_id, version, len(infos))
            self._dispatch(pool, tasks, version, stop)
            status = "stopped" if stop.is_set() else "done"
        except _NothingToDo:
            logger.info("project %s: no task lacks a prediction of %s", options.project_id, version)
            status = "done"
        except (JobError, LabelStudioError) as error:
            error_text = str(error)
            logger.error("pre-labelling project %s failed: %s", options.project_id, error)
        except Exception as error:
            error_text = f"{type(error).__name__}: {error}"
            logger.exception("pre-labelling project %s failed", options.project_id)
        finally:
            try:
                if pool is not None:
                    self._flush(version)
            except Exception as error:  # reported, the run still ends cleanly
                error_text = error_text or f"import at the end failed: {error}"
                status = "failed"
            finally:
                if pool is not None:
                    pool.shutdown()
            progress.update(status=status, error=error_text, finished_at=time.time())
            summary = JobSummary(
                project_id=options.project_id,
                model_version=version,
                status=status,
                skipped=progress.skipped,
                imported=progress.imported,
                failed=sorted(self._failed, key=lambda item: item["task"]),
                seconds=round(time.monotonic() - started, 2),
                images_per_s=progress.images_per_s(),
                state_file=str(self.state.path),
                error=error_text,
            )
            try:
                self.state.write(summary)
            except OSError as error:
                logger.error("could not write %s: %s", self.state.path, error)
            self.state.release()
        return summary

    # ---- listing --------------------------------------------------------------------------

    def _tasks_to_predict(self, version: str, skip: set[int]) -> Iterator[dict]:
        """Tasks lacking a prediction of ``version``, lazily, at most ``limit``."""
        options, progress = self.options, self.progress
        limit = options.limit
        if options.task_ids is not None:
            progress.update(project_tasks=len(options.task_ids))
            pages: Iterator[list[ListedTask]] = iter(
                [list(self.client.tasks_by_id(options.project_id, options.task_ids))]
            )
        else:
            pages = self._pages()
        queued = 0
        for page in pages:
            for listed in page:
                progress.add(listed=1)
                if limit is not None and queued >= limit:
                    progress.update(listing_done=True)
                    return
                if listed.id in skip or self._holds(listed, version):
                    progress.add(skipped=1)
                    continue
                queued += 1
                progress.add(queued=1)
                yield listed.as_task(options.project_id)
        progress.update(listing_done=True)

    def _pages(self) -> Iterator[list[ListedTask]]:
        for page in self.client.task_pages(self.options.project_id, self.options.page_size):
            self.progress.update(project_tasks=page.total)
            yield page.tasks

    def _holds(self, listed: ListedTask, version: str) -> bool:
        versions = listed.versions
        if versions is None:  # the listing could not tell: ask for this task's predictions
            versions = self.client.prediction_versions(listed.id)
        return version in versions

    # ---- dispatching ----------------------------------------------------------------------

    def _dispatch(self, pool: WorkerPool, tasks: Iterator[dict], version: str, stop: threading.Event) -> None:
        options, progress = self.options, self.progress
        retry_queue: deque[dict] = deque()
        exhausted = False
        last_tick = 0.0
        while True:
            while not stop.is_set() and pool.in_flight() < pool.capacity:
                batch = [retry_queue.popleft() for _ in range(min(len(retry_queue), options.batch_size))]
                while len(batch) < options.batch_size and not exhausted:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                    else:
                        batch.append(task)
                if not batch:
                    break
                pool.submit(batch)
            if pool.in_flight() == 0:
                if stop.is_set() or (exhausted and not retry_queue):
                    break
                continue
            for batch, outcome in pool.wait(timeout_s=0.5):
                self._collect(batch, outcome, retry_queue)
            if len(self._to_import) >= options.import_every or (pool.in_flight() == 0 and self._to_import):
                self._flush(version)
            now = time.monotonic()
            if self.on_tick is not None and now - last_tick >= 0.5:
                last_tick = now
                self.on_tick(progress)
        if stop.is_set():
            progress.update(status="stopping")

    def _collect(self, batch: list[dict], outcome: Any, retry_queue: deque) -> None:
        if isinstance(outcome, BaseException):  # the whole batch was lost (a worker died)
            outcomes = [
                TaskOutcome(int(task["id"]), error=f"worker lost: {type(outcome).__name__}: {outcome}")
                for task in batch
            ]
        else:
            outcomes = outcome
        by_id = {int(task["id"]): task for task in batch}
        for result in outcomes:
            task = by_id[result.task_id]
            attempts = self._attempts.get(result.task_id, 0) + 1
            self._attempts[result.task_id] = attempts
            if result.ok:
                self.progress.add(predicted=1)
                self._to_import.append({"task": result.task_id, **result.prediction})
                continue
            self._errors[result.task_id] = result.error or "unknown error"
            if result.retryable and attempts <= self.options.retries:
                self.progress.add(retried=1)
                retry_queue.append(task)
                logger.info("task %s failed (attempt %d), will retry: %s", result.task_id, attempts, result.error)
            else:
                self._give_up(result.task_id, attempts, result.error or "unknown error")

    def _give_up(self, task_id: int, attempts: int, error: str) -> None:
        logger.warning("task %s failed %d times, giving up: %s", task_id, attempts, error)
        self._failed.append({"task": task_id, "attempts": attempts, "error": error[:1000]})
        self.progress.add(failed=1)

    # ---- importing ------------------------------------------------------------------------

    def _flush(self, version: str | None) -> None:
        """Import what is waiting; after a failed request, only what Label Studio still lacks."""
        pending, self._to_import = self._to_import, []
        if not pending:
            return
        try:
            self.client.import_predictions(self.options.project_id, pending)
        except LabelStudioError as error:
            logger.warning("importing %d predictions failed (%s); checking what was stored", len(pending), error)
            missing = []
            for item in pending:
                try:
                    stored = version in self.client.prediction_versions(item["task"])
                except LabelStudioError:
                    stored = False
                if stored:
                    self.progress.add(imported=1)
                else:
                    missing.append(item)
            try:
                self.client.import_predictions(self.options.project_id, missing)
            except LabelStudioError as again:
                for item in missing:
                    self._give_up(item["task"], self._attempts.get(item["task"], 1), f"import failed: {again}")
                return
            self.progress.add(imported=len(missing))
            return
        self.progress.add(imported=len(pending))


def parse_task_ids(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,2,5-8"`` -> ``(1, 2, 5, 6, 7, 8)``."""
    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(int(value) for value in text)
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            low, high = (int(value) for value in part.split("-", 1))
            if high < low or high - low > 1_000_000:
                raise ValueError(f"bad task range {part!r}")
            ids.extend(range(low, high + 1))
        else:
            ids.append(int(part))
    return tuple(dict.fromkeys(ids))
