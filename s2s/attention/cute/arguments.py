"""The argument list of every CuTe kernel's ``__call__``, declared once.

The host (``launch``, ``backward``) builds a call's arguments and a compile's placeholders from
these declarations by name; each kernel's ``__call__`` spells the same parameters with DSL
annotations (the DSL exports a C function from them, so they cannot be generated), and
tests/attention/test_cute_arguments.py checks that the two agree. A call is positional and typed:
raw device pointers, then int32/float32 scalars, then the stream, which keeps its host cost to a
few microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from s2s.attention.cute.seqlen_info import COLUMNS

# Element types of a pointer: the call's input dtype, or fixed.
INPUT, FLOAT32, INT32 = "input", "float32", "int32"

# What every attention kernel takes after its tensors: the per-sequence table and the sizes.
TABLE = (("seq", INT32),)
SIZES = (
    ("total_q", INT32),
    ("total_k", INT32),
    ("heads_q", INT32),
    ("heads_k", INT32),
    ("batch", INT32),
    ("grid_tiles", INT32),  # grid tiles: query tiles (forward, dQ) or key tiles (dK/dV, fused)
    ("left_chunks", INT32),  # -1: unlimited history
    ("softmax_scale", FLOAT32),
)
# The backward kernels' inputs: the dQ kernel reads the LSE and delta as the forward and the
# prologue wrote them; the dK/dV kernels read the prologue's per-row statistics instead.
TENSOR_INPUTS = (("q", INPUT), ("k", INPUT), ("v", INPUT), ("do", INPUT))
GRADIENT_INPUTS = (*TENSOR_INPUTS, ("lse", FLOAT32), ("delta", FLOAT32))


@dataclass(frozen=True)
class KernelSignature:
    """Pointers (name, element type) and scalars (name, int32/float32), then the stream."""

    pointers: tuple[tuple[str, str], ...]
    scalars: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (*(n for n, _ in self.pointers), *(n for n, _ in self.scalars), "stream")

    def arguments(self, values: Mapping[str, object], stream) -> tuple:
        """The positional arguments of a call from tensors and scalars given by name."""
        import cutlass

        from s2s.attention.cute.launch import pointer

        missing = set(self.names) - {"stream"} - set(values)
        extra = set(values) - set(self.names)
        if missing or extra:
            raise TypeError(f"kernel arguments: missing {sorted(missing)}, unexpected {sorted(extra)}")
        scalar = {INT32: cutlass.Int32, FLOAT32: cutlass.Float32}
        return (
            *(pointer(values[name]) for name, _ in self.pointers),
            *(scalar[kind](values[name]) for name, kind in self.scalars),
            stream,
        )

    def placeholders(self, dtype: torch.dtype, head_dim: int) -> dict[str, object]:
        """Host tensors and sizes to compile against: only the pointers' element types and the
        scalars' types reach the compiled kernel."""
        rows, heads = 256, 2
        element = {INPUT: dtype, FLOAT32: torch.float32, INT32: torch.int32}
        values: dict[str, object] = {
            name: torch.empty(rows, heads, head_dim, dtype=element[kind]) for name, kind in self.pointers
        }
        if "seq" in values:
            values["seq"] = torch.zeros(1, len(COLUMNS), dtype=torch.int32)
        sizes = {"total_q": rows, "total_k": rows, "heads_q": heads, "heads_k": heads, "batch": 1}
        sizes |= {"grid_tiles": 1, "left_chunks": -1, "softmax_scale": 1.0}
        values |= {name: sizes[name] for name, _ in self.scalars}
        return values


FORWARD = KernelSignature(
    pointers=(("q", INPUT), ("k", INPUT), ("v", INPUT), ("o", INPUT), ("lse", FLOAT32), *TABLE),
    scalars=SIZES,
)
BACKWARD_DQ = KernelSignature(pointers=(*GRADIENT_INPUTS, ("dq", INPUT), *TABLE), scalars=SIZES)
# The dK/dV kernel and the fused backward; only the fused one reads dq_accum.
BACKWARD_DKDV = KernelSignature(
    pointers=(
        *TENSOR_INPUTS,
        ("row_stats", FLOAT32),
        ("dq_accum", FLOAT32),
        ("dk", INPUT),
        ("dv", INPUT),
        *TABLE,
    ),
    scalars=SIZES,
)
PROLOGUE = KernelSignature(
    pointers=(
        ("o", INPUT),
        ("do", INPUT),
        ("lse", FLOAT32),
        ("delta", FLOAT32),
        ("row_stats", FLOAT32),
        ("dq_accum", FLOAT32),
        *TABLE,
    ),
    scalars=(("total_q", INT32), ("heads_q", INT32), ("batch", INT32), ("softmax_scale", FLOAT32)),
)


def attention_sizes(
    q: torch.Tensor, k: torch.Tensor, table: torch.Tensor, tiles: int, left_chunks: int, scale: float
) -> dict[str, object]:
    """The table and ``SIZES`` of a call on packed (total, H, D) q and k."""
    return {
        "seq": table,
        "total_q": q.shape[0],
        "total_k": k.shape[0],
        "heads_q": q.shape[1],
        "heads_k": k.shape[1],
        "batch": table.shape[0],
        "grid_tiles": tiles,
        "left_chunks": left_chunks,
        "softmax_scale": scale,
    }
