"""Streaming model v2: each chunk's system tokens are sampled under the grammar and read back.

The caches, front end, encoder and vocoder are StreamingSession's; what differs is what the decoder
reads back. Per stream the session carries the previous chunk's sampled tokens, whether a reply is
open after them, and (with a mel prenet) the previous chunk's mel. Sampling draws its randomness
from a per-stream seed and the frame's index in the stream (`frame_noise`), so a run is reproducible
and a stream's tokens do not depend on which other streams share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2s.data.token_targets import UserState
from s2s.data.tokens import PAD
from s2s.models.token_duplex import TokenDuplexModel, recent_windows
from s2s.models.token_sampling import (
    SamplingConfig,
    frame_noise,
    sample_frames,
    state_bos_shift,
    state_eos_shift,
    turn_end_log_odds,
)
from s2s.streaming.session import StreamingSession, _where


@dataclass
class TokenFeedback:
    tokens: torch.Tensor  # (B, C) int64: the previous chunk's sampled tokens (PAD before the first)
    recent: torch.Tensor  # (B, recent_tokens - 1) int64: the last tokens sampled, the heads read them
    in_reply: torch.Tensor  # (B,) bool: a reply is open after them
    mel: torch.Tensor | None  # (B, C, r * n_mels) the previous chunk's normalized mel (prenet models)
    # (B,) float32: sampling.onset_quantile's probability that no reply would have been drawn yet
    onset_survival: torch.Tensor | None = None


@dataclass
class TokenStep:
    """The raw output of a chunk: `feedback` (the sampled tokens) is what reproduces the stream offline."""

    token_logits: torch.Tensor  # (B, C, V)
    feedback: torch.Tensor  # (B, C) int64 sampled tokens
    # (B, C) float32: the user-state head's log-odds of "the turn has ended" against "a pause inside
    # it" (what the state gain adds to BOS, and what stream_eval reads at each silence onset)
    turn_end_log_odds: torch.Tensor | None = None


class TokenStreamingSession(StreamingSession):
    """StreamingSession for TokenDuplexModel: `sampling` sets temperature, top-k, the PAD / BOS /
    EOS logit biases (a positive BOS bias answers sooner) and the user-state head's say over BOS
    (`state_gain`); `seeds` (B,) makes every stream's samples reproducible (default: stream i gets
    seed i); `state_gains` (B,), if given, replaces `sampling.state_gain` stream by stream (the
    free-running validation compares operating points in one batch)."""

    def __init__(
        self,
        model: TokenDuplexModel,
        batch: int = 1,
        chunk: int | None = None,
        left_chunks=...,
        vocoder=True,
        device=None,
        sampling: SamplingConfig | None = None,
        seeds: torch.Tensor | None = None,
        state_gains: torch.Tensor | list[float] | None = None,
        engine: str = "static",
        max_history_frames: int | None = None,
        cuda_graph: bool = False,
    ):
        if not isinstance(model, TokenDuplexModel):
            raise TypeError(
                f"TokenStreamingSession streams a TokenDuplexModel, got {type(model).__name__}; "
                "use StreamingSession for model v1"
            )
        self.sampling = sampling or SamplingConfig()
        super().__init__(
            model, batch, chunk, left_chunks, vocoder, device, engine, max_history_frames, cuda_graph
        )
        seeds = torch.arange(batch) if seeds is None else torch.as_tensor(seeds)
        if seeds.shape != (batch,):
            raise ValueError(f"seeds must hold one integer per stream ({batch},), got {tuple(seeds.shape)}")
        self.seeds = seeds.to(device=self.device, dtype=torch.int64)
        self.state_gains = None
        if state_gains is not None:
            gains = torch.as_tensor(state_gains, dtype=torch.float32)
            if gains.shape != (batch,) or not bool(torch.isfinite(gains).all()) or bool((gains < 0).any()):
                raise ValueError(
                    f"state_gains must hold one finite gain >= 0 per stream ({batch},), got {gains.tolist()}"
                )
            self.state_gains = gains.to(self.device)

    def _initial_feedback(self) -> TokenFeedback:
        c = self.model.config
        mel = None
        if self.model.mel_in is not None:
            mel = torch.zeros(
                self.batch, self.chunk, c.mel_per_frame * c.n_mels, device=self.device, dtype=self.dtype
            )
        return TokenFeedback(
            tokens=torch.full((self.batch, self.chunk), PAD, dtype=torch.int64, device=self.device),
            recent=self.model.no_tokens_before(self.batch, self.device),
            in_reply=torch.zeros(self.batch, dtype=torch.bool, device=self.device),
            mel=mel,
            onset_survival=torch.ones(self.batch, device=self.device),
        )

    def _decoder_input(self, feedback: TokenFeedback) -> torch.Tensor:
        return self.model.decoder_input(feedback.tokens, feedback.mel)

    def _outputs(
        self, hidden: torch.Tensor, feedback: TokenFeedback, positions: torch.Tensor, encoded: torch.Tensor
    ):
        model = self.model
        noise = frame_noise(self.seeds, positions, self.chunk) if self.sampling.temperature > 0 else None
        bos_shift, user_speaking = None, None
        user_states = model.user_state_head(encoded)  # one linear layer: read every chunk for the report
        if self.state_gains is not None:
            bos_shift = state_bos_shift(user_states, self.state_gains)
        elif self.sampling.state_gain > 0:
            bos_shift = state_bos_shift(user_states, self.sampling.state_gain)
        eos_shift = None
        if self.sampling.stop_gain > 0:  # the head hearing the user over a reply pushes it to end
            eos_shift = state_eos_shift(user_states, self.sampling.stop_gain)
        if self.sampling.onset_quantile is not None:  # the onset mass restarts while the user speaks
            user_speaking = user_states.argmax(dim=-1) == UserState.SPEAKING
        placeholder = torch.full((hidden.shape[0], 1), PAD, device=hidden.device)  # the token to sample
        per_frame = []  # each frame's logits, as sampled (the raw output: no second pass of the head)

        def frame_logits(frame: int, before: torch.Tensor) -> torch.Tensor:
            windows = recent_windows(placeholder, _last(torch.cat([feedback.recent, before], dim=1), lags))
            per_frame.append(model.token_logits(hidden[:, frame : frame + 1], windows))
            return per_frame[-1][:, 0]

        lags = feedback.recent.shape[1]
        sampled = sample_frames(
            frame_logits, self.chunk, feedback.in_reply, self.sampling, noise, bos_shift,
            onset_survival=feedback.onset_survival, user_speaking=user_speaking, eos_shift=eos_shift,
        )  # fmt: skip
        logits = torch.cat(per_frame, dim=1)
        mel = model.mel_for(hidden, recent_windows(sampled.tokens, feedback.recent))
        history = torch.cat([feedback.recent, sampled.tokens], dim=1)
        following = TokenFeedback(
            tokens=sampled.tokens,
            recent=_last(history, lags),
            in_reply=sampled.in_reply,
            mel=None if feedback.mel is None else model.mel_frames(mel, self.chunk),
            onset_survival=feedback.onset_survival
            if sampled.onset_survival is None
            else sampled.onset_survival,
        )
        raw = TokenStep(logits, sampled.tokens, turn_end_log_odds(user_states))  # float32
        return mel, sampled.speaking.to(mel.dtype), raw, following

    def _keep_feedback(self, keep: torch.Tensor, new: TokenFeedback, old: TokenFeedback) -> TokenFeedback:
        return TokenFeedback(
            tokens=_where(keep, new.tokens, old.tokens),
            recent=_where(keep, new.recent, old.recent),
            in_reply=torch.where(keep, new.in_reply, old.in_reply),
            mel=None if new.mel is None else _where(keep, new.mel, old.mel),
            onset_survival=torch.where(keep, new.onset_survival, old.onset_survival),
        )


def _last(tokens: torch.Tensor, count: int) -> torch.Tensor:
    return tokens[:, tokens.shape[1] - count :]


def streaming_session(
    model, *, sampling: SamplingConfig | None = None, seeds=None, state_gains=None, **options
) -> StreamingSession:
    """The session a model streams through: TokenStreamingSession for model v2 (with its sampling,
    seeds and state gains), StreamingSession for model v1; `options`: the keywords both take."""
    if isinstance(model, TokenDuplexModel):
        return TokenStreamingSession(
            model, sampling=sampling, seeds=seeds, state_gains=state_gains, **options
        )
    return StreamingSession(model, **options)
