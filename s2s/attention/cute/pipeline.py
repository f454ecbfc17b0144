"""The shared-memory rings between the TMA producer warp and the consumer warpgroups, and the
consumers' ping-pong order: built the same way by every kernel."""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline

WARPS_PER_WARPGROUP = 4


@cute.jit
def tma_pipeline(barriers: cute.Pointer, stages: int, consumer_warps: int, tx_bytes: int):
    """A ring of ``stages`` shared-memory buffers filled by TMA from one producer thread and
    released by ``consumer_warps`` warps."""
    return pipeline.PipelineTmaAsync.create(
        barrier_storage=barriers,
        num_stages=stages,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, consumer_warps),
        tx_count=tx_bytes,
        defer_sync=True,
    )


@cute.jit
def warpgroup_order(barriers: cute.Pointer, warpgroups: int, wg: cutlass.Int32):
    """Ping-pong: the consumer warpgroups take turns issuing their GEMMs, so one's softmax
    overlaps the other's tensor-core work. ``wg`` counts the producer warpgroup as 0."""
    return pipeline.PipelineOrder.create(
        barrier_storage=barriers,
        depth=1,
        length=warpgroups,
        group_id=wg - 1,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 128),
        defer_sync=True,
    )


def loaded_once(stages: int, stage: cutlass.Int32) -> pipeline.PipelineState:
    """The state of a ring whose ``stages`` buffers are each filled once: consumer warpgroup
    ``stage`` waits on its own buffer (Q in the forward and dQ kernels, K/V in dK/dV)."""
    return pipeline.PipelineState(stages, stage, stage, cutlass.Int32(0))


@cute.jit
def query_side_pipelines(
    storage, warpgroups: int, kv_stages: int, q_bytes: int, kv_bytes: int, wg: cutlass.Int32
):
    """For a CTA that owns query rows (forward, dQ): the Q buffers in ``storage.q_barriers``
    (one per consumer warpgroup, loaded once), the K/V ring in ``storage.kv_barriers`` and the
    warpgroups' ping-pong order in ``storage.order_barriers``."""
    q_pipe = tma_pipeline(storage.q_barriers.data_ptr(), warpgroups, WARPS_PER_WARPGROUP, q_bytes)
    kv_pipe = tma_pipeline(
        storage.kv_barriers.data_ptr(), kv_stages, WARPS_PER_WARPGROUP * warpgroups, kv_bytes
    )
    return q_pipe, kv_pipe, warpgroup_order(storage.order_barriers.data_ptr(), warpgroups, wg)
