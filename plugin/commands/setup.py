"""``python -m plugin setup``: create a project, connect the backend, import images, pre-label."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import requests

from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.importing import (
    image_files,
    import_urls,
    list_tasks,
    read_url_list,
    upload_images,
)
from plugin.project import (
    BackendSettings,
    ProjectHandle,
    backend_status,
    config_differs,
    connect_backend,
    find_or_create_project,
    predicted_region_counts,
    request_predictions,
)
from plugin.schema import LabelingSchema, read_label_config

NAME = "setup"
HELP = "create (or reuse) a project, connect the ML backend, import images, ask for predictions"
DESCRIPTION = """\
Set a Label Studio project up the way a user would in the web page, and pre-label it:

  1. find the project titled --title, or create it from --config;
  2. connect the ML backend at --backend-url (default: http://localhost:9090 when it answers
     /health there; --no-backend to skip), unless one with that URL is connected; if the
     connection fails, a project this run created is deleted again;
  3. upload the images of --images DIR as files and/or import the URLs of --urls FILE,
     skipping images already in the project;
  4. run the "Retrieve predictions" action on the tasks that have no prediction yet,
     --batch-size tasks per request, and check that predictions arrived.

Running it again does only what is missing. Exit status: 0 done, 1 some tasks still
have no prediction or an empty one (the backend's state and last error are printed), or no
backend was found to connect, 2 an error."""

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "label_config.xml"
DEFAULT_BACKEND_URL = "http://localhost:9090"
PASSWORD_VARIABLE = "ML_BACKEND_BASIC_AUTH_PASSWORD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--title", default="Segmentation pre-labelling", help="project title (default: %(default)s)")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="label config XML for a new project (default: %(default)s)"
    )
    parser.add_argument(
        "--backend-url",
        help=f"the ML backend's URL as Label Studio reaches it (default: {DEFAULT_BACKEND_URL} when a backend "
        "answers there)",
    )
    parser.add_argument("--no-backend", action="store_true", help="only create the project and import, connect nothing")
    parser.add_argument("--backend-title", default="Segmentation backend", help="name of the model connection")
    parser.add_argument("--basic-auth-user", help="HTTP basic auth user in front of the backend")
    parser.add_argument(
        "--basic-auth-password",
        default=os.environ.get(PASSWORD_VARIABLE),
        help=f"its password (default: ${PASSWORD_VARIABLE}; prefer the variable, arguments show in ps)",
    )
    parser.add_argument("--interactive", action="store_true", help="allow interactive pre-annotation requests")
    parser.add_argument("--images", type=Path, help="folder of image files to upload (png, jpg, ...)")
    parser.add_argument("--urls", type=Path, help="text file with one image URL per line")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="tasks per prediction request (Label Studio waits 100 s at most)"
    )
    parser.add_argument("--no-predictions", action="store_true", help="do not ask the backend for predictions")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def backend_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether an ML backend answers ``GET /health`` at ``url`` (from this machine)."""
    try:
        return requests.get(url.rstrip("/") + "/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def default_backend_url(args: argparse.Namespace) -> str | None:
    """``--backend-url``, else the local default when a backend answers there (said loudly either way)."""
    if args.no_backend:
        return None
    if args.backend_url:
        return args.backend_url
    if backend_answers(DEFAULT_BACKEND_URL):
        print(f"using the ML backend at {DEFAULT_BACKEND_URL} (it answers /health; --backend-url to choose another)")
        return DEFAULT_BACKEND_URL
    print(
        f"NOTE: no ML backend answers at {DEFAULT_BACKEND_URL}, so none is connected and nothing will be "
        "pre-labelled: start one (`make run`) and run this again, or pass --backend-url (--no-backend: on purpose)",
        file=sys.stderr,
    )
    return None


def run(args: argparse.Namespace) -> int:
    label_config = read_label_config(args.config)
    schema = LabelingSchema.from_config(label_config)
    backend = None
    connection = LabelStudioConnection.from_environment()
    args.backend_url = default_backend_url(args)
    if args.backend_url:
        if args.basic_auth_user and not args.basic_auth_password:
            raise PluginError(f"--basic-auth-user needs --basic-auth-password or ${PASSWORD_VARIABLE}")
        backend = BackendSettings(
            url=args.backend_url,
            title=args.backend_title,
            basic_auth_user=args.basic_auth_user,
            basic_auth_password=args.basic_auth_password if args.basic_auth_user else None,
            is_interactive=args.interactive,
        )
    images = image_files(args.images) if args.images else []
    urls = read_url_list(args.urls) if args.urls else []

    url = connection.settings.url
    project = find_or_create_project(connection, args.title, label_config)
    print(f"project {project.id} {'created' if project.created else 'exists'}: {url}/projects/{project.id}/")
    if not project.created and config_differs(project, label_config):
        print(f"  note: its label config differs from {args.config}; left as it is")
        schema = LabelingSchema.from_config(project.label_config)

    backend_id = None
    if backend is not None:
        try:
            ml_backend, created = connect_backend(connection, project.id, backend)
        except PluginError as error:
            raise PluginError(f"{error} {half_made_project(connection, project)}") from error
        backend_id = ml_backend.id
        print(f"ML backend {ml_backend.id} {'connected' if created else 'already connected'}: {ml_backend.url}")

    tasks = list_tasks(connection, project.id, schema.image_key)
    created_ids: list[int] = []
    if images:
        report = upload_images(connection, project.id, images, tasks)
        created_ids += report.created_task_ids
        print(f"uploaded {len(report.created_task_ids)} image(s), {len(report.skipped)} already there")
    if urls:
        report = import_urls(connection, project.id, schema.image_key, urls, tasks)
        created_ids += report.created_task_ids
        print(f"imported {len(report.created_task_ids)} URL(s), {len(report.skipped)} already there")

    summary = {"project_id": project.id, "backend_id": backend_id, "created_task_ids": created_ids}
    status = 0
    if backend is not None and not args.no_predictions:
        tasks = list_tasks(connection, project.id, schema.image_key)
        pending = [task.id for task in tasks if task.prediction_count == 0]
        print(f"asking for predictions of {len(pending)} task(s) in batches of {args.batch_size}")
        request_predictions(connection, project.id, pending, args.batch_size)
        tasks = list_tasks(connection, project.id, schema.image_key)
        counts = predicted_region_counts(connection, project.id)
        missing = [task.id for task in tasks if task.id not in counts]
        empty = [task.id for task in tasks if counts.get(task.id) == 0]
        print(f"{len(tasks) - len(missing)} of {len(tasks)} task(s) have predictions, {len(empty)} of them empty")
        if missing or empty:
            for what, ids in (("without predictions", missing), ("with empty predictions", empty)):
                if ids:
                    print(f"  tasks {what}: {ids[:20]}{' ...' if len(ids) > 20 else ''}")
            print(f"  ML backend: {backend_status(connection, backend_id)} (see also the backend's log)")
            status = 1
        summary["tasks_without_predictions"] = missing
        summary["tasks_with_empty_predictions"] = empty
    summary["task_ids"] = [task.id for task in tasks]
    if backend is None and not args.no_backend:
        status = 1  # the user asked for pre-labelling (no --no-backend) and none happened: said above
    if args.json:
        print(json.dumps(summary))
    return status


def half_made_project(connection: LabelStudioConnection, project: ProjectHandle) -> str:
    """Undo a project this run created and could not finish; say what happened to it."""
    if not project.created:
        return f"Project {project.id} was there before and is left as it was."
    try:
        connection.call(connection.client.projects.delete, project.id)
    except PluginError as error:
        return f"Project {project.id}, created by this run, could not be deleted ({error}): delete it or reuse it."
    return f"Project {project.id}, created by this run, was deleted again."
