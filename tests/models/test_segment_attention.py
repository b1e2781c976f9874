"""Eqs. 1-4 of the zero-guidance paper on hand-worked cases, and the batched block against a loop."""

import math

import pytest
import torch

from backend.models.segment_attention import (
    global_subtraction_weight,
    masked_attention_outputs,
    masked_softmax,
    run_masked_block,
    saliency,
    token_masks,
)


def test_masked_softmax_hand_worked():
    # exp([0, ln 2, 0]) = [1, 2, 1]; with M = [1, 1, 0]: [1, 2, 0] / 3.
    logits = torch.tensor([0.0, math.log(2.0), 0.0])
    out = masked_softmax(logits, torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(out, torch.tensor([1 / 3, 2 / 3, 0.0]), atol=1e-6)
    # Soft mask M = [1, 0.5, 1]: [1, 1, 1] / 3.
    out = masked_softmax(logits, torch.tensor([1.0, 0.5, 1.0]))
    assert torch.allclose(out, torch.full((3,), 1 / 3), atol=1e-6)


def test_masked_softmax_all_ones_is_softmax():
    logits = torch.randn(4, 7)
    assert torch.allclose(masked_softmax(logits, torch.ones(7)), torch.softmax(logits, -1), atol=1e-6)


def test_token_masks_area_downsampling_and_class_token():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # the top-left patch of a 2x2 grid
    mask[0, 3, 3] = 1.0  # one pixel of the bottom-right patch: area 1/4
    weights = token_masks(mask, (2, 2))
    assert torch.allclose(weights, torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.25]]))


def test_token_masks_rejects_wrong_rank():
    with pytest.raises(ValueError, match="K, H, W"):
        token_masks(torch.ones(4, 4), (2, 2))


def test_saliency_hand_worked():
    unmasked = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    masked = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    # cos = [1, 0] -> mean 0.5
    assert torch.allclose(saliency(unmasked, masked), torch.tensor([0.5]))


def test_global_subtraction_weight_hand_worked():
    s = torch.tensor([-1.0, 0.0, 1.0])
    w = global_subtraction_weight(s, sigma_squared=2.5)
    # Eq. 4: exp(-(S+1)^2 / 2σ^2) with 2σ^2 = 5
    assert torch.allclose(w, torch.tensor([1.0, math.exp(-1 / 5), math.exp(-4 / 5)]), atol=1e-7)


def _reference_block(block, tokens, key_weights, subtract_global, sigma_squared):
    """One segment at a time, Eq. 1 written literally (exp * M / sum), heads in a loop."""
    attn = block.attn
    out = []
    for x, m in zip(tokens, key_weights):
        h = block.ln_1(x)
        length, width = h.shape
        heads = attn.num_heads
        d = width // heads
        q, k, v = (h @ w.T + b for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)))
        masked = torch.zeros(length, width)
        plain = torch.zeros(length, width)
        for head in range(heads):
            sl = slice(head * d, (head + 1) * d)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(d)
            e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
            masked[:, sl] = (e * m) / (e * m).sum(-1, keepdim=True) @ v[:, sl]
            plain[:, sl] = e / e.sum(-1, keepdim=True) @ v[:, sl]
        if subtract_global:
            s = sum(torch.dot(plain[i], masked[i]) / (plain[i].norm() * masked[i].norm()) for i in range(length))
            s = s / length
            w = math.exp(-((float(s) + 1) ** 2) / (2 * sigma_squared))
            masked = masked - w * plain[0]
        y = x + masked @ attn.out_proj.weight.T + attn.out_proj.bias
        out.append(y + block.mlp(block.ln_2(y)))
    return torch.stack(out)


@pytest.mark.parametrize("subtract_global", [True, False])
def test_masked_block_matches_loop_reference(subtract_global):
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 4).eval()
    tokens = torch.randn(3, 5, 16)
    key_weights = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.2, 0.7, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        got = run_masked_block(block, tokens, key_weights, subtract_global=subtract_global, sigma_squared=2.5)
        want = _reference_block(block, tokens, key_weights, subtract_global, 2.5)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("class_token_only", [False, True])
def test_one_shared_input_row_equals_the_loop_reference_on_every_segment(class_token_only):
    """The first masked block gets the image's tokens once, (1, L, C), for K masks."""
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(3)
    block = ResidualAttentionBlock(16, 4).eval()
    shared = torch.randn(1, 5, 16)
    key_weights = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.2, 0.7, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        got = run_masked_block(
            block, shared, key_weights, subtract_global=True, sigma_squared=2.5, class_token_only=class_token_only
        )
        want = _reference_block(block, shared.expand(3, -1, -1), key_weights, True, 2.5)
    assert got.shape == (3, 1 if class_token_only else 5, 16)
    assert torch.allclose(got, want[:, : got.shape[1]], atol=1e-5)


def test_masked_attention_ignores_masked_keys():
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(1)
    block = ResidualAttentionBlock(8, 2).eval()
    tokens = torch.randn(1, 4, 8)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    changed = tokens.clone()
    changed[0, 2:] = torch.randn(2, 8) * 10  # masked keys/values change: masked output must not
    with torch.no_grad():
        a, _ = masked_attention_outputs(block.attn, tokens, weights)
        b, _ = masked_attention_outputs(block.attn, changed, weights)
    assert torch.allclose(a[0, :2], b[0, :2], atol=1e-5)


def test_class_token_only_equals_the_full_block_class_token():
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(2)
    block = ResidualAttentionBlock(16, 4).eval()
    tokens = torch.randn(2, 6, 16)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.5, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        full = run_masked_block(block, tokens, weights, subtract_global=True, sigma_squared=2.5)
        first = run_masked_block(block, tokens, weights, subtract_global=True, sigma_squared=2.5, class_token_only=True)
    assert first.shape == (2, 1, 16)
    assert torch.allclose(first, full[:, :1], atol=1e-6)
