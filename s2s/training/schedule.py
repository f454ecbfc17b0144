"""Optimizer and learning-rate schedule shared by every model we train: AdamW, linear warmup, then
cosine decay to a floor (a pure function of the step)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a linear warmup, then cosine decay to `min_lr_ratio` of the peak rate."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    fused: bool | None = None  # None: torch's fused AdamW kernel where every parameter is on a GPU

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> OptimizerConfig:
        """From a dict or a Hydra DictConfig (betas arrive as a list)."""
        values = dict(values or {})
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def schedule_steps(trainer) -> int:
    """The schedule's length: the optimizer steps this fit will take (`trainer.max_steps`, or the
    epochs' batches when only `max_epochs` bounds the run), as Lightning estimates them."""
    steps = trainer.estimated_stepping_batches
    if not math.isfinite(steps) or steps <= 0:
        raise ValueError(
            f"the learning-rate schedule decays over the run's length, and this run has none "
            f"(trainer.max_steps={trainer.max_steps}, trainer.max_epochs={trainer.max_epochs}): "
            "set trainer.max_steps (e.g. trainer.max_steps=2000) or trainer.max_epochs"
        )
    return int(steps)


def adamw_warmup_cosine(model: torch.nn.Module, config: OptimizerConfig, max_steps: int) -> dict:
    """Lightning's optimizer dict: weight decay on matrices only (not biases, norms or embeddings'
    scalars), the schedule stepped per optimizer step over `max_steps` (`schedule_steps(trainer)`;
    10,000 when unlimited). On a GPU the fused AdamW kernel unless `config.fused` says otherwise (one
    launch for all parameters, as scripts/bench_train.py times the step; Lightning moves the model
    before asking for this)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    parameters = decay + no_decay
    on_gpu = bool(parameters) and all(p.is_cuda for p in parameters)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=tuple(config.betas),
        fused=on_gpu if config.fused is None else config.fused,
    )
    total = max_steps if max_steps and max_steps > 0 else 10_000
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, total, config.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
