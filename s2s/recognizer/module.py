"""Lightning training of the recognizer: CTC loss, AdamW with warmup + cosine, exact match in validation."""

from __future__ import annotations

import torch

from s2s.recognizer.decode import greedy_ctc_decode
from s2s.recognizer.model import CTCRecognizer, RecognizerConfig
from s2s.recognizer.vocabulary import Vocabulary
from s2s.streaming.content import score_reply, summarize_replies
from s2s.training.fused_clipping import FusedOptimizerClipping
from s2s.training.progress_bar import losses_in_progress_bar
from s2s.training.schedule import OptimizerConfig, adamw_warmup_cosine


class RecognizerModule(FusedOptimizerClipping):
    def __init__(
        self,
        model: dict,
        vocabulary: list[str],
        optimizer: dict | None = None,
        val_names: list[str] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()  # plain data only: the checkpoint rebuilds the module by itself
        self.model = CTCRecognizer(RecognizerConfig.from_dict(model))
        self.vocabulary = Vocabulary(tuple(vocabulary))
        self.optimizer_config = OptimizerConfig.from_mapping(
            {"lr": 3e-3, "warmup_steps": 100, "min_lr_ratio": 0.05, **(optimizer or {})}
        )
        self.val_names = list(val_names or ["val"])
        self.ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
        self._val: dict[str, list] = {}

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs, lengths = self.model(batch["mel"], batch["lengths"])
        loss = self.ctc(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"])
        return loss, log_probs, lengths

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._loss(batch)
        in_bar = losses_in_progress_bar(self.device)  # a per-step read on a GPU waits for the step
        self.log("train/loss", loss, prog_bar=in_bar, batch_size=batch["lengths"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {name: [] for name in self.val_names}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, log_probs, lengths = self._loss(batch)
        name = self.val_names[dataloader_idx]
        expected = torch.split(batch["targets"], batch["target_lengths"].tolist())
        recognized = greedy_ctc_decode(log_probs, lengths)
        rows = [(t.tolist(), r) for t, r in zip(expected, recognized, strict=True)]
        self._val[name].append((float(loss) * len(rows), rows))

    def on_validation_epoch_end(self) -> None:
        losses = []
        for name, parts in self._val.items():
            rows = [row for _, part in parts for row in part]
            if not rows:
                continue
            score = summarize_replies(score_reply(e, r) for e, r in rows)
            loss = sum(total for total, _ in parts) / len(rows)
            losses.append(loss)
            self.log(f"val/loss/{name}", loss)
            self.log(f"val/exact_match/{name}", score.exact_match_rate, prog_bar=True)
            self.log(f"val/wer/{name}", score.word_error_rate)
        if losses:
            self.log("val/loss", sum(losses) / len(losses))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.optimizer_config, self.trainer.max_steps)
