"""The benchmarks' compute floor (bench/common.py): FLOP counted by hand on small cases."""

import torch
import torch.nn.functional as F

from bench.common import counted_gflop, matmul_rate_gflops


def test_a_linear_layer_counts_2_m_k_n():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.inference_mode():
        assert round(counted_gflop(lambda: layer(x)) * 1e9) == 2 * 2 * 4 * 3


def test_fused_attention_is_counted_through_the_math_path():
    # q k^T: 2 * 5 * 8 * 5, P v: 2 * 5 * 5 * 8, for each of 3 heads
    q, k, v = (torch.randn(1, 3, 5, 8) for _ in range(3))
    with torch.inference_mode():
        counted = round(counted_gflop(lambda: F.scaled_dot_product_attention(q, k, v)) * 1e9)
    assert counted == 3 * (2 * 5 * 8 * 5 + 2 * 5 * 5 * 8)


def test_the_matmul_rate_is_a_positive_rate_in_either_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        assert matmul_rate_gflops(dtype, shape=(64, 32, 48), repeats=3) > 0
