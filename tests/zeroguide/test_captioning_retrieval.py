"""Retrieval captioner: nearest phrase checked independently, the built-in vocabulary, the disk cache."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from backend.zeroguide.captioning import (
    Caption,
    RetrievalCaptioner,
    RetrievalSettings,
    build_captioner,
    load_vocabulary,
)
from backend.zeroguide.captioning.retrieval import DEFAULT_VOCABULARY

PHRASES = ["dog", "cat", "sandy beach", "crowd observing", "blue sky", "red car", "wooden table", "snowy mountain"]
TEMPLATES = ("a photo of a {}.", "a picture of the {}.")


@pytest.fixture
def vocabulary_file(tmp_path):
    path = tmp_path / "vocabulary.txt"
    path.write_text("# a comment\n" + "\n".join(PHRASES) + "\n\n  dog  \n")  # blank line and a duplicate
    return path


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models.clip


def independent_vocabulary_embeddings(clip, phrases, templates):
    """open_clip's padded encode_text per template, averaged, renormalised."""
    with torch.no_grad():
        per_template = [
            F.normalize(clip.model.encode_text(clip.tokenizer([t.format(p) for p in phrases])), dim=-1)
            for t in templates
        ]
    return F.normalize(torch.stack(per_template).sum(0), dim=-1)


def test_returns_the_nearest_vocabulary_entry(clip, vocabulary_file):
    captioner = RetrievalCaptioner(
        clip, RetrievalSettings(prompt_templates=TEMPLATES, vocabulary_file=vocabulary_file, alternatives=3)
    )
    assert captioner.vocabulary == tuple(PHRASES)
    vocabulary = independent_vocabulary_embeddings(clip, PHRASES, TEMPLATES)
    generator = torch.Generator().manual_seed(0)
    targets = torch.cat(
        [
            F.normalize(torch.randn(6, vocabulary.shape[1], generator=generator), dim=-1),
            vocabulary[[2, 3]],  # exactly a vocabulary embedding: must return that phrase
        ]
    )
    captions = captioner.caption(targets)
    assert len(captions) == len(targets) and all(isinstance(c, Caption) for c in captions)
    similarities = targets @ vocabulary.T
    for caption, row in zip(captions, similarities):
        order = row.argsort(descending=True).tolist()
        assert caption.text == PHRASES[order[0]]
        assert caption.clip_score == pytest.approx(row[order[0]].item(), abs=1e-5)
        assert [text for text, _ in caption.alternatives] == [PHRASES[i] for i in order[1:4]]
        assert caption.scored_text == f"a photo of a {caption.text}."
        torch.testing.assert_close(caption.embedding, vocabulary[order[0]], atol=1e-5, rtol=0)
    assert captions[-2].text == "sandy beach" and captions[-1].text == "crowd observing"
    assert captions[-1].clip_score == pytest.approx(1.0, abs=1e-5)


def test_built_in_vocabulary_is_large_deduplicated_and_phrasal():
    phrases = load_vocabulary()
    assert 2000 <= len(phrases) <= 6000
    assert len(set(phrases)) == len(phrases)
    assert all(phrase == phrase.strip() and phrase and not phrase.startswith("#") for phrase in phrases)
    for expected in ("sandy beach", "crowd observing", "sky", "person", "wall", "bathroom", "tail", "brick wall"):
        assert expected in phrases
    header = DEFAULT_VOCABULARY.read_text().splitlines()[:20]
    assert any("LVIS" in line for line in header) and any("Places365" in line for line in header)


def test_cache_round_trip_and_invalidation(clip, vocabulary_file, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    settings = RetrievalSettings(prompt_templates=TEMPLATES, vocabulary_file=vocabulary_file, cache_dir=cache_dir)
    first = RetrievalCaptioner(clip, settings)
    embeddings = first.vocabulary_embeddings
    path = first.cache_path()
    assert path.is_file() and path.parent == cache_dir
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temporary file left behind

    # A second captioner reads the file and never runs the text tower.
    second = RetrievalCaptioner(clip, settings)
    monkeypatch.setattr(second, "embed_phrases", lambda phrases: pytest.fail("cache was not used"))
    torch.testing.assert_close(second.vocabulary_embeddings, embeddings)

    # A different vocabulary or template gets a different file.
    other_vocabulary = tmp_path / "other.txt"
    other_vocabulary.write_text("dog\nhorse\n")
    changed = [
        RetrievalCaptioner(clip, dataclasses.replace(settings, vocabulary_file=other_vocabulary)),
        RetrievalCaptioner(clip, dataclasses.replace(settings, prompt_templates=("a photo of a {}.",))),
    ]
    for captioner in changed:
        assert captioner.cache_path() != path
        assert captioner.vocabulary_embeddings.shape[0] == len(captioner.vocabulary)

    # A corrupt file is ignored, recomputed and rewritten.
    path.write_bytes(b"not a safetensors file")
    third = RetrievalCaptioner(clip, settings)
    torch.testing.assert_close(third.vocabulary_embeddings, embeddings)
    assert path.stat().st_size > 100


def test_cache_key_follows_the_model_weights(clip, vocabulary_file, tmp_path):
    import copy

    settings = RetrievalSettings(vocabulary_file=vocabulary_file, cache_dir=tmp_path)
    original = RetrievalCaptioner(clip, settings)
    altered_clip = copy.copy(clip)
    altered_clip.model = copy.deepcopy(clip.model)
    with torch.no_grad():
        altered_clip.model.ln_final.weight.add_(0.5)
    altered = RetrievalCaptioner(altered_clip, settings)
    assert altered.cache_path() != original.cache_path()


def test_factory_settings_and_errors(tiny_models, vocabulary_file):
    captioner = build_captioner("retrieval", tiny_models, {"vocabulary_file": vocabulary_file, "alternatives": 1})
    assert isinstance(captioner, RetrievalCaptioner) and captioner.name == "retrieval"
    assert captioner.settings.alternatives == 1
    with pytest.raises(ValueError, match="Unknown captioner"):
        build_captioner("gpt4", tiny_models)
    with pytest.raises(ValueError, match="beam_size"):
        build_captioner("retrieval", tiny_models, {"beam_size": 3})
    with pytest.raises(ValueError, match="exactly one"):
        RetrievalSettings(prompt_templates=("a photo of a thing.",))
    with pytest.raises(ValueError, match="non-empty tuple"):
        RetrievalSettings(prompt_templates="a photo of a {}.")
    with pytest.raises(ValueError, match="does not exist"):
        load_vocabulary(vocabulary_file.with_name("missing.txt"))

    dim = captioner.vocabulary_embeddings.shape[1]
    with pytest.raises(ValueError, match="unit norm"):
        captioner.caption(torch.ones(2, dim))
    with pytest.raises(ValueError, match=r"embeddings\[None\]"):
        captioner.caption(F.normalize(torch.ones(dim), dim=0))
    with pytest.raises(ValueError, match="shape"):
        captioner.caption(F.normalize(torch.ones(2, dim + 1), dim=-1))
    assert captioner.caption(torch.empty(0, dim)) == []
