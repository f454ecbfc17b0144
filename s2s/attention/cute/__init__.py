"""Our Hopper attention kernels, written in the CuTe DSL (nvidia-cutlass-dsl).

Kernels: ``forward_sm90``, ``backward_dq_sm90``, ``backward_dkdv_sm90`` (also the fused
backward), ``backward_prologue_sm90``. Each is its own class; what they share lives by concern:
``seqlen_info`` (a sequence's table row), ``mask`` (the chunk rule per row), ``block_info`` (the
rule on tiles), ``softmax`` (the forward's online softmax), ``named_barrier``, ``pipeline``,
``tile_scheduler``, ``tiles`` (compile-time shapes), ``views``, ``fragments`` and ``epilogue``.
``arguments`` declares every kernel's argument list; ``launch`` and ``backward`` turn torch
tensors into calls and keep the compiled kernels (in memory, and on disk across processes:
``kernel_cache``). scripts/dump_kernel_sass.py checks that a refactor leaves the SASS unchanged.
"""
