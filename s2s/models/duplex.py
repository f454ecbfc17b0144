"""The full-duplex model: user log-mel in, system log-mel and a speaking flag out, on one timeline.

Offline (training) it runs whole dialogues in one pass under the chunk-causal mask; `step` runs the
same layers, through the same code, one chunk at a time against the caches of a `DuplexState`
(`initial_state`), and gets the same frames. The StreamingSession (s2s.streaming) owns that state
and what surrounds the model: the log-mel front end, the feedback and its sampling, the vocoder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from s2s.attention import ChunkSpec
from s2s.data.pitch import PITCH_CHANNELS
from s2s.models.attention_context import CachedCrossAttention, CachedSelfAttention, OfflineAttention
from s2s.models.config import DuplexConfig
from s2s.models.decoder import Decoder
from s2s.models.encoder import Encoder
from s2s.models.frontend import ConvFrontEnd
from s2s.models.packing import PackedLayout
from s2s.models.streaming_state import DuplexState, LayerCaches

ChunkSize = int | torch.Tensor


@dataclass
class DuplexOutput:
    mel: torch.Tensor  # (B, T * r, n_mels) predicted system log-mel
    speaking_logit: torch.Tensor  # (B, T) logit of "the system speaks in this frame"
    feedback: torch.Tensor  # (B, T, feedback_dim): what the decoder reads back one chunk later

    @property
    def speaking(self) -> torch.Tensor:
        return torch.sigmoid(self.speaking_logit)


def shift_by_chunk(frames: torch.Tensor, chunk: ChunkSize) -> torch.Tensor:
    """(B, T, F) -> frame t holds frames[t - C] (zeros for t < C); C per sequence or shared."""
    batch, length, width = frames.shape
    chunk = torch.as_tensor(chunk, device=frames.device).to(torch.int64).expand(batch)
    source = torch.arange(length, device=frames.device)[None, :] - chunk[:, None]
    gathered = frames.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, width))
    return gathered * (source >= 0)[..., None].to(frames.dtype)


class ChunkedDuplexBase(nn.Module):
    """What every duplex model shares: its config, chunk specs, the fixed mel normalization, the
    offline pass up to the decoder (`encode`) and the streamed step of its layers (`step`)."""

    config: DuplexConfig

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def spec(self, chunk: ChunkSize, left_chunks) -> ChunkSpec:
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.to(torch.int32)
        return ChunkSpec(chunk_q=chunk, left_chunks=left_chunks)

    def check_chunk(self, chunk: ChunkSize) -> None:
        """Warn when asked for a chunk size the model was not trained with (it may still work)."""
        sizes = set(torch.as_tensor(chunk).flatten().tolist())
        untrained = sorted(sizes - set(self.config.train_chunks))
        if untrained:
            warnings.warn(
                f"chunk size(s) {untrained} were not among the training chunk sizes "
                f"{self.config.train_chunks}; expect different (usually worse) outputs",
                stacklevel=3,
            )

    def normalize_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.config.mel_mean) / self.config.mel_std

    def user_input(self, user_mel: torch.Tensor, user_pitch: torch.Tensor | None) -> torch.Tensor:
        """What the front end reads: the user log-mel (B, F, n_mels), followed with `user_pitch`
        by the pitch channels (B, F, 2) of s2s.data.pitch.pitch_features of the same audio."""
        if not self.config.user_pitch:
            return user_mel
        if user_pitch is None or user_pitch.shape != (*user_mel.shape[:2], PITCH_CHANNELS):
            raise ValueError(
                "this model reads the user's pitch (user_pitch=true): give the (B, F, 2) "
                "s2s.data.pitch.pitch_features of the user audio (the data module makes them with "
                f"data.user_pitch=true), got {None if user_pitch is None else tuple(user_pitch.shape)} "
                f"for log-mel {tuple(user_mel.shape)}"
            )
        return torch.cat([user_mel, user_pitch.to(user_mel.dtype)], dim=-1)

    def encode(self, user_mel: torch.Tensor, lengths, chunk, left_chunks) -> EncodedPass:
        """The offline pass up to the decoder: front end and encoder over whole dialogues."""
        c = self.config
        chunk = c.chunk if chunk is None else chunk
        left_chunks = c.left_chunks if left_chunks is ... else left_chunks
        if user_mel.dim() != 3 or user_mel.shape[-1] != c.user_channels:
            what = f"{c.n_mels} log-mel + 2 pitch channels (user_input)" if c.user_pitch else "log-mel"
            raise ValueError(
                f"user_mel must be (B, frames, {c.user_channels}): {what}, got {tuple(user_mel.shape)}"
            )
        x, _ = self.front_end(user_mel)
        batch, frames, _ = x.shape
        layout = None
        if lengths is not None:
            # One layout for every attention layer of the pass: the lengths are read once (host
            # lengths, as the training step passes them, need no wait for the device).
            layout = PackedLayout.from_lengths(lengths.to(torch.int64).clamp(max=frames), frames, x.device)
        attention = OfflineAttention(self.spec(chunk, left_chunks), layout, c.attention_backend)
        positions = torch.arange(frames, device=x.device).expand(batch, frames)
        return EncodedPass(self.encoder(x, positions, attention), positions, attention)

    def initial_state(
        self,
        batch: int,
        chunk: int,
        left_chunks,
        device=None,
        dtype=None,
        engine: str = "static",
        capacity_frames: int | None = None,
    ) -> DuplexState:
        """A fresh streaming state for `batch` streams stepped `chunk` frames at a time: zero
        front-end tails, positions 0 and a cache per attention layer (`engine` "static": preallocated,
        a linear one holding `capacity_frames`; "packed": the previous, growing engine). `device` and
        `dtype` default to the model's."""
        parameter = next(self.parameters())
        device = parameter.device if device is None else torch.device(device)
        dtype = parameter.dtype if dtype is None else dtype

        def cache(attention):
            return attention.new_cache(
                batch, chunk, left_chunks, device, dtype, engine=engine, capacity_frames=capacity_frames
            )

        caches = LayerCaches(
            encoder=[cache(block.attention) for block in self.encoder.blocks],
            decoder=[cache(block.self_attention) for block in self.decoder.blocks],
            cross=[cache(block.cross_attention) for block in self.decoder.blocks],
        )
        caches.share_frames()
        return DuplexState(
            front_end=self.front_end.initial_state(batch, device, dtype),
            caches=caches,
            positions=torch.zeros(batch, dtype=torch.int64, device=device),
        )

    def step(
        self,
        state: DuplexState,
        features: torch.Tensor,
        counts: torch.Tensor,
        final: torch.Tensor,
        decoder_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, DuplexState]:
        """One chunk of every stream through the layers `forward` runs: front end, encoder (its K/V
        into the caches), decoder (self- and cross-attention against the caches).

        features (B, chunk * r, user_channels) the chunk's log-mel (+ pitch, `user_input`) in the
        model's dtype; counts (B,) int64 real model frames per stream (0: idle, its state kept);
        final (B,) bool a stream's last step; decoder_input (B, chunk, dim) what the decoder reads,
        made from the previous chunk's output by the caller (who owns the feedback and its
        sampling). Returns the decoder's hidden states and the encoder's output (B, chunk, dim) and
        the next state. The caches are written in place; the rest of `state` is left as it was.
        Reads nothing back from the device (the static engine's step is captured as a CUDA graph).
        """
        x, front_end = self.front_end(features, state.front_end)
        positions = state.positions[:, None] + torch.arange(x.shape[1], device=x.device)
        caches = state.caches
        plan = caches.step_plan(counts, x.shape[1], self.config.heads)  # one index plan for every cache
        encoded = self.encoder(
            x, positions, [CachedSelfAttention(c, counts, final, plan) for c in caches.encoder]
        )
        hidden = self.decoder(
            decoder_input,
            positions,
            encoded,
            [CachedSelfAttention(c, counts, final, plan) for c in caches.decoder],
            [CachedCrossAttention(c, counts, final, plan) for c in caches.cross],
        )
        following = DuplexState(
            front_end=front_end.where(counts > 0, state.front_end),
            caches=caches,
            positions=state.positions + counts,
        )
        return hidden, encoded, following


@dataclass
class EncodedPass:
    encoded: torch.Tensor  # (B, T, dim)
    positions: torch.Tensor  # (B, T)
    attention: OfflineAttention  # the pass's spec and layout (the valid frames of `lengths`, or None)

    @property
    def spec(self) -> ChunkSpec:
        return self.attention.spec

    @property
    def frames(self) -> int:
        return self.encoded.shape[1]

    @property
    def chunk_sizes(self) -> torch.Tensor:
        """(B,) int64 on the device: each sequence's chunk, from the spec's one resolution (the
        attention layers resolved it already: no second copy to the device)."""
        return self.spec.resolve(self.encoded.shape[0], self.encoded.device).chunk_q


class DuplexModel(ChunkedDuplexBase):
    """Model v1: regresses the system's log-mel and a speaking probability, and reads both back."""

    def __init__(self, config: DuplexConfig | None = None):
        super().__init__()
        self.config = config = config or DuplexConfig()
        self.front_end = ConvFrontEnd(config)
        self.encoder = Encoder(config)
        self.feedback_in = nn.Linear(config.feedback_dim, config.dim)
        self.decoder = Decoder(config)
        self.mel_head = nn.Linear(config.dim, config.mel_per_frame * config.n_mels)
        self.speaking_head = nn.Linear(config.dim, 1)

    def feedback_from(self, mel: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
        """Decoder feedback frames (B, T, feedback_dim) from log-mel (B, >= T*r, n_mels) and a
        speaking flag or probability (B, T): the reference in training, the model's own output when
        streaming."""
        c = self.config
        frames = speaking.shape[1]
        stacked = self.normalize_mel(mel[:, : frames * c.mel_per_frame]).reshape(
            mel.shape[0], frames, c.mel_per_frame * c.n_mels
        )
        return torch.cat([stacked, speaking[..., None].to(stacked.dtype)], dim=-1)

    def heads(self, hidden: torch.Tensor) -> DuplexOutput:
        c = self.config
        normalized = self.mel_head(hidden)
        logit = self.speaking_head(hidden).squeeze(-1)
        mel = normalized.reshape(hidden.shape[0], -1, c.n_mels) * c.mel_std + c.mel_mean
        feedback = torch.cat([normalized, torch.sigmoid(logit)[..., None]], dim=-1)
        return DuplexOutput(mel=mel, speaking_logit=logit, feedback=feedback)

    def forward(
        self,
        user_mel: torch.Tensor,
        feedback: torch.Tensor,
        lengths: torch.Tensor | None = None,
        chunk: ChunkSize | None = None,
        left_chunks=...,
    ) -> DuplexOutput:
        """One offline pass over whole dialogues.

        user_mel (B, F, n_mels) log-mel of the user channel (`user_input`: + pitch); feedback
        (B, T, feedback_dim) the system frames the decoder reads back (`feedback_from(reference
        mel, reference speaking)` in training), T = F // r; lengths (B,) real model frames per
        dialogue; chunk an int or one value per dialogue (dynamic-chunk training); left_chunks
        defaults to the config's.
        """
        c = self.config
        p = self.encode(user_mel, lengths, chunk, left_chunks)
        batch, frames = p.positions.shape
        if (
            feedback.shape[:1] != (batch,)
            or feedback.shape[1] < frames
            or feedback.shape[2] != c.feedback_dim
        ):
            raise ValueError(
                f"feedback must be (B={batch}, >= {frames}, {c.feedback_dim}) for {user_mel.shape[1]} "
                f"mel frames, got {tuple(feedback.shape)}; build it with feedback_from(mel, speaking)"
            )
        decoder_in = self.feedback_in(shift_by_chunk(feedback[:, :frames], p.chunk_sizes))
        hidden = self.decoder(decoder_in, p.positions, p.encoded, p.attention, p.attention)
        return self.heads(hidden)
