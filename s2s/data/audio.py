"""Audio file I/O with soundfile and resampling with torchaudio, with errors that say what to fix.

torchaudio's own file I/O now needs torchcodec and ffmpeg; soundfile (libsndfile) reads and writes
wav/flac everywhere pip runs. Audio is float32 in [-1, 1], shaped (channels, samples); training
reads may keep a 16-bit PCM file's int16 samples instead (`keep_pcm16`: half the bytes through the
loader workers, shared memory, pinning and the copy to the GPU) and turn them into float where the
features are computed (`audio_as_float`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio


class AudioError(ValueError):
    """An audio file or signal that s2s cannot use, with the reason and the fix in the message."""


# Subtypes whose samples are integers: decoding them cannot give NaN or infinity.
INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"})
PCM16_SCALE = 32768.0  # libsndfile's float reading of 16-bit PCM divides by 2**15


def audio_as_float(audio: torch.Tensor) -> torch.Tensor:
    """float32 samples in [-1, 1) from int16 PCM (as `load_audio(keep_pcm16=True)` may give), or
    float audio as float32: the same numbers `load_audio` gives for the file either way."""
    if audio.dtype == torch.int16:
        return audio.float() / PCM16_SCALE
    if not audio.is_floating_point():
        raise AudioError(f"audio must be float or int16 PCM, got {audio.dtype}")
    return audio.float()


def audio_info(path: str | os.PathLike) -> soundfile._SoundFileInfo:
    """Header of an audio file (sample rate, channels, frames) without reading the samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"cannot read {path} as audio ({error}); expected a wav or flac file") from error
    declared = declared_wav_frames(path)
    if declared is not None and declared > info.frames:
        raise AudioError(
            f"{path} is truncated: its header promises {declared} samples per channel "
            f"({declared / info.samplerate:.2f} s) but the file holds {info.frames} "
            f"({info.frames / info.samplerate:.2f} s). Re-make it: for a synthetic corpus delete it and its "
            ".json manifest and re-run scripts/make_data.py (it makes what is missing); re-export a recording"
        )
    return info


def declared_wav_frames(path: str | os.PathLike) -> int | None:
    """Frames a WAV header's data chunk declares (None: not a RIFF/WAVE file, or a streamed header).

    libsndfile counts the frames the file actually holds, so a truncated wav reads short without a word.
    """
    with open(path, "rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while chunk := file.read(8):
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = file.read(size + size % 2)
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif name == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):  # streamed wavs leave the size open
                    return None
                return size // block_align
            else:
                file.seek(size + size % 2, os.SEEK_CUR)
    return None


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
    start: int = 0,
    frames: int = -1,
    keep_pcm16: bool = False,
) -> tuple[torch.Tensor, int]:
    """Read `path` as float32 (channels, samples), resampled to `sample_rate` when given.

    `start`/`frames` select a span in the file's own sample rate. `channels` checks the channel
    count. NaN or infinite samples (a float file gone bad) are refused, not passed on.
    `keep_pcm16`: a 16-bit PCM file read at its own rate comes back as its int16 samples, exactly
    (`audio_as_float` of them is the float32 this would return); any other file as float32.
    """
    path = Path(path)
    info = audio_info(path)
    if channels is not None and info.channels != channels:
        raise AudioError(
            f"{path} has {info.channels} channel(s) but {channels} are expected"
            + (" (a duplex dialogue is stereo: channel 0 user, channel 1 system)" if channels == 2 else "")
        )
    as_int16 = keep_pcm16 and info.subtype == "PCM_16" and sample_rate in (None, info.samplerate)
    try:
        data, file_rate = soundfile.read(
            str(path), start=start, frames=frames, dtype="int16" if as_int16 else "float32", always_2d=True
        )
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise AudioError(f"cannot decode {path}: {error}") from error
    if frames >= 0 and data.shape[0] < min(frames, info.frames - start):
        raise AudioError(
            f"{path} ended after {data.shape[0]} of the {frames} samples asked for from sample {start}: "
            "the file is truncated or changed while being read; re-make or re-export it"
        )
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    if info.subtype not in INTEGER_SUBTYPES:
        check_finite(audio, str(path))
    if sample_rate is not None and file_rate != sample_rate:
        audio = resample(audio, file_rate, sample_rate)
        file_rate = sample_rate
    return audio, file_rate


def save_audio(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write (channels, samples) float audio in [-1, 1] as 16-bit PCM wav, atomically.

    The file appears complete or not at all: it is written beside the target and renamed, so an
    interrupted run never leaves a truncated wav where a good one was.
    """
    path = Path(path)
    samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2:
        raise AudioError(f"audio to save must be (channels, samples), got shape {tuple(samples.shape)}")
    if samples.dtype != np.int16:
        if not np.isfinite(samples).all():
            raise AudioError(f"refusing to write {path}: the audio holds NaN or infinite samples")
        samples = float_to_pcm16(samples)
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {sample_rate}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    soundfile.write(str(partial), samples.T, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(partial, path)
    return path


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Round float audio in [-1, 1] to int16 (clipping outside), with no dither: deterministic."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def resample(audio: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc)."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return audio
    return torchaudio.functional.resample(audio, from_rate, to_rate)


def check_finite(audio: torch.Tensor, what: str) -> None:
    if not torch.isfinite(audio).all():
        bad = int((~torch.isfinite(audio)).sum())
        raise AudioError(f"{what} holds {bad} NaN or infinite sample(s); re-export or re-generate it")
