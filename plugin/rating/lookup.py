"""Reading a project record, with a clear error for an unknown id."""

from __future__ import annotations

from label_studio_sdk.core.api_error import ApiError

from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError


def get_project(connection: LabelStudioConnection, project_id: int):
    """The SDK project record; a clear `PluginError` when there is no such project."""
    try:
        return connection.call(connection.client.projects.get, project_id)
    except PluginError as error:
        if isinstance(error.__cause__, ApiError) and error.__cause__.status_code == 404:
            raise PluginError(
                f"there is no project {project_id} at {connection.settings.url} (or this key cannot see it): "
                f"check the id in the project's URL, {connection.settings.url}/projects/<id>/"
            ) from error
        raise
