"""Cloud-storage URIs (s3://, gs://, azure-blob://) go through Label Studio's presign route, with the
key sent to Label Studio only; the SSRF rules still hold."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from backend.prelabel.worker import image_source
from backend.service.images import ImageFetchError, is_cloud_uri, media_path_problem, presign_path
from tests.service.conftest import png_bytes, sample_image

from .fake_label_studio import LEGACY_TOKEN


@pytest.mark.parametrize(
    "reference, cloud",
    [
        ("s3://bucket/a.png", True),
        ("gs://bucket/dir/a b.png", True),  # object keys may hold spaces
        ("s3://bucket/a\nb.png", False),
        ("gs://bucket/dir/a.png", True),
        ("azure-blob://container/a.png", True),
        ("azure-spi://container/a.png", True),
        ("https://example.com/a.png", False),
        ("http://example.com/a.png", False),
        ("file:///data/a.png", False),
        ("data:image/png;base64,AAAA", False),
        ("/data/upload/1/a.png", False),
        ("/tasks/3/presign/?fileuri=czM6Ly9i", False),
    ],
)
def test_cloud_uris_are_recognised(reference, cloud):
    assert is_cloud_uri(reference) is cloud


def test_presign_path_is_label_studios_own():
    path = presign_path("s3://bucket/dir/a.png", task_id=12)
    parts = urllib.parse.urlsplit(path)
    assert parts.path == "/tasks/12/presign/"
    fileuri = urllib.parse.parse_qs(parts.query)["fileuri"][0]
    assert base64.urlsafe_b64decode(fileuri).decode() == "s3://bucket/dir/a.png"
    assert media_path_problem(parts.path) is None
    assert presign_path("gs://b/k", project_id="7.1795304640").startswith("/projects/7/presign/?fileuri=")
    assert presign_path("gs://b/k", task_id=5, project_id=7).startswith("/tasks/5/")
    with pytest.raises(ImageFetchError, match="needs the task's"):
        presign_path("s3://b/k")


def test_other_label_studio_paths_stay_refused():
    for path in ("/api/projects/1", "/tasks/1/presign/../../api/users", "/projects/x/presign/", "/tasks/1/"):
        assert media_path_problem(path) is not None


def test_a_cloud_task_is_fetched_through_the_presign_route(fake_ls, config):
    fake_ls.state.bucket["s3://bucket/cat.png"] = png_bytes(sample_image(40, 30))
    fetcher = image_source(config, project_id=1).fetcher()
    loaded = fetcher.load("s3://bucket/cat.png", task_id=4)
    assert (loaded.original_width, loaded.original_height) == (40, 30)
    paths = [(path.split("?")[0], auth) for method, path, auth in fake_ls.state.requests if method == "GET"]
    assert paths == [("/tasks/4/presign/", f"Token {LEGACY_TOKEN}"), ("/bucket/bucket/cat.png", None)]
    assert fake_ls.state.key_leaks == []
    # without the task: the project's route (what /predict uses when a task comes without its id)
    assert fetcher.load("s3://bucket/cat.png").original_width == 40
    assert fake_ls.state.requests[-2][1].startswith("/projects/1/presign/?fileuri=")


def test_a_cloud_uri_unknown_to_label_studio_is_a_clear_error(fake_ls, config):
    fetcher = image_source(config, project_id=1).fetcher()
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetcher.load("gs://other/a.png", task_id=1)


def test_the_presigned_url_is_still_ssrf_checked(fake_ls, config):
    fake_ls.state.bucket["s3://bucket/cat.png"] = png_bytes(sample_image(40, 30))
    strict = config.replace(image_allowed_hosts=())  # the bucket on localhost is no longer allowed
    with pytest.raises(ImageFetchError, match="refused|not allowed|blocked|private|loopback"):
        image_source(strict, project_id=1).fetcher().load("s3://bucket/cat.png", task_id=2)
    assert not any(path.startswith("/bucket/") for _, path, _ in fake_ls.state.requests)
