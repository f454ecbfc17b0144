"""Packed rows for the graphed block stacks: a padded batch's valid frames gathered into one row of a
bucketed length and back, and the stacks on packed rows equal the stacks on the padded batch
(outputs and gradients of every real frame, float64 on the CPU), reading nothing on the host."""

import dataclasses

import pytest
import torch

from s2s.attention import ChunkSpec
from s2s.models.cuda_graphs import DecoderBlocks, EncoderBlocks, chunk_table
from s2s.models.packing import PackedLayout
from s2s.models.row_packing import FILLER_CHUNK, RowPacking
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from tests.models.test_packing import NoHostReads

SMALL = TokenDuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0)


def test_rows_gather_the_valid_frames_then_filler_and_scatter_them_back(generator):
    seed = generator.initial_seed()
    lengths = [7, 0, 12, 3]
    layout = PackedLayout.from_lengths(torch.tensor(lengths), 12)
    packing = RowPacking.of(layout, bucket=8)
    assert packing.packed_rows == 24 and packing.valid_rows == 22, f"seed {seed}"
    assert packing.rows.cu_seqlens.tolist() == [0, 7, 7, 19, 22, 24] and packing.rows.max_seqlen == 12
    x = torch.randn(4, 12, 5, generator=generator, dtype=torch.float64)
    rows = packing.gather(x)
    want = torch.cat([x[b, :n] for b, n in enumerate(lengths)])
    assert rows.shape == (1, 24, 5) and torch.equal(rows[0, :22], want), f"seed {seed}"
    assert torch.equal(rows[0, 22:], x[0, :1].expand(2, 5)), f"seed {seed}: the filler copies frame 0"
    back = packing.scatter(rows + 1, batch=4)
    valid = layout.valid[:, :, None]
    assert torch.equal(back, torch.where(valid, x + 1, 0.0)), f"seed {seed}"


def test_a_bucket_rounds_up_and_an_exact_fit_has_an_empty_filler():
    layout = PackedLayout.from_lengths(torch.tensor([8, 8]), 8)
    packing = RowPacking.of(layout, bucket=16)
    assert packing.rows.cu_seqlens.tolist() == [0, 8, 16, 16] and packing.packed_rows == 16
    assert RowPacking.of(layout, bucket=5).packed_rows == 20
    table = torch.tensor([[2, 4], [2, 4], [0, 1], [0, 3]])
    assert packing.chunk_table(table)[:, -1].tolist() == list(FILLER_CHUNK)
    with pytest.raises(ValueError, match="row bucket must be a positive number of frames"):
        RowPacking.of(layout, bucket=0)


@pytest.mark.parametrize("lengths", [[24, 13, 8], [20, 0, 24]], ids=["unaligned", "empty-sequence"])
def test_the_stacks_on_packed_rows_equal_the_padded_stacks(lengths, generator):
    """EncoderBlocks / DecoderBlocks on packed rows (the reference backend through the attention
    operator, offsets as device tensors guarded against host reads) give every real frame the
    output and gradients of the stacks on the padded batch, whose attention packs per call."""
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, attention_backend="reference", left_chunks=2)
    model = TokenDuplexModel(config).double().train()
    frames = 24
    x = torch.randn(3, frames, config.dim, generator=generator, dtype=torch.float64)
    encoded = torch.randn(3, frames, config.dim, generator=generator, dtype=torch.float64)
    positions = torch.arange(frames).expand(3, frames).contiguous()
    spec = ChunkSpec(torch.tensor([4, 8, 2], dtype=torch.int32), left_chunks=config.left_chunks)
    layout = PackedLayout.from_lengths(torch.tensor(lengths), frames)
    packing = RowPacking.of(layout, bucket=16)
    weights = torch.randn(3, frames, config.dim, generator=generator, dtype=torch.float64)
    valid = layout.valid[:, :, None]

    def padded(x, encoded):
        from s2s.models.attention_context import OfflineAttention
        from s2s.models.layers import Rotation

        rotation = Rotation.at(positions, config.head_dim, config.rope_base)
        attention = OfflineAttention(spec, layout, config.attention_backend)
        h = x
        for block in model.encoder.blocks:
            h = block(h, rotation, attention)
        d = encoded
        for block in model.decoder.blocks:
            d = block(d, rotation, h, attention, attention)
        return torch.where(valid, h, 0.0), torch.where(valid, d, 0.0)

    def packed(x, encoded):
        table = packing.chunk_table(chunk_table(spec.resolve(3)))
        rows = packing.rows.cu_seqlens.as_subclass(NoHostReads)
        encoder = EncoderBlocks(model.encoder.blocks, config, packing.rows.max_seqlen)
        decoder = DecoderBlocks(model.decoder.blocks, config, packing.rows.max_seqlen)
        row_positions = packing.gather(positions)
        h = encoder(packing.gather(x), row_positions, table, rows)
        d = decoder(packing.gather(encoded), row_positions, h, table, rows)
        return packing.scatter(h.as_subclass(torch.Tensor), 3), packing.scatter(
            d.as_subclass(torch.Tensor), 3
        )

    blocks = [*model.encoder.blocks.parameters(), *model.decoder.blocks.parameters()]
    results = []
    for run in (padded, packed):
        leaves = [t.clone().requires_grad_() for t in (x, encoded)]
        h, d = run(*leaves)
        loss = (h * weights).sum() + (d * weights).sum()
        results.append((h.detach(), d.detach(), *torch.autograd.grad(loss, [*leaves, *blocks])))
    for index, (got, want) in enumerate(zip(results[1], results[0], strict=True)):
        assert not torch.isnan(got).any(), f"seed {seed}: result {index} has NaN"
        torch.testing.assert_close(
            got, want, rtol=1e-9, atol=1e-10, msg=lambda m, i=index: f"seed {seed}: {i}: {m}"
        )


def test_rows_pack_only_in_training_calls_on_the_cute_kernels():
    """No packing (nothing gathered) where a call takes no graph or attention is not on the CuTe
    kernels: on the CPU, in evaluation, without padding; and a bucket must be positive."""
    from s2s.models.cuda_graphs import GraphedBlocks
    from s2s.models.row_packing import cute_runs_packed_rows

    model = TokenDuplexModel(SMALL).train()
    graphs = GraphedBlocks(EncoderBlocks(model.encoder.blocks, SMALL), row_bucket=8)
    layout = PackedLayout.from_lengths(torch.tensor([8, 5]), 8)
    x = torch.randn(2, 8, SMALL.dim, requires_grad=True)
    assert graphs._row_packing(x, layout) is None  # a CPU call
    assert not cute_runs_packed_rows("cute", torch.device("cpu"))
    assert not cute_runs_packed_rows("flex", torch.device("cuda"))  # no packing for other backends
    # the same device check the CuTe backend gives every call
    from s2s.attention.backends.cute import CuteBackend

    reason = CuteBackend.device_unsupported_reason(torch.device("cpu"))
    assert reason in (
        "the CuTe kernel runs on CUDA tensors only",
        "nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')",
    )
    with pytest.raises(ValueError, match="row_bucket must be a positive number of frames or None"):
        GraphedBlocks(EncoderBlocks(model.encoder.blocks, SMALL), row_bucket=0)


def test_packed_stacks_compile_once_for_every_bucket(generator):
    """The blocks compiled for packed rows (compiled_for_packed_rows, the row count marked dynamic
    by the stack, as a capture's stack marks it) run a second bucket without compiling again, and
    give the eager stacks' outputs and input gradients on both (float32, the reference backend
    through the attention operator, as on a GPU the CuTe kernels)."""
    from torch._dynamo.utils import counters

    from s2s.models.cuda_graphs import compiled_for_packed_rows

    seed = generator.initial_seed()
    torch.manual_seed(seed)
    config = dataclasses.replace(SMALL, attention_backend="reference")
    model = TokenDuplexModel(config).train()
    compiled = compiled_for_packed_rows(model.encoder.blocks)
    graphs_after = []
    for lengths in ([24, 13, 8], [24, 20, 24]):  # 45 and 68 real frames: buckets of 48 and 80 rows
        frames = 24
        x = torch.randn(3, frames, config.dim, generator=generator)
        positions = torch.arange(frames).expand(3, frames).contiguous()
        spec = ChunkSpec(torch.tensor([4, 8, 2], dtype=torch.int32), left_chunks=None)
        packing = RowPacking.of(PackedLayout.from_lengths(torch.tensor(lengths), frames), bucket=16)
        table = packing.chunk_table(chunk_table(spec.resolve(3)))
        inputs = (packing.gather(x), packing.gather(positions), table, packing.rows.cu_seqlens)
        results = []
        for blocks in (model.encoder.blocks, compiled):
            samples = tuple(t.clone() for t in inputs)
            samples[0].requires_grad_()
            stack = EncoderBlocks(blocks, config, packing.rows.max_seqlen, dynamic_rows=blocks is compiled)
            out = stack(*samples)
            (grad,) = torch.autograd.grad(out.square().sum(), samples[0])
            results.append((out.detach(), grad))
        graphs_after.append(counters["stats"]["unique_graphs"])
        for name, got, want in zip(("output", "input gradient"), results[1], results[0], strict=True):
            where = f"seed {seed}, {lengths}: {name}"
            assert torch.isfinite(got).all(), where
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, w=where: f"{w}: {m}")
    assert graphs_after[1] == graphs_after[0], f"seed {seed}: a second bucket compiled again: {graphs_after}"
