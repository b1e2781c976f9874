"""``python -m backend.prelabel --project ID``: pre-label a whole Label Studio project on Ray.

Reads ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``MODEL_PRESET`` and every other variable of
the backend (docs/service.md: the same settings give the same predictions and model version).
See docs/prelabel.md. Exit status: 0 when every task is done, 1 when some failed or the job stopped
early, 2 for a usage or set-up error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from ..service.config import ServiceConfig
from .client import LabelStudioClient
from .engines import RayPool
from .job import JobOptions, JobProgress, PrelabelJob, parse_task_ids
from .tiling import TileSpec
from .worker import WorkerSpec, parse_methods

logger = logging.getLogger("backend.prelabel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.prelabel",
        description="Pre-label a Label Studio project with the backend's methods, on a Ray cluster or a local Ray.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (host:6379, or 'auto' on a cluster node); default: a private local Ray on 127.0.0.1",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers (Ray actors), each with its own models (default 2)"
    )
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per worker; default: the cluster's GPUs shared among the workers (at most 1 each), 0 without",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="zero-guidance, fmbseg or both (comma-separated); default: what the label config asks for",
    )
    parser.add_argument(
        "--tiles",
        default=None,
        metavar="SIZE[:OVERLAP]",
        help="tiled FMbSeg base prediction at the original resolution: square tiles of SIZE px (e.g. 518, "
        "DINOv2's input) overlapping by OVERLAP (default 64); needs an alignment checkpoint; own model version",
    )
    parser.add_argument("--limit", type=int, default=None, help="predict at most this many tasks in this run")
    parser.add_argument("--tasks", default=None, help="only these task ids: 1,2,10-20")
    parser.add_argument("--batch-size", type=int, default=4, help="tasks per batch sent to a worker (default 4)")
    parser.add_argument("--retries", type=int, default=2, help="more attempts for a failed task (default 2)")
    parser.add_argument("--import-every", type=int, default=32, help="predictions per import request (default 32)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the summary and failures of each run are kept (default: MODEL_DIR/prelabel)",
    )
    parser.add_argument("--skip-failed", action="store_true", help="do not retry the tasks the previous run gave up on")
    parser.add_argument("--object-store-mb", type=int, default=500, help="object store of the local Ray (default 500)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    return parser


class ProgressBar:
    """A tqdm bar of tasks: images/s, ETA, imported / skipped / failed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self._last_log = 0.0

    def tick(self, progress: JobProgress) -> None:
        snapshot = progress.snapshot()
        done = snapshot["imported"] + snapshot["failed"]
        if not self.enabled:
            now = time.monotonic()
            if now - self._last_log >= 10.0:
                self._last_log = now
                logger.info(
                    "%d/%d done, %s images/s, ETA %s s, %d skipped, %d failed",
                    done,
                    snapshot["to_predict"],
                    snapshot["images_per_s"],
                    snapshot["eta_s"],
                    snapshot["skipped"],
                    snapshot["failed"],
                )
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=snapshot["to_predict"], unit="img", desc="pre-labelling", dynamic_ncols=True)
        if self.bar.total != snapshot["to_predict"]:
            self.bar.total = snapshot["to_predict"]
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(
            imported=snapshot["imported"], skipped=snapshot["skipped"], failed=snapshot["failed"], refresh=False
        )

    def close(self, progress: JobProgress) -> None:
        if self.bar is not None:
            self.tick(progress)
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = ServiceConfig.from_env()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not config.label_studio_url or not config.label_studio_api_key:
        print(
            "error: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (the job reads and writes through Label Studio's API)",
            file=sys.stderr,
        )
        return 2
    try:
        modes = parse_methods(args.methods)
        tiles = TileSpec.parse(args.tiles) if args.tiles else None
        task_ids = parse_task_ids(args.tasks)
        options = JobOptions(
            project_id=args.project,
            modes=modes,
            limit=args.limit,
            task_ids=task_ids,
            batch_size=args.batch_size,
            retries=args.retries,
            import_every=args.import_every,
            state_dir=args.state_dir or (config.model_dir / "prelabel"),
            retry_failed=not args.skip_failed,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # the driver never loads models; the workers do (the same config object travels to them)
    worker_config = config.replace(model_process=False, model_load_wait_s=max(config.model_load_wait_s, 1800.0))
    client = LabelStudioClient(config.label_studio_url, config.label_studio_api_key)

    def spec_for(label_config: str) -> WorkerSpec:
        return WorkerSpec(
            label_config=label_config, project_id=args.project, config=worker_config, modes=modes, tiles=tiles
        )

    def pool_for(spec: WorkerSpec) -> RayPool:
        return RayPool(
            spec,
            args.workers,
            address=args.address,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
            object_store_bytes=args.object_store_mb * 1024 * 1024,
        )

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: quit now
        stop.set()
        print(
            "\nstopping after the batches in flight (their predictions are imported); Ctrl-C again to quit now",
            file=sys.stderr,
        )

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    bar = ProgressBar(enabled=not args.no_progress and sys.stderr.isatty())
    progress = JobProgress()
    job = PrelabelJob(client, spec_for, pool_for, options, progress=progress, on_tick=bar.tick)
    summary = job.run(stop)
    bar.close(progress)
    print_summary(summary)
    if args.json:
        print(json.dumps(summary.as_dict()))
    return 0 if summary.status == "done" and not summary.failed else 1


def print_summary(summary) -> None:
    rate = f"{summary.images_per_s:.3f} images/s" if summary.images_per_s else "no images"
    lines = [
        f"project {summary.project_id}: {summary.status} in {summary.seconds:.1f} s ({rate}); "
        f"model version {summary.model_version}",
        f"  imported {summary.imported}, skipped {summary.skipped} (already predicted), failed {len(summary.failed)}",
    ]
    for item in summary.failed[:20]:
        lines.append(f"  task {item['task']}: {item['attempts']} attempts: {item['error']}")
    if len(summary.failed) > 20:
        lines.append(f"  ... and {len(summary.failed) - 20} more")
    if summary.error:
        lines.append(f"  error: {summary.error}")
    lines.append(f"  summary and failures: {summary.state_file}")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
