"""Propose a project's label set from what zero-guidance segmentation names in its images.

Zero-guidance segmentation names segments without a class list, so a sample of a project's
images says which things occur and how much of the pictures they cover. Their texts are grouped
by meaning with Sentence-BERT (average linkage on cosine similarity, cut at
``SYNONYM_SIMILARITY``); each group becomes a proposed ``<Label>``: its value and
``model_prompt`` the text covering the most pixels, ``predicted_values`` all of its texts (the
synonyms), ordered by coverage, the share of the sampled pixels its segments cover. FMbSeg's
Stage 1 needs no training, so once the labels are in the class-mask tag the backend serves masks
for them at once.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from plugin.errors import PluginError
from plugin.schema import config_tree

__all__ = ["SYNONYM_SIMILARITY", "NamedArea", "LabelProposal", "propose_labels", "add_labels_to_config"]

# Average cosine similarity (all-MiniLM-L6-v2) above which texts are one label. Measured pairs:
# cat/kitten 0.79, dog/puppy 0.80, grass/lawn 0.83, road/street 0.81 join; cat/dog 0.66,
# sky/clouds 0.62, person/woman 0.64 stay apart.
SYNONYM_SIMILARITY = 0.7


@dataclass(frozen=True)
class NamedArea:
    """A named segment: its text and its pixel count."""

    text: str
    area: int


@dataclass
class LabelProposal:
    """One proposed label: its name, its synonyms and the share of the sampled pixels it covers."""

    name: str
    synonyms: list[str]
    coverage: float
    segments: int
    areas: dict[str, int] = field(default_factory=dict, repr=False)

    def label_xml(self) -> str:
        values = ",".join(text.replace(",", " ") for text in self.synonyms)
        return (
            f'<Label value="{html.escape(self.name)}" model_prompt="{html.escape(self.name)}" '
            f'predicted_values="{html.escape(values)}"/>'
        )


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def propose_labels(
    segments: Sequence[NamedArea],
    total_pixels: int,
    embed: Callable[[list[str]], object],
    similarity: float = SYNONYM_SIMILARITY,
) -> list[LabelProposal]:
    """Group the named segments' texts by meaning into proposed labels, most covering first."""
    if total_pixels < 1:
        raise ValueError("no sampled pixels")
    areas: dict[str, int] = {}
    counts: dict[str, int] = {}
    for segment in segments:
        text = _normalised(segment.text)
        if text:
            areas[text] = areas.get(text, 0) + int(segment.area)
            counts[text] = counts.get(text, 0) + 1
    texts = sorted(areas)
    if not texts:
        return []
    if len(texts) == 1:
        groups = np.array([1])
    else:
        vectors = np.asarray(embed(texts), dtype=np.float64)  # a CPU tensor or an array, (n, d)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        distance = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(distance, checks=False), method="average")
        groups = fcluster(tree, t=1.0 - similarity, criterion="distance")
    proposals = []
    for group in np.unique(groups):
        members = sorted((t for t, g in zip(texts, groups) if g == group), key=lambda t: (-areas[t], t))
        proposals.append(
            LabelProposal(
                name=members[0],
                synonyms=members,
                coverage=sum(areas[t] for t in members) / total_pixels,
                segments=sum(counts[t] for t in members),
                areas={t: areas[t] for t in members},
            )
        )
    return sorted(proposals, key=lambda p: (-p.coverage, p.name))


def add_labels_to_config(label_config: str, tag_name: str, proposals: Sequence[LabelProposal]) -> tuple[str, list[str]]:
    """The label config with the proposals appended to the tag ``tag_name`` (labels whose value it
    already has are skipped), and the values added."""
    root = config_tree(label_config)
    tag = next((element for element in root.iter() if element.get("name") == tag_name), None)
    if tag is None:
        raise PluginError(f"the label config has no tag named {tag_name!r}")
    existing = {label.get("value") for label in tag.iter("Label")}
    added = []
    for proposal in proposals:
        if proposal.name in existing:
            continue
        tag.append(ElementTree.fromstring(proposal.label_xml()))
        added.append(proposal.name)
    return ElementTree.tostring(root, encoding="unicode"), added
