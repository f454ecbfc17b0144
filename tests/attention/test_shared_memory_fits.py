"""Every shipped CuTe kernel asks for at most the 227 KiB of shared memory a Hopper block may opt
into. The CPU CI only compiles: a kernel that asks for more builds for sm_90a without a word and
fails only at launch on a GPU (``launch shared memory exceeds current GPU arch sm_90a allowed``).

The size is the one that launch uses: the DSL sizes each kernel's shared memory at compile time
(the ``SharedStorage`` struct with its alignment padding) and the compiled host code passes it
as a constant to ``cudaLaunchKernelEx``; this reads that constant back from the compiled module.
The kernels are those ``scripts/dump_kernel_sass.py`` builds, plus the fused backward's legacy
tilings (``S2S_CUTE_BWD_D64`` / ``S2S_CUTE_BWD_D128``): 30 builds in one child process, which
sets ``CUTE_DSL_ARCH=sm_90a`` before the DSL is imported, ~45 s on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")

REPO = Path(__file__).resolve().parents[2]
# cudaDevAttrMaxSharedMemoryPerBlockOptin on H100 and H200 (228 KiB per SM less 1 KiB the system
# reserves per block); the DSL's launch check uses the same number (SMEM_CAPACITY_MAP["sm_90"]).
SM90_MAX_SHARED_MEMORY = 232448
# cudaLaunchConfig_t as the DSL lowers it: grid, block, dynamicSmemBytes, stream, attrs, numAttrs.
LAUNCH_CONFIG = "!llvm.struct<(array<3 x i32>, array<3 x i32>, i64, ptr, ptr, i32)>"
DYNAMIC_SMEM_FIELD = "array<i32: 0, 2>"


def load_dump_kernel_sass():
    """scripts/dump_kernel_sass.py, a file rather than a module of a package, loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "dump_kernel_sass", REPO / "scripts" / "dump_kernel_sass.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def legacy_fused_tilings() -> list[tuple[str, str, int]]:
    """(name, dtype, head dim) of the fused backward's legacy tilings, which a launch selects with
    ``S2S_CUTE_BWD_D64=legacy`` or ``S2S_CUTE_BWD_D128=legacy``."""
    dtypes = ("bfloat16", "bf16"), ("float16", "fp16")
    return [(f"bwd_fused_legacy_{short}_d{d}", dtype, d) for dtype, short in dtypes for d in (64, 128)]


def kernel_names() -> list[str]:
    names = [spec.name for spec in load_dump_kernel_sass().specializations()]
    return names + [name for name, _, _ in legacy_fused_tilings()]


def launch_shared_memory(compiled) -> int:
    """The dynamic shared memory (bytes) the compiled host code passes to ``cudaLaunchKernelEx``:
    the constant it stores into the launch config's ``dynamicSmemBytes``."""
    from cutlass._mlir import ir

    sizes = []

    def visit(op):
        if op.name == "llvm.store" and not isinstance(op.operands[1], ir.BlockArgument):
            address = op.operands[1].owner
            if (
                address.name == "llvm.getelementptr"
                and str(address.attributes["elem_type"]) == LAUNCH_CONFIG
                and str(address.attributes["rawConstantIndices"]) == DYNAMIC_SMEM_FIELD
            ):
                value = op.operands[0]
                if isinstance(value, ir.BlockArgument) or value.owner.name != "llvm.mlir.constant":
                    raise AssertionError(f"the launch's shared memory is not a constant: {value}")
                sizes.append(ir.IntegerAttr(value.owner.attributes["value"]).value)
        return ir.WalkResult.ADVANCE

    compiled.ir_module.operation.walk(visit)
    if not sizes:
        raise AssertionError(
            "no cudaLaunchKernelEx config in the compiled host code: the DSL lowers launches "
            "differently now; update launch_shared_memory"
        )
    return max(sizes)


def measure_all() -> dict[str, int]:
    """Build every kernel of ``kernel_names`` (this process must have CUTE_DSL_ARCH set) and
    return each one's launch shared memory."""
    import torch

    from s2s.attention.cute.backward import backward_tiles, compile_backward

    sizes = {
        spec.name: launch_shared_memory(spec.build()) for spec in load_dump_kernel_sass().specializations()
    }
    for name, dtype, head_dim in legacy_fused_tilings():
        tiles = backward_tiles(head_dim, "fused", "legacy")
        sizes[name] = launch_shared_memory(compile_backward("fused", getattr(torch, dtype), tiles))
    return sizes


@pytest.fixture(scope="module")
def shared_memory() -> dict[str, int]:
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a")
    run = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900, cwd=REPO
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kernel", kernel_names())
def test_kernel_shared_memory_fits_a_hopper_block(kernel, shared_memory):
    requested = shared_memory[kernel]
    assert requested <= SM90_MAX_SHARED_MEMORY, (
        f"{kernel} requests {requested} bytes of dynamic shared memory at launch; an sm_90 block "
        f"may use at most {SM90_MAX_SHARED_MEMORY} bytes (227 KiB)"
    )


if __name__ == "__main__":  # the child process of ``shared_memory``
    sys.path.insert(0, str(REPO))
    print(json.dumps(measure_all()))
