"""Webhooks: a bulk event is checked whole before anything is stored; a failing disk is a 503
with a clear message and leaves no partial file."""

from __future__ import annotations

import copy
import errno
import os

import pytest

from backend.service import annotation_store as store_module
from backend.service.annotation_store import AnnotationStore
from tests.service.conftest import load_recorded

from .conftest import ScopedOs

CREATED = load_recorded("webhook-annotation-created.json")["body"]


def bulk(*ids, action="ANNOTATIONS_CREATED"):
    return {
        "action": action,
        "annotation": [dict(CREATED["annotation"], id=i, task=1) for i in ids],
        "task": [dict(CREATED["task"], id=1)],
        "project": CREATED["project"],
    }


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"result": []}, "needs an 'id'"),
        ({"id": "x"}, "must be an integer"),
        ({"id": -3}, "annotation.id"),
        ({"id": 2**70}, "annotation.id"),
        ({"id": 9, "updated_at": "t" * 5000}, "updated_at is longer"),
        ("not an object", "needs an 'id'"),
    ],
)
def test_one_bad_item_in_a_bulk_webhook_stores_nothing(make_app, bad, fragment):
    app = make_app()
    body = bulk(11, 12)
    body["annotation"].append(bad)
    body["annotation"].append(dict(CREATED["annotation"], id=13, task=1))
    response = app.test_client().post("/webhook", json=body)
    assert response.status_code == 400 and fragment in response.json["error"]
    store = app.extensions["segmentation_service"].store
    assert store.current() == [] and not list(store.root.rglob("*.json"))


def test_one_bad_id_in_a_bulk_delete_stores_no_tombstone(make_app):
    app = make_app()
    client = app.test_client()
    assert client.post("/webhook", json=bulk(21, 22)).json["status"] == "stored"
    body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 21}, {"id": "oops"}], "project": {"id": 1}}
    response = client.post("/webhook", json=body)
    assert response.status_code == 400 and "annotation id" in response.json["error"]
    store = app.extensions["segmentation_service"].store
    assert sorted(r["annotation_id"] for r in store.current()) == [21, 22]


def test_a_lone_surrogate_is_stored_losslessly(make_app):
    app = make_app()
    raw = (
        b'{"action": "ANNOTATION_CREATED", "project": {"id": 1}, '
        b'"annotation": {"id": 31, "result": [{"value": {"text": ["bad \\ud800 half"]}}]}}'
    )
    response = app.test_client().post("/webhook", data=raw, content_type="application/json")
    assert response.status_code == 200 and response.json["status"] == "stored"
    (record,) = app.extensions["segmentation_service"].store.current(1)
    assert record["annotation"]["result"][0]["value"]["text"] == ["bad \ud800 half"]


def failing(error_number, *, after=0):
    """A replacement for an os function that fails with ``error_number`` after ``after`` calls."""
    calls = {"n": 0}

    def wrap(real):
        def fail(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(error_number, errno.errorcode[error_number] + " (injected)")
            return real(*args, **kwargs)

        return fail

    return wrap


def versions_of_41(*stamps):
    body = bulk(*[41] * len(stamps))
    for annotation, stamp in zip(body["annotation"], stamps):
        annotation["updated_at"] = stamp
    return body


@pytest.mark.parametrize("where", ["write", "fsync", "link", "open", "mkdir"])
@pytest.mark.parametrize("error_number, message", [(errno.ENOSPC, "disk full"), (errno.EIO, "I/O error")])
@pytest.mark.parametrize("new_annotations", [True, False], ids=["new", "new-versions"])
def test_disk_errors_are_503_and_leave_no_partial_file(
    make_app, monkeypatch, where, error_number, message, new_annotations
):
    app = make_app()
    client = app.test_client()
    store = app.extensions["segmentation_service"].store
    assert client.post("/webhook", json=bulk(41)).json["status"] == "stored"
    before = files(store.root)
    body = bulk(42, 43) if new_annotations else versions_of_41("2031-01-01", "2032-01-01")
    if where == "mkdir":
        monkeypatch.setattr(store_module.Path, "mkdir", failing(error_number)(store_module.Path.mkdir))
    else:
        replacement = failing(error_number)(getattr(os, where))
        monkeypatch.setattr(store_module, "os", ScopedOs(os, **{where: replacement}))
    response = client.post("/webhook", json=body)
    monkeypatch.undo()
    if where == "mkdir" and not new_annotations:  # nothing to create: the write goes through
        assert response.status_code == 200
        return
    assert response.status_code == 503 and response.is_json
    assert message in response.json["error"] and errno.errorcode[error_number] in response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert not list(store.root.rglob("*.partial"))
    assert files(store.root) == before  # nothing new visible
    # resent once the disk is back: stored, nothing lost, nothing doubled
    assert client.post("/webhook", json=body).json["status"] == "stored"
    assert sorted(r["annotation_id"] for r in store.current()) == ([41, 42, 43] if new_annotations else [41])
    assert len(list(store.root.rglob("v-*.json"))) == 3
    metrics = client.get("/metrics").json
    assert metrics["webhooks"]["storage_errors"] == 1 and metrics["errors"]["503"] == 1


def test_a_failure_mid_bulk_keeps_the_written_items_and_a_resend_completes_it(make_app, monkeypatch):
    app = make_app()
    client = app.test_client()
    store = app.extensions["segmentation_service"].store
    # the label config and annotation 51 are written (2 links), annotation 52's link fails
    monkeypatch.setattr(store_module, "os", ScopedOs(os, link=failing(errno.ENOSPC, after=2)(os.link)))
    assert client.post("/webhook", json=bulk(51, 52)).status_code == 503
    monkeypatch.undo()
    assert [r["annotation_id"] for r in store.current()] == [51] and not list(store.root.rglob("*.partial"))
    reply = client.post("/webhook", json=bulk(51, 52)).json
    assert reply["annotations"] == [{"annotation": 51, "status": "duplicate"}, {"annotation": 52, "status": "stored"}]


def test_directory_fsync_failure_after_link_is_503_and_the_resend_is_a_duplicate(make_app, monkeypatch):
    app = make_app()
    client = app.test_client()
    store = app.extensions["segmentation_service"].store
    assert client.post("/webhook", json=bulk(61)).status_code == 200  # directories and config exist
    updated = bulk(61, action="ANNOTATION_UPDATED")
    updated["annotation"] = dict(updated["annotation"][0], updated_at="2030-01-01T00:00:00Z")
    real_fsync = store_module._fsync_directory

    def fail_dir(directory):
        raise OSError(errno.EIO, "EIO (injected)")

    monkeypatch.setattr(store_module, "_fsync_directory", fail_dir)  # only the fsync after the link runs
    response = client.post("/webhook", json=updated)
    monkeypatch.setattr(store_module, "_fsync_directory", real_fsync)
    assert response.status_code == 503 and "I/O error" in response.json["error"]
    # the file was complete (fsync'd) before it got its name: a resend finds it
    assert client.post("/webhook", json=updated).json["status"] == "duplicate"
    assert len(list(store.root.rglob("v-*.json"))) == 2


def test_unlink_failing_too_leaves_the_partial_for_recover(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path)
    (tmp_path / "project-1" / "annotation-1").mkdir(parents=True)  # so the first fsync is the file's

    def unlink_fails(self, missing_ok=False):
        raise OSError(errno.EIO, "EIO (injected)")

    monkeypatch.setattr(store_module, "os", ScopedOs(os, fsync=failing(errno.EIO)(os.fsync)))
    monkeypatch.setattr(store_module.Path, "unlink", unlink_fails)
    with pytest.raises(OSError):
        store.save({"id": 1, "updated_at": "t1", "result": []}, event="ANNOTATION_CREATED", project_id=1)
    monkeypatch.undo()
    assert len(list(tmp_path.rglob("*.partial"))) == 1 and store.current() == []
    assert AnnotationStore(tmp_path).recover() == 1
    assert not list(tmp_path.rglob("*.partial"))
    assert not list(tmp_path.glob("project-*/annotation-*"))  # the empty directory went too
    assert store.count() == 0


def test_recover_at_startup_cleans_partials(config, make_app):
    root = config.model_dir / "annotations" / "project-1" / "annotation-5"
    root.mkdir(parents=True)
    (root / ".v-x.json.0123.partial").write_bytes(b'{"half')
    app = make_app()
    assert not list((config.model_dir / "annotations").rglob("*.partial"))
    assert app.extensions["segmentation_service"].store.count() == 0


def test_prepare_writes_nothing(tmp_path):
    store = AnnotationStore(tmp_path)
    pending = store.prepare(
        {"id": 7, "updated_at": "t"}, event="ANNOTATION_CREATED", project_id=3, label_config="<View/>"
    )
    assert not list(tmp_path.rglob("*"))
    assert store.commit(pending).stored and store.commit(pending).status == "duplicate"
    with pytest.raises(ValueError, match="project id"):
        store.prepare({"id": 7}, event="ANNOTATION_CREATED", project_id=-1)
    body = copy.deepcopy(CREATED)
    assert store.prepare(body["annotation"], event="ANNOTATION_CREATED").annotation_id == body["annotation"]["id"]
