"""Sampling the system's token of each frame of a chunk, under the grammar of s2s/data/tokens.py.

A chunk's frames come out of one decoder pass, but the grammar state (inside a reply or not)
changes within the chunk: frame c may only hold BOS if no reply is open after frames < c. So the
frames are sampled one after the other (a loop over the chunk's few frames, vectorised over
streams), each under the mask of the state the frames before it left:

    outside a reply: PAD or BOS          inside a reply: PAD, EOS or a word

A barge-in may end a reply at any frame: EOS is always allowed inside a reply.

The knobs are Moshi's and NeMo DuplexS2S's: temperature (0 = greedy), top-k, and additive logit
biases for PAD, BOS and EOS (a positive BOS bias answers sooner, a positive EOS bias stops sooner).
`greedy_words` samples when to say a word but takes the most likely word; `onset_temperature`
gives the decision to start a reply (PAD or BOS, outside a reply) its own temperature, and
`onset_quantile` makes that decision without drawing: the frame-by-frame BOS probabilities of a
silence describe when a draw would start the reply (a distribution over onset times); the reply
starts where that distribution reaches the quantile, the same frame on every run. A draw gives a
long pause a fresh chance at every frame; the quantile starts a reply only once the model's own
onset distribution has put that much mass behind it. The mass restarts when a reply ends and while
the user-state head hears the user speak.
Biases apply before the mask, the top-k and the temperature, in greedy decoding too. One more,
`state_gain`, lets the encoder's user-state head veto a reply, as Freeze-Omni's state classifier
decides: BOS's logit gets `state_gain * log P(ended | ended or pause)` of the frame (a per-frame
`bos_shift`, 0 when the head is sure the turn ended, very negative when it hears a pause). The
decoder's own BOS hardly tells a pause from a turn end; the head does better (docs/results.md).
Its mirror, `stop_gain`, lets the head end a reply the user talks over: inside a reply, EOS's logit
gets `stop_gain * P(speaking)` of the frame (an `eos_shift`: up to +gain while the head hears the
user speak, ~0 while the user is silent), as Freeze-Omni's state classifier also decides when to stop.

Randomness is one uniform number per (stream, frame), passed in as `noise`: `frame_noise` makes it a
pure function of a per-stream seed and the frame's index in the stream (a counter-based generator,
the same numbers on any device and batch, with no host round trip), `generator_noise` draws it from
per-stream `torch.Generator`s. The token is the inverse of the masked distribution's CDF at it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, PAD, SPECIALS, speaking_from_tokens


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7  # 0: greedy
    top_k: int = 0  # 0: all tokens
    pad_bias: float = 0.0
    bos_bias: float = 0.0
    eos_bias: float = 0.0
    # >= 0: BOS + state_gain * log P(ended | ended or pause) from the user-state head. 4 was chosen on
    # the validation split of two tiny models (0, 2, 4): take-overs 0.125-0.175 -> 0 per pause,
    # talk-overs 0.18-0.21 -> 0.03-0.04 per turn, replies ~100 ms later (docs/results.md).
    state_gain: float = 4.0
    # >= 0: inside a reply, EOS + stop_gain * P(speaking) from the user-state head (0: the decoder
    # alone decides when a barge-in ends a reply, as every run before 2026-12-05 did).
    stop_gain: float = 0.0
    # True: whether a frame holds a word is sampled as above, which word it is is the most likely
    # one (a reply's words are fixed by the task: sampling among them only adds wrong words).
    greedy_words: bool = False
    # The temperature of the one decision outside a reply, PAD or BOS (None: `temperature`; 0: BOS
    # only where it is more likely than PAD). Sampled at 0.7, a long pause gives a reply onset
    # a fresh chance every frame; the base model's false take-overs all fell in pauses >= 0.55 s.
    onset_temperature: float | None = None
    # In (0, 1): start a reply, outside one, exactly when the probability that sampling (at the onset
    # temperature, or 1 when greedy) would have started it during the current silence reaches this
    # quantile; None: the onset is drawn.
    onset_quantile: float | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.onset_temperature is not None and not self.onset_temperature >= 0:
            raise ValueError(
                f"onset_temperature must be >= 0 (0 = greedy onsets) or None, got {self.onset_temperature}"
            )
        if self.onset_quantile is not None and not 0.0 < self.onset_quantile < 1.0:
            raise ValueError(
                f"onset_quantile must lie strictly between 0 and 1 (0.5: the median onset), or be None, "
                f"got {self.onset_quantile}"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = all tokens), got {self.top_k}")
        if not self.state_gain >= 0:
            raise ValueError(
                f"state_gain must be >= 0 (0 = the decoder alone decides), got {self.state_gain}"
            )
        if not (self.stop_gain >= 0 and math.isfinite(self.stop_gain)):
            raise ValueError(
                f"stop_gain must be a finite number >= 0 (0 = the decoder alone decides when to stop), "
                f"got {self.stop_gain}"
            )


DRAWN = "drawn"


def parse_onset_quantile(value) -> float | str | None:
    """An onset rule as given: a quantile strictly between 0 and 1, "drawn", or None (the run's)."""
    if value is None or value == DRAWN:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value < 1.0:
        return float(value)
    raise ValueError(
        f"onset_quantile must be a quantile strictly between 0 and 1 (0.5: the median onset), "
        f"'{DRAWN}' (sampled onsets), or null (the rule the run was validated with), got {value!r}"
    )


def resolve_onset_quantile(given, validated: float | None) -> float | None:
    """The quantile to decode onsets with (None: drawn): the given rule (a quantile, or "drawn"),
    else the one the run's free-running validation decoded with."""
    given = parse_onset_quantile(given)
    if given is None:
        return validated
    return None if given == DRAWN else given


def as_validated(
    sampling: SamplingConfig,
    *,
    state_gain: float | None = None,
    onset_quantile=None,
    stop_gain: float | None = None,
    chosen_gain: float | None = None,
    validated_quantile: float | None = None,
    validated_stop: float | None = None,
) -> tuple[SamplingConfig, str]:
    """The sampling to decode a trained run with (stream_eval, s2s.infer): the state gain, the onset
    rule and the stop gain each as given, else as the run's free-running validation chose or decoded
    with, else `sampling`'s own; and where the state gain came from."""
    sampling = dataclasses.replace(
        sampling, onset_quantile=resolve_onset_quantile(onset_quantile, validated_quantile)
    )
    stop = stop_gain if stop_gain is not None else validated_stop
    if stop is not None:
        sampling = dataclasses.replace(sampling, stop_gain=stop)
    if state_gain is not None:
        return dataclasses.replace(sampling, state_gain=state_gain), "given"
    if chosen_gain is not None:
        return dataclasses.replace(sampling, state_gain=chosen_gain), "chosen on validation by the run"
    return sampling, "default"


@dataclass(frozen=True)
class SampledTokens:
    tokens: torch.Tensor  # (B, C) int64
    in_reply: torch.Tensor  # (B,) bool: the state after the chunk, carried to the next
    speaking: torch.Tensor  # (B, C) bool: frames strictly between BOS and EOS
    # (B,) float32: the probability that no reply would have been drawn yet in the current silence
    # (onset_quantile), carried to the next chunk; 1 inside a reply
    onset_survival: torch.Tensor | None = None


def allowed_tokens(in_reply: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: the tokens the grammar allows after state `in_reply` (B,)."""
    ids = torch.arange(vocab_size, device=in_reply.device)
    outside = (ids == PAD) | (ids == BOS)
    return torch.where(in_reply.unsqueeze(-1), ids != BOS, outside)


def sample_tokens(
    logits: torch.Tensor,
    in_reply: torch.Tensor,
    config: SamplingConfig,
    noise: torch.Tensor | None = None,
    bos_shift: torch.Tensor | None = None,
    onset_survival: torch.Tensor | None = None,
    user_speaking: torch.Tensor | None = None,
    eos_shift: torch.Tensor | None = None,
) -> SampledTokens:
    """Sample a token per frame of `logits` (B, C, V), frame after frame, under the grammar.

    `in_reply` (B,) bool is the state before the chunk; `noise` (B, C) uniforms in [0, 1)
    (`frame_noise`, `generator_noise`), unused and optional when `config.temperature` is 0;
    `bos_shift` (B, C) is added to BOS's logit (`state_bos_shift`), `eos_shift` (B, C) to EOS's
    (`state_eos_shift`); `onset_survival` and `user_speaking` as in `sample_frames` (config.onset_quantile).
    """
    if logits.dim() != 3 or logits.shape[-1] <= max(PAD, BOS, EOS):
        raise ValueError(f"logits must be (streams, frames, vocabulary > 3), got {tuple(logits.shape)}")
    frames = logits.shape[1]
    return sample_frames(
        lambda frame, before: logits[:, frame], frames, in_reply, config, noise, bos_shift,
        onset_survival, user_speaking, eos_shift,
    )  # fmt: skip


def turn_end_log_odds(user_state_logits: torch.Tensor) -> torch.Tensor:
    """(...) float32 log P(ended) / P(pause) from the user-state head's (..., 4) logits: how sure the
    head is that a silence ends the user's turn rather than pausing inside it."""
    logits = user_state_logits.float()
    return logits[..., UserState.ENDED] - logits[..., UserState.PAUSE]


def state_bos_shift(user_state_logits: torch.Tensor, gain: float | torch.Tensor) -> torch.Tensor:
    """(B, C) `gain * log P(ended | ended or pause)` from the user-state head's (B, C, 4) logits;
    `gain` a float, or (B,) one per stream (several operating points in one batch)."""
    log_ended = torch.nn.functional.logsigmoid(turn_end_log_odds(user_state_logits))
    if isinstance(gain, torch.Tensor):
        if gain.shape != log_ended.shape[:1]:
            raise ValueError(f"gain must be a float or one per stream {tuple(log_ended.shape[:1])}, got "
                             f"{tuple(gain.shape)}")  # fmt: skip
        gain = gain.to(log_ended.device, log_ended.dtype).unsqueeze(-1)
    return gain * log_ended


def state_eos_shift(user_state_logits: torch.Tensor, gain: float) -> torch.Tensor:
    """(B, C) `gain * P(speaking)` from the user-state head's (B, C, 4) logits: how strongly a reply
    is pushed to end on each frame, by how sure the head is that the user speaks over it."""
    speaking = torch.softmax(user_state_logits.float(), dim=-1)[..., UserState.SPEAKING]
    return gain * speaking


FrameLogits = Callable[[int, torch.Tensor], torch.Tensor]


def sample_frames(
    frame_logits: FrameLogits,
    frames: int,
    in_reply: torch.Tensor,
    config: SamplingConfig,
    noise: torch.Tensor | None = None,
    bos_shift: torch.Tensor | None = None,
    onset_survival: torch.Tensor | None = None,
    user_speaking: torch.Tensor | None = None,
    eos_shift: torch.Tensor | None = None,
) -> SampledTokens:
    """Sample `frames` tokens one after the other: `frame_logits(c, tokens)` gives the (B, V) logits
    of frame c once the (B, c) tokens of the frames before it in the chunk are sampled (the model's
    heads read them), so each token knows the ones before it. `bos_shift` and `eos_shift` (B,
    frames): added to BOS's and EOS's logit of each frame, after the biases. With
    `config.onset_quantile`: `onset_survival` (B,) is the previous chunk's (None: 1, a fresh stream)
    and `user_speaking` (B, frames) bool, if given, restarts it on frames where the user speaks."""
    streams = in_reply.shape[0] if in_reply.dim() == 1 else -1
    if in_reply.dim() != 1 or in_reply.dtype != torch.bool:
        raise ValueError(f"in_reply must be a bool tensor of shape (streams,), got {in_reply.dtype} "
                         f"{tuple(in_reply.shape)}")  # fmt: skip
    greedy = config.temperature == 0
    if not greedy and (noise is None or noise.shape != (streams, frames)):
        raise ValueError(
            f"sampling at temperature {config.temperature} needs noise of shape ({streams}, {frames}) "
            f"(frame_noise or generator_noise), got {None if noise is None else tuple(noise.shape)}"
        )
    for name, shift in (("bos_shift", bos_shift), ("eos_shift", eos_shift)):
        if shift is not None and shift.shape != (streams, frames):
            raise ValueError(f"{name} must be (streams={streams}, frames={frames}), got {tuple(shift.shape)}")
    state = in_reply
    tokens = torch.zeros(streams, 0, dtype=torch.int64, device=in_reply.device)
    quantile = config.onset_quantile
    survival = None
    if quantile is not None:
        survival = torch.ones(streams, device=in_reply.device) if onset_survival is None else onset_survival
        if survival.shape != (streams,):
            raise ValueError(f"onset_survival must be ({streams},), got {tuple(survival.shape)}")
        survival = survival.float()
        if user_speaking is not None and user_speaking.shape != (streams, frames):
            raise ValueError(
                f"user_speaking must be (streams={streams}, frames={frames}), "
                f"got {tuple(user_speaking.shape)}"
            )
    for frame in range(frames):
        logits = frame_logits(frame, tokens)
        if logits.dim() != 2 or logits.shape[0] != streams or logits.shape[-1] <= max(PAD, BOS, EOS):
            raise ValueError(
                f"logits of a frame must be (streams={streams}, vocabulary > 3), got {tuple(logits.shape)}"
            )
        state = state.to(logits.device)
        scores = _biased(logits, config)
        if bos_shift is not None:
            scores[:, BOS] += bos_shift[:, frame].to(scores.device, scores.dtype)
        if eos_shift is not None:
            scores[:, EOS] += eos_shift[:, frame].to(scores.device, scores.dtype)
        masked = scores.masked_fill(~allowed_tokens(state, logits.shape[-1]), float("-inf"))
        # A stream whose allowed tokens are all -inf (a broken model) stays silent: PAD.
        dead = torch.isneginf(masked).all(dim=-1, keepdim=True)
        masked[:, PAD : PAD + 1] = torch.where(dead, 0.0, masked[:, PAD : PAD + 1])
        if greedy:
            token = masked.argmax(dim=-1)
        else:
            onset = config.onset_temperature
            temperature = config.temperature
            if onset:  # streams outside a reply sample at their own temperature, in the same pass
                temperature = torch.where(state, temperature, onset).unsqueeze(-1).to(masked.dtype)
            token = _inverse_cdf(_top_k(masked, config.top_k) / temperature, noise[:, frame])
            if onset == 0:  # greedy onsets
                token = torch.where(state, token, masked.argmax(dim=-1))
            if config.greedy_words:
                best_word = masked[:, len(SPECIALS) :].argmax(dim=-1) + len(SPECIALS)
                token = torch.where(token >= len(SPECIALS), best_word, token)
        if quantile is not None:
            speaking = None if user_speaking is None else user_speaking[:, frame].to(masked.device)
            token, survival = _onset_by_quantile(
                masked, state, token, survival.to(masked.device), config, speaking
            )
        tokens = torch.cat([tokens.to(token.device), token[:, None]], dim=1)
        state = torch.where(token == BOS, True, torch.where(token == EOS, False, state))
    start = in_reply.to(tokens.device)
    return SampledTokens(tokens, state.to(tokens.device), speaking_from_tokens(tokens, start), survival)


def _onset_by_quantile(
    masked: torch.Tensor,
    in_reply: torch.Tensor,
    token: torch.Tensor,
    survival: torch.Tensor,
    config: SamplingConfig,
    user_speaking: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of `onset_quantile`: outside a reply, BOS exactly when 1 - survival x P(PAD) reaches
    the quantile (P at the onset temperature), else PAD; inside one, `token` as drawn. Returns the
    frame's tokens and the survival after it (1 inside a reply and where the user speaks)."""
    outside = ~in_reply
    if user_speaking is not None:
        survival = torch.where(user_speaking & outside, 1.0, survival)
    temperature = config.onset_temperature if config.onset_temperature is not None else config.temperature
    probabilities = torch.softmax(masked / (temperature or 1.0), dim=-1)  # outside: over PAD and BOS
    remaining = survival * (1.0 - probabilities[:, BOS])
    start = outside & (1.0 - remaining >= config.onset_quantile)
    token = torch.where(outside, torch.where(start, BOS, PAD), token)
    return token, torch.where(outside & ~start, remaining, 1.0)


def _biased(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Float scores with the PAD / BOS / EOS biases; NaN counts as impossible, +inf as merely
    certain (softmax of inf is NaN)."""
    scores = logits.float().clamp(max=1e30)
    scores = scores.masked_fill(scores.isnan(), float("-inf"))
    # Python scalars added in place: no tensor is made from host values inside a step (a CUDA graph
    # cannot capture a host-to-device copy)
    for token, bias in ((PAD, config.pad_bias), (BOS, config.bos_bias), (EOS, config.eos_bias)):
        if bias:
            scores[..., token] += bias
    return scores


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k == 0 or k >= scores.shape[-1]:
        return scores
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def _inverse_cdf(scores: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds `uniform`; tokens of probability 0 are never chosen."""
    probabilities = torch.softmax(scores, dim=-1)
    cdf = probabilities.cumsum(dim=-1)
    token = (cdf <= uniform.unsqueeze(-1).to(cdf.dtype) * cdf[..., -1:]).sum(dim=-1)
    ids = torch.arange(scores.shape[-1], device=scores.device)
    last = torch.where(probabilities > 0, ids, 0).amax(dim=-1)  # rounding may overshoot the total
    return torch.minimum(token, last)


# --- per-stream randomness -----------------------------------------------------------------------


def frame_noise(seeds: torch.Tensor, positions: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames) uniforms in [0, 1): a hash of each stream's seed and the frame's index in the stream.

    `seeds` (B,) int64, `positions` (B,) int64 the index of the chunk's first frame in each stream.
    Integer arithmetic only (32-bit lanes in int64), so any device and batch give the same numbers.
    """
    seeds, positions = seeds.long(), positions.long()
    index = positions.unsqueeze(-1) + torch.arange(frames, device=positions.device)
    stream = _mix32((seeds & _MASK32) ^ _mix32(((seeds >> 32) & _MASK32) ^ 0x9E3779B9))
    hashed = _mix32(stream.unsqueeze(-1) ^ _mix32((index & _MASK32) ^ 0x85EBCA6B))
    return (hashed >> 8).float() / float(1 << 24)


def generator_noise(generators: Sequence[torch.Generator], frames: int, device=None) -> torch.Tensor:
    """(B, frames) uniforms, one row from each stream's own generator (advancing it by `frames`)."""
    rows = [torch.rand(frames, generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device or rows[0].device)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), without overflowing int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) of x in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)
