"""The most informative tasks first: disagreement of the two methods, by hand."""

import base64

import numpy as np
import pytest

from backend.service.informativeness import disagreement

from .test_adapters import RECORDED_CONFIG


def rows(start, stop, shape=(4, 4)):
    mask = np.zeros(shape, bool)
    mask[start:stop] = True
    return mask


def test_disagreement_by_hand():
    # A (rows 0-1, text score 0.3) is the cat mask exactly; B (rows 2-3, 0.1) matches no class mask:
    # unmatched area 8/16 = 0.5; uncertain text 1 - (0.3 + 0.1) / 2 = 0.8; mean 0.65
    segments = [(rows(0, 2), 0.3), (rows(2, 4), 0.1)]
    assert disagreement(segments, [rows(0, 2)]) == pytest.approx(0.65)
    assert disagreement(segments, None) == pytest.approx(0.8)  # no class masks: the text term alone
    assert disagreement([], [rows(0, 2)]) is None
    # a class mask covering B only partly (IoU 4/8 = 0.5) matches it
    assert disagreement(segments, [rows(0, 2), rows(2, 3)]) == pytest.approx(0.4)


def test_the_disagreeing_task_ranks_first():
    agreeing = disagreement([(rows(0, 2), 0.35), (rows(2, 4), 0.33)], [rows(0, 2), rows(2, 4)])
    disagreeing = disagreement([(rows(0, 4), 0.2)], [rows(0, 1)])  # one segment the class list misses
    tasks = {"agreeing": 1 - agreeing, "disagreeing": 1 - disagreeing}  # the prediction scores
    assert sorted(tasks, key=tasks.get) == ["disagreeing", "agreeing"]  # Label Studio: lowest first


def test_a_prediction_scores_the_agreement_of_its_methods(config):
    """The recorded config's two tags on the fakes (tests/service/conftest.py): free-text segments
    are the left and right halves (text scores 0.9 and 0.4), class masks the top and bottom
    halves. Each half meets each band with IoU 192 / 576 = 1/3 < 0.5: unmatched share 1; uncertain
    text 1 - 0.65 = 0.35; disagreement 0.675, score 0.325."""
    from backend.service.app import create_app

    from .conftest import FakeMethods, png_bytes, sample_image

    app = create_app(config, methods=FakeMethods())
    client = app.test_client()
    image = "data:image/png;base64," + base64.b64encode(png_bytes(sample_image(32, 24))).decode()
    body = {"tasks": [{"id": 1, "data": {"image": image}}], "label_config": RECORDED_CONFIG, "project": "1.1"}
    reply = client.post("/predict", json=body).json
    assert reply["results"][0]["score"] == pytest.approx(0.325)


def test_stage1_agreement_is_a_third_term():
    assert disagreement([], None, 0.75) == pytest.approx(0.25)  # class masks alone: 1 - agreement
    segments = [(rows(0, 2), 0.3), (rows(2, 4), 0.1)]
    assert disagreement(segments, [rows(0, 2)], 0.75) == pytest.approx((0.5 + 0.8 + 0.25) / 3)
    assert disagreement([], None) is None


@pytest.mark.parametrize("enabled, expected", [(False, 0.325), (True, 1 - (1.0 + 0.35 + 0.5) / 3)])
def test_informativeness_stage1_asks_fmbseg_for_its_stage1_agreement(config, enabled, expected):
    """As above with a trained module; with INFORMATIVENESS_STAGE1 the fake reports an agreement
    of 0.5 between its Stage 1 and Stage 2, a third term 1 - 0.5."""
    from backend.service.app import create_app

    from .conftest import FakeMethods, png_bytes, sample_image

    methods = FakeMethods(trained=["cat", "sky"])
    app = create_app(config.replace(informativeness_stage1=enabled), methods=methods)
    image = "data:image/png;base64," + base64.b64encode(png_bytes(sample_image(32, 24))).decode()
    body = {"tasks": [{"id": 1, "data": {"image": image}}], "label_config": RECORDED_CONFIG, "project": "1.1"}
    reply = app.test_client().post("/predict", json=body).json
    assert reply["results"][0]["score"] == pytest.approx(expected)
    assert (methods.predictors[0].calls[0][-1] is True) == enabled
