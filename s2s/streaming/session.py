"""StreamingSession: the duplex model run as it is deployed, one chunk of audio in, one chunk out.

Every cache lives in one typed state: the log-mel tail (and, for a model with `user_pitch`, the
pitch track's tail and running reference), the model's own state (s2s.models.streaming_state: the
front end's convolution tails, each encoder layer's self-attention K/V, each decoder layer's
self-attention K/V and cross-attention encoder K/V, positions), the decoder's own last chunk, which
it reads back as its next input, and the vocoder's context. A step is the log-mel, one
`model.step` (the layers' own code, as the offline pass runs it), the heads and the vocoder, so it
produces exactly the frames one offline pass gives for the same audio and the same feedback.

Many streams share a session (one row each). Each has its own length: a stream's last step may
be short (`final`), a stream with no samples in a step is left untouched, and `reset` starts a
new dialogue on chosen rows.

Two engines hold the attention caches. "static" (the default): preallocated per stream (a mirrored
ring of `left_chunks + 1` chunks, or a linear buffer of the history), written in place and read in
place by each attention call (`seqused_k`), every check made on host values the session keeps, so
a step reads nothing back from the device (s2s.attention.static_cache). "packed": the previous
engine, whose caches grow and pack every stream's keys for each call (s2s.attention.cache); kept as
the baseline of scripts/bench_streaming.py. With `cuda_graph=True` the static engine's step is
captured once as a CUDA graph and replayed every chunk (s2s.streaming.step_graph).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from s2s.attention.stream_selection import final_flags, stream_flags
from s2s.data.features import LogMel, LogMelConfig
from s2s.data.pitch import PitchConfig, PitchState, pitch_initial_state, pitch_stream
from s2s.models.duplex import DuplexModel, DuplexOutput
from s2s.models.streaming_state import DuplexState, LayerCaches
from s2s.models.vocoder import GriffinLimVocoder, VocoderState
from s2s.streaming.step_graph import StepGraph, tensor_leaves


@dataclass
class SessionState:
    mel_tail: torch.Tensor  # (B, >= 240) audio samples the log-mel front end still needs
    model: DuplexState  # the model's own: front-end tails, attention caches, positions
    feedback: object  # what the decoder reads back of the previous chunk (model v1: (B, C, feedback_dim))
    vocoder: VocoderState | None
    pitch: PitchState | None = None  # the user's pitch track (models with user_pitch)

    @property
    def caches(self) -> LayerCaches:
        return self.model.caches

    @property
    def positions(self) -> torch.Tensor:
        """(B,) int64: model frames consumed per stream."""
        return self.model.positions


@dataclass
class StepOutput:
    mel: torch.Tensor  # (B, C * r, n_mels) system log-mel of this chunk
    speaking: torch.Tensor  # (B, C) probability that the system speaks in each frame
    audio: torch.Tensor | None  # (B, C * frame_samples) system audio (None without a vocoder)
    frames: torch.Tensor  # (B,) model frames that are real per stream (C, fewer on a final step, 0 idle)
    raw: DuplexOutput  # the heads' full output, feedback included
    # (B,) bool: streams whose audio held NaN or inf; they sat this step out (0 frames, state kept), so
    # nothing of theirs reached another stream. A server closes them or feeds them again.
    invalid_input: torch.Tensor | None = None


ENGINES = ("static", "packed")
# Unbounded history (left_chunks None) on the static engine without max_history_frames: the caches
# start with 60 s of model frames per stream and grow, copied once per doubling, before a step that
# needs more (outside a CUDA graph).
DEFAULT_HISTORY_FRAMES = 1500


class StreamingSession:
    """Streams `batch` dialogues through `model` in chunks of `chunk` model frames.

    `left_chunks` bounds every cache (default: the model's). A chunk size the model was not trained
    with works but warns (the NeMo multi-look-ahead situation). `engine`: "static" or "packed" (see
    the module's docstring); with unbounded history the static caches hold `max_history_frames`
    frames per stream and refuse a step past it, or, when it is None, start at 60 s and grow.
    `cuda_graph=True` (static engine, CUDA) replays the step as one captured CUDA graph: a step's
    outputs are copies the next step leaves alone; `reset` lets streams join and leave without a
    recapture; a cache that grows recaptures.
    """

    def __init__(
        self,
        model: DuplexModel,
        batch: int = 1,
        chunk: int | None = None,
        left_chunks=...,
        vocoder: GriffinLimVocoder | bool | None = True,
        device: torch.device | str | None = None,
        engine: str = "static",
        max_history_frames: int | None = None,
        cuda_graph: bool = False,
    ):
        config = model.config
        self.model = model
        self.batch = batch
        self.chunk = config.chunk if chunk is None else int(chunk)
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 model frame, got {self.chunk}")
        model.check_chunk(self.chunk)
        self.left_chunks = config.left_chunks if left_chunks is ... else left_chunks
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        if max_history_frames is not None and (
            isinstance(max_history_frames, bool) or max_history_frames < 1
        ):
            raise ValueError(f"max_history_frames must be a positive int or None, got {max_history_frames!r}")
        self.max_history_frames = max_history_frames
        # Host-side facts of every stream (the static engine checks a step against them without
        # reading the device): frames fed so far (an upper bound: a refused NaN chunk counts) and
        # whether its final step came.
        self._host_frames = [0] * batch
        self._host_ended = [False] * batch
        parameter = next(model.parameters())
        self.device = torch.device(device) if device is not None else parameter.device
        self.dtype = parameter.dtype
        if cuda_graph and engine != "static":  # before any cache is allocated
            raise ValueError(
                "cuda_graph=True needs engine='static' (the packed engine reads the device in a step)"
            )
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, the session is on {self.device}")
        self.log_mel = LogMel(
            LogMelConfig(sample_rate=config.sample_rate, n_mels=config.n_mels, hop=config.hop)
        ).to(self.device)
        self.pitch = (
            PitchConfig(sample_rate=config.sample_rate, hop=config.hop) if config.user_pitch else None
        )
        if vocoder is True:
            vocoder = GriffinLimVocoder(self.log_mel.config).to(self.device)
        self.vocoder = vocoder or None
        self.state = self._initial_state()
        self.cuda_graph = bool(cuda_graph)
        self._graph: StepGraph | None = None  # captured at the first step

    @property
    def chunk_samples(self) -> int:
        """Audio samples per step: chunk * 640 at 16 kHz and x4 subsampling (chunk * 40 ms)."""
        return self.chunk * self.model.config.frame_samples

    def _new_model_state(self) -> DuplexState:
        capacity = None
        if self.engine == "static" and self.left_chunks is None:
            capacity = self.max_history_frames or DEFAULT_HISTORY_FRAMES
        return self.model.initial_state(
            self.batch, self.chunk, self.left_chunks, self.device, self.dtype, self.engine, capacity
        )

    def _initial_state(self, model_state: DuplexState | None = None) -> SessionState:
        """A fresh state; `model_state` given: that one (the caller resets its rows), else a new one."""
        batch, device = self.batch, self.device
        return SessionState(
            mel_tail=self.log_mel.initial_state(batch, device),
            model=self._new_model_state() if model_state is None else model_state,
            feedback=self._initial_feedback(),
            vocoder=self.vocoder.initial_state(batch, device) if self.vocoder else None,
            pitch=pitch_initial_state(batch, self.pitch, device) if self.pitch else None,
        )

    def reset(self, streams=None) -> None:
        """Start new dialogues on the selected streams (all when None): (batch,) bool flags, or
        stream indices (an int, a list of ints, an integer tensor); see s2s.attention.stream_selection."""
        if streams is None:
            streams = torch.ones(self.batch, dtype=torch.bool, device=self.device)
        else:
            streams = stream_flags(streams, self.batch, self.device)  # checked before anything changes
        fresh = self._initial_state(self.state.model)  # the session's own tensors; the model's below
        self.state = _select_state(streams, fresh, self.state)
        self.state.feedback = self._keep_feedback(streams, fresh.feedback, self.state.feedback)
        self.state.model = self.state.model.reset(streams)  # its caches' rows reset in place
        for row in streams.nonzero().flatten().tolist():
            self._host_frames[row], self._host_ended[row] = 0, False
        if self._graph is not None:  # the fresh rows into the tensors the graph reads
            self._graph.adopt()

    def stream(self, waveform, sample_rate: int):
        """Stream a whole recording from a fresh state (the session is reset first): a generator of
        each step's output (`StreamChunk`), resampled, padded and trimmed for you, the tail kept."""
        from s2s.streaming.stream import stream_waveform  # it reads the token session's outputs too

        return stream_waveform(self, waveform, sample_rate)

    @torch.no_grad()
    def step(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor | None = None,
        final: bool | torch.Tensor = False,
        sample_rate: int | None = None,
    ) -> StepOutput:
        """Feed (B, chunk_samples) user audio (a 1-D chunk when B is 1); returns this chunk's output.

        `lengths` (B,) real samples per stream (default all): a stream with 0 is idle this step;
        fewer than chunk_samples is allowed only on a stream's `final` step. The static engine
        checks `lengths` and `final` on the host: pass them as lists or CPU tensors (device tensors
        are copied back, which waits for the device).
        """
        if self.engine == "packed":
            audio, counts, final, invalid = self._check(audio, lengths, final, sample_rate)
            output = self._atomic(lambda: self._step(audio, counts, final))
            output.invalid_input = invalid
            return output
        audio, host_values, host = self._check_static(audio, lengths, final, sample_rate)
        if self.cuda_graph:
            if self._graph is None:
                self._graph = StepGraph(self)
            output = self._graph.replay(audio, host_values)  # checked above: a replay cannot fail half way
            if self.vocoder is not None:  # outside the graph: torch.istft reads the device (a check)
                output.audio = self._vocode_in_place(output.mel, output.frames > 0)
        else:
            values = host_values.to(self.device, non_blocking=True)  # the step's host values in one copy
            output = self._atomic(lambda: self.step_on_device(audio, values))
        self._host_frames, self._host_ended = host
        return output

    def _atomic(self, step):
        """step(), with the caches restored if anything fails half way (the rest of the session's
        state is replaced only at the end)."""
        snapshots = [(cache, cache.snapshot()) for cache in self.state.caches.all()]
        try:
            return step()
        except BaseException:
            for cache, snapshot in snapshots:
                cache.restore(snapshot)
            raise

    def step_on_device(self, audio: torch.Tensor, values: torch.Tensor, vocode: bool = True) -> StepOutput:
        """The static engine's step from device inputs only (what a CUDA graph captures): (B,
        chunk_samples) audio and (3, B) int64 values (samples, frames, final) already checked.
        `vocode=False` leaves the vocoder out (its audio None, its state as it was)."""
        audio, invalid = _finite_input(audio, values[0], self.chunk_samples)
        counts = torch.where(invalid, 0, values[1])
        final = values[2].bool() & (counts > 0)
        output = self._step(audio, counts, final, vocode)
        output.invalid_input = invalid
        return output

    def carried_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step carries to the next (the session's state, the model's state but its
        caches, then the cache frame counts; not the caches' storage, which is written in place), in
        a fixed order."""
        state = self.state
        leaves = [
            leaf
            for owner, skipped in ((state, "model"), (state.model, "caches"))
            for field in dataclasses.fields(owner)
            if field.name != skipped
            for leaf in tensor_leaves(getattr(owner, field.name))
        ]
        return leaves + _distinct(t for c in state.caches.all() for t in (c.key_frames, c.query_frames))

    def bind_carried(self, state: SessionState, carried: list[torch.Tensor]) -> None:
        """Make `state` (whose tensors are `carried`) the session's state again, with each cache's
        frame counts pointing at their tensors in `carried`."""
        self.state = state
        caches = state.caches.all()
        current = _distinct(t for c in caches for t in (c.key_frames, c.query_frames))
        counters = dict(zip(map(id, current), carried[len(carried) - len(current) :], strict=True))
        for cache in caches:
            cache.key_frames, cache.query_frames = (
                counters[id(cache.key_frames)],
                counters[id(cache.query_frames)],
            )

    def _check_static(self, audio, lengths, final, sample_rate):
        """The static engine's checks, on host values only (lengths and final as given, or read
        once if the caller passed device tensors); returns the audio on the device, the step's
        (3, B) host values (samples, frames, final) and the host facts to keep once it has run."""
        c = self.model.config
        audio = self._check_audio(audio, sample_rate)
        if lengths is None:
            samples = [self.chunk_samples] * self.batch
        else:
            samples = torch.as_tensor(lengths).to("cpu", torch.int64)
            if samples.shape != (self.batch,) or bool(
                (samples < 0).any() | (samples > self.chunk_samples).any()
            ):
                raise ValueError(
                    f"lengths must be ({self.batch},) sample counts in [0, {self.chunk_samples}], "
                    f"got {samples.tolist()}"
                )
            samples = samples.tolist()
        final_host = final_flags(
            final.cpu() if isinstance(final, torch.Tensor) else final, self.batch
        ).tolist()
        frames = [n // c.frame_samples for n in samples]  # samples that do not fill a model frame are dropped
        short = [
            row for row, n in enumerate(frames) if n < self.chunk and samples[row] > 0 and not final_host[row]
        ]
        if short:
            raise ValueError(
                f"stream(s) {short} got less than a whole chunk without final=True; only a stream's "
                "last step may be short"
            )
        ended = [row for row, n in enumerate(frames) if n > 0 and self._host_ended[row]]
        if ended:
            raise ValueError(
                f"stream(s) {ended} already had their final step; reset() them before feeding more"
            )
        after = [done + n for done, n in zip(self._host_frames, frames, strict=True)]
        needed = max(after, default=0)
        if self.left_chunks is None and needed > self._history_capacity():
            if self.max_history_frames is not None:
                over = [row for row, n in enumerate(after) if n > self.max_history_frames]
                raise ValueError(
                    f"stream(s) {over} would pass max_history_frames={self.max_history_frames} frames of "
                    "history; reset() them, or create the session with a larger max_history_frames "
                    "(or left_chunks to bound the history)"
                )
            for cache in self.state.caches.all():
                cache.reserve(needed)
            self._graph = None  # new storage: the next step captures again
        values = torch.tensor([samples, frames, final_host], dtype=torch.int64)
        ended_after = [
            e or (f and n > 0) for e, f, n in zip(self._host_ended, final_host, frames, strict=True)
        ]
        return audio, values, (after, ended_after)

    def _history_capacity(self) -> int:
        """Key frames the static caches hold per stream (unbounded history)."""
        return min(cache.capacity for cache in self.state.caches.all())

    def _step(self, audio: torch.Tensor, counts: torch.Tensor, final: torch.Tensor, vocode: bool = True):
        with _batch_invariant(self.device):
            return self._step_streams(audio, counts, final, vocode)

    def _step_streams(self, audio, counts: torch.Tensor, final: torch.Tensor, vocode: bool) -> StepOutput:
        model, state = self.model, self.state
        active = counts > 0

        # The log-mel front end and the vocoder run in float32 whatever the model's dtype (an FFT in
        # bf16 loses the quiet bands); the model's layers run in its own dtype (bf16 / fp16 on a GPU,
        # where attention then goes through the CuTe kernel).
        mel, mel_tail = self.log_mel.stream(audio.float(), state.mel_tail)
        pitch = state.pitch
        if pitch is not None:  # the same audio's pitch channels after the log-mel (model.user_input)
            channels, pitch = pitch_stream(audio.float(), state.pitch, self.pitch)
            mel = torch.cat([mel, channels], dim=-1)
            pitch = pitch.where(active, state.pitch)
        decoder_in = self._decoder_input(state.feedback)
        hidden, encoded, model_state = model.step(state.model, mel.to(self.dtype), counts, final, decoder_in)
        mel, speaking, raw, feedback = self._outputs(hidden, state.feedback, state.positions, encoded)

        output_audio, vocoder_state = None, state.vocoder
        if self.vocoder is not None and vocode:
            output_audio, vocoder_state = self._vocode(mel, active, state.vocoder)
        self.state = SessionState(
            mel_tail=_where(active, mel_tail, state.mel_tail),
            model=model_state,
            feedback=self._keep_feedback(active, feedback, state.feedback),
            vocoder=vocoder_state,
            pitch=pitch,
        )
        return StepOutput(mel=mel, speaking=speaking, audio=output_audio, frames=counts, raw=raw)

    def _vocode(self, mel: torch.Tensor, active: torch.Tensor, state: VocoderState):
        """(audio, next vocoder state) of a chunk's mel; idle streams keep their state."""
        audio, following = self.vocoder.stream(mel, state)
        return audio, VocoderState(_where(active, following.context, state.context))

    def _vocode_in_place(self, mel: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The vocoder after a graph replay: its state is updated in place (it stays the tensor the
        graph's carried state holds, which `reset` writes fresh rows into)."""
        audio, following = self._vocode(mel, active, self.state.vocoder)
        self.state.vocoder.context.copy_(following.context)
        return audio

    # -- what the decoder reads back: model v1's mel and speaking probability ----------------------

    def _initial_feedback(self):
        c = self.model.config
        return torch.zeros(self.batch, self.chunk, c.feedback_dim, device=self.device, dtype=self.dtype)

    def _decoder_input(self, feedback) -> torch.Tensor:
        return self.model.feedback_in(feedback)

    def _outputs(self, hidden: torch.Tensor, feedback, positions: torch.Tensor, encoded: torch.Tensor):
        """(mel, speaking, raw output, next feedback) of a chunk's hidden states (`encoded`: the
        encoder's output of the same frames)."""
        out = self.model.heads(hidden)
        return out.mel, out.speaking, out, out.feedback

    def _keep_feedback(self, keep: torch.Tensor, new, old):
        """Per stream: `new` where keep[b], else `old`."""
        return _where(keep, new, old)

    def _check_audio(self, audio, sample_rate) -> torch.Tensor:
        """(B, chunk_samples) float audio on the session's device, or a clear error."""
        c = self.model.config
        if sample_rate is not None and sample_rate != c.sample_rate:
            raise ValueError(
                f"the model streams {c.sample_rate} Hz audio but got {sample_rate} Hz; resample first "
                "(s2s.data.audio.resample)"
            )
        if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
            raise TypeError("audio must be a float tensor of samples in [-1, 1]")
        if audio.dim() == 1 and self.batch == 1:
            audio = audio[None]
        if audio.dim() != 2 or audio.shape[0] != self.batch:
            hint = (
                " (mono: one channel per stream; a dialogue's user is channel 0)" if audio.dim() == 3 else ""
            )
            raise ValueError(
                f"audio must be (streams={self.batch}, samples={self.chunk_samples}){hint}, "
                f"got {tuple(audio.shape)}"
            )
        if audio.shape[1] != self.chunk_samples:
            raise ValueError(
                f"a step takes exactly {self.chunk_samples} samples per stream ({self.chunk} frames x "
                f"{c.frame_samples / c.sample_rate * 1000:.0f} ms), got {audio.shape[1]}; pad a stream's "
                "last chunk and give its real length in `lengths` with final=True"
            )
        return audio.to(self.device)

    def _check(self, audio, lengths, final, sample_rate):
        """The packed engine's checks (device values read back on the host; no host facts to keep)."""
        c = self.model.config
        audio = self._check_audio(audio, sample_rate)
        if lengths is None:
            samples = torch.full((self.batch,), self.chunk_samples, dtype=torch.int64, device=self.device)
        else:
            samples = torch.as_tensor(lengths, device=self.device).to(torch.int64)
            if samples.shape != (self.batch,) or bool(
                (samples < 0).any() | (samples > self.chunk_samples).any()
            ):
                raise ValueError(
                    f"lengths must be ({self.batch},) sample counts in [0, {self.chunk_samples}], "
                    f"got {samples.tolist()}"
                )
        audio, invalid = _finite_input(audio, samples, self.chunk_samples)
        counts = samples // c.frame_samples  # samples that do not fill a model frame are dropped
        counts = torch.where(invalid, 0, counts)
        final = final_flags(final, self.batch, self.device)
        short = (counts < self.chunk) & (samples > 0) & ~final & ~invalid
        if bool(short.any()):
            raise ValueError(
                f"stream(s) {short.nonzero().flatten().tolist()} got less than a whole chunk without "
                "final=True; only a stream's last step may be short"
            )
        # A final step too short for even one model frame has nothing to add.
        return audio, counts, final & (counts > 0), invalid


def _distinct(tensors) -> list[torch.Tensor]:
    """Each tensor once (by identity), in order of first appearance: the caches' frame counts, which
    a model's static caches share."""
    seen, distinct = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            distinct.append(t)
    return distinct


def _batch_invariant(device: torch.device):
    """On the CPU, oneDNN picks a convolution's algorithm by batch size, so a stream's frames would
    depend (in the last bits) on how many streams share its step; the native convolution does not
    (the front end's convolutions are small: the cost does not show)."""
    if device.type == "cpu":
        return _native_convolutions()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _native_convolutions():
    """oneDNN off for the block (torch.backends.mkldnn.flags would also set a TF32 flag, which warns)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def _finite_input(audio: torch.Tensor, samples: torch.Tensor, chunk_samples: int):
    """(audio with non-finite streams and padding zeroed, (B,) bool invalid). A stream with NaN or
    inf among its real samples sits the step out on zeros, and non-finite padding is zeroed: nothing
    non-finite enters the model, where (in packed attention) 0 x NaN would reach other streams."""
    finite = torch.isfinite(audio)
    real = torch.arange(chunk_samples, device=audio.device)[None, :] < samples[:, None]
    invalid = (~finite & real).any(dim=1)
    audio = torch.where(
        finite & ~invalid[:, None], audio, torch.zeros((), dtype=audio.dtype, device=audio.device)
    )
    return audio, invalid


def _where(keep: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.view(-1, *([1] * (new.dim() - 1))), new, old)


def _select_state(streams: torch.Tensor, fresh: SessionState, current: SessionState) -> SessionState:
    """The session's fresh per-stream tensors on the rows marked True; the model's state is reset
    by the caller."""
    vocoder = None
    if current.vocoder is not None:
        vocoder = VocoderState(_where(streams, fresh.vocoder.context, current.vocoder.context))
    return SessionState(
        mel_tail=_where(streams, fresh.mel_tail, current.mel_tail),
        model=current.model,
        feedback=current.feedback,  # the session keeps its own kind of feedback per stream
        vocoder=vocoder,
        pitch=None if current.pitch is None else fresh.pitch.where(streams, current.pitch),
    )
