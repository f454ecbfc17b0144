"""Our Hopper attention kernels, written in the CuTe DSL (nvidia-cutlass-dsl).

``forward_sm90`` is the kernel; ``launch`` turns torch tensors into its arguments and keeps the
compiled kernels (in memory, and on disk across processes: ``kernel_cache``).
"""
