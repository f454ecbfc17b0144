"""torch FlexAttention with a BlockMask built from our own tile schedule.

Fully visible blocks are marked full, so flex skips ``mask_mod`` on them; hidden blocks are
never visited. ``mask_mod`` compares precomputed per-position chunk ids: no division in the
kernel. On CUDA flex runs compiled (forward and backward); on CPU it runs eagerly, forward only.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.mask import (
    FULL,
    PARTIAL,
    chunk_index,
    chunk_is_visible,
    classify_tiles_from_bounds,
    packed_positions,
    packed_visible_key_bounds,
    visible_key_bounds,
)
from s2s.attention.problem import AttentionProblem
from s2s.attention.spec import SequenceChunks

DEFAULT_BLOCK_SIZE = 128


def _pad_to(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    pad = length - t.shape[-1]
    return torch.nn.functional.pad(t, (0, pad), value=value) if pad > 0 else t


def _kv_block_lists(classes: torch.Tensor, tile_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flex's (count, indices) form: per query block, the key blocks of one class first."""
    selected = classes == tile_class
    counts = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.unsqueeze(1).contiguous(), order.unsqueeze(1).contiguous()


def build_block_mask(
    chunks: SequenceChunks,
    seqlen_q: int,
    seqlen_k: int,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    total_q: int | None = None,
    total_k: int | None = None,
    seqused_k: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
) -> BlockMask:
    """BlockMask for (B, H, seqlen_q, seqlen_k), or for the packed (1, H, total) timeline.

    ``total_q`` / ``total_k``: the offsets' last entries when known on the host (None reads them
    from the device, a host sync). ``seqused_k`` (B,), batched only: keys from ``seqused_k[b]``
    on are hidden, and tiles past it never loaded. ``seqused_q`` (B,), batched only: query rows
    from ``seqused_q[b]`` on see no key (mask_mod false), and blocks of them are never visited."""
    device = chunks.chunk_q.device
    n_q_blocks = -(-seqlen_q // block_size)
    n_k_blocks = -(-seqlen_k // block_size)
    rows = n_q_blocks * block_size
    cols = n_k_blocks * block_size
    positions_q = torch.arange(rows, device=device)
    positions_k = torch.arange(cols, device=device)

    if cu_seqlens_q is None:
        batch = chunks.batch
        lengths_q = torch.full((batch,), seqlen_q, device=device)
        # Tiles are classified over all seqlen_k rows, so one that holds the end of the used keys
        # is partial (its mask_mod runs), not full.
        lengths_k = torch.full((batch,), seqlen_k, device=device)
        used_k = lengths_k if seqused_k is None else seqused_k.to(device=device, dtype=torch.int64)
        lo, hi = visible_key_bounds(chunks, positions_q.view(1, -1), used_k)
        q_chunk_ids = chunk_index(positions_q, chunks.chunk_q.view(-1, 1), chunks.q_offset.view(-1, 1))
        k_chunk_ids = chunk_index(positions_k, chunks.chunk_k.view(-1, 1), chunks.k_offset.view(-1, 1))
        q_seq = torch.zeros_like(q_chunk_ids)
        if seqused_q is not None:
            # Unused query rows see no key: an empty range (so a block of them is hidden; one that
            # holds the end of the used rows, classified over all seqlen_q rows, is partial) and
            # a sequence id of their own, as packed padding rows have.
            used_q = positions_q.view(1, -1) < seqused_q.to(device=device, dtype=torch.int64).view(-1, 1)
            lo, hi = torch.where(used_q, lo, 0), torch.where(used_q, hi, 0)
            q_seq = torch.where(used_q, q_seq, -1)
        # Unused keys get a sequence id of their own, as packed padding does.
        k_seq = torch.where(positions_k.view(1, -1) < used_k.view(-1, 1), 0, -2)
    else:
        total_q = int(cu_seqlens_q[-1]) if total_q is None else total_q
        total_k = int(cu_seqlens_k[-1]) if total_k is None else total_k
        lo, hi = packed_visible_key_bounds(chunks, cu_seqlens_q, cu_seqlens_k, total_q)
        lo, hi = _pad_to(lo, rows, 0).view(1, -1), _pad_to(hi, rows, 0).view(1, -1)
        lengths_q = torch.full((1,), total_q, device=device)  # not torch.tensor: a copy to the GPU syncs
        lengths_k = torch.full((1,), seqlen_k, device=device)
        seq_q, local_q = packed_positions(cu_seqlens_q, total_q)
        seq_k, local_k = packed_positions(cu_seqlens_k, total_k)
        q_ids = chunk_index(local_q, chunks.chunk_q[seq_q], chunks.q_offset[seq_q])
        k_ids = chunk_index(local_k, chunks.chunk_k[seq_k], chunks.k_offset[seq_k])
        # Padding rows and keys get distinct sequence ids, so they never see each other.
        q_chunk_ids = _pad_to(q_ids, rows, 0).view(1, -1)
        k_chunk_ids = _pad_to(k_ids, cols, 0).view(1, -1)
        q_seq = _pad_to(seq_q, rows, -1).view(1, -1)
        k_seq = _pad_to(seq_k, cols, -2).view(1, -1)

    classes = classify_tiles_from_bounds(lo, hi, lengths_q, lengths_k, block_size, block_size, n_k_blocks)
    kv_num_blocks, kv_indices = _kv_block_lists(classes, PARTIAL)
    full_num_blocks, full_indices = _kv_block_lists(classes, FULL)
    left_chunks = chunks.left_chunks

    def chunk_mask(b, h, q_idx, kv_idx):
        same_sequence = q_seq[b, q_idx] == k_seq[b, kv_idx]
        return same_sequence & chunk_is_visible(q_chunk_ids[b, q_idx], k_chunk_ids[b, kv_idx], left_chunks)

    return BlockMask.from_kv_blocks(
        kv_num_blocks,
        kv_indices,
        full_num_blocks,
        full_indices,
        BLOCK_SIZE=block_size,
        mask_mod=chunk_mask,
        seq_lengths=(seqlen_q, seqlen_k),
    )


@functools.cache
def _compiled_flex_attention():
    return torch.compile(flex_attention, dynamic=False)


class FlexBackend(AttentionBackend):
    name = "flex"

    def unsupported_reason(self, problem: AttentionProblem, return_lse: bool) -> str | None:
        if problem.device.type == "cpu" and any(t.requires_grad for t in (problem.q, problem.k, problem.v)):
            return "FlexAttention has no backward pass on CPU (inputs require grad)"
        if problem.device.type not in ("cpu", "cuda"):
            return f"FlexAttention does not run on {problem.device.type}"
        if problem.device.type == "cuda" and problem.dtype == torch.float64:
            return "compiled FlexAttention does not take float64"
        return None

    def forward(
        self, problem: AttentionProblem, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Zeroed unused rows: a hidden key of a loaded block still meets P @ V (and dS @ K in the
        # backward) with weight 0, and 0 x NaN is NaN; so does a hidden query row of a loaded
        # block in dK = dS^T Q (and its grad_out row in dV = P^T dO, zeroed at the end).
        q, (k, v) = problem.used_queries(), problem.used_keys_and_values()
        if problem.is_varlen:
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        block_mask = build_block_mask(
            problem.chunks,
            q.shape[1],
            k.shape[1],
            problem.cu_seqlens_q,
            problem.cu_seqlens_k,
            total_q=problem.rows_q,
            total_k=problem.rows_k,
            seqused_k=problem.seqused_k,
            seqused_q=problem.seqused_q,
        )
        arguments = dict(
            block_mask=block_mask,
            scale=problem.softmax_scale,
            enable_gqa=problem.heads_q != problem.heads_k,
            return_aux=AuxRequest(lse=True) if return_lse else None,
        )
        inputs = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if torch.compiler.is_compiling():  # inside a compiled block: the compiler lowers it itself
            result = flex_attention(*inputs, **arguments)
        else:
            attend = _compiled_flex_attention() if problem.device.type == "cuda" else flex_attention
            with warnings.catch_warnings():
                # On CPU the eager (unfused) path is the intent: compiling costs more than it saves
                # at the sizes a CPU runs.
                warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
                result = attend(*inputs, **arguments)
        out, lse = (result[0], result[1].lse) if return_lse else (result, None)
        out = out.transpose(1, 2)
        if problem.is_varlen:
            out, lse = out[0], (None if lse is None else lse[0])
        return problem.zero_unused_query_rows(out), lse
