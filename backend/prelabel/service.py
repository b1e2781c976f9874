"""``POST /prelabel``: the backend runs the pre-labelling job of a project in the background.

The same driver as ``python -m backend.prelabel`` (:class:`~backend.prelabel.job.PrelabelJob`),
in a thread of the backend, with the operator's Label Studio credentials (``LABEL_STUDIO_URL`` +
``LABEL_STUDIO_API_KEY``; never a ``/setup`` token). The workers are:

* without ``PRELABEL_RAY_ADDRESS``: the backend's own models (its model process), one task batch at
  a time, next to ``/predict`` (which keeps priority: a busy model answers 503 to neither, the job's
  tasks just wait and are retried);
* with ``PRELABEL_RAY_ADDRESS``: ``PRELABEL_WORKERS`` actors on that Ray cluster.

One job per project at a time; its progress is in ``GET /prelabel`` and ``GET /metrics``
(``prelabel``), and ``DELETE /prelabel?project=ID`` stops it after the batches in flight.
This module never imports torch or Ray in the HTTP process (Ray only when a cluster is used).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..service.config import ServiceConfig
from ..service.images import ImageFetcher
from ..service.runtime import Runtime
from .client import LabelStudioClient
from .engines import LocalPool, RayPool, WorkerPool
from .job import JobOptions, JobProgress, PrelabelJob, parse_task_ids
from .worker import TaskPredictor, WorkerSpec, build_model, parse_methods

logger = logging.getLogger(__name__)


class PrelabelRequestError(ValueError):
    """The request cannot start a job (400)."""


class PrelabelConflict(RuntimeError):
    """A job of that project is running (409)."""


class PrelabelJobs:
    """The background jobs of one backend process, one per project."""

    def __init__(
        self, config: ServiceConfig, runtime: Runtime, fetcher_for: Callable[[str | None], ImageFetcher]
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.fetcher_for = fetcher_for
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[JobProgress, threading.Event, threading.Thread]] = {}
        self._summaries: dict[int, dict] = {}

    def start(self, body: dict) -> dict[str, Any]:
        """Start the job a ``POST /prelabel`` body asks for; its first progress snapshot."""
        if not self.config.label_studio_url or not self.config.label_studio_api_key:
            raise PrelabelRequestError(
                "pre-labelling reads and writes through Label Studio's API with the operator's key: "
                "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend"
            )
        project = body.get("project")
        try:
            project_id = int(str(project).split(".")[0])
        except (TypeError, ValueError):
            raise PrelabelRequestError("'project' must be a Label Studio project id") from None
        try:
            limit = body.get("limit")
            options = JobOptions(
                project_id=project_id,
                modes=parse_methods(body.get("methods")),
                limit=None if limit is None else int(limit),
                task_ids=parse_task_ids(body.get("tasks")),
                batch_size=int(body.get("batch_size", 4)),
                state_dir=self.config.model_dir / "prelabel",
            )
        except (TypeError, ValueError) as error:
            raise PrelabelRequestError(str(error)) from None
        with self._lock:
            running = self._jobs.get(project_id)
            if running is not None and running[2].is_alive():
                raise PrelabelConflict(f"a pre-labelling job of project {project_id} is running")
            progress, stop = JobProgress(), threading.Event()
            thread = threading.Thread(
                target=self._run, args=(options, progress, stop), name=f"prelabel-{project_id}", daemon=True
            )
            self._jobs[project_id] = (progress, stop, thread)
            thread.start()
        return {"project": project_id, **progress.snapshot()}

    def _run(self, options: JobOptions, progress: JobProgress, stop: threading.Event) -> None:
        client = LabelStudioClient(self.config.label_studio_url, self.config.label_studio_api_key)
        modes = options.modes

        def spec_for(label_config: str) -> WorkerSpec:
            config = self.config
            if self.config.prelabel_ray_address:  # workers load their own models, in the actor
                config = config.replace(model_process=False, model_load_wait_s=max(config.model_load_wait_s, 1800.0))
            return WorkerSpec(label_config=label_config, project_id=options.project_id, config=config, modes=modes)

        def pool_for(spec: WorkerSpec) -> WorkerPool:
            if self.config.prelabel_ray_address:
                return RayPool(spec, self.config.prelabel_workers, address=self.config.prelabel_ray_address)
            model = build_model(spec, self.runtime)
            predictor = TaskPredictor(model, self.fetcher_for(str(options.project_id)), self.runtime)
            return LocalPool([predictor], ready_timeout_s=self.config.model_load_wait_s)

        summary = PrelabelJob(client, spec_for, pool_for, options, progress=progress).run(stop)
        with self._lock:
            self._summaries[options.project_id] = summary.as_dict()
        logger.info(
            "pre-labelling project %s: %s, %d imported, %d failed",
            options.project_id,
            summary.status,
            summary.imported,
            len(summary.failed),
        )

    def stop(self, project: Any) -> dict[str, Any]:
        try:
            project_id = int(str(project).split(".")[0])
        except (TypeError, ValueError):
            raise PrelabelRequestError("'project' must be a Label Studio project id") from None
        with self._lock:
            job = self._jobs.get(project_id)
        if job is None:
            raise PrelabelRequestError(f"no pre-labelling job of project {project_id}")
        job[1].set()
        return {"project": project_id, **job[0].snapshot()}

    def status(self) -> dict[str, Any]:
        """Per project: the progress of its last job (``failed_tasks`` once it ended)."""
        with self._lock:
            jobs = dict(self._jobs)
            summaries = dict(self._summaries)
        report: dict[str, Any] = {}
        for project_id, (progress, _, _) in sorted(jobs.items()):
            snapshot = progress.snapshot()
            summary = summaries.get(project_id)
            if summary is not None and snapshot["status"] in ("done", "stopped", "failed"):
                snapshot["failed_tasks"] = [item["task"] for item in summary["failed"]][:100]
                snapshot["state_file"] = summary["state_file"]
            report[str(project_id)] = snapshot
        return report
