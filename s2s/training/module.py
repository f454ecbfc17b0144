"""LightningModule for the duplex model: teacher-forced offline passes under the chunk-causal mask.

Losses, reported separately: masked L1 between predicted and reference system log-mel (in nats of
log power, the unit people compare), and binary cross-entropy of the speaking flag. Dynamic-chunk
training (as in WeNet) draws one chunk size per dialogue from `train_chunks` and hands
chunk_attention a per-sequence tensor; validation uses the fixed streaming `chunk`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from s2s.data.batching import DialogueBatch
from s2s.models.duplex import DuplexModel, DuplexOutput
from s2s.training.fused_clipping import FusedOptimizerClipping
from s2s.training.progress_bar import losses_in_progress_bar
from s2s.training.safe_loading import SafeCheckpointLoading, built_model
from s2s.training.schedule import OptimizerConfig, adamw_warmup_cosine, schedule_steps


@dataclass
class Losses:
    mel_l1: torch.Tensor  # nats, mean over real frames and mel bins
    speaking_bce: torch.Tensor
    total: torch.Tensor


class DuplexLightningModule(FusedOptimizerClipping, SafeCheckpointLoading):
    def __init__(
        self,
        model: DuplexModel | Mapping,
        optimizer: OptimizerConfig | Mapping | None = None,
        speaking_weight: float = 0.5,
        model_class: str | None = None,
    ):
        """`model` is a DuplexModel, or its config as a dict: `load_from_checkpoint` passes the saved
        hyperparameters, and `model_class` when the checkpoint names one (model v2's do)."""
        super().__init__()
        model = built_model(model, model_class)
        if not isinstance(model, DuplexModel):
            raise TypeError(
                f"DuplexLightningModule trains a DuplexModel (model v1), got {type(model).__name__}; "
                "model v2 trains (and loads with load_from_checkpoint) through TokenDuplexLightningModule"
            )
        self.model = model
        if not isinstance(optimizer, OptimizerConfig):  # None, a dict or a Hydra DictConfig
            optimizer = OptimizerConfig.from_mapping(optimizer)
        self.optimizer_config = optimizer
        self.speaking_weight = speaking_weight
        self.save_hyperparameters(
            {
                "model": asdict(model.config),
                "optimizer": asdict(optimizer),
                "speaking_weight": speaking_weight,
            }
        )
        self.last_validation: tuple[DialogueBatch, DuplexOutput] | None = None

    # -- one pass --------------------------------------------------------------------------------

    def targets(self, batch: DialogueBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per model frame: real-frame mask (B, T), speaking target (B, T), and lengths (B,)."""
        r = self.model.config.mel_per_frame
        frames = batch.system_mel.shape[1] // r
        lengths = batch.frame_lengths // r
        mask = torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
        speaking = batch.system_speaking[:, : frames * r].reshape(-1, frames, r).mean(dim=2)
        return mask, (speaking >= 0.5).to(batch.system_mel.dtype), lengths

    def run(self, batch: DialogueBatch, chunk) -> tuple[DuplexOutput, Losses]:
        mask, speaking, lengths = self.targets(batch)
        feedback = self.model.feedback_from(batch.system_mel, speaking)
        user_mel = self.model.user_input(batch.user_mel, batch.user_pitch)
        out = self.model(user_mel, feedback, lengths=lengths, chunk=chunk)
        r, n_mels = self.model.config.mel_per_frame, self.model.config.n_mels
        frames = out.speaking_logit.shape[1]
        target_mel = batch.system_mel[:, : frames * r].float()
        mel_mask = mask.repeat_interleave(r, dim=1)[..., None]
        denominator = mel_mask.sum().clamp(min=1) * n_mels
        mel_l1 = ((out.mel.float() - target_mel).abs() * mel_mask).sum() / denominator
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            out.speaking_logit.float(), speaking[:, :frames].float(), reduction="none"
        )
        speaking_bce = (bce * mask).sum() / mask.sum().clamp(min=1)
        total = mel_l1 / self.model.config.mel_std + self.speaking_weight * speaking_bce
        return out, Losses(mel_l1, speaking_bce, total)

    def draw_chunks(self, batch_size: int) -> torch.Tensor:
        """One training chunk size per dialogue, drawn from the model's `train_chunks`."""
        sizes = torch.tensor(self.model.config.train_chunks, dtype=torch.int32)
        pick = torch.randint(len(sizes), (batch_size,))
        return sizes[pick].to(self.device)

    # -- Lightning hooks -------------------------------------------------------------------------

    def training_step(self, batch: DialogueBatch, batch_index: int) -> torch.Tensor:
        _, losses = self.run(batch, self.draw_chunks(len(batch)))
        size = len(batch)
        in_bar = losses_in_progress_bar(self.device)  # a per-step read on a GPU waits for the step
        self.log("train/loss", losses.total, prog_bar=in_bar, batch_size=size)
        self.log("train/mel_l1", losses.mel_l1, prog_bar=in_bar, batch_size=size)
        self.log("train/speaking_bce", losses.speaking_bce, batch_size=size)
        return losses.total

    def validation_step(self, batch: DialogueBatch, batch_index: int) -> None:
        out, losses = self.run(batch, self.model.config.chunk)
        size = len(batch)
        self.log("val/loss", losses.total, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/mel_l1", losses.mel_l1, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/speaking_bce", losses.speaking_bce, batch_size=size, sync_dist=True)
        if batch_index == 0:
            self.last_validation = (batch, out)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.optimizer_config, schedule_steps(self.trainer))
