"""One sequence of a packed batch as the kernels see it: a row of the per-sequence table.

The host writes one int32 row per sequence (``launch.sequence_table``); a CTA reads its row once,
at the start, into a ``SeqlenInfo`` and every later step (tile ranges, masks, stores) takes the
named fields. The column order is declared here only: the host builds the table from
``COLUMNS`` and the kernel reads it back in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cutlass
    import cutlass.cute as cute


@dataclass(frozen=True)
class SeqlenInfo:
    """Where a sequence's rows start in the packed tensors, its lengths, and its chunk rule's
    runtime values (``s2s.attention.mask`` for their meaning)."""

    q_start: cutlass.Int32  # first row of the sequence in the packed (total_q, H, D) tensors
    k_start: cutlass.Int32  # first key in the packed (total_k, H, D) tensors
    seqlen_q: cutlass.Int32
    seqlen_k: cutlass.Int32
    chunk_q: cutlass.Int32
    chunk_k: cutlass.Int32
    q_offset: cutlass.Int32  # absolute position of the sequence's first query on the timeline
    k_offset: cutlass.Int32

    @staticmethod
    def load(table: cute.Tensor, seq: cutlass.Int32) -> SeqlenInfo:
        """Row ``seq`` of the (batch, columns) table, one load per column, in column order."""
        return SeqlenInfo(*(table[seq, column] for column in range(len(COLUMNS))))


COLUMNS = tuple(field.name for field in fields(SeqlenInfo))
