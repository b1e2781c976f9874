"""Label Studio side of the project: set a project up, export annotations, rate segments.

Everything here talks to a running Label Studio through ``label-studio-sdk`` only. Of the
backend it imports only the model-free evaluation maths (``backend.evaluation.rating``, for the
0-3 rating protocol); never the models or the service.
Run ``python -m plugin --help``.

Modules:
    connection   `LabelStudioConnection`: client from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY,
                 clear errors for an unreachable server or a rejected key, file transfer
    schema       `LabelingSchema`: which tags of a label config the plugin writes and reads
    project      find-or-create a project, connect the ML backend, request predictions
    importing    upload image files / import URLs as tasks, skipping what is already there
    regions      group a result list into regions (mask, labels, texts, choices)
    dataset      write annotations as a dataset folder (images, masks, JSON)
    rating       the 0-3 rating protocol: one rating task per predicted segment, three raters
    commands/    one module per sub-command (`setup`, `export`, `rate`)
"""

__all__ = ["PluginError"]

from plugin.errors import PluginError
