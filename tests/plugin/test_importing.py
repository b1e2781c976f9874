from types import SimpleNamespace

import pytest

from plugin.errors import PluginError
from plugin.importing import (
    ProjectTask,
    image_files,
    import_urls,
    list_tasks,
    read_url_list,
    stored_upload_name,
    upload_images,
    uploaded_file_name,
)
from tests.plugin.conftest import FakeConnection


@pytest.mark.parametrize(
    "name, stored",
    [
        ("shapes one.png", "shapes_one.png"),
        ("a-b_c.JPG", "a-b_c.JPG"),
        (" x(1).png ", "x1.png"),
        ("été.png", "été.png"),
    ],
)
def test_stored_upload_name_follows_django(name, stored):
    # "shapes one.png" -> "shapes_one.png" was measured with Label Studio 1.23.2 (tests/e2e)
    assert stored_upload_name(name) == stored


@pytest.mark.parametrize(
    "image, name",
    [
        ("/data/upload/3/0a1b2c3d-cat.png", "cat.png"),
        ("http://ls:8080/data/upload/3/0a1b2c3d-my-cat.png", "my-cat.png"),
        ("/data/upload/3/cat.png", "cat.png"),
        ("https://example.com/images/cat.png", None),
        ("/data/local-files/?d=images/cat.png", None),
    ],
)
def test_uploaded_file_name(image, name):
    assert uploaded_file_name(image) == name


def test_upload_skips_files_already_in_the_project(tmp_path):
    files = [tmp_path / name for name in ("a one.png", "b.png", "c.png")]
    existing = [ProjectTask(1, "/data/upload/7/01234567-a_one.png", 1), ProjectTask(2, "https://x/b.png", 0)]
    connection = FakeConnection()
    report = upload_images(connection, 7, files, existing, batch_size=1)
    assert connection.uploads == [(7, ["b.png"]), (7, ["c.png"])]
    assert report.created_task_ids == [100, 101]
    assert report.skipped == [str(files[0])]


def test_import_urls_only_new_ones_once():
    calls = []

    def import_tasks(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(task_count=2, task_ids=[5, 6])

    connection = FakeConnection(SimpleNamespace(projects=SimpleNamespace(import_tasks=import_tasks)))
    urls = ["http://h/a.png", "http://h/b.png", "http://h/b.png", "http://h/c.png"]
    report = import_urls(connection, 4, "image", urls, [ProjectTask(1, "http://h/a.png", 0)])
    assert calls == [
        {
            "id": 4,
            "request": [{"image": "http://h/b.png"}, {"image": "http://h/c.png"}],
            "return_task_ids": True,
            "commit_to_project": True,
        }
    ]
    assert report.created_task_ids == [5, 6]
    assert report.skipped == ["http://h/a.png"]


def test_list_tasks_reads_image_and_prediction_count():
    tasks = [
        SimpleNamespace(id=9, data={"image": "u9"}, total_predictions=2),
        SimpleNamespace(id=3, data={}, total_predictions=None),
    ]
    connection = FakeConnection(SimpleNamespace(tasks=SimpleNamespace(list=lambda **kwargs: iter(tasks))))
    assert list_tasks(connection, 1, "image") == [ProjectTask(3, "", 0), ProjectTask(9, "u9", 2)]


def test_read_url_list(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("# images\nhttp://h/a.png\n\n  s3://bucket/b.jpg \n")
    assert read_url_list(path) == ["http://h/a.png", "s3://bucket/b.jpg"]
    path.write_text("http://h/a.png\n/local/file.png\n")
    with pytest.raises(PluginError, match="'/local/file.png' is not a URL"):
        read_url_list(path)
    path.write_text("# nothing\n")
    with pytest.raises(PluginError, match="no URLs"):
        read_url_list(path)


def test_image_files(tmp_path):
    with pytest.raises(PluginError, match="not a directory"):
        image_files(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PluginError, match="no image files"):
        image_files(tmp_path)
    for name in ("b.PNG", "a.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in image_files(tmp_path)] == ["a.jpg", "b.PNG"]
