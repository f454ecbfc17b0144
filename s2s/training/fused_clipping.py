"""Gradient clipping that works with a fused AdamW.

Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales gradients inside
its step (fused AdamW), because under fp16 a GradScaler's gradients are still scaled when clipping
runs. bf16-mixed and fp32 have no scaler: the gradients are already true, so they are clipped here
with torch directly. With a scaler (fp16) Lightning's own path runs (and refuses a fused optimizer).
Under DDP the gradients are already all-reduced when the hook runs, so every rank clips alike; a
sharded strategy (FSDP, not configured here) would need its own clipping.
"""

from __future__ import annotations

import lightning
import torch


class FusedOptimizerClipping(lightning.LightningModule):
    """Mix in before the module's other bases; Lightning calls this hook after each backward."""

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(parameters, float(gradient_clip_val))
        elif gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, float(gradient_clip_val))
        else:
            raise ValueError(
                f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r} is not one of 'norm' or 'value'"
            )
