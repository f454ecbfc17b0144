"""Compile-time tile shapes: what one kernel specialization fixes.

Every kernel runs one producer warpgroup (TMA loads, at ``PRODUCER_REGISTERS`` per thread) and
two or three consumer warpgroups of 64 rows that share the rest of the 64K-register file; a forward
with one consumer warpgroup shares the file with a second resident CTA (``ctas_per_sm``).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.attention.cute.block_info import BlockInfo

PRODUCER_REGISTERS = 24
WARPGROUP_ROWS = 64  # rows of one WGMMA warpgroup tile


class _WarpRoles:
    """One producer warpgroup and ``consumer_warpgroups`` consumers: threads and registers."""

    consumer_warpgroups: int

    @property
    def threads(self) -> int:
        return 128 * (self.consumer_warpgroups + 1)

    @property
    def consumer_registers(self) -> int:
        """Per-thread registers of a consumer warpgroup (one consumer warpgroup: two CTAs share
        an SM's 64K registers)."""
        return {1: 232, 2: 240, 3: 160}[self.consumer_warpgroups]

    @property
    def blocks(self) -> BlockInfo:
        """The chunk rule's tile ranges for these tile sizes."""
        return BlockInfo(tile_m=self.tile_m, tile_n=self.tile_n)


@dataclass(frozen=True)
class ForwardTiles(_WarpRoles):
    """A CTA owns ``tile_m`` query rows and walks their key tiles of ``tile_n`` keys through a
    ring of ``kv_stages`` buffers: the forward and the deterministic dQ kernel."""

    head_dim: int
    tile_n: int = 128  # keys per K/V tile
    rows_per_warpgroup: int = WARPGROUP_ROWS
    consumer_warpgroups: int = 2
    kv_stages: int = 4

    @property
    def tile_m(self) -> int:
        return self.rows_per_warpgroup * self.consumer_warpgroups

    @property
    def ping_pong(self) -> bool:
        """The consumer warpgroups take turns issuing their GEMMs (``warpgroup_order``); a single
        warpgroup has no one to take turns with."""
        return self.consumer_warpgroups > 1

    @property
    def ctas_per_sm(self) -> int:
        """CTAs resident on one SM: two with a single consumer warpgroup, so one CTA's start and
        epilogue overlap the other's GEMMs; otherwise the CTA takes the SM's registers alone."""
        return 2 if self.consumer_warpgroups == 1 else 1

    @property
    def label(self) -> str:
        """The shape in a kernel file name."""
        return f"d{self.head_dim}_wg{self.consumer_warpgroups}_n{self.tile_n}_s{self.kv_stages}"


@dataclass(frozen=True)
class KeyTiles(_WarpRoles):
    """A CTA owns ``tile_n`` keys (``keys_per_warpgroup`` per consumer warpgroup) and walks the
    query tiles of ``tile_m`` rows that see them through a ring of ``q_stages`` Q/dO buffers:
    the dK/dV kernel and the fused backward."""

    head_dim: int
    tile_m: int = 64  # query rows per step: 128 at d64 (S^T, dP^T, dK and dV still fit in registers)
    keys_per_warpgroup: int = WARPGROUP_ROWS
    consumer_warpgroups: int = 2
    q_stages: int = 4
    # FlashAttention's sm90 order within a query tile (fused kernel, 64-row tiles): S^T and dP^T
    # committed apart so P = exp(S^T - LSE) runs while dP^T's GEMM does, dS while dV's does, and
    # dQ staged for the dQ warp while dK's GEMM runs; with it the row statistics and stmatrix
    # dS^T of 128-row tiles.
    split_commits: bool = False

    @property
    def tile_n(self) -> int:
        return self.keys_per_warpgroup * self.consumer_warpgroups

    @property
    def row_statistics(self) -> bool:
        """Each query row's statistics (LSE * log2(e), delta * scale, and in masked tiles its
        visible keys) read or computed once per tile, by one thread (128-row tiles) or two
        (64-row tiles: LSE and the first key; delta and the past-last key), and shared for every
        column that reads them; the keys of other tilings are found per column."""
        return self.tile_m == 2 * WARPGROUP_ROWS or self.split_commits

    @property
    def ping_pong(self) -> bool:
        """The consumer warpgroups take turns issuing S^T and dP^T (``warpgroup_order``). Not in
        the split order: as in FlashAttention's sm90 backward, both issue as soon as their Q/dO
        stage is in (the dS barrier keeps them in step anyway); measured 0.5-1% faster at d128,
        while the 128-row d64 tiling lost 3-4% without the turns."""
        return not self.split_commits

    @property
    def ds_by_stmatrix(self) -> bool:
        """dS^T to shared memory with stmatrix (16-byte rows of 8 queries) instead of 4-byte
        stores."""
        return self.dq_by_rows or self.split_commits

    @property
    def hoisted_ds_store(self) -> bool:
        """With stmatrix dS^T: each thread's destination rows come from one swizzled address made
        once and carried round the loop (one add per tile to the other buffer) and three XORs of
        it (``HoistedStmatrixStore``) instead of ~25 integer instructions of swizzle per tile.
        Fewer loop instructions at both tilings that use stmatrix (-21/-28 per tile at d64,
        -18/-28 at d128: full/masked), no stack, the same WGMMA waits."""
        return self.ds_by_stmatrix

    @property
    def dq_by_rows(self) -> bool:
        """With dQ: a query tile of at least 64 rows per warpgroup splits dQ = dS K by rows (each
        warpgroup 64 rows x the whole head dim: fewer, wider GEMMs, dS read once); a 64-row tile
        can only split it by head-dim columns."""
        return self.tile_m >= WARPGROUP_ROWS * self.consumer_warpgroups

    @property
    def hoisted_dq_staging(self) -> bool:
        """With dQ: the slice goes to its swizzled staging buffer from one swizzled address made
        before the loop and carried round it, the other column groups XORs of it, each store an
        immediate past one (``CarriedSwizzledStore``), instead of 16 addresses swizzled per tile.
        Where the slice is staged after every GEMM of the tile (not ``split_commits``) that
        address math is on the critical path: 4 hoisted bases gained 1-4% at d64 (stop 47), the
        carried address takes the loop from 610 to 594 / 1,072 to 1,062 instructions (full /
        masked). The split order stages while dK's GEMM runs, where it is hidden: at d128 the 4
        bases lost 1-3% and the carried address 0.7-1.7% at 16k (stops 47, 53)."""
        return not self.split_commits

    @property
    def dq_slice(self) -> tuple[int, int]:
        """(rows, columns) of the dQ slice one warpgroup computes and stages per query tile."""
        if self.dq_by_rows:
            return self.tile_m // self.consumer_warpgroups, self.head_dim
        return self.tile_m, self.head_dim // self.consumer_warpgroups

    @property
    def label(self) -> str:
        """The shape in a kernel file name."""
        shape = f"d{self.head_dim}_wg{self.consumer_warpgroups}_keys{self.tile_n}_m{self.tile_m}"
        return f"{shape}_s{self.q_stages}" + ("_split" if self.split_commits else "")
