"""The job's driver against a fake Label Studio API, with the backend's model class on fake methods in
threads (LocalPool): what is imported, skipping, resuming, retries, failures, stopping."""

from __future__ import annotations

import json
import threading
import time

import pytest

from backend.prelabel.client import LabelStudioClient, parse_versions
from backend.prelabel.engines import LocalPool
from backend.prelabel.job import JobError, JobOptions, JobProgress, PrelabelJob, parse_task_ids
from backend.prelabel.worker import TaskPredictor, WorkerSpec, build_model, parse_methods, plan_version
from backend.service.runtime import ModelRuntime
from backend.service.segmentation_model import SegmentationMLBackend
from tests.service.conftest import FakeMethods

from .conftest import LABEL_CONFIG
from .fake_label_studio import LEGACY_TOKEN


def make_job(fake_ls, config, tmp_path, workers=2, methods_factory=FakeMethods, on_tick=None, **options):
    client = LabelStudioClient(fake_ls.url, LEGACY_TOKEN, attempts=2, backoff_s=0.01)
    made: list[TaskPredictor] = []

    def spec_for(label_config):
        return WorkerSpec(label_config, 1, config, modes=options.pop("modes", None))

    def pool_for(spec):
        predictors = [TaskPredictor.build(spec, methods_factory()) for _ in range(workers)]
        made.extend(predictors)
        return LocalPool(predictors, queue_depth=2, ready_timeout_s=20)

    job_options = JobOptions(project_id=1, state_dir=tmp_path / "state", batch_size=2, import_every=3, **options)
    job = PrelabelJob(client, spec_for, pool_for, job_options, on_tick=on_tick)
    job.made = made
    return job


def expected_prediction(config, task_id, data):
    """What the backend's /predict code gives that task (same class, same fake methods)."""
    runtime = ModelRuntime(config, FakeMethods())
    fetcher_source = __import__("backend.prelabel.worker", fromlist=["image_source"]).image_source(config, 1)
    model = SegmentationMLBackend(LABEL_CONFIG, "1", config=config, runtime=runtime, fetcher_for=fetcher_source.fetcher)
    response = model.predict([{"id": task_id, "data": data}])
    return response.predictions[0]


def test_every_task_gets_exactly_what_predict_gives_and_a_rerun_imports_nothing(fake_ls, config, tmp_path):
    summary = make_job(fake_ls, config, tmp_path).run()
    version = plan_version(WorkerSpec(LABEL_CONFIG, 1, config))
    assert summary.status == "done" and summary.imported == 10 and summary.failed == []
    state = fake_ls.state
    assert sorted(p["task"] for p in state.predictions) == list(range(1, 11))
    assert {p["model_version"] for p in state.predictions} == {version}
    for task_id in (1, 7):
        stored = next(p for p in state.predictions if p["task"] == task_id)
        fresh = expected_prediction(config, task_id, state.tasks[task_id])
        assert fresh["model_version"] == stored["model_version"]
        strip = lambda result: sorted(
            json.dumps({k: v for k, v in r.items() if k != "id"}, sort_keys=True) for r in result
        )
        assert strip(stored["result"]) == strip(fresh["result"]) and stored["result"]
    imports = state.imports
    again = make_job(fake_ls, config, tmp_path).run()
    assert again.status == "done" and again.imported == 0 and again.skipped == 10
    assert state.imports == imports and len(state.predictions) == 10


def test_tasks_of_other_versions_are_predicted_and_a_cut_column_is_checked_per_task(fake_ls, config, tmp_path):
    version = plan_version(WorkerSpec(LABEL_CONFIG, 1, config))
    state = fake_ls.state
    state.predictions.append({"task": 1, "model_version": "cpu-zg.00000000", "result": []})
    state.predictions.append({"task": 2, "model_version": version, "result": []})
    state.versions_column = "cut"  # every non-empty column at Label Studio's limit
    summary = make_job(fake_ls, config, tmp_path).run()
    assert summary.imported == 9 and summary.skipped == 1
    asked = [path for _, path, _ in state.requests if path.startswith("/api/predictions/")]
    assert sorted(asked) == ["/api/predictions/?task=1", "/api/predictions/?task=2"]
    assert sorted(p["task"] for p in state.predictions if p["model_version"] == version) == list(range(1, 11))


def test_limit_then_resume(fake_ls, config, tmp_path):
    first = make_job(fake_ls, config, tmp_path, limit=4).run()
    assert first.imported == 4
    second = make_job(fake_ls, config, tmp_path).run()
    assert second.imported == 6 and second.skipped == 4
    assert sorted(p["task"] for p in fake_ls.state.predictions) == list(range(1, 11))


def test_only_the_named_tasks(fake_ls, config, tmp_path):
    summary = make_job(fake_ls, config, tmp_path, task_ids=(3, 5)).run()
    assert summary.imported == 2
    assert sorted(p["task"] for p in fake_ls.state.predictions) == [3, 5]


def test_failed_tasks_are_retried_a_bounded_number_of_times_then_listed(fake_ls, config, tmp_path):
    fake_ls.state.tasks[4] = {"image": "/data/upload/1/missing.png"}
    fake_ls.state.tasks[6] = {"image": "s3://bucket/nowhere.png"}
    summary = make_job(fake_ls, config, tmp_path, retries=2).run()
    assert summary.imported == 8
    assert [(item["task"], item["attempts"]) for item in summary.failed] == [(4, 3), (6, 3)]
    assert "HTTP 404" in summary.failed[0]["error"]
    saved = json.loads((tmp_path / "state" / "project-1.json").read_text())
    assert [item["task"] for item in saved["failed"]] == [4, 6] and saved["imported"] == 8
    # the next run retries them (they still lack a prediction); --skip-failed leaves them
    skipping = make_job(fake_ls, config, tmp_path, retry_failed=False).run()
    assert skipping.imported == 0 and skipping.skipped == 10


def test_an_import_whose_reply_was_lost_is_not_sent_twice(fake_ls, config, tmp_path):
    fake_ls.state.store_then_fail_imports = 1
    fake_ls.state.fail_imports = 0
    summary = make_job(fake_ls, config, tmp_path).run()
    assert summary.imported == 10 and summary.failed == []
    tasks = [p["task"] for p in fake_ls.state.predictions]
    assert sorted(tasks) == list(range(1, 11)), "a prediction was imported twice"


def test_an_import_that_failed_is_sent_again(fake_ls, config, tmp_path):
    fake_ls.state.fail_imports = 1
    summary = make_job(fake_ls, config, tmp_path).run()
    assert summary.imported == 10
    assert sorted(p["task"] for p in fake_ls.state.predictions) == list(range(1, 11))


class SlowMethods(FakeMethods):
    """Fake methods taking 0.2 s an image, so a stop comes while batches are in flight."""

    def zero_guidance(self, models, settings):
        segmenter = super().zero_guidance(models, settings)
        segment = segmenter.segment
        segmenter.segment = lambda image: (time.sleep(0.2), segment(image))[1]
        return segmenter


def test_stop_finishes_the_batches_in_flight_and_a_rerun_continues(fake_ls, config, tmp_path):
    stop = threading.Event()

    def tick(progress: JobProgress) -> None:
        if progress.imported >= 1:
            stop.set()

    job = make_job(fake_ls, config, tmp_path, workers=1, on_tick=tick, methods_factory=SlowMethods)
    summary = job.run(stop)
    assert summary.status == "stopped"
    assert 1 <= summary.imported < 10
    assert summary.imported == len(fake_ls.state.predictions), "a batch in flight was dropped"
    rest = make_job(fake_ls, config, tmp_path).run()
    assert rest.imported == 10 - summary.imported
    assert sorted(p["task"] for p in fake_ls.state.predictions) == list(range(1, 11))


def test_one_job_per_project(fake_ls, config, tmp_path):
    job = make_job(fake_ls, config, tmp_path)
    job.state.acquire()
    try:
        with pytest.raises(JobError, match="another pre-labelling job"):
            make_job(fake_ls, config, tmp_path).state.acquire()
    finally:
        job.state.release()


def test_methods_choose_the_adapters_and_the_version(fake_ls, config, tmp_path):
    both = plan_version(WorkerSpec(LABEL_CONFIG, 1, config))
    only_zg = plan_version(WorkerSpec(LABEL_CONFIG, 1, config, modes=parse_methods("zero-guidance")))
    assert both.startswith(only_zg) and "fmbseg" in both and "fmbseg" not in only_zg
    summary = make_job(fake_ls, config, tmp_path, modes=parse_methods("zero-guidance")).run()
    assert summary.model_version == only_zg and summary.imported == 10
    assert all(r["from_name"] != "class_mask" for p in fake_ls.state.predictions for r in p["result"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("sam")
    only_boxes = "<View><Image name='image' value='$image'/><BrushLabels name='b' toName='image' model_mode='classes'><Label value='cat'/></BrushLabels></View>"
    with pytest.raises(ValueError, match="none of the chosen methods"):
        build_model(WorkerSpec(only_boxes, 1, config, modes=parse_methods("zero-guidance")), ModelRuntime(config))


def test_a_label_config_the_backend_cannot_serve_fails_the_job_cleanly(fake_ls, config, tmp_path):
    fake_ls.state.label_config = "<View><Image name='image' value='$image'/></View>"
    summary = make_job(fake_ls, config, tmp_path).run()
    assert summary.status == "failed" and "no control this backend can predict" in summary.error
    assert fake_ls.state.imports == 0


def test_models_that_fail_to_load_fail_the_job(fake_ls, config, tmp_path):
    summary = make_job(fake_ls, config, tmp_path, methods_factory=lambda: FakeMethods(fail_loading=True)).run()
    assert summary.status == "failed" and "failed to load" in summary.error


def test_small_parsers():
    assert parse_task_ids("1, 2,5-7,2") == (1, 2, 5, 6, 7)
    assert parse_task_ids(None) is None
    assert parse_versions("") == frozenset() and parse_versions("a,b") == {"a", "b"}
    assert parse_versions("a, b") == {"a", "b"} and parse_versions("x" * 500) is None
    assert parse_versions(["a", None]) == {"a"}
