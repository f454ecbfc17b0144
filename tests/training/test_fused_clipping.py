"""A fused AdamW under bf16-mixed with gradient clipping: Lightning refuses it, our mixin clips."""

import lightning
import pytest
import torch

from s2s.training.fused_clipping import FusedOptimizerClipping


class RecordingAdamW(torch.optim.AdamW):
    """Fused AdamW that records the gradient norm it is about to apply."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)
        self.norms: list[float] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [
            p.grad.float().flatten() for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        self.norms.append(float(torch.cat(grads).norm()))
        super().step()
        return loss


def _module(base):
    class Tiny(base):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 8)

        def training_step(self, batch, batch_idx):
            return (self.layer(batch[0]) * 100.0).square().mean()

        def configure_optimizers(self):
            return RecordingAdamW(self.parameters(), lr=1e-3)

        def train_dataloader(self):
            generator = torch.Generator().manual_seed(7)
            data = torch.randn(8, 8, generator=generator)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)

    return Tiny()


def _fit(module, tmp_path, algorithm="norm"):
    trainer = lightning.Trainer(
        max_steps=2,
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=0.5,
        gradient_clip_algorithm=algorithm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    return module.optimizers().optimizer


def test_lightning_alone_refuses_to_clip_for_a_fused_optimizer(tmp_path):
    with pytest.raises(RuntimeError, match="fused"):
        _fit(_module(lightning.LightningModule), tmp_path)


def test_the_mixin_clips_the_norm_for_a_fused_optimizer_under_bf16(tmp_path):
    optimizer = _fit(_module(FusedOptimizerClipping), tmp_path)
    assert len(optimizer.norms) == 2
    assert all(norm <= 0.5 * 1.001 for norm in optimizer.norms), optimizer.norms


def test_the_mixin_clips_values_when_asked(tmp_path):
    module = _module(FusedOptimizerClipping)
    seen = []
    original = module.configure_gradient_clipping

    def spy(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        original(optimizer, gradient_clip_val, gradient_clip_algorithm)
        seen.append(max(float(p.grad.abs().max()) for p in module.parameters()))

    module.configure_gradient_clipping = spy
    _fit(module, tmp_path, algorithm="value")
    assert seen and all(value <= 0.5 for value in seen), seen
