"""The Label Studio side of the 0-3 rating protocol (zero-guidance sections 4.2, 5.2, appendix F).

The paper's user study showed each predicted segment "in the form of a highlighted region,
overlaid on an input image, and its predicted text label" to three distinct evaluators, who
rated "how well the label describes the segment on a scale of 0-3" (appendix F, Fig. 21: the
input image for reference and the segmented image with a green highlighted region side by side,
the label below, radio buttons 0-3).

Here that becomes a dedicated *rating project*:

- one task per predicted zero-guidance segment of a *source project* (a brush region of a
  stored prediction that has a text in a per-region TextArea);
- the task's image is one PNG rendered here, input image | segmented image (`rating_image`: the
  region in its own colours, the rest dimmed, a black and white outline), uploaded like any image; the predicted text is in the task data and shown under the image;
- the label config (`rating_label_config`) holds the paper's instruction (``RATING_INSTRUCTION``)
  and one ``<Choice>`` per score whose hint is the appendix F definition (``RATING_SCALE``);
- the project asks for ``raters`` (3) annotations per task from distinct annotators:
  ``maximum_annotations=3`` with ``overlap_cohort_percentage=100`` (every task in the overlap
  cohort). Label Studio's labelling stream never gives a user a task they already annotated,
  and marks a task done once it holds ``maximum_annotations`` annotations.

`collect_ratings` turns the rating project's annotations back into the rating records that
``backend.evaluation.parse_ratings`` reads (``label`` is ``None``: the raters saw the predicted
text, as in the section 5.2 user study / Table 2).

Modules:
    config     the rating project's label config and instruction; the names it shares with task data
    render     the task's picture: input image | segmented image with the region highlighted
    segments   the source project's predicted segments (`RatingSegment`, its task data)
    projects   create and fill the rating project (`prepare_rating_project`)
    collect    the rating project's annotations as rating records (`collect_ratings`)
    lookup     `get_project`, with a clear error for an unknown id
"""

from plugin.rating.collect import CollectedRatings, collect_ratings, ratings_from_tasks, score_of
from plugin.rating.config import (
    IMAGE_KEY,
    LINK_KEYS,
    RATING_CONTROL,
    SCORES,
    TEXT_KEY,
    is_rating_config,
    rating_instruction_html,
    rating_label_config,
)
from plugin.rating.lookup import get_project
from plugin.rating.projects import (
    UPLOAD_BATCH,
    ExistingRatingTasks,
    RatingSetup,
    configure_overlap,
    default_title,
    existing_rating_tasks,
    prepare_rating_project,
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
    "CollectedRatings",
    "ExistingRatingTasks",
    "DIM_FACTOR",
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
    "UPLOAD_BATCH",
    "collect_ratings",
    "configure_overlap",
    "decode_image",
    "default_title",
    "existing_rating_tasks",
    "get_project",
    "highlight_segment",
    "outline_bands",
    "outline_width",
    "is_rating_config",
    "newest_predictions",
    "predicted_segments",
    "prepare_rating_project",
    "rating_image",
    "rating_instruction_html",
    "rating_label_config",
    "ratings_from_tasks",
    "region_text",
    "score_of",
]
