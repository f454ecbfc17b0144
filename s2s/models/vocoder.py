"""Baseline vocoder: log-mel -> linear spectrum (pseudo-inverse of the mel filterbank) -> Griffin-Lim
(s2s.models.griffin_lim: torchaudio's iteration, with no host reads).

It needs no training, so a model's mel output can be listened to from the first step. Streaming
runs Griffin-Lim on each new chunk with a few frames of the previous ones as context and keeps the
audio of the new frames only: one chunk of mel in, `frames * hop` samples out.

The inverse mel step is the minimum-norm least-squares solution that torchaudio's InverseMelScale
computes with `lstsq(driver="gelsd")`, precomputed once as a matrix (the filterbank's
pseudo-inverse, in float64): CUDA's lstsq has only the `gels` driver, which fails on the
rank-deficient filterbank (some low mel filters are empty at n_fft 400), and one matmul per chunk
is cheaper than a solve anyway. It runs in float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio

from s2s.data.features import LogMelConfig
from s2s.models.griffin_lim import griffin_lim


@dataclass
class VocoderState:
    context: torch.Tensor  # (B, context_frames, n_mels): the last log-mel frames (silence at first)


class GriffinLimVocoder(torch.nn.Module):
    def __init__(self, log_mel: LogMelConfig | None = None, iterations: int = 32, context_frames: int = 8):
        super().__init__()
        self.log_mel = cfg = log_mel or LogMelConfig()
        self.iterations = iterations
        self.context_frames = context_frames
        filterbank = torchaudio.functional.melscale_fbanks(
            cfg.window // 2 + 1, cfg.f_min, cfg.f_max or cfg.sample_rate / 2, cfg.n_mels, cfg.sample_rate
        )  # (n_stft, n_mels): the same filters as the front end's MelScale
        # Minimum-norm solution; singular values below float32 resolution count as zero, as in a
        # float32 gelsd solve (five mel filters are empty at n_fft 400; float64 would blow them up).
        rtol = torch.finfo(torch.float32).eps * max(filterbank.shape)
        inverse = torch.linalg.pinv(filterbank.double().T, rtol=rtol)  # (n_stft, n_mels)
        self.register_buffer("inverse_mel", inverse.float(), persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.window), persistent=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, F, n_mels) log-mel -> (B, F * hop) audio."""
        if mel.shape[1] == 0:
            return mel.new_zeros(mel.shape[0], 0)
        power_mel = (mel.float().exp() - self.log_mel.floor).clamp(min=0.0).transpose(1, 2)
        power = torch.relu(self.inverse_mel @ power_mel)  # (B, n_stft, F)
        cfg = self.log_mel
        audio = griffin_lim(power, self.window, cfg.hop, self.iterations, length=(mel.shape[1] - 1) * cfg.hop)
        # Griffin-Lim centres frame t on sample t * hop; our causal frame t is centred on
        # t * hop - (window / 2 - hop). Shift by that much and pad to F * hop samples.
        shift = cfg.window // 2 - cfg.hop
        audio = torch.nn.functional.pad(audio[:, shift:], (0, cfg.hop + shift))[:, : mel.shape[1] * cfg.hop]
        return audio.clamp(-1.0, 1.0)

    def initial_state(self, batch: int, device=None) -> VocoderState:
        silence = float(torch.tensor(self.log_mel.floor).log())
        return VocoderState(
            torch.full((batch, self.context_frames, self.log_mel.n_mels), silence, device=device)
        )

    def stream(self, mel: torch.Tensor, state: VocoderState) -> tuple[torch.Tensor, VocoderState]:
        """A chunk of log-mel frames -> its audio, with the previous frames as phase context."""
        frames = torch.cat([state.context.float(), mel.float()], dim=1)
        audio = self(frames)[:, state.context.shape[1] * self.log_mel.hop :]
        return audio, VocoderState(frames[:, frames.shape[1] - self.context_frames :])
