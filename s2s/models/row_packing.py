"""The valid frames of a padded (B, T) batch gathered into one row of N frames, N rounded up to a
bucket, so that the graphed block stacks compute no padded frame.

A padded batch of training crops is ~13% padding (bench_train's batch: 27,720 of 32,000 frames),
and the blocks' GEMMs and elementwise kernels compute every padded frame as a real one. Packed,
they run N = the real frames rounded up to `bucket` (one CUDA graph per bucket, not per batch):
the rows past the real frames are filler, a copy of the batch's first frame that forms one more
sequence in attention (so every row is written and finite, and no real frame sees it), and their
outputs are dropped when the rows go back to the padded layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from s2s.attention.backends.cute import CuteBackend
from s2s.models.packing import PackedLayout, PackedRows

FILLER_CHUNK = (1, 1, 0, 0)  # chunk_q, chunk_k, q_offset, k_offset of the filler sequence: causal


def cute_runs_packed_rows(backend: str, device: torch.device) -> bool:
    """Whether attention on packed rows runs on the CuTe kernels here ("cute", or "auto" on a Hopper
    GPU with the DSL installed): elsewhere the attention operator's backward is the dense formula,
    whose memory grows with N^2 over one row of N frames."""
    if backend not in ("cute", "auto") or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cute_runs_on(index)


@functools.cache
def _cute_runs_on(index: int) -> bool:
    return CuteBackend.device_unsupported_reason(torch.device("cuda", index)) is None


@dataclass(frozen=True, eq=False)
class RowPacking:
    """How one batch's frames go into N packed rows and back."""

    indices: torch.Tensor  # (N,) int64, on the device: rows of (B * T) gathered, then filler (row 0)
    rows: PackedRows  # the packed row's sequences, for attention
    frames: int  # T
    valid_rows: int  # real frames, the first `valid_rows` of N

    @property
    def packed_rows(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def of(cls, layout: PackedLayout, bucket: int) -> RowPacking:
        """The packing of `layout`'s valid frames into a multiple of `bucket` rows (host ints from
        the layout: nothing is read from the device)."""
        if bucket < 1:
            raise ValueError(f"the row bucket must be a positive number of frames, got {bucket}")
        total = layout.total
        rows = max(bucket, -(-total // bucket) * bucket)
        device = layout.indices.device
        filler = torch.zeros(rows - total, dtype=layout.indices.dtype, device=device)
        offsets = torch.tensor((*layout.offsets, rows), dtype=torch.int32).to(device, non_blocking=True)
        # the filler is shorter than a bucket: one bound for every batch, so one graph per bucket
        return cls(
            indices=torch.cat([layout.indices, filler]),
            rows=PackedRows(offsets, max(layout.frames, bucket)),
            frames=layout.frames,
            valid_rows=total,
        )

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (1, N, ...): the valid frames in order, then filler."""
        return padded.flatten(0, 1).index_select(0, self.indices).unsqueeze(0)

    def scatter(self, packed: torch.Tensor, batch: int) -> torch.Tensor:
        """(1, N, ...) -> (B, T, ...): each real frame back in its place, zeros in the padding."""
        real = packed[0, : self.valid_rows]
        out = real.new_zeros((batch * self.frames, *real.shape[1:]))
        out = out.index_copy(0, self.indices[: self.valid_rows], real)
        return out.view(batch, self.frames, *real.shape[1:])

    def chunk_table(self, table: torch.Tensor) -> torch.Tensor:
        """The (4, B) chunk table (chunk_q, chunk_k, q_offset, k_offset) with the filler's column."""
        filler = torch.tensor(FILLER_CHUNK, dtype=table.dtype).to(table.device, non_blocking=True)
        return torch.cat([table, filler[:, None]], dim=1)
