"""Regional compilation: `torch.compile` of each transformer block, attention left out.

The base model's training step on an H200 is about half idle (the host launching small kernels) and a
quarter elementwise work (norms, rotary, residual adds, autocast's casts): docs/benchmarks.md. Compiling
the blocks fuses that work into fewer, larger kernels. The blocks are compiled one by one, not the
whole model: every encoder block runs the same code, so one compiled graph serves all of them
(PyTorch's "regional compilation"), and the model's per-batch Python (packing layouts, chunk
specs, losses) stays eager. Attention is excluded (`attend` is `torch.compiler.disable`d): the CuTe
kernel is not traceable, and its per-call layout objects would otherwise become guards that
recompile on every batch. Shapes are compiled dynamic, since batch size and length change each step.
Only whole passes (training, offline) run compiled; a streamed chunk runs the same forward eagerly.

Measured on an H200 (docs/benchmarks.md): elementwise time fell by a third, but the host work at the
graph boundaries grew as much, so the step is no faster; it is off by default (module.compile_blocks).
With CUDA graphs as well (module.cuda_graphs), the blocks are compiled inside the graphs instead
(s2s.models.cuda_graphs.stack_for_capture): attention reaches the compiler there as a registered
operator (s2s.attention.custom_op), each block is one compiled graph, and the CUDA graph replays it
without the host work at its boundaries.
"""

from __future__ import annotations

from torch import nn


def compiled_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder and decoder blocks of `model` (a DuplexModel or TokenDuplexModel)."""
    blocks = [*model.encoder.blocks, *model.decoder.blocks]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no encoder or decoder blocks to compile")
    return blocks


def compile_heads(model: nn.Module) -> nn.Module:
    """Run model v2's output heads compiled in training passes (s2s.models.token_duplex.output_heads:
    the recent-token reads, the mel head's GELU and the heads' casts fused: 0.4-0.9 ms off a
    79-80 ms step at 32 x 40 s on an H100, docs/benchmarks.md); a model without them (model v1) is
    returned as it is."""
    if hasattr(model, "compiled_heads"):
        model.compiled_heads = True
    return model


def compile_blocks(model: nn.Module, dynamic: bool = True) -> nn.Module:
    """Compile every block's forward in place (state_dict keys unchanged) and return `model`."""
    for block in compiled_blocks(model):
        block.compile(dynamic=dynamic)
    return model
