"""Durable storage of the human annotations Label Studio sends by webhook.

Layout under ``MODEL_DIR/annotations``::

    project-<project id>/
        label-config-<sha256[:12]>.xml           the label config the annotations refer to
        annotation-<annotation id>/
            v-<updated_at>.json                   one file per version, never rewritten
            deleted.json                          tombstone (ANNOTATIONS_DELETED)

Every file is written to a temporary name, flushed and ``fsync``'d, then *linked* to its final
name (``os.link`` fails instead of overwriting, which is also how duplicates are detected: an
annotation id + ``updated_at`` already on disk is a duplicate), and the directory is ``fsync``'d.
So a reader sees either the whole file or nothing; a crash leaves at most a ``*.partial`` file,
which readers ignore and :meth:`AnnotationStore.recover` removes at start-up. A version is
acknowledged (the webhook answers) only after it is on disk.

A failed write (``ENOSPC``, ``EIO``, ... from ``write``, ``fsync``, ``link``) raises ``OSError``
and removes its temporary file on the way out. Saving is two steps: :meth:`AnnotationStore.prepare`
checks and serialises everything (``ValueError`` for bad input, nothing written), then
:meth:`AnnotationStore.commit` writes; a bulk webhook prepares every item before committing any.

Standard library only: this module is imported by tests that kill a writer mid-write.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
TOMBSTONE_NAME = "deleted.json"
_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")
MAX_ID = 2**63 - 1  # Label Studio's ids are 64-bit database keys
MAX_VERSION_KEY = 100  # characters of updated_at kept in a file name (Label Studio's are 27)


@dataclass(frozen=True)
class PendingSave:
    """A checked, serialised save or delete, ready for :meth:`AnnotationStore.commit`."""

    annotation_id: int
    path: Path
    data: bytes
    label_config_path: Path | None = None
    label_config_data: bytes | None = None


@dataclass(frozen=True)
class SaveOutcome:
    """What :meth:`AnnotationStore.save` / :meth:`AnnotationStore.delete` did."""

    status: str  # "stored" | "duplicate"
    annotation_id: int
    path: Path

    @property
    def stored(self) -> bool:
        return self.status == "stored"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_directory(directory: Path) -> None:
    """``mkdir -p`` that also makes each new directory entry durable."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _fsync_directory(path.parent)


def _discard(temporary: Path) -> None:
    """Remove a temporary file; if even that fails (EIO), :meth:`AnnotationStore.recover` will."""
    try:
        temporary.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not remove %s (%s); it is removed at the next start", temporary, error)


def write_file_once(path: Path, data: bytes) -> bool:
    """Atomically create ``path`` with ``data``; ``False`` (and nothing written) if it exists.

    Any ``OSError`` (disk full, I/O error) propagates after the temporary file is removed: the
    final name then either does not exist or holds the complete, fsync'd data.
    """
    _ensure_directory(path.parent)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as error:  # filesystems without hard links
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if path.exists():
                return False
            os.replace(temporary, path)
    finally:
        _discard(temporary)
    _fsync_directory(path.parent)
    return True


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= number <= MAX_ID:
        raise ValueError(f"{what} must be in 0..{MAX_ID}, got {value!r}")
    return number


def version_key(annotation: dict) -> str:
    """File-name-safe version of an annotation: its ``updated_at`` (ISO, sorts by time).

    Without ``updated_at`` the key is a hash of the result, so identical resends still dedupe.
    """
    updated_at = annotation.get("updated_at")
    if isinstance(updated_at, str) and updated_at.strip():
        if len(updated_at.strip()) > MAX_VERSION_KEY:
            raise ValueError(f"annotation.updated_at is longer than {MAX_VERSION_KEY} characters")
        return _UNSAFE.sub("-", updated_at.strip())
    digest = hashlib.sha256(json.dumps(annotation.get("result"), sort_keys=True).encode()).hexdigest()
    return f"nots-{digest[:16]}"


def _serialise(record: dict) -> bytes:
    """UTF-8 JSON; ASCII escapes when the record holds a lone surrogate (a ``"\\ud800"`` escape
    in the webhook), which UTF-8 cannot encode."""
    try:
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True, sort_keys=True).encode("ascii")


class AnnotationStore:
    """Append-only, crash-safe store of human annotations (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _project_dir(self, project_id: int | None) -> Path:
        return self.root / (f"project-{project_id}" if project_id is not None else "project-unknown")

    def recover(self) -> int:
        """Delete ``*.partial`` files left by a crash or a failed write (and the empty annotation
        directories such a write may leave); returns how many partial files."""
        removed = 0
        if not self.root.exists():
            return 0
        for partial in self.root.rglob(f"*{PARTIAL_SUFFIX}"):
            partial.unlink(missing_ok=True)
            removed += 1
        for directory in self.root.glob("project-*/annotation-*"):
            try:
                directory.rmdir()  # only succeeds when empty
            except OSError:
                pass
        if removed:
            logger.warning("removed %d partial annotation files left by an interrupted write", removed)
        return removed

    def save(
        self,
        annotation: dict,
        *,
        event: str,
        project_id: int | None = None,
        task: dict | None = None,
        label_config: str | None = None,
    ) -> SaveOutcome:
        """Store one annotation version; a version already on disk is a ``"duplicate"``."""
        return self.commit(
            self.prepare(annotation, event=event, project_id=project_id, task=task, label_config=label_config)
        )

    def prepare(
        self,
        annotation: dict,
        *,
        event: str,
        project_id: int | None = None,
        task: dict | None = None,
        label_config: str | None = None,
    ) -> PendingSave:
        """Check and serialise one annotation version; ``ValueError`` if it cannot be stored.
        Writes nothing."""
        if not isinstance(annotation, dict):
            raise ValueError(f"annotation must be an object, got {type(annotation).__name__}")
        annotation_id = _positive_int(annotation.get("id"), "annotation.id")
        if project_id is not None:
            project_id = _positive_int(project_id, "project id")
        elif annotation.get("project") is not None:
            project_id = _positive_int(annotation.get("project"), "annotation.project")
        project_dir = self._project_dir(project_id)
        config_sha = config_path = config_data = None
        if label_config:
            try:
                config_data = label_config.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the project's label_config is not valid Unicode text") from None
            config_sha = hashlib.sha256(config_data).hexdigest()[:12]
            config_path = project_dir / f"label-config-{config_sha}.xml"
        record = {
            "schema": 1,
            "event": event,
            "received_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "project_id": project_id,
            "annotation_id": annotation_id,
            "updated_at": annotation.get("updated_at"),
            "label_config_sha": config_sha,
            "annotation": annotation,
            "task": task,
        }
        path = project_dir / f"annotation-{annotation_id}" / f"v-{version_key(annotation)}.json"
        return PendingSave(annotation_id, path, _serialise(record), config_path, config_data)

    def commit(self, pending: PendingSave) -> SaveOutcome:
        """Write a prepared save or delete; ``OSError`` (disk full, I/O error) leaves no partial file."""
        if pending.label_config_path is not None and not pending.label_config_path.exists():
            write_file_once(pending.label_config_path, pending.label_config_data)
        stored = write_file_once(pending.path, pending.data)
        return SaveOutcome("stored" if stored else "duplicate", pending.annotation_id, pending.path)

    def delete(
        self, annotation_id: Any, *, project_id: int | None = None, event: str = "ANNOTATIONS_DELETED"
    ) -> SaveOutcome:
        """Record that an annotation was deleted (its versions stay on disk)."""
        return self.commit(self.prepare_delete(annotation_id, project_id=project_id, event=event))

    def prepare_delete(
        self, annotation_id: Any, *, project_id: int | None = None, event: str = "ANNOTATIONS_DELETED"
    ) -> PendingSave:
        """Check and serialise a tombstone; ``ValueError`` if the id is not usable. Writes nothing."""
        annotation_id = _positive_int(annotation_id, "annotation id")
        if project_id is not None:
            project_id = _positive_int(project_id, "project id")
        directory = self._find_annotation_dir(annotation_id, project_id)
        record = {
            "schema": 1,
            "event": event,
            "received_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "annotation_id": annotation_id,
            "project_id": project_id,
        }
        return PendingSave(annotation_id, directory / TOMBSTONE_NAME, _serialise(record))

    def _find_annotation_dir(self, annotation_id: int, project_id: int | None) -> Path:
        name = f"annotation-{annotation_id}"
        if project_id is not None:
            return self._project_dir(project_id) / name
        if self.root.exists():
            for candidate in sorted(self.root.glob(f"project-*/{name}")):
                return candidate
        return self._project_dir(None) / name

    def versions(self, annotation_id: int, project_id: int | None = None) -> list[dict]:
        """Every stored version of one annotation, oldest first."""
        directory = self._find_annotation_dir(annotation_id, project_id)
        return [self._read(path) for path in sorted(directory.glob("v-*.json"))]

    def current(self, project_id: int | None = None) -> list[dict]:
        """The latest version of every annotation not deleted (of one project, or all)."""
        return list(self._iter_current(project_id))

    def _iter_current(self, project_id: int | None) -> Iterator[dict]:
        if not self.root.exists():
            return
        projects = [self._project_dir(project_id)] if project_id is not None else sorted(self.root.glob("project-*"))
        for project_dir in projects:
            for directory in sorted(project_dir.glob("annotation-*")):
                if (directory / TOMBSTONE_NAME).exists():
                    continue
                versions = sorted(directory.glob("v-*.json"))
                if versions:
                    yield self._read(versions[-1])

    def projects(self) -> list[int]:
        """The projects that have stored annotations."""
        if not self.root.exists():
            return []
        return sorted(int(d.name.split("-", 1)[1]) for d in self.root.glob("project-*") if d.name[8:].isdigit())

    def count(self) -> int:
        """How many annotations have been stored (deleted ones included)."""
        return sum(1 for _ in self.root.glob("project-*/annotation-*")) if self.root.exists() else 0

    def label_config(self, project_id: int | None, sha: str) -> str | None:
        path = self._project_dir(project_id) / f"label-config-{sha}.xml"
        return path.read_text("utf-8") if path.exists() else None

    @staticmethod
    def _read(path: Path) -> dict:
        return json.loads(path.read_text("utf-8"))
