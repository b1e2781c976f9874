"""Attention a block of queries at a time (bfloat16 on a CPU) against a float64 reference written
here, and timm's ViT attention switched to it against timm's own forward."""

import pytest
import timm
import torch
from timm.models.vision_transformer import Attention

from backend.models.attention import QueryBlockedAttention, attention, use_query_blocked_attention
from backend.models.registry import FoundationModels


def reference_attention(query, key, value):
    """softmax(q k^T / sqrt(d)) v in float64, written out."""
    q, k, v = (t.double() for t in (query, key, value))
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
    return weights @ v


@pytest.mark.parametrize("query_block", [1, 16, 37, 256])
def test_blocked_bfloat16_attention_equals_the_reference(query_block):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 37, 16, generator=generator) for _ in range(3))
    expected = reference_attention(query, key, value)
    got = attention(*(t.bfloat16() for t in (query, key, value)), query_block=query_block)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    # bfloat16 keeps 8 bits of mantissa: inputs and products round at 2^-8 relative
    assert torch.allclose(got.double(), expected, atol=3e-2, rtol=3e-2)
    cosine = torch.nn.functional.cosine_similarity(got.double(), expected, dim=-1)
    assert cosine.min() > 0.999


def test_float32_takes_the_fused_kernel_and_equals_the_reference():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 2, 20, 8, generator=generator) for _ in range(3))
    assert torch.allclose(attention(query, key, value).double(), reference_attention(query, key, value), atol=1e-5)


def test_hand_worked_case():
    # one query, two keys: q.k = 0 and 2 ln 3, over sqrt(d) = 2: scores 0 and ln 3, weights 1/4 and 3/4
    head_dim = 4
    query = torch.tensor([[[[1.0, 0, 0, 0]]]])
    key = torch.tensor([[[[0.0, 0, 0, 0], [2 * torch.log(torch.tensor(3.0)), 0, 0, 0]]]])
    value = torch.tensor([[[[4.0, 0, 0, 0], [8.0, 0, 0, 0]]]])
    assert head_dim**0.5 == 2
    for dtype in (torch.float32, torch.bfloat16):
        got = attention(query.to(dtype), key.to(dtype), value.to(dtype), query_block=1)
        assert got[0, 0, 0, 0].item() == pytest.approx(0.25 * 4 + 0.75 * 8, rel=1e-2)


def test_a_timm_vit_switched_to_blocked_attention_computes_what_timm_does():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, num_classes=0, embed_dim=32, depth=2, num_heads=2, img_size=70
    ).eval()
    pixels = torch.randn(1, 3, 70, 70)
    with torch.inference_mode():
        expected = model.forward_features(pixels)  # float32, timm's own forward
        model = model.to(torch.bfloat16)
        assert use_query_blocked_attention(model) == 2
        assert all(type(block.attn) is QueryBlockedAttention for block in model.blocks)
        got = model.forward_features(pixels.bfloat16()).float()
    cosine = torch.nn.functional.cosine_similarity(got[0], expected[0], dim=-1)
    assert cosine.min() > 0.999


def test_what_blocked_attention_does_not_cover_goes_to_timm():
    torch.manual_seed(0)
    module = Attention(16, num_heads=2).eval()
    tokens = torch.randn(1, 5, 16)
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[..., :3] = True
    with torch.inference_mode():
        expected = module(tokens, attn_mask=mask)
        module.__class__ = QueryBlockedAttention
        assert torch.equal(module(tokens, attn_mask=mask), expected)


@pytest.mark.parametrize("dtype, blocked", [("bfloat16", True), ("float32", False)])
def test_the_registry_switches_timm_models_in_bfloat16_on_a_cpu(dtype, blocked):
    models = FoundationModels("tiny", device="cpu", dtype=dtype)
    for extractor in (models.dino, models.dinov2):
        kinds = {type(block.attn) for block in extractor.model.blocks}
        assert kinds == ({QueryBlockedAttention} if blocked else {Attention})
