"""One attention call, checked and described: shapes, lengths, heads and the resolved mask.

Every backend receives an ``AttentionProblem``, so input checking happens once, here, with
errors that say what was wrong and how to fix it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from s2s.attention.spec import ChunkSpec, SequenceChunks

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionProblem:
    """Inputs of one call in their original layout, plus what every backend needs to know.

    Batched layout: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D). Packed layout: q (total_q, Hq, D),
    k/v (total_k, Hk, D), with ``cu_seqlens_q`` / ``cu_seqlens_k`` marking the sequences.
    With ``seqused_k`` (batched only) sequence b uses only its first ``seqused_k[b]`` keys; the
    rest of the Sk rows are storage (a preallocated KV cache) and may hold anything, NaN too.
    With ``seqused_q`` (batched only) sequence b uses only its first ``seqused_q[b]`` query rows;
    the rest are padding: never attended, output zero, LSE -inf, zero gradient.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    spec: ChunkSpec
    chunks: SequenceChunks
    seqlens_q: torch.Tensor  # (B,) int64, on the data's device
    seqlens_k: torch.Tensor
    cu_seqlens_q: torch.Tensor | None
    cu_seqlens_k: torch.Tensor | None
    softmax_scale: float
    # Host-side facts of the lengths, read once while checking them (reading them later from
    # the device would stall the host on every call):
    max_seqlen_q: int  # the longest sequence
    max_seqlen_k: int
    rows_q: int  # rows inside some sequence (a packed tensor may hold more after them)
    rows_k: int
    offsets_q: tuple[int, ...] | None  # cu_seqlens_q on the host (None when not packed)
    offsets_k: tuple[int, ...] | None
    # (B,) int32 used key lengths of the batched layout (then seqlens_k is the same, as int64);
    # None when every key row is used. Never read on the host here.
    seqused_k: torch.Tensor | None = None
    # (B,) int32 used query lengths of the batched layout (then seqlens_q is the same, as int64);
    # None when every query row is used. max_seqlen_q and rows_q stay the shapes' (upper bounds).
    seqused_q: torch.Tensor | None = None

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def batch(self) -> int:
        return self.chunks.batch

    @property
    def heads_q(self) -> int:
        return self.q.shape[-2]

    @property
    def heads_k(self) -> int:
        return self.k.shape[-2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    def used_keys_and_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k and v with every row past its sequence's ``seqused_k`` set to zero (k and v as they
        are without ``seqused_k``). Masking the scores is not enough for dense math: a hidden key
        still enters P @ V (and dS @ K) with weight 0, and 0 x NaN is NaN. ``torch.where``, not a
        product, so NaN storage rows become exact zeros; it costs one copy of K and V."""
        if self.seqused_k is None:
            return self.k, self.v
        used = torch.arange(self.k.shape[1], device=self.device).view(1, -1) < self.seqused_k.view(-1, 1)
        used = used.view(*used.shape, 1, 1)
        return torch.where(used, self.k, 0), torch.where(used, self.v, 0)

    def used_query_rows(self) -> torch.Tensor | None:
        """(B, Sq, 1, 1) bool, True for the rows before their sequence's ``seqused_q``; None
        without ``seqused_q`` (every row is used)."""
        if self.seqused_q is None:
            return None
        used = torch.arange(self.q.shape[1], device=self.device).view(1, -1) < self.seqused_q.view(-1, 1)
        return used.view(*used.shape, 1, 1)

    def used_queries(self) -> torch.Tensor:
        """q with every row past its sequence's ``seqused_q`` set to zero (q as it is without
        ``seqused_q``). Hiding a row's scores is not enough for dense math: its dS (zero) still
        meets Q in dK = dS^T Q, and 0 x NaN is NaN. ``torch.where``, so padding rows give exact
        zeros forward and take exact zeros as their gradient; it costs one copy of Q."""
        used = self.used_query_rows()
        return self.q if used is None else torch.where(used, self.q, 0)

    def zero_unused_query_rows(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` (B, Sq, Hq, D) with the rows past ``seqused_q`` zero, by ``torch.where``: its
        backward hands the attention exact zeros there whatever grad_out holds (NaN included),
        where a hidden row's P = 0 would otherwise meet them in dV = P^T dO."""
        used = self.used_query_rows()
        return out if used is None else torch.where(used, out, 0)


def _check_cu_seqlens(
    name: str, cu: torch.Tensor, total: int, device: torch.device, host: Sequence[int] | None
) -> tuple[int, ...]:
    """The checked offsets, on the host: ``host`` when given (the device tensor is then not read,
    which would stall the host until the device catches up), else read from ``cu``."""
    _check_cu_seqlens_tensor(name, cu, device)
    if host is None:
        values = tuple(cu.tolist())
    else:
        values = _host_offsets(f"{name}_host", host)
        if len(values) != cu.shape[0]:
            raise ValueError(
                f"{name}_host has {len(values)} entries but {name} has {cu.shape[0]}; "
                f"give the same offsets on the host"
            )
        name = f"{name}_host"
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name} must be non-decreasing (cumulative lengths), got {list(values)}")
    if values[-1] > total:
        raise ValueError(
            f"{name} ends at {values[-1]} but the packed tensor holds only {total} rows; "
            f"the lengths go beyond the tensor"
        )
    return values


def _check_cu_seqlens_tensor(name: str, cu: torch.Tensor, device: torch.device) -> None:
    """Type, shape and device of an offsets tensor (its values are checked on the host, if at all)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 (as flash-attention), got {cu.dtype}; use .int()")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(
            f"{name} must be 1-D with batch + 1 entries (0, len0, len0 + len1, ...), "
            f"got shape {tuple(cu.shape)}"
        )
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but the inputs are on {device}; move it there")


def _check_max_seqlens(max_seqlen_q, max_seqlen_k, varlen: bool, host_q, host_k) -> bool:
    """Whether the call gives trusted packed offsets: both bounds, packed inputs, no host offsets."""
    if max_seqlen_q is None and max_seqlen_k is None:
        return False
    if max_seqlen_q is None or max_seqlen_k is None:
        raise ValueError("max_seqlen_q and max_seqlen_k go together: give both bounds or neither")
    if not varlen:
        raise ValueError(
            "max_seqlen_q / max_seqlen_k bound packed sequences: pass them with cu_seqlens_q and cu_seqlens_k"
        )
    if host_q is not None or host_k is not None:
        raise ValueError(
            "give either the host offsets (cu_seqlens_*_host, checked) or the bounds (max_seqlen_*, "
            "trusted), not both"
        )
    for name, bound in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ValueError(
                f"{name} must be a non-negative int (a bound on every sequence's length), got {bound!r}"
            )
    return True


def _check_seqused_q_or_k(name: str, used: torch.Tensor, batch: int, device: torch.device) -> None:
    """``seqused_q`` or ``seqused_k`` (``name``): type, shape and device only. The values stay on
    the device (reading them would stall the host every call). Their contract, as
    flash-attention's: 0 <= seqused_q[b] <= Sq, 0 <= seqused_k[b] <= Sk."""
    rows = "query" if name == "seqused_q" else "key"
    if not isinstance(used, torch.Tensor):
        raise TypeError(f"{name} must be an int32 tensor, got {type(used).__name__}")
    if used.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 (as flash-attention), got {used.dtype}; use .int()")
    if tuple(used.shape) != (batch,):
        raise ValueError(
            f"{name} must have shape (B,) = ({batch},), one used {rows} length per sequence, "
            f"got shape {tuple(used.shape)}"
        )
    if used.device != device:
        raise ValueError(f"{name} is on {used.device} but the inputs are on {device}; move it there")


def _host_offsets(name: str, host: Sequence[int]) -> tuple[int, ...]:
    """A list or tuple of Python ints, as a tuple."""
    ints = isinstance(host, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in host
    )
    if not ints:
        raise TypeError(f"{name} must be a list or tuple of ints (the offsets on the host), got {host!r}")
    return tuple(host)


def make_problem(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: ChunkSpec,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    *,
    cu_seqlens_q_host: Sequence[int] | None = None,
    cu_seqlens_k_host: Sequence[int] | None = None,
    seqused_k: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
) -> AttentionProblem:
    """Check the inputs of ``chunk_attention`` and resolve the spec for their batch.

    ``cu_seqlens_q_host`` / ``cu_seqlens_k_host``: the same offsets as the cu_seqlens tensors, as
    host ints; given, they are checked instead of reading the tensors back from the device.
    ``max_seqlen_q`` / ``max_seqlen_k`` instead (flash-attention's): bounds on the sequences'
    lengths, and the offsets are trusted, not read (inside a CUDA graph they cannot be).
    ``seqused_k`` / ``seqused_q``: (B,) int32 used key / query lengths of the batched layout
    (flash-attention's).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(spec, ChunkSpec):
        raise TypeError(f"spec must be a ChunkSpec, got {type(spec).__name__}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; use float16, bfloat16, float32 or float64")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}; move them")

    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("packed inputs need both cu_seqlens_q and cu_seqlens_k")
    if varlen and seqused_k is not None:
        raise ValueError(
            "seqused_k limits the keys of the batched layout (B, Sk, H, D); packed inputs give each "
            "sequence's keys with cu_seqlens_k: leave seqused_k out"
        )
    if varlen and seqused_q is not None:
        raise ValueError(
            "seqused_q limits the query rows of the batched layout (B, Sq, H, D); packed inputs give "
            "each sequence's queries with cu_seqlens_q: leave seqused_q out"
        )
    if not varlen and (cu_seqlens_q_host is not None or cu_seqlens_k_host is not None):
        raise ValueError(
            "cu_seqlens_q_host / cu_seqlens_k_host describe packed inputs: pass them with "
            "cu_seqlens_q and cu_seqlens_k"
        )
    rank = 3 if varlen else 4
    layout = "(total, H, D) with cu_seqlens" if varlen else "(B, S, H, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(
                f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}"
                + ("" if varlen else "; for packed sequences pass cu_seqlens_q and cu_seqlens_k")
            )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head dim, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[-1] == 0:
        raise ValueError("head dim must be positive")
    heads_q, heads_k = q.shape[-2], k.shape[-2]
    if heads_k == 0 or heads_q % heads_k != 0:
        raise ValueError(
            f"query heads ({heads_q}) must be a multiple of key/value heads ({heads_k}) for GQA/MQA"
        )

    trusted = _check_max_seqlens(max_seqlen_q, max_seqlen_k, varlen, cu_seqlens_q_host, cu_seqlens_k_host)
    if varlen:
        if trusted:  # bounds given: the offsets stay on the device, every row inside a sequence
            _check_cu_seqlens_tensor("cu_seqlens_q", cu_seqlens_q, q.device)
            _check_cu_seqlens_tensor("cu_seqlens_k", cu_seqlens_k, q.device)
            offsets_q = offsets_k = None
            rows_q, rows_k = q.shape[0], k.shape[0]
        else:
            host_q, host_k = cu_seqlens_q_host, cu_seqlens_k_host
            offsets_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device, host_q)
            offsets_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device, host_k)
            max_seqlen_q = max(b - a for a, b in itertools.pairwise(offsets_q))
            max_seqlen_k = max(b - a for a, b in itertools.pairwise(offsets_k))
            rows_q, rows_k = offsets_q[-1], offsets_k[-1]
        if cu_seqlens_q.shape != cu_seqlens_k.shape:
            raise ValueError(
                f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, "
                f"got {cu_seqlens_q.shape[0] - 1} and {cu_seqlens_k.shape[0] - 1}"
            )
        batch = cu_seqlens_q.shape[0] - 1
        seqlens_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        seqlens_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    else:
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"q and k must share the batch size, got {q.shape[0]} and {k.shape[0]}")
        batch = q.shape[0]
        if seqused_q is None:
            seqlens_q = torch.full((batch,), q.shape[1], dtype=torch.int64, device=q.device)
        else:
            _check_seqused_q_or_k("seqused_q", seqused_q, batch, q.device)
            seqlens_q = seqused_q.long()
        if seqused_k is None:
            seqlens_k = torch.full((batch,), k.shape[1], dtype=torch.int64, device=q.device)
        else:
            _check_seqused_q_or_k("seqused_k", seqused_k, batch, q.device)
            seqlens_k = seqused_k.long()
        max_seqlen_q, max_seqlen_k = q.shape[1], k.shape[1]
        rows_q, rows_k = batch * q.shape[1], batch * k.shape[1]
        offsets_q = offsets_k = None

    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    return AttentionProblem(
        q=q,
        k=k,
        v=v,
        spec=spec,
        chunks=spec.resolve(batch, q.device),
        seqlens_q=seqlens_q,
        seqlens_k=seqlens_k,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        softmax_scale=scale,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        rows_q=rows_q,
        rows_k=rows_k,
        offsets_q=offsets_q,
        offsets_k=offsets_k,
        seqused_k=seqused_k,
        seqused_q=seqused_q,
    )
