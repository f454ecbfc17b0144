"""softmax_scale: a NaN or infinite scale is refused by name (it used to give an all-NaN output)."""

import math

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -math.inf])
def test_a_non_finite_softmax_scale_is_refused(scale, generator):
    q = torch.randn(1, 8, 2, 16, generator=generator)
    with pytest.raises(ValueError, match=r"softmax_scale must be finite, got .*1/sqrt\(head_dim\)"):
        chunk_attention(q, q, q, ChunkSpec(chunk_q=4), softmax_scale=scale)


def test_a_softmax_scale_that_is_not_a_number_is_refused(generator):
    q = torch.randn(1, 8, 2, 16, generator=generator)
    with pytest.raises(TypeError, match="softmax_scale must be a number"):
        chunk_attention(q, q, q, ChunkSpec(chunk_q=4), softmax_scale="0.25")


def test_a_finite_softmax_scale_still_scales_the_scores(generator):
    q, k, v = (torch.randn(1, 8, 2, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    spec = ChunkSpec(chunk_q=4)
    doubled = chunk_attention(q * 2, k, v, spec, backend="reference")
    scaled = chunk_attention(q, k, v, spec, backend="reference", softmax_scale=2 / 4.0)  # 2 / sqrt(16)
    torch.testing.assert_close(scaled, doubled)
