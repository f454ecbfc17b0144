"""chunk_attention: the single entry point. It checks the call, picks a backend, runs it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from s2s.attention.backends import BACKENDS, AttentionBackend
from s2s.attention.problem import AttentionProblem, make_problem
from s2s.attention.spec import ChunkSpec

# Below this many query rows a dense masked SDPA call beats building a block mask.
FLEX_MIN_QUERY_ROWS = 128


def _auto_order(problem: AttentionProblem) -> list[str]:
    """Fastest first: our CuTe kernel on Hopper, flex for long sequences on GPU, SDPA otherwise,
    the reference last. Backends that cannot run the call are skipped."""
    if problem.device.type == "cuda" and problem.max_seqlen_q >= FLEX_MIN_QUERY_ROWS:
        return ["cute", "flex", "sdpa", "reference"]
    if problem.device.type == "cuda":
        return ["cute", "sdpa", "flex", "reference"]
    return ["sdpa", "flex", "reference"]


def select_backend(problem: AttentionProblem, backend: str, return_lse: bool) -> AttentionBackend:
    """The named backend if it can run the call, else an error naming those that can."""
    if backend == "auto":
        for name in _auto_order(problem):
            if BACKENDS[name].unsupported_reason(problem, return_lse) is None:
                return BACKENDS[name]
    if backend not in BACKENDS:
        choices = ", ".join(["auto", *BACKENDS])
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {choices}")
    reason = BACKENDS[backend].unsupported_reason(problem, return_lse)
    if reason is None:
        return BACKENDS[backend]
    able = [name for name, b in BACKENDS.items() if b.unsupported_reason(problem, return_lse) is None]
    raise NotImplementedError(
        f"backend {backend!r} cannot run this call: {reason}. "
        f"Backends that can: {', '.join(able)} (or backend='auto')."
    )


def _empty_result(problem: AttentionProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """No keys or no queries: zeros and LSE -inf, still connected to the inputs' graph (q with
    its rows past ``seqused_q`` zeroed: 0 x NaN would be NaN there)."""
    out = problem.used_queries() * 0 + (problem.v.sum() * 0)
    lse_shape = (
        (problem.heads_q, problem.q.shape[0])
        if problem.is_varlen
        else (problem.q.shape[0], problem.heads_q, problem.q.shape[1])
    )
    lse_dtype = torch.float64 if problem.dtype == torch.float64 else torch.float32
    lse = torch.full(lse_shape, float("-inf"), dtype=lse_dtype, device=problem.device)
    return out, lse


def chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: ChunkSpec,
    *,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    cu_seqlens_q_host: Sequence[int] | None = None,
    cu_seqlens_k_host: Sequence[int] | None = None,
    seqused_k: torch.Tensor | None = None,
    seqused_q: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    backend: str = "auto",
    softmax_scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunk-causal attention in flash-attention's layout; differentiable.

    q (B, Sq, Hq, D) and k, v (B, Sk, Hk, D), or packed q (total_q, Hq, D) and k, v
    (total_k, Hk, D) with int32 ``cu_seqlens_q`` / ``cu_seqlens_k``. Hk must divide Hq.
    Returns the output in q's layout and, with ``return_lse``, the natural-log LSE of the scaled
    scores: (B, Hq, Sq), or (Hq, total_q) when packed. Queries that see no key get zeros and -inf.

    ``cu_seqlens_q_host`` / ``cu_seqlens_k_host`` (optional, as flash-attention's ``max_seqlen_q``)
    are the same offsets as host ints: given, nothing reads the cu_seqlens tensors back from the
    device, which would stall the host until the device catches up, once per call. Or
    ``max_seqlen_q`` / ``max_seqlen_k`` (flash-attention's): bounds on every sequence's length,
    and the offsets are trusted, never read on the host (a CUDA graph replays new offsets in
    them); their contract: non-decreasing from 0, ending at total_q / total_k (every row inside
    a sequence), no sequence longer than its bound. The reference backend then runs one dense
    call under the block-diagonal mask.

    ``seqused_k`` (B,) int32 on q's device, batched layout only (flash-attention's): sequence b
    uses only its first ``seqused_k[b]`` of the Sk key rows, the rest never reach the output (NaN
    there included), and the chunk rule applies to the used keys. A KV cache preallocated per
    stream is attended in place, without packing. Only the reference backend reads the lengths
    on the host (to check 0 <= seqused_k[b] <= Sk); the others trust them, as flash-attention.

    ``seqused_q`` (B,) int32 on q's device, batched layout only (flash-attention's): sequence b
    uses only its first ``seqused_q[b]`` of the Sq query rows, so a padded batch runs unpacked
    without computing its padding rows. Rows at or past ``seqused_q[b]`` are never attended: their
    output is exactly zero, their LSE -inf, and they get zero gradient (dq rows zero; nothing
    added to dk or dv). The chunk rule is unchanged (top-left aligned, offsets from the spec).
    The forward never uses those rows' values (NaN there reaches no output). In the backward the
    reference, sdpa and flex backends take anything there, NaN included, in q and grad_out; the
    CuTe backend (as flash-attention's) needs q and grad_out FINITE in those rows (any
    activations; not values so large that their scores overflow float32): its kernels read whole
    tiles and multiply those rows by a zero probability. It may be given with ``seqused_k``. Only
    the reference backend reads it on the host (to check 0 <= seqused_q[b] <= Sq); the others
    trust it.
    """
    _check_softmax_scale(softmax_scale)
    problem = make_problem(
        q,
        k,
        v,
        spec,
        cu_seqlens_q,
        cu_seqlens_k,
        softmax_scale,
        cu_seqlens_q_host=cu_seqlens_q_host,
        cu_seqlens_k_host=cu_seqlens_k_host,
        seqused_k=seqused_k,
        seqused_q=seqused_q,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )
    chosen = select_backend(problem, backend, return_lse)
    if q.numel() == 0 or k.numel() == 0:
        out, lse = _empty_result(problem)
    else:
        out, lse = chosen.forward(problem, return_lse)
    return (out, lse) if return_lse else out


def _check_softmax_scale(scale) -> None:
    """A NaN or infinite scale turns every output row into NaN: refuse it by name."""
    if scale is None:
        return
    number = isinstance(scale, numbers.Real) and not isinstance(scale, bool)
    if not (number or (isinstance(scale, torch.Tensor) and scale.numel() == 1)):
        raise TypeError(
            f"softmax_scale must be a number (or None for 1/sqrt(head_dim)), got {type(scale).__name__}"
        )
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(
            f"softmax_scale must be finite, got {value}; pass None for the usual 1/sqrt(head_dim) "
            "or a finite multiplier of the scores"
        )
