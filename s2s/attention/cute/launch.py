"""From torch tensors to a launch of the CuTe forward kernel: packed contiguous inputs, the
per-sequence table, the tile shape for the call, and the compiled kernels (one per dtype and tile
shape, kept in memory and on disk)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from s2s.attention.cute.chunk_limits import check_chunk_arithmetic, kernel_left_chunks
from s2s.attention.problem import AttentionProblem

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def unsupported_reason(problem: AttentionProblem) -> str | None:
    """Why this call cannot run on the CuTe kernel (None when it can)."""
    if problem.dtype not in SUPPORTED_DTYPES:
        return f"the CuTe kernel takes float16 or bfloat16, got {problem.dtype}"
    if problem.head_dim not in SUPPORTED_HEAD_DIMS:
        return f"the CuTe kernel supports head dims {SUPPORTED_HEAD_DIMS}, got {problem.head_dim}"
    return device_unsupported_reason(problem.device)


def device_unsupported_reason(device: torch.device) -> str | None:
    """Why the CuTe kernels cannot run on ``device`` at all, whatever the call (None when they can)."""
    if device.type != "cuda":
        return "the CuTe kernel runs on CUDA tensors only"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return f"the CuTe kernel is built for Hopper (sm_90), this GPU is sm_{major}{minor}"
    return None


def sequence_table(problem: AttentionProblem) -> torch.Tensor:
    """(B, columns) int32: one row per sequence, the columns of ``seqlen_info.COLUMNS`` (q start,
    k start, Sq, Sk, chunk_q, chunk_k, q_offset, k_offset), in the order the kernels read them.

    Built on the device without a host sync; extents are checked on the host from the shapes.
    Per-sequence ChunkSpec tensors are int32 by contract, so they fit as they are.
    """
    chunks = problem.chunks
    device = problem.device
    rows = max(problem.q.shape[0] * (1 if problem.is_varlen else problem.q.shape[1]), 1)
    keys = max(problem.k.shape[0] * (1 if problem.is_varlen else problem.k.shape[1]), 1)
    if max(rows, keys) * max(problem.heads_q, 1) * problem.head_dim >= 2**31:
        raise ValueError(
            "the CuTe kernels index elements (rows x heads x head dim) in int32, and this call has "
            "2^31 or more; split the batch into smaller calls"
        )
    for name in ("chunk_q", "chunk_k", "q_offset", "k_offset"):
        value = getattr(problem.spec, name if name != "chunk_k" else "effective_chunk_k")
        if isinstance(value, int) and value >= 2**31:
            raise ValueError(f"ChunkSpec.{name} = {value} does not fit in int32 for the CuTe kernel")
    check_chunk_arithmetic(problem)
    if problem.is_varlen:
        q_start = problem.cu_seqlens_q[:-1]
        k_start = problem.cu_seqlens_k[:-1]
    else:
        batch = problem.batch
        q_start = torch.arange(batch, device=device) * problem.q.shape[1]
        k_start = torch.arange(batch, device=device) * problem.k.shape[1]
    from s2s.attention.cute.seqlen_info import COLUMNS

    columns = {
        "q_start": q_start,
        "k_start": k_start,
        "seqlen_q": problem.seqlens_q,
        "seqlen_k": problem.seqlens_k,
        "chunk_q": chunks.chunk_q,
        "chunk_k": chunks.chunk_k,
        "q_offset": chunks.q_offset,
        "k_offset": chunks.k_offset,
    }
    # one stack (promoting mixed int32 / int64 columns) and one cast: two kernels per call, which a
    # streaming step makes once per attention layer
    return torch.stack([columns[name].to(device=device) for name in COLUMNS], dim=1).to(torch.int32)


def _packed(t: torch.Tensor, varlen: bool) -> torch.Tensor:
    """(B, S, H, D) -> (B*S, H, D) without a copy when possible; packed input as it is."""
    if varlen:
        return t
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2], t.shape[3])


@functools.cache
def _pointer_types():
    """The DSL's pointer constructor and element types, imported once (calls are hot)."""
    import cutlass
    from cutlass.cute import AddressSpace
    from cutlass.cute.runtime import make_ptr

    element = {
        torch.float16: cutlass.Float16,
        torch.bfloat16: cutlass.BFloat16,
        torch.float32: cutlass.Float32,
        torch.int32: cutlass.Int32,
    }
    return make_ptr, element, AddressSpace.gmem


def pointer(t: torch.Tensor):
    """A kernel argument for a contiguous tensor: its device address, typed and 16-byte aligned."""
    make_ptr, element, gmem = _pointer_types()
    address = t.data_ptr()
    if address % 16:
        raise ValueError("the CuTe kernels need 16-byte aligned tensors; pass a fresh .contiguous() copy")
    return make_ptr(element[t.dtype], address, gmem, assumed_align=16)


def compile_kernel(kernel, signature, dtype: torch.dtype, head_dim: int):
    """``cute.compile`` a kernel against placeholders of its declared ``signature``
    (``arguments.KernelSignature``) for one input dtype and head dim."""
    import cuda.bindings.driver as cuda
    import cutlass.cute as cute

    placeholders = signature.placeholders(dtype, head_dim)
    return cute.compile(kernel, *signature.arguments(placeholders, cuda.CUstream(0)))


def specialization_name(kind: str, dtype: torch.dtype, tiles) -> str:
    """The name of one compiled kernel in the disk cache."""
    return f"{kind}_sm90_{str(dtype).removeprefix('torch.')}_{tiles.label}"


# At head dim 64, sequences at least this long use 192-row tiles (3 consumer warpgroups): more
# softmax in flight per tensor-core op. Shorter ones use 64-row tiles, one consumer warpgroup a CTA
# and two CTAs an SM, so one CTA's start and epilogue overlap the other's GEMMs (a CTA there walks
# only a few key tiles): +4.7-8.6% at S = 1k on an H100, docs/benchmarks.md (stop 48). At head dim
# 128 two warpgroups (128 rows) stay faster at every length.
LONG_SEQUENCE_ROWS = 2048


def default_tiles(head_dim: int, max_seqlen_q: int = 0):
    """The tile shape we ship for a call (chosen with scripts/tune_cute_forward.py on an H100)."""
    from s2s.attention.cute.tiles import ForwardTiles

    groups = 2
    if head_dim == 64:
        groups = 3 if max_seqlen_q >= LONG_SEQUENCE_ROWS else 1
    return ForwardTiles(head_dim=head_dim, consumer_warpgroups=groups, kv_stages=4)


@functools.cache
def compiled_forward(dtype: torch.dtype, tiles):
    """The kernel for one (dtype, tile shape): compiled once per process, loaded from the disk
    cache when another process already built it."""
    from s2s.attention.cute.kernel_cache import load_or_build

    return load_or_build(specialization_name("fwd", dtype, tiles), lambda: compile_forward(dtype, tiles))


def compile_forward(dtype: torch.dtype, tiles):
    """Build the kernel for one specialization (no caching: ``compiled_forward`` caches)."""
    from s2s.attention.cute.arguments import FORWARD
    from s2s.attention.cute.forward_sm90 import ChunkAttentionForwardSm90

    return compile_kernel(ChunkAttentionForwardSm90(tiles), FORWARD, dtype, tiles.head_dim)


@dataclass
class PreparedForward:
    """One call, ready to launch: the compiled kernel, its arguments and the output buffers.

    Benchmarks launch it repeatedly; ``forward`` launches it once.
    """

    compiled: object
    arguments: tuple
    out: torch.Tensor  # (total_q, Hq, D)
    lse: torch.Tensor  # (Hq, total_q) float32
    # The arguments are raw pointers: these keep the packed inputs and the table alive; the
    # backward pass reuses them.
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = field(repr=False)
    table: torch.Tensor = field(repr=False)

    def launch(self) -> None:
        self.compiled(*self.arguments)


def prepare(
    problem: AttentionProblem,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    compiled: object | None = None,
    tiles=None,
) -> PreparedForward:
    """Views, per-sequence table and compiled kernel for ``problem``.

    ``out`` ((total_q, Hq, D), q's dtype) and ``lse`` ((Hq, total_q) float32) may be given as
    buffers to write into; tests pass NaN-filled ones to prove every element is written.
    ``compiled`` (built for ``tiles``) replaces the shipped kernel: tuning runs compile other
    tile shapes.

    With ``seqused_q`` no kernel writes the rows past it (the kernel skips their tiles and
    predicates their stores): the buffers are allocated as zeros and -inf (a given buffer gets
    those rows filled), and their values in q are never used (NaN there reaches no output).
    """
    import cuda.bindings.driver as cuda

    from s2s.attention.cute.arguments import FORWARD, attention_sizes

    varlen = problem.is_varlen
    q = _packed(problem.q, varlen).contiguous()
    k = _packed(problem.k, varlen).contiguous()
    v = _packed(problem.v, varlen).contiguous()
    # Rows past seqused_q are written by no kernel: zeros and -inf from the allocation on, not
    # from an extra pass.
    unwritten = problem.seqused_q is not None
    given_out, given_lse = out is not None, lse is not None
    if out is None:
        out = torch.zeros_like(q) if unwritten else torch.empty_like(q)
    if lse is None:
        shape = (q.shape[1], q.shape[0])
        if unwritten:
            lse = torch.full(shape, float("-inf"), dtype=torch.float32, device=q.device)
        else:
            lse = torch.empty(shape, dtype=torch.float32, device=q.device)
    if out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} buffer of shape {tuple(q.shape)}")
    if lse.shape != (q.shape[1], q.shape[0]) or lse.dtype != torch.float32 or not lse.is_contiguous():
        raise ValueError(f"lse must be a contiguous float32 buffer of shape {(q.shape[1], q.shape[0])}")
    if unwritten and (given_out or given_lse):
        unused = ~problem.used_query_rows().reshape(-1)  # (B * Sq,) packed rows past seqused_q
        if given_out:
            out.masked_fill_(unused.view(-1, 1, 1), 0)
        if given_lse:
            lse.masked_fill_(unused.view(1, -1), float("-inf"))
    if problem.rows_q < q.shape[0]:  # rows outside every sequence: no kernel writes them
        out[problem.rows_q :] = 0
        lse[:, problem.rows_q :] = float("-inf")
    table = sequence_table(problem)
    tiles = tiles or default_tiles(problem.head_dim, problem.max_seqlen_q)
    tile_m = tiles.tile_m
    q_tiles = max(1, -(-problem.max_seqlen_q // tile_m))
    left = kernel_left_chunks(problem)
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    sizes = attention_sizes(q, k, table, q_tiles, left, problem.softmax_scale)
    arguments = FORWARD.arguments({"q": q, "k": k, "v": v, "o": out, "lse": lse, **sizes}, stream)
    compiled = compiled or compiled_forward(problem.dtype, tiles)
    return PreparedForward(compiled, arguments, out, lse, inputs=(q, k, v), table=table)


def problem_layout(problem: AttentionProblem, out: torch.Tensor, lse: torch.Tensor):
    """Packed (total, H, D) output and (H, total) LSE in the call's layout: (B, S, H, D) and
    (B, H, S) for a padded batch, unchanged for packed input."""
    if problem.is_varlen:
        return out, lse
    batch, seqlen_q = problem.q.shape[:2]
    out = out.view(batch, seqlen_q, out.shape[1], out.shape[2])
    lse = lse.view(lse.shape[0], batch, seqlen_q).permute(1, 0, 2)
    return out, lse


def forward(
    problem: AttentionProblem, out: torch.Tensor | None = None, lse: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel: output in q's layout and LSE (B, Hq, Sq) or (Hq, total_q) in float32."""
    prepared = prepare(problem, out, lse)
    prepared.launch()
    return problem_layout(problem, prepared.out, prepared.lse)
