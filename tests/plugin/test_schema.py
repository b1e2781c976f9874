import pytest

from plugin.errors import PluginError
from plugin.schema import LabelingSchema, read_label_config


def test_schema_of_the_recorded_config(label_config):
    schema = LabelingSchema.from_config(label_config)
    assert schema.image_name == "image"
    assert schema.image_key == "image"
    assert schema.brush_controls == ("segment", "class_mask")
    assert schema.text_controls == ("caption",)
    assert schema.choice_controls == ("rating",)


def test_per_region_flag_is_required_for_texts_and_choices():
    config = (
        '<View><Image name="img" value="$picture"/><BrushLabels name="b" toName="img"><Label value="x"/></BrushLabels>'
        '<TextArea name="note" toName="img"/><TextArea name="t" toName="img" perRegion="true"/>'
        '<Choices name="c" toName="img"><Choice value="a"/></Choices></View>'
    )
    schema = LabelingSchema.from_config(config)
    assert (schema.image_name, schema.image_key) == ("img", "picture")
    assert schema.text_controls == ("t",)
    assert schema.choice_controls == ()


@pytest.mark.parametrize(
    "config, message",
    [
        ('<View><Text name="t" value="$text"/></View>', "exactly one <Image>"),
        ('<View><Image name="i" value="$image"/><TextArea name="x" toName="i"/></View>', "no <BrushLabels"),
        ("<View><Image", "cannot parse"),
    ],
)
def test_configs_the_plugin_cannot_use_are_refused(config, message):
    with pytest.raises(PluginError, match=message):
        LabelingSchema.from_config(config)


def test_read_label_config_names_a_missing_file(tmp_path):
    with pytest.raises(PluginError, match="cannot read the label config"):
        read_label_config(tmp_path / "absent.xml")
