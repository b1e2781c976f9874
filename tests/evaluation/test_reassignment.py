"""Label reassignment (Eqs. 5-6) and its verification (section 4.2)."""

import math

import numpy as np
import pytest
import torch

from backend.evaluation.reassignment import (
    TAU_CLIP,
    TAU_SBERT,
    UNVERIFIED,
    Reassignment,
    cosine_matrix,
    default_threshold,
    is_verified,
    reassign_by_similarity,
    reassign_segment_to_text,
    reassign_text_to_text,
    verify_by_scores,
    verify_by_threshold,
)

LABELS = ["cat", "car", "dog"]
# A stub "text encoder": each word is a fixed 3-d vector (deliberately not unit norm).
STUB = {
    "cat": [2.0, 0.0, 0.0],
    "car": [0.0, 3.0, 0.0],
    "dog": [0.0, 0.0, 1.0],
    "kitty": [1.0, 0.2, 0.1],  # closest to cat
    "truck": [0.1, 1.0, 0.5],  # closest to car
    "between": [1.0, 1.0, 0.0],  # cat and car tie
}


def stub_encode(texts):
    return np.array([STUB[t] for t in texts])


def cos(u, v):
    u, v = np.asarray(u, float), np.asarray(v, float)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_paper_thresholds():
    assert TAU_SBERT == 0.5 and TAU_CLIP == 0.1  # appendix C
    assert default_threshold("TT") == 0.5 and default_threshold("ST") == 0.1
    with pytest.raises(ValueError, match="method"):
        default_threshold("XX")


def test_text_to_text_is_argmax_of_cosine_with_stub_encoder():
    result = reassign_text_to_text(["kitty", "truck"], LABELS, stub_encode)
    assert [r.label for r in result] == ["cat", "car"]
    assert [r.label_index for r in result] == [0, 1]
    assert all(r.method == "TT" for r in result)
    # similarity is the cosine of the winner, computed independently here
    assert result[0].similarity == pytest.approx(cos(STUB["kitty"], STUB["cat"]), abs=1e-6)
    assert result[1].similarity == pytest.approx(cos(STUB["truck"], STUB["car"]), abs=1e-6)


def test_ties_go_to_the_first_test_label():
    assert reassign_text_to_text(["between"], ["cat", "car"], stub_encode)[0].label == "cat"
    assert reassign_text_to_text(["between"], ["car", "cat"], stub_encode)[0].label == "car"


def test_segment_to_text_uses_segment_embeddings_and_label_encoder():
    segments = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.1, 0.0]])  # torch input is accepted
    seen = []

    def encode_labels(labels):
        seen.append(list(labels))
        return stub_encode(labels)

    result = reassign_segment_to_text(segments, LABELS, encode_labels)
    assert seen == [LABELS]
    assert [(r.label, r.method) for r in result] == [("dog", "ST"), ("cat", "ST")]
    assert result[0].similarity == pytest.approx(1.0)
    assert result[1].similarity == pytest.approx(cos([1.0, 0.1, 0.0], STUB["cat"]), abs=1e-6)


def test_empty_inputs_and_bad_inputs():
    assert reassign_text_to_text([], LABELS, stub_encode) == []
    assert reassign_segment_to_text(np.zeros((0, 3)), LABELS, stub_encode) == []
    with pytest.raises(ValueError, match="empty"):
        reassign_text_to_text(["kitty"], [], stub_encode)
    with pytest.raises(ValueError, match="unique"):
        reassign_text_to_text(["kitty"], ["cat", "cat"], stub_encode)
    with pytest.raises(ValueError, match="all-zero"):
        cosine_matrix(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="sizes differ"):
        cosine_matrix(np.ones((1, 3)), np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        reassign_by_similarity(np.zeros((2, 2)), LABELS, "TT")


def test_threshold_verification_is_inclusive_at_tau():
    # cos((1, 0), (0.5, sqrt(0.75))) = 0.5 exactly: the boundary of τ_SBERT
    similarity = cosine_matrix([[1.0, 0.0]], [[0.5, math.sqrt(0.75)]])
    assert similarity[0, 0] == 0.5
    at = Reassignment("cat", 0, float(similarity[0, 0]), "TT")
    below = Reassignment("cat", 0, 0.499999, "TT")
    assert is_verified(at) and not is_verified(below)
    assert verify_by_threshold([at, below]) == [0, UNVERIFIED]
    # ST uses τ_CLIP = 0.1 by default
    assert verify_by_threshold([Reassignment("dog", 2, 0.1, "ST"), Reassignment("dog", 2, 0.0999, "ST")]) == [2, -1]
    # an explicit threshold overrides the method's default; an exact match (1.0) passes τ = 1.0
    assert verify_by_threshold([Reassignment("dog", 2, 1.0, "TT")], 1.0) == [2]


def test_identical_texts_have_similarity_exactly_one():
    result = reassign_text_to_text(["cat"], LABELS, lambda t: stub_encode(t).astype(np.float32) * 1.37)
    assert result[0].similarity == 1.0


def test_human_verification_h_at_least_k():
    rs = [Reassignment("cat", 0, 0.2, "ST"), Reassignment("car", 1, 0.9, "ST"), Reassignment("dog", 2, 0.9, "ST")]
    assert verify_by_scores(rs, [2, 1, None], 2) == [0, -1, -1]  # h = k passes, unrated fails
    assert verify_by_scores(rs, [3, 3, 2], 3) == [0, 1, -1]
    with pytest.raises(ValueError, match="0..3"):
        verify_by_scores(rs, [1, 1, 1], 4)
    with pytest.raises(ValueError, match="3 reassignments"):
        verify_by_scores(rs, [1], 1)


def test_reassignment_record_round_trip_and_validation():
    r = Reassignment("cat", 0, 0.75, "TT")
    assert Reassignment.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="method"):
        Reassignment("cat", 0, 0.75, "tt")
    with pytest.raises(ValueError, match="lacks"):
        Reassignment.from_dict({"label": "cat"})


def test_real_sbert_reassigns_synonyms(sbert):
    labels = ["cat", "car", "dog", "aeroplane"]
    result = reassign_text_to_text(["kitten", "automobile", "puppy", "jet airliner"], labels, sbert.encode)
    assert [r.label for r in result] == ["cat", "car", "dog", "aeroplane"]
    # "kitten" is close to "cat" (appendix C: SBERT >= 0.5 shares a topic) but not to "car"
    vectors = sbert.encode(["kitten", "cat", "car"]).numpy()
    assert result[0].similarity == pytest.approx(cos(vectors[0], vectors[1]), abs=1e-5)
    assert cos(vectors[0], vectors[1]) > TAU_SBERT > cos(vectors[0], vectors[2])
    assert verify_by_threshold(result[:1]) == [0]
