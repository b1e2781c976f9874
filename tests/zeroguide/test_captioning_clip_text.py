"""CLIP text encoding: trimmed and prefix-cached paths against open_clip's own padded encode_text."""

import pytest
import torch
import torch.nn.functional as F

from backend.zeroguide.captioning.clip_text import ClipTextEncoder


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models.clip


@pytest.fixture(scope="module")
def encoder(clip):
    return ClipTextEncoder(clip.model, clip.tokenizer)


def reference(clip, texts):
    """open_clip's own path: padded to 77 tokens, full causal mask."""
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)


def test_tokenize_trims_at_the_end_of_text(clip, encoder):
    padded = clip.tokenizer(["a dog", "a photo of a sandy beach."])
    tokens = encoder.tokenize(["a dog", "a photo of a sandy beach."])
    sot, eot = clip.tokenizer.sot_token_id, clip.tokenizer.eot_token_id
    for row, token_list in zip(padded, tokens):
        assert token_list[0] == sot and token_list[-1] == eot
        assert token_list == row[: len(token_list)].tolist()
        assert row[len(token_list) :].eq(0).all()


def test_trimmed_encoding_equals_padded_encoding(clip, encoder):
    texts = ["a dog", "a photo of a sandy beach.", "x", "Image of an elephant running!!", "crowd observing"]
    expected = reference(clip, texts)
    for batch_size in (1, 2, 16):  # batches of different lengths trim differently
        torch.testing.assert_close(encoder.encode(texts, batch_size=batch_size), expected, atol=1e-5, rtol=0)
    assert encoder.encode([]).shape == (0, expected.shape[1])


@pytest.mark.parametrize(
    "prefix, continuations",
    [
        # GPT-2 tokens with a leading space start a new CLIP word: the whole prefix is shared.
        ("Image of a", [" dog", " sandy", " red car", " crowd"]),
        # Without a space they continue the last word ("a" -> "an"): only the whole words are shared.
        ("Image of a", ["n", "ardvark", "'s"]),
        # Punctuation merges with punctuation, digits stand alone, words merge with words.
        ("Image of a dog,", [".", "!", " 3", "ted"]),
        ("Image of a 3", ["4", "d", " cats"]),
    ],
)
def test_prefix_cache_equals_plain_encoding(clip, encoder, prefix, continuations):
    state = encoder.prefix_state(prefix)
    texts = [prefix + continuation for continuation in continuations]
    cached = encoder.encode_continuations([state], [0] * len(texts), texts)
    torch.testing.assert_close(cached, reference(clip, texts), atol=1e-5, rtol=0)


def test_prefix_cache_batches_several_prefixes_and_shares_only_what_matches(clip, encoder):
    prefixes = ["Image of a", "Image of a dog on the", "A"]
    states = [encoder.prefix_state(prefix) for prefix in prefixes]
    texts, rows = [], []
    for row, prefix in enumerate(prefixes):
        for continuation in (" cat", "n", " beach.", "."):
            texts.append(prefix + continuation)
            rows.append(row)
    texts.append("an unrelated text that shares only the start token")
    rows.append(1)
    for batch_size in (3, 1024):
        cached = encoder.encode_continuations(states, rows, texts, batch_size=batch_size)
        torch.testing.assert_close(cached, reference(clip, texts), atol=1e-5, rtol=0)


def test_prefix_state_holds_every_layer(clip, encoder):
    state = encoder.prefix_state("Image of a dog")
    text_blocks = clip.model.transformer.resblocks
    assert len(state.keys) == len(state.values) == len(text_blocks)
    heads = text_blocks[0].attn.num_heads
    width = clip.model.transformer.width
    assert state.token_ids[0] == clip.tokenizer.sot_token_id
    assert state.keys[0].shape == (heads, len(state.token_ids), width // heads)


def test_bad_arguments_are_refused(clip, encoder):
    with pytest.raises(ValueError, match="text tower"):
        ClipTextEncoder(torch.nn.Linear(2, 2), clip.tokenizer)
    state = encoder.prefix_state("a")
    with pytest.raises(ValueError, match="entries"):
        encoder.encode_continuations([state], [0], ["a b", "a c"])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)
