"""The kernels' argument lists are declared once (s2s/attention/cute/arguments.py, seqlen_info.py):
each kernel's ``__call__`` takes exactly the declared parameters with matching DSL types, and the
host writes the per-sequence table in the column order the kernels read."""

import inspect

import pytest
import torch

from s2s.attention import ChunkSpec
from s2s.attention.problem import make_problem

pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")


def kernels():
    from s2s.attention.cute import arguments
    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.backward_dq_sm90 import ChunkAttentionBackwardDqSm90
    from s2s.attention.cute.backward_prologue_sm90 import BackwardPrologueSm90
    from s2s.attention.cute.forward_sm90 import ChunkAttentionForwardSm90

    return [
        (ChunkAttentionForwardSm90, arguments.FORWARD),
        (ChunkAttentionBackwardDqSm90, arguments.BACKWARD_DQ),
        (ChunkAttentionBackwardDkDvSm90, arguments.BACKWARD_DKDV),
        (BackwardPrologueSm90, arguments.PROLOGUE),
    ]


@pytest.mark.parametrize("index", range(4))
def test_each_kernel_takes_the_declared_arguments(index):
    from s2s.attention.cute.arguments import FLOAT32

    kernel, signature = kernels()[index]
    parameters = list(inspect.signature(kernel.__call__).parameters.values())[1:]  # after self
    assert tuple(p.name for p in parameters) == signature.names, kernel.__name__
    annotations = {p.name: str(p.annotation) for p in parameters}
    for name, _ in signature.pointers:
        assert annotations[name].endswith("Pointer"), (kernel.__name__, name, annotations[name])
    for name, kind in signature.scalars:
        expected = "Float32" if kind == FLOAT32 else "Int32"
        assert annotations[name].endswith(expected), (kernel.__name__, name, annotations[name])
    assert annotations["stream"].endswith("CUstream")


def test_arguments_by_name_refuse_a_missing_or_unknown_name():
    from s2s.attention.cute.arguments import PROLOGUE

    values = PROLOGUE.placeholders(torch.bfloat16, 64)
    del values["delta"]
    with pytest.raises(TypeError, match=r"missing \['delta'\], unexpected \['dq'\]"):
        PROLOGUE.arguments({**values, "dq": values["o"]}, stream=None)


def test_the_sequence_table_has_the_columns_the_kernels_read():
    from s2s.attention.cute.launch import sequence_table
    from s2s.attention.cute.seqlen_info import COLUMNS

    seqlens_q, seqlens_k = [5, 9, 3], [7, 2, 11]
    cu_q = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 9, 20], dtype=torch.int32)
    q = torch.zeros(sum(seqlens_q), 2, 64, dtype=torch.bfloat16)
    k = torch.zeros(sum(seqlens_k), 1, 64, dtype=torch.bfloat16)
    spec = ChunkSpec(
        torch.tensor([4, 8, 16], dtype=torch.int32),
        chunk_k=torch.tensor([2, 6, 32], dtype=torch.int32),
        q_offset=torch.tensor([0, 100, 7], dtype=torch.int32),
        k_offset=torch.tensor([3, 0, 50], dtype=torch.int32),
    )
    table = sequence_table(make_problem(q, k, k, spec, cu_q, cu_k))
    expected = {
        "q_start": [0, 5, 14],
        "k_start": [0, 7, 9],
        "seqlen_q": seqlens_q,
        "seqlen_k": seqlens_k,
        "chunk_q": [4, 8, 16],
        "chunk_k": [2, 6, 32],
        "q_offset": [0, 100, 7],
        "k_offset": [3, 0, 50],
    }
    assert set(COLUMNS) == set(expected)
    for column, name in enumerate(COLUMNS):
        assert table[:, column].tolist() == expected[name], name
