"""The Label Studio side of the 0-3 rating protocol (zero-guidance sections 4.2, 5.2, appendix F).

The paper's user study showed each predicted segment "in the form of a highlighted region,
overlaid on an input image, and its predicted text label" to three distinct evaluators, who
rated "how well the label describes the segment on a scale of 0-3" (appendix F, Fig. 21: the
input image for reference and the segmented image with a green highlighted region side by side,
the label below, radio buttons 0-3).

Here that becomes one *rating project per rater batch* (appendix F: "We calculated the scores
for each of the three batches separately then reported the average"):

- ``rate setup`` makes ``raters`` (3) projects, ``<title> (rater batch b/N)``; each holds one
  task per predicted zero-guidance segment of a *source project* (a brush region of a stored
  prediction that has a text in a per-region TextArea) and asks for one rating per task
  (``maximum_annotations=1``). Each rater rates one batch project, so in their project a rater
  sees no one else's score: Label Studio's community edition has no per-project membership and
  shows every annotation of a project in its Data Manager and API to every member of the
  organisation (docs/label-studio.md, "Raters").
- the task's image is one PNG rendered here, input image | segmented image (`rating_image`: the
  region in its own colours, the rest dimmed, a black and white outline), uploaded like any
  image; the predicted text is in the task data and shown next to the image;
- the label config (`rating_label_config`) holds the instruction with the project's number of
  tasks and one radio ``<Choice>`` per score showing its digit, name and appendix F definition
  (``RATING_SCALE``); the key of each choice is its digit. All of it fits one 1400x900 screen;
  Label Studio's instruction modal is off.

`collect_ratings` turns the batch projects' annotations back into the rating records that
``backend.evaluation.parse_ratings`` reads (``batch`` b from project b; ``label`` is ``None``:
the raters saw the predicted text, as in the section 5.2 user study / Table 2). It still reads
a single shared project (overlap 3) made by earlier versions.

Modules:
    config     the rating projects' label config and instruction; the names it shares with task data
    render     the task's picture: input image | segmented image with the region highlighted
    segments   the source project's predicted segments (`RatingSegment`, its task data)
    projects   create and fill the rater batch projects (`prepare_rating_projects`)
    collect    the projects' annotations as rating records (`collect_ratings`)
    lookup     `get_project`, with a clear error for an unknown id
"""

from plugin.rating.collect import (
    CollectedRatings,
    collect_ratings,
    ratings_from_batch_tasks,
    ratings_from_tasks,
    score_of,
)
from plugin.rating.config import (
    BATCH_KEY,
    BATCHES_KEY,
    IMAGE_KEY,
    LINK_KEYS,
    RATING_CONTROL,
    SCORES,
    TEXT_KEY,
    configured_tasks,
    is_rating_config,
    rating_instruction,
    rating_instruction_html,
    rating_label_config,
    shown_definition,
)
from plugin.rating.lookup import get_project
from plugin.rating.projects import (
    TITLE_LIMIT,
    UPLOAD_BATCH,
    BatchProject,
    ExistingRatingTasks,
    RatingSetup,
    batch_title,
    configure_batch_project,
    default_title,
    existing_rating_tasks,
    prepare_rating_projects,
    state_task_count,
)
from plugin.rating.render import (
    DIM_FACTOR,
    OUTLINE_FRACTION,
    OUTLINE_INNER_RGB,
    OUTLINE_MIN_PX,
    OUTLINE_OUTER_RGB,
    PANEL_GAP_PX,
    decode_image,
    highlight_segment,
    outline_bands,
    outline_width,
    rating_image,
)
from plugin.rating.segments import (
    RatingSegment,
    SourceSegments,
    newest_predictions,
    predicted_segments,
    region_text,
)

__all__ = [
    "BATCHES_KEY",
    "BATCH_KEY",
    "BatchProject",
    "CollectedRatings",
    "DIM_FACTOR",
    "ExistingRatingTasks",
    "IMAGE_KEY",
    "LINK_KEYS",
    "OUTLINE_FRACTION",
    "OUTLINE_INNER_RGB",
    "OUTLINE_MIN_PX",
    "OUTLINE_OUTER_RGB",
    "PANEL_GAP_PX",
    "RATING_CONTROL",
    "RatingSegment",
    "RatingSetup",
    "SCORES",
    "SourceSegments",
    "TEXT_KEY",
    "TITLE_LIMIT",
    "UPLOAD_BATCH",
    "batch_title",
    "collect_ratings",
    "configure_batch_project",
    "configured_tasks",
    "decode_image",
    "default_title",
    "existing_rating_tasks",
    "highlight_segment",
    "is_rating_config",
    "newest_predictions",
    "outline_bands",
    "outline_width",
    "predicted_segments",
    "prepare_rating_projects",
    "rating_image",
    "rating_instruction",
    "rating_instruction_html",
    "rating_label_config",
    "ratings_from_batch_tasks",
    "ratings_from_tasks",
    "region_text",
    "score_of",
    "shown_definition",
    "state_task_count",
]
