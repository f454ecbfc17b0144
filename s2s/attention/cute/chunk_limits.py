"""The kernels do the chunk rule's integer arithmetic in int32: which calls fit, and when a history
limit is the same as none.

Chunk indices and boundaries of positions (``mask.key_bounds``, ``block_info``) are products such
as (query chunk + 1) x chunk_k or (key chunk + left_chunks + 1) x chunk_q. With extreme chunk
sizes, offsets or history limits they pass 2^31 and would wrap into a wrong mask, so the host
checks them before a launch, from host values only (a spec made from device values alone,
``ChunkSpec.from_resolved``, is not checked: its values are never read on the host). A history
limit that reaches past every query's first chunk masks nothing and goes to the kernels as
unlimited, so such a limit (2^31 - 1, say) always fits. Each check first tries the batch's
extremes (smallest chunks, largest offsets), which settle it for every sequence at once in the
common case; only an undecided batch is walked sequence by sequence.
"""

from __future__ import annotations

from s2s.attention.problem import AttentionProblem
from s2s.attention.spec import HostChunks

INT32_LIMIT = 2**31
TILE_SLACK = 128  # a tile reaches at most one tile past a sequence's last row or key


def host_chunks(problem: AttentionProblem) -> HostChunks | None:
    """The call's chunk values on the host, or None when the spec has only device values."""
    try:
        return problem.spec.resolve_host(problem.batch, problem.device)
    except ValueError:
        return None


def chunk_count(extent: int, chunk: int, offset: int) -> int:
    """How many chunk indices positions [offset, offset + extent + TILE_SLACK) span from 0."""
    return (extent + TILE_SLACK + offset - 1) // chunk + 1


def limit_masks_nothing(left_chunks: int, max_rows: int, chunks: HostChunks) -> bool:
    """Whether every query of every sequence sees back to key 0 under ``left_chunks`` (the limit
    reaches past its own chunk index): then it is the same mask as no limit."""
    if left_chunks < chunk_count(max_rows, max(chunks.chunk_q), min(chunks.q_offset)):
        return False  # not even for the sequence with the fewest chunks
    if left_chunks >= chunk_count(max_rows, min(chunks.chunk_q), max(chunks.q_offset)):
        return True  # for the most chunks any sequence can have
    pairs = zip(chunks.chunk_q, chunks.q_offset, strict=True)
    return all(left_chunks >= chunk_count(max_rows, cq, qoff) for cq, qoff in pairs)


def kernel_left_chunks(problem: AttentionProblem, chunks: HostChunks | None = None) -> int:
    """``left_chunks`` as the kernels take it: -1 for unlimited history, also for a limit that
    masks nothing (``limit_masks_nothing``), else the limit. ``chunks``: the call's host values
    when the caller has them already (else read here)."""
    left = problem.chunks.left_chunks
    if left is None:
        return -1
    if chunks is None:
        chunks = host_chunks(problem)
    if chunks is not None and limit_masks_nothing(left, problem.max_seqlen_q, chunks):
        return -1
    return left


def _largest_product(
    extents: tuple[int, int, int, int], counts: tuple[int, int, int, int], left: int
) -> tuple:
    """(value, what) of the largest of the kernels' chunk products for one sequence: ``counts`` =
    (chunk_q to count chunks with, chunk_q to multiply by, the same two for chunk_k)."""
    max_rows, max_keys, q_offset, k_offset = extents
    count_q, chunk_q, count_k, chunk_k = counts
    q_chunks = chunk_count(max_rows, count_q, q_offset)
    k_chunks = chunk_count(max_keys, count_k, k_offset)
    products = [
        (
            2 * (max_rows + TILE_SLACK + q_offset) + 3,
            "twice the query positions (rows + q_offset)",
        ),
        (max_keys + TILE_SLACK + k_offset, "key positions (keys + k_offset)"),
        (q_chunks * chunk_k, "(query chunk + 1) x chunk_k"),
        (k_chunks * chunk_q, "key chunk x chunk_q"),
    ]
    if left >= 0:
        products.append((max(left, q_chunks) * chunk_k, "max(left_chunks, query chunk) x chunk_k"))
        products.append(((k_chunks + left + 1) * chunk_q, "(key chunk + left_chunks + 1) x chunk_q"))
    return max(products)


def chunk_arithmetic_overflow(
    max_rows: int, max_keys: int, chunks: HostChunks, left_chunks: int
) -> str | None:
    """The largest of the kernels' chunk products that reaches 2^31 for some sequence, described,
    or None when every one fits. ``left_chunks`` as the kernels get it (-1: unlimited)."""
    bound = _largest_product(
        (max_rows, max_keys, max(chunks.q_offset), max(chunks.k_offset)),
        (min(chunks.chunk_q), max(chunks.chunk_q), min(chunks.chunk_k), max(chunks.chunk_k)),
        left_chunks,
    )
    if bound[0] < INT32_LIMIT:
        return None
    values = zip(chunks.chunk_q, chunks.chunk_k, chunks.q_offset, chunks.k_offset, strict=True)
    for cq, ck, qoff, koff in values:
        value, what = _largest_product((max_rows, max_keys, qoff, koff), (cq, cq, ck, ck), left_chunks)
        if value >= INT32_LIMIT:
            return (
                f"{what} reaches {value} for a sequence with chunk_q={cq}, chunk_k={ck}, "
                f"q_offset={qoff}, k_offset={koff}, left_chunks={left_chunks}"
            )
    return None


def check_chunk_arithmetic(problem: AttentionProblem) -> None:
    """Refuse a call whose chunk rule the kernels' int32 arithmetic cannot compute."""
    chunks = host_chunks(problem)
    if chunks is None:
        return
    reason = chunk_arithmetic_overflow(
        problem.max_seqlen_q, problem.max_seqlen_k, chunks, kernel_left_chunks(problem, chunks)
    )
    if reason:
        raise ValueError(
            f"the CuTe kernels compute the chunk rule in int32, and {reason}; use smaller chunk "
            f"sizes, offsets or history limit (left_chunks=None for unlimited history), or another "
            f"backend (backend='flex')"
        )
