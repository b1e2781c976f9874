"""Durable annotation storage: dedup, updates, deletions, crashes mid-write."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.service import annotation_store as annotations_module
from backend.service.annotation_store import AnnotationStore, version_key, write_file_once

REPO = Path(__file__).resolve().parents[2]


def annotation(annotation_id=1, updated_at="2026-11-21T23:46:08.534136Z", text="caption", project=1):
    return {
        "id": annotation_id,
        "project": project,
        "task": 10 + annotation_id,
        "updated_at": updated_at,
        "result": [{"id": "r1", "type": "textarea", "value": {"text": [text]}}],
    }


def test_save_dedupes_by_id_and_updated_at(tmp_path):
    store = AnnotationStore(tmp_path)
    first = store.save(annotation(), event="ANNOTATION_CREATED", label_config="<View/>")
    again = store.save(annotation(text="resent"), event="ANNOTATION_CREATED")
    assert (first.status, again.status) == ("stored", "duplicate")
    assert json.loads(first.path.read_text())["annotation"]["result"][0]["value"]["text"] == ["caption"]
    updated = store.save(annotation(updated_at="2026-11-21T23:46:09.326150Z", text="fixed"), event="ANNOTATION_UPDATED")
    assert updated.stored
    (current,) = store.current()
    assert current["annotation"]["result"][0]["value"]["text"] == ["fixed"]
    assert current["event"] == "ANNOTATION_UPDATED" and current["project_id"] == 1
    assert [v["annotation"]["updated_at"] for v in store.versions(1)] == [
        "2026-11-21T23:46:08.534136Z",
        "2026-11-21T23:46:09.326150Z",
    ]
    assert store.label_config(1, json.loads(first.path.read_text())["label_config_sha"]) == "<View/>"


def test_without_updated_at_identical_results_dedupe(tmp_path):
    store = AnnotationStore(tmp_path)
    bare = {"id": 3, "result": [{"a": 1}]}
    assert store.save(bare, event="ANNOTATION_CREATED", project_id=2).stored
    assert not store.save(dict(bare), event="ANNOTATION_CREATED", project_id=2).stored
    assert store.save({"id": 3, "result": [{"a": 2}]}, event="ANNOTATION_UPDATED", project_id=2).stored
    assert version_key({"updated_at": "2026-01-01T10:00:00Z"}) == "2026-01-01T10-00-00Z"


def test_delete_leaves_a_tombstone_and_hides_the_annotation(tmp_path):
    store = AnnotationStore(tmp_path)
    store.save(annotation(1), event="ANNOTATION_CREATED")
    store.save(annotation(2), event="ANNOTATION_CREATED")
    assert store.delete(1).stored  # project found by searching
    assert not store.delete(1).stored
    assert [r["annotation_id"] for r in store.current()] == [2]
    assert len(store.versions(1)) == 1  # the data itself is kept
    assert store.count() == 2


def test_projects_are_kept_apart(tmp_path):
    store = AnnotationStore(tmp_path)
    store.save(annotation(1, project=1), event="ANNOTATION_CREATED")
    store.save(annotation(2, project=2), event="ANNOTATION_CREATED")
    assert [r["annotation_id"] for r in store.current(2)] == [2]
    assert len(store.current()) == 2


def test_bad_ids_are_value_errors(tmp_path):
    store = AnnotationStore(tmp_path)
    for bad in ({"result": []}, {"id": "abc"}, {"id": True}, {"id": -1}):
        with pytest.raises(ValueError, match="annotation.id"):
            store.save(bad, event="ANNOTATION_CREATED")


def test_crash_between_write_and_link_leaves_no_visible_file(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path)
    store.save(annotation(1), event="ANNOTATION_CREATED")

    def power_cut(*args, **kwargs):
        raise OSError(5, "simulated crash before the file got its name")

    monkeypatch.setattr(annotations_module.os, "link", power_cut)
    monkeypatch.setattr(annotations_module.Path, "unlink", lambda self, missing_ok=False: None)  # died: no cleanup
    with pytest.raises(OSError, match="simulated crash"):
        store.save(annotation(2), event="ANNOTATION_CREATED")
    monkeypatch.undo()
    partials = list(tmp_path.rglob("*.partial"))
    assert len(partials) == 1  # the written-but-unnamed temporary
    assert [r["annotation_id"] for r in store.current()] == [1]  # readers never see it
    assert AnnotationStore(tmp_path).recover() == 1 and not list(tmp_path.rglob("*.partial"))
    assert store.save(annotation(2), event="ANNOTATION_CREATED").stored  # and it can be resent


def test_write_file_once_refuses_to_overwrite(tmp_path):
    target = tmp_path / "a" / "b.json"
    assert write_file_once(target, b"first")
    assert not write_file_once(target, b"second")
    assert target.read_bytes() == b"first"
    assert not list(tmp_path.rglob("*.partial"))


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from backend.service.annotation_store import AnnotationStore

    store = AnnotationStore(Path(sys.argv[1]))
    big = "x" * 200_000  # large records make a kill during a write likely
    for i in range(1, 100_000):
        store.save({"id": i, "updated_at": f"t{i}", "result": [{"text": big}]}, event="ANNOTATION_CREATED", project_id=1)
        print(i, flush=True)
    """)


def test_acknowledged_writes_survive_sigkill(tmp_path):
    """Kill a writer at an arbitrary moment: every annotation it reported as saved is complete
    on disk, and no half-written file is ever visible."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) == 25:
            writer.send_signal(signal.SIGKILL)
            break
    writer.wait(timeout=30)
    writer.stdout.close()
    store = AnnotationStore(tmp_path)
    stored = {record["annotation_id"]: record for record in store.current(1)}  # parses every visible file
    assert set(acknowledged) <= set(stored)
    assert all(len(record["annotation"]["result"][0]["text"]) == 200_000 for record in stored.values())
    store.recover()
    assert not list(tmp_path.rglob("*.partial"))
