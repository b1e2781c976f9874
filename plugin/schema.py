"""What the plugin needs to know about a label config: image field, brush and per-region tags.

The project's ``label_config.xml`` looks like::

    <View>
      <Image name="image" value="$image"/>
      <BrushLabels name="segment" toName="image">...</BrushLabels>
      <TextArea name="caption" toName="image" perRegion="true" editable="true"/>
      <Choices name="rating" toName="image" perRegion="true">0..3</Choices>
      ...
    </View>

but nothing here hard-codes those names: they are read with the SDK's ``LabelInterface``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface

from plugin.errors import PluginError


@dataclass(frozen=True)
class LabelingSchema:
    """The tags of a label config that the plugin reads and writes.

    Attributes:
        image_name: ``name`` of the ``<Image>`` tag (the ``to_name`` of every region).
        image_key: key of the task's data holding the image URL (``$image`` -> ``"image"``).
        brush_controls: names of the ``<BrushLabels>`` tags on that image.
        text_controls: names of the per-region ``<TextArea>`` tags.
        choice_controls: names of the per-region ``<Choices>`` tags.
    """

    image_name: str
    image_key: str
    brush_controls: tuple[str, ...]
    text_controls: tuple[str, ...]
    choice_controls: tuple[str, ...]

    @classmethod
    def from_config(cls, label_config: str) -> "LabelingSchema":
        """Parse a label config; raise `PluginError` if it has no Image or no BrushLabels."""
        try:
            interface = LabelInterface(label_config)
        except Exception as error:  # lxml / the SDK raise several types for bad XML
            raise PluginError(f"cannot parse the label config: {error}") from error
        images = [tag for tag in interface.objects if tag.tag == "Image"]
        if len(images) != 1:
            raise PluginError(f"the label config must have exactly one <Image> tag, found {len(images)}")
        image = images[0]
        if not image.value.startswith("$"):
            raise PluginError(f'<Image name="{image.name}"> must take its value from the task, e.g. value="$image"')

        def controls(tag: str, per_region: bool) -> tuple[str, ...]:
            return tuple(
                control.name
                for control in interface.controls
                if control.tag == tag
                and image.name in control.to_name
                and (not per_region or control.attr.get("perRegion", "").lower() == "true")
            )

        brushes = controls("BrushLabels", per_region=False)
        if not brushes:
            raise PluginError(f'the label config has no <BrushLabels toName="{image.name}">')
        return cls(
            image_name=image.name,
            image_key=image.value[1:],
            brush_controls=brushes,
            text_controls=controls("TextArea", per_region=True),
            choice_controls=controls("Choices", per_region=True),
        )


def read_label_config(path: Path) -> str:
    """Read a label config file and check that it is one the plugin understands."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PluginError(f"cannot read the label config {path}: {error}") from error
    LabelingSchema.from_config(text)
    return text


def config_tree(label_config: str) -> ElementTree.Element:
    """A label config as an element tree that keeps its comments (for editing it); a clear
    `PluginError` when it is not XML."""
    parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(insert_comments=True))
    try:
        return ElementTree.fromstring(label_config, parser=parser)
    except ElementTree.ParseError as error:
        raise PluginError(f"cannot parse the project's label config: {error}") from None
