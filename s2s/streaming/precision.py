"""The numeric precision a model streams in: names people pass on the command line -> dtypes.

Streaming casts the weights (as a deployment does) rather than running fp32 weights under autocast:
the caches then hold the model's dtype and every attention call of a bf16 / fp16 model on a Hopper
GPU can go through the CuTe kernel. The log-mel front end and the vocoder stay in float32.
"""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"32": "fp32", "float32": "fp32", "bfloat16": "bf16", "16": "fp16", "float16": "fp16"}


def streaming_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype for `precision` ("fp32", "bf16", "fp16"), or a clear error naming the choices."""
    name = ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if name == "fp16" and torch.device(device).type == "cpu":
        raise ValueError("precision=fp16 needs a GPU (device=cuda); on the CPU use fp32 or bf16")
    return PRECISIONS[name]
