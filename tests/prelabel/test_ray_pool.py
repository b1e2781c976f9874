"""The job on a private local Ray (2 actors, fake methods): the actors run the backend's model class,
Ray listens on 127.0.0.1 only, and everything is shut down afterwards. About 20 s."""

from __future__ import annotations

import subprocess

import pytest

from backend.prelabel.client import LabelStudioClient
from backend.prelabel.engines import RayPool
from backend.prelabel.job import JobOptions, PrelabelJob
from backend.prelabel.worker import WorkerSpec

from .fake_label_studio import LEGACY_TOKEN

pytest.importorskip("ray")


def ray_listening_addresses() -> list[str]:
    """``address:port`` of every TCP socket a Ray process (raylet, gcs_server, ray::...) listens on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    return [
        line.split()[3] for line in out.splitlines() if any(n in line for n in ('"raylet"', '"gcs_server"', '"ray::'))
    ]


def test_two_ray_workers_prelabel_the_project_on_loopback_only(fake_ls, config, tmp_path):
    client = LabelStudioClient(fake_ls.url, LEGACY_TOKEN, attempts=2, backoff_s=0.01)
    pools: list[RayPool] = []
    seen: dict = {}

    def pool_for(spec: WorkerSpec) -> RayPool:
        pool = RayPool(
            spec,
            2,
            cpus_per_worker=1,
            object_store_bytes=100 * 1024 * 1024,
            ready_timeout_s=120,
            methods_path="tests.prelabel.conftest:make_methods",
        )
        pools.append(pool)
        return pool

    def tick(progress) -> None:
        if "ports" not in seen and pools and pools[0].ray is not None:
            seen["ports"] = ray_listening_addresses()

    options = JobOptions(project_id=1, state_dir=tmp_path / "state", batch_size=2)
    job = PrelabelJob(client, lambda cfg: WorkerSpec(cfg, 1, config), pool_for, options, on_tick=tick)
    summary = job.run()
    assert summary.status == "done", summary.error
    assert summary.imported == 10
    assert sorted(p["task"] for p in fake_ls.state.predictions) == list(range(1, 11))
    workers = job.progress.workers
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert {w["model_version"] for w in workers} == {summary.model_version}
    assert seen.get("ports"), "no Ray process found listening"
    assert all(port.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for port in seen["ports"]), seen["ports"]
    import ray

    assert not ray.is_initialized()  # shut down at the end
