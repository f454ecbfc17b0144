"""Every few validations: listen to and look at what the model makes of a few validation dialogues.

For each dialogue: user, reference system and model audio (the model's teacher-forced mel of the
validation pass through the Griffin-Lim vocoder; model v2's mel is conditioned on the reference
tokens) and one spectrogram image of the three on one timeline with the model's decisions: model
v1's speaking probability, model v2's probabilities of BOS and EOS (start and stop speaking).
Files go to `<run_dir>/samples/step_<N>/`, and to wandb when it is logging.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning
import numpy as np
import torch

from s2s.data.audio import audio_as_float, save_audio
from s2s.data.tokens import BOS, EOS
from s2s.models.token_duplex import TokenDuplexOutput
from s2s.models.vocoder import GriffinLimVocoder
from s2s.plots import Curve, save_dialogue_figure


class ValidationSamples(lightning.Callback):
    def __init__(
        self, run_dir: str | Path, every_n_validations: int = 2, dialogues: int = 2, seconds: float = 12.0
    ):
        self.run_dir = Path(run_dir)
        self.every = max(1, every_n_validations)
        self.dialogues = dialogues
        self.seconds = seconds
        self.validations = 0
        self.vocoder: GriffinLimVocoder | None = None

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or module.last_validation is None:
            return
        self.validations += 1
        if (self.validations - 1) % self.every:
            return
        try:
            self._write(trainer, module)
        except Exception as error:  # samples are a convenience: never stop training for them
            warnings.warn(f"could not write validation samples: {error!r}", stacklevel=2)

    @torch.no_grad()
    def _write(self, trainer, module) -> None:
        batch, out = module.last_validation
        r = module.model.config.mel_per_frame
        self.vocoder = self.vocoder or GriffinLimVocoder()
        rate, hop = 16000, 160
        folder = self.run_dir / "samples" / f"step_{trainer.global_step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for row in range(min(self.dialogues, len(batch))):
            frames = min(int(batch.frame_lengths[row]), int(self.seconds * rate / hop), out.mel.shape[1])
            samples = frames * hop
            model_mel = out.mel[row : row + 1, :frames].float().cpu()
            model_audio = self.vocoder(model_mel)[0]
            tracks = {
                "user": audio_as_float(batch.user_audio[row, :samples]).cpu(),
                "reference": audio_as_float(batch.system_audio[row, :samples]).cpu(),
                "model": model_audio,
            }
            name = batch.names[row]
            for label, audio in tracks.items():
                save_audio(folder / f"{name}_{label}.wav", audio, rate)
            image = folder / f"{name}.png"
            _plot(
                image,
                [batch.user_mel[row, :frames].cpu(), batch.system_mel[row, :frames].cpu(), model_mel[0]],
                _model_curves(out, row, frames // r, frame_seconds=r * hop / rate),
                batch.system_speaking[row, :frames].cpu(),
            )
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    logger.log_audio(
                        key=f"samples/{name}",
                        audios=[a.numpy() for a in tracks.values()],
                        sample_rate=[rate] * 3,
                        caption=list(tracks),
                        step=trainer.global_step,
                    )
                    logger.log_image(
                        key=f"spectrograms/{name}", images=[str(image)], step=trainer.global_step
                    )


def _model_curves(out, row: int, frames: int, frame_seconds: float) -> list[Curve]:
    """The model's decisions per model frame, teacher-forced: model v1's speaking probability, model
    v2's probabilities of BOS and EOS."""
    seconds = np.arange(frames) * frame_seconds
    if isinstance(out, TokenDuplexOutput):
        p = out.token_logits[row, :frames].float().softmax(-1).cpu().numpy()
        return [Curve(seconds, p[:, BOS], "model P(BOS)"), Curve(seconds, p[:, EOS], "model P(EOS)")]
    return [Curve(seconds, out.speaking[row, :frames].float().cpu().numpy(), "model P(speaking)")]


def _plot(
    path: Path, mels: list[torch.Tensor], model_curves: list[Curve], reference_speaking: torch.Tensor
) -> None:
    curves = [
        *model_curves,
        Curve(np.arange(len(reference_speaking)) * 0.01, reference_speaking.numpy(), "reference", alpha=0.6),
    ]
    save_dialogue_figure(
        path,
        [mel.numpy() for mel in mels],
        ("user", "reference system", "model (teacher-forced)"),
        curves,
        seconds=mels[0].shape[0] / 100,
    )
