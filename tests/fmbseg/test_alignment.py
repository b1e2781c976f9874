"""The alignment module: shapes, unit norm, attention scope, and the block against nn.MultiheadAttention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.fmbseg.alignment import (
    AlignmentModuleConfig,
    build_alignment_module,
    build_from_config,
)


@pytest.mark.parametrize("kind", ["transformer", "mlp", "linear"])
def test_shapes_and_unit_norm(kind):
    module = build_alignment_module(kind, in_dim=32, out_dim=12, seed=0)
    batch = torch.randn(3, 20, 32)
    z = module(batch)
    assert z.shape == (3, 20, 12)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3, 20))
    single = module(batch[1])  # (N, C_in) works too and equals the batched row
    assert single.shape == (20, 12)
    torch.testing.assert_close(single, z[1], rtol=1e-5, atol=1e-6)


def test_transformer_attends_within_an_image_only():
    module = build_alignment_module("transformer", in_dim=16, out_dim=8, seed=1)
    images = torch.randn(2, 10, 16)
    base = module(images)
    changed = images.clone()
    changed[0, 3] = torch.randn(16) * 3  # change one patch of image 0
    out = module(changed)
    assert not torch.allclose(out[0, 0], base[0, 0])  # other patches of image 0 see it
    torch.testing.assert_close(out[1], base[1])  # image 1 does not


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_per_patch_designs_do_not_mix_patches(kind):
    module = build_alignment_module(kind, in_dim=16, out_dim=8, seed=1)
    images = torch.randn(1, 10, 16)
    changed = images.clone()
    changed[0, 3] = torch.randn(16) * 3
    base, out = module(images), module(changed)
    keep = [i for i in range(10) if i != 3]
    torch.testing.assert_close(out[0, keep], base[0, keep])


def test_transformer_block_matches_torch_multihead_attention():
    torch.manual_seed(0)
    module = build_alignment_module("transformer", in_dim=24, out_dim=10, num_heads=3, seed=2).double()
    block = module.block
    reference_attention = nn.MultiheadAttention(24, 3, batch_first=True).double()
    with torch.no_grad():
        reference_attention.in_proj_weight.copy_(block.qkv.weight)
        reference_attention.in_proj_bias.copy_(block.qkv.bias)
        reference_attention.out_proj.weight.copy_(block.attention_projection.weight)
        reference_attention.out_proj.bias.copy_(block.attention_projection.bias)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    h = F.layer_norm(x, (24,), block.norm1.weight, block.norm1.bias)
    x1 = x + reference_attention(h, h, h, need_weights=False)[0]
    h2 = F.layer_norm(x1, (24,), block.norm2.weight, block.norm2.bias)
    mlp = block.mlp
    x2 = x1 + mlp[2](F.gelu(mlp[0](h2)))
    expected = F.normalize(module.projection(x2), dim=-1)
    torch.testing.assert_close(module(x), expected)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_alignment_module("transformer", in_dim=16, out_dim=8, seed=7)
    b = build_alignment_module("transformer", in_dim=16, out_dim=8, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_config_defaults_and_round_trip():
    config = AlignmentModuleConfig()
    assert (config.kind, config.in_dim, config.out_dim) == ("transformer", 1024, 768)
    assert config.heads == 16 and config.hidden_dim == 4096
    assert AlignmentModuleConfig(in_dim=384).heads == 6
    assert AlignmentModuleConfig(in_dim=40).heads == 1
    assert AlignmentModuleConfig(in_dim=200).heads == 2  # 200 // 64 = 3 does not divide 200
    assert AlignmentModuleConfig.from_dict(config.to_dict()) == config
    module = build_from_config(AlignmentModuleConfig(kind="mlp", in_dim=8, out_dim=4, mlp_ratio=2.0))
    assert module.projection[0].out_features == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="conv"), "kind"),
        (dict(in_dim=0), "in_dim"),
        (dict(in_dim=30, num_heads=4), "num_heads"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
    ],
)
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlignmentModuleConfig(**kwargs)


def test_wrong_feature_size_is_rejected():
    module = build_alignment_module("linear", in_dim=8, out_dim=4)
    with pytest.raises(ValueError, match="patch features"):
        module(torch.randn(2, 5, 9))
    with pytest.raises(ValueError, match="unknown|Unknown"):
        AlignmentModuleConfig.from_dict({"kind": "linear", "width": 3})
