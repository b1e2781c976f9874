"""Turn a folder of images or a list of URLs into tasks, without importing anything twice.

Uploaded files are stored by Label Studio as ``/data/upload/<project>/<8 hex>-<name>``
with ``<name>`` passed through Django's ``get_valid_filename`` (spaces become ``_``); a
file is considered present when a task's image ends with ``-<that name>``. A URL is
present when a task's image equals it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from plugin.connection import IMAGE_SUFFIXES, LabelStudioConnection
from plugin.errors import PluginError

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


@dataclass(frozen=True)
class ProjectTask:
    """The part of a Label Studio task the plugin uses.

    Attributes:
        id: task id.
        image: the task's image reference (``/data/upload/...`` or a URL).
        prediction_count: how many predictions Label Studio holds for it.
    """

    id: int
    image: str
    prediction_count: int


@dataclass
class ImportReport:
    """What an import did: ids of the new tasks and the sources that were already there."""

    created_task_ids: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def list_tasks(connection: LabelStudioConnection, project_id: int, image_key: str) -> list[ProjectTask]:
    """All tasks of a project, in id order."""
    pager = connection.call(connection.client.tasks.list, project=project_id, page_size=500)
    tasks = [
        ProjectTask(
            id=task.id,
            image=str((task.data or {}).get(image_key, "")),
            prediction_count=int(getattr(task, "total_predictions", 0) or 0),
        )
        for task in connection.call(list, pager)
    ]
    return sorted(tasks, key=lambda task: task.id)


def stored_upload_name(file_name: str) -> str:
    """The name Label Studio gives an uploaded file (Django's ``get_valid_filename``)."""
    return re.sub(r"(?u)[^-\w.]", "", file_name.strip().replace(" ", "_"))


def uploaded_file_name(image: str) -> str | None:
    """``/data/upload/3/0a1b2c3d-cat.png`` -> ``cat.png``; None for anything not uploaded."""
    path = urlsplit(image).path
    if "/data/upload/" not in path:
        return None
    base = path.rsplit("/", 1)[-1]
    return _UPLOAD_PREFIX.sub("", base, count=1)


def image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory`` (by suffix), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PluginError(f"--images {directory}: not a directory")
    files = sorted(path for path in directory.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PluginError(f"--images {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_url_list(path: Path) -> list[str]:
    """One image URL per line; blank lines and lines starting with ``#`` are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise PluginError(f"--urls {path}: {error}") from error
    urls = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for number, url in enumerate(urls, start=1):
        if urlsplit(url).scheme not in ("http", "https", "s3", "gs", "azure-blob"):
            raise PluginError(f"--urls {path}: {url!r} is not a URL (http(s)://, s3://, gs://)")
    if not urls:
        raise PluginError(f"--urls {path}: no URLs in the file")
    return urls


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upload_images(
    connection: LabelStudioConnection,
    project_id: int,
    files: Sequence[Path],
    existing: Sequence[ProjectTask],
    batch_size: int = 20,
) -> ImportReport:
    """Upload the files not yet in the project, ``batch_size`` files per request."""
    present = {uploaded_file_name(task.image) for task in existing} - {None}
    report = ImportReport()
    missing = []
    for path in files:
        if stored_upload_name(path.name) in present:
            report.skipped.append(str(path))
        else:
            missing.append(path)
    for batch in _batches(missing, batch_size):
        report.created_task_ids.extend(connection.upload_files(project_id, batch))
    return report


def import_urls(
    connection: LabelStudioConnection,
    project_id: int,
    image_key: str,
    urls: Sequence[str],
    existing: Sequence[ProjectTask],
) -> ImportReport:
    """Create one task ``{image_key: url}`` per URL not yet in the project."""
    present = {task.image for task in existing}
    report = ImportReport(skipped=[url for url in urls if url in present])
    new_urls = list(dict.fromkeys(url for url in urls if url not in present))
    if new_urls:
        response = connection.call(
            connection.client.projects.import_tasks,
            id=project_id,
            request=[{image_key: url} for url in new_urls],
            return_task_ids=True,
            commit_to_project=True,
        )
        # ``task_ids`` is not in the SDK's response model; it arrives as an extra field.
        task_ids = getattr(response, "task_ids", None) or []
        report.created_task_ids.extend(int(task_id) for task_id in task_ids)
    return report
