"""A whole waveform through a session in one call: `session.stream(waveform, sample_rate)`.

By hand, streaming a recording means resampling it to the model's rate, cutting it into steps of
`chunk_samples`, padding the last one and giving its real length with `final=True`, then trimming
each output to its real frames. A step counts whole 40 ms model frames only, so a tail shorter than
one frame would give no output at all; here it is padded with silence to a whole frame and flushed
(the chunk says how many samples of silence were added), so no input is dropped without a word.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from s2s.data.audio import AudioError, check_finite, resample
from s2s.streaming.token_session import TokenStep


@dataclass
class StreamChunk:
    """One step's output, trimmed to the frames the input filled (the same for every stream)."""

    start_frame: int  # the first frame's index in the stream (frame = model frame, 40 ms by default)
    frames: int
    mel: torch.Tensor  # (B, frames * r, n_mels) system log-mel
    speaking: torch.Tensor  # (B, frames) model v1: probability; model v2: 0 / 1 from the tokens
    audio: torch.Tensor | None  # (B, frames * frame_samples) system audio (None without a vocoder)
    tokens: torch.Tensor | None  # (B, frames) int64 sampled system tokens (model v2; None for model v1)
    padded_samples: int  # silence appended to the input to fill the last frame (only on the last chunk)


def stream_waveform(session, waveform, sample_rate: int) -> Iterator[StreamChunk]:
    """Stream `waveform` ((samples,) for a session of one stream, or (streams, samples), float in
    [-1, 1] at `sample_rate`) through `session` from a fresh state; yields each step's output."""
    audio = _checked(waveform, session.batch, sample_rate)  # refused here, not at the first step
    return _steps(session, resample(audio, int(sample_rate), session.model.config.sample_rate))


def _steps(session, audio: torch.Tensor) -> Iterator[StreamChunk]:
    config = session.model.config
    total = audio.shape[1]
    size, frame = session.chunk_samples, config.frame_samples
    session.reset()
    frames_done = 0
    for start in range(0, total, size):
        piece = audio[:, start : start + size]
        last = start + size >= total
        real = piece.shape[1]
        filled = -(-real // frame) * frame if last else real  # the tail padded to a whole frame
        padded = torch.nn.functional.pad(piece, (0, size - real)).to(session.device)
        lengths = torch.full((session.batch,), filled, dtype=torch.int64)
        out = session.step(padded, lengths=lengths, final=last)
        n = filled // frame
        tokens = out.raw.feedback[:, :n] if isinstance(out.raw, TokenStep) else None
        yield StreamChunk(
            start_frame=frames_done,
            frames=n,
            mel=out.mel[:, : n * config.mel_per_frame],
            speaking=out.speaking[:, :n],
            audio=None if out.audio is None else out.audio[:, : n * frame],
            tokens=tokens,
            padded_samples=filled - real,
        )
        frames_done += n


def _checked(waveform, streams: int, sample_rate) -> torch.Tensor:
    """(streams, samples) float32 on the CPU, or an error naming what is wrong and what to pass."""
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise TypeError(
            f"waveform must be a float tensor or array of samples in [-1, 1], got "
            f"{getattr(waveform, 'dtype', type(waveform).__name__)}"
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    if waveform.dim() == 1 and streams == 1:
        waveform = waveform[None]
    if waveform.dim() != 2 or waveform.shape[0] != streams:
        hint = " (a stereo recording? pick the user's channel: waveform[channel])" if streams == 1 else ""
        raise ValueError(
            f"the session streams {streams} stream(s): pass a (samples,) waveform for one stream or "
            f"({streams}, samples), got shape {tuple(waveform.shape)}{hint}"
        )
    if waveform.shape[1] == 0:
        raise AudioError("the waveform is empty: there is nothing to stream")
    waveform = waveform.detach().float().cpu()
    check_finite(waveform, "the waveform")
    return waveform
