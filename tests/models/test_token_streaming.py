"""Model v2 streaming: sampled tokens obey the grammar, runs are reproducible per stream, and the
offline pass given the streamed tokens reproduces the stream (fp32 within 1e-4)."""

import pytest
import torch

from s2s.data.features import LogMel
from s2s.data.pitch import pitch_features
from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, grammar_errors, reply_states, speaking_from_tokens
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel, shift_tokens
from s2s.models.token_sampling import SamplingConfig, turn_end_log_odds
from s2s.streaming.token_session import TokenStreamingSession

CONFIG = TokenDuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)


def _model(seed: int, **changes) -> TokenDuplexModel:
    torch.manual_seed(seed)
    model = TokenDuplexModel(TokenDuplexConfig(**{**CONFIG.__dict__, **changes})).eval()
    with torch.no_grad():  # an untrained model barely opens replies; make BOS / EOS likely
        model.token_head.bias[BOS] += 2.0
        model.token_head.bias[EOS] += 1.0
    return model


def _dialogue(samples: int, generator: torch.Generator) -> torch.Tensor:
    envelope = (torch.rand(samples // 1600 + 1, generator=generator) > 0.4).float().repeat_interleave(1600)
    return 0.2 * torch.randn(samples, generator=generator) * envelope[:samples]


def _offline_input(model: TokenDuplexModel, audio: torch.Tensor) -> torch.Tensor:
    """The user input of the offline pass: log-mel, + pitch channels for a model with user_pitch."""
    return model.user_input(LogMel()(audio), pitch_features(audio) if model.config.user_pitch else None)


def _steps(session, audio: torch.Tensor) -> list:
    """Feed (B, samples) audio chunk by chunk; the session's output of every step."""
    size, outs = session.chunk_samples, []
    for start in range(0, audio.shape[1], size):
        piece = audio[:, start : start + size]
        last = start + size >= audio.shape[1]
        padded = torch.nn.functional.pad(piece, (0, size - piece.shape[1]))
        outs.append(session.step(padded, lengths=torch.full((audio.shape[0],), piece.shape[1]), final=last))
    return outs


def _stream(session, audio: torch.Tensor, outs: list | None = None):
    """(tokens, mel, speaking, logits) of streaming (B, samples) audio, concatenated over steps
    (`outs`: the steps, if already run)."""
    outs = _steps(session, audio) if outs is None else outs
    frames = audio.shape[1] // 640
    cat = lambda name: torch.cat([getattr(o, name) for o in outs], dim=1)
    tokens = torch.cat([o.raw.feedback for o in outs], dim=1)[:, :frames]
    logits = torch.cat([o.raw.token_logits for o in outs], dim=1)[:, :frames]
    return tokens, cat("mel")[:, : 4 * frames], cat("speaking")[:, :frames], logits


@pytest.mark.parametrize(
    ("chunk", "left_chunks", "recent", "pitch"),
    [
        (1, None, 4, False),
        (1, 2, 4, False),
        (4, None, 4, False),
        (4, 2, 4, False),
        (4, None, 1, False),
        (2, None, 3, False),
        (1, None, 4, True),
        (4, 2, 4, True),
        (2, None, 3, True),
    ],
)
def test_token_streaming_equals_offline_with_the_streamed_tokens(
    chunk, left_chunks, recent, pitch, generator
):
    seed = int(torch.randint(1000, (1,), generator=generator))
    model = _model(seed, recent_tokens=recent, user_pitch=pitch)
    audio = torch.stack([_dialogue(16000 * 3 + 700, generator) for _ in range(2)])
    if pitch:  # a voiced stretch with a known F0, so the pitch channels are not all zero
        t = torch.arange(16000) / 16000
        audio[1, 8000:24000] = 0.3 * torch.sin(2 * torch.pi * 140.0 * t) * (audio[1, 8000:24000] != 0)
    # state_gain 0: an untrained user-state head vetoes replies at random and a stream may then open
    # none (test_state_gain_... streams with the head's say on)
    sampling = SamplingConfig(0.8, state_gain=0.0)
    session = TokenStreamingSession(
        model, batch=2, chunk=chunk, left_chunks=left_chunks, vocoder=False, sampling=sampling
    )
    steps = _steps(session, audio)
    tokens, mel, speaking, logits = _stream(session, audio, steps)
    log_odds = torch.cat([o.raw.turn_end_log_odds for o in steps], dim=1)[:, : tokens.shape[1]]
    assert (tokens == BOS).any(), f"seed {seed}: no reply opened; the check below would be vacuous"
    assert not grammar_errors(tokens, False).any(), f"seed {seed}: tokens break the grammar"
    assert torch.equal(speaking.bool(), speaking_from_tokens(tokens, False)), f"seed {seed}"
    with torch.no_grad():
        offline = model(_offline_input(model, audio), tokens, chunk=chunk, left_chunks=left_chunks)
    mel_error = (offline.mel - mel).abs().max().item()
    logit_error = (offline.token_logits - logits).abs().max().item()
    assert mel_error <= 1e-4 and logit_error <= 1e-4, (seed, mel_error, logit_error)
    # what stream_eval reads at silence onsets: the user-state head's log-odds, as offline
    state_error = (turn_end_log_odds(offline.user_state_logits) - log_odds).abs().max().item()
    assert state_error <= 1e-4, (seed, state_error)
    # The comparison can fail: the offline pass with tokens one chunk off is far from the stream.
    with torch.no_grad():
        wrong = model(
            _offline_input(model, audio), shift_tokens(tokens, 1), chunk=chunk, left_chunks=left_chunks
        )
    assert (wrong.token_logits - logits).abs().max() > 1e-2, seed


def test_streams_are_reproducible_and_independent_of_their_neighbours(generator):
    model = _model(7)
    audio = torch.stack([_dialogue(16000 * 2, generator) for _ in range(3)])
    sampling = SamplingConfig(temperature=1.0)
    together = _stream(TokenStreamingSession(model, batch=3, vocoder=False, sampling=sampling,
                                             seeds=torch.tensor([5, 6, 7])), audio)[0]  # fmt: skip
    again = _stream(TokenStreamingSession(model, batch=3, vocoder=False, sampling=sampling,
                                          seeds=torch.tensor([5, 6, 7])), audio)[0]  # fmt: skip
    alone = _stream(TokenStreamingSession(model, batch=1, vocoder=False, sampling=sampling,
                                          seeds=torch.tensor([6])), audio[1:2])[0]  # fmt: skip
    other_seed = _stream(TokenStreamingSession(model, batch=1, vocoder=False, sampling=sampling,
                                               seeds=torch.tensor([99])), audio[1:2])[0]  # fmt: skip
    assert torch.equal(together, again)
    assert torch.equal(together[1:2], alone)
    assert not torch.equal(alone, other_seed), "another seed samples other tokens"


def test_bos_bias_opens_replies_sooner(generator):
    """The rate of BOS per frame on which the grammar allows it (no reply open): a count of BOS
    saturates, since a reply must close before the next can open."""
    model = _model(3)
    audio = torch.stack([_dialogue(16000 * 3, generator) for _ in range(4)])
    rates = []
    for bias in (-3.0, 0.0, 3.0):
        session = TokenStreamingSession(
            model, batch=4, vocoder=False, sampling=SamplingConfig(temperature=1.0, bos_bias=bias)
        )
        tokens = _stream(session, audio)[0]
        open_before, _ = reply_states(tokens, False)
        allowed = ~open_before
        rates.append(float((tokens == BOS)[allowed].sum() / allowed.sum()))
    assert rates[0] < rates[1] < rates[2], rates


def test_state_gain_holds_replies_back_and_the_stream_still_equals_offline(generator):
    """The user-state head's shift is never positive, so a gain opens fewer replies per frame where
    one may open; the raw logits stay the model's (streaming == offline with the streamed tokens)."""
    seed = int(torch.randint(1000, (1,), generator=generator))
    model = _model(seed)
    audio = torch.stack([_dialogue(16000 * 3, generator) for _ in range(4)])
    rates = []
    for gain in (0.0, 6.0):
        session = TokenStreamingSession(
            model, batch=4, vocoder=False, sampling=SamplingConfig(temperature=1.0, state_gain=gain)
        )
        tokens, _, _, logits = _stream(session, audio)
        open_before, _ = reply_states(tokens, False)
        allowed = ~open_before
        rates.append(float((tokens == BOS)[allowed].sum() / allowed.sum()))
        with torch.no_grad():
            offline = model(_offline_input(model, audio), tokens, chunk=session.chunk)
        error = (offline.token_logits - logits).abs().max().item()
        assert error <= 1e-4, (seed, gain, error)
    assert rates[1] < rates[0], (seed, rates)


def test_stop_gain_ends_replies_the_head_hears_talked_over_and_the_stream_still_equals_offline(generator):
    """With the user-state head sure the user speaks, a stop gain ends replies after fewer frames; the
    raw logits stay the model's (streaming == offline with the streamed tokens)."""
    seed = int(torch.randint(1000, (1,), generator=generator))
    model = _model(seed)
    with torch.no_grad():  # the head hears the user speak on every frame
        model.user_state_head.bias[int(UserState.SPEAKING)] += 30.0
        model.token_head.bias[EOS] -= 2.0  # replies run long unless something ends them
    audio = torch.stack([_dialogue(16000 * 3, generator) for _ in range(4)])
    lengths = []
    for gain in (0.0, 8.0):
        session = TokenStreamingSession(
            model,
            batch=4,
            vocoder=False,
            sampling=SamplingConfig(temperature=1.0, state_gain=0.0, stop_gain=gain),
        )
        tokens, _, speaking, logits = _stream(session, audio)
        assert not grammar_errors(tokens, False).any(), (seed, gain)
        replies = int((tokens == BOS).sum())
        lengths.append(float(speaking.sum()) / max(replies, 1))
        with torch.no_grad():
            offline = model(_offline_input(model, audio), tokens, chunk=session.chunk)
        error = (offline.token_logits - logits).abs().max().item()
        assert error <= 1e-4, (seed, gain, error)
    assert lengths[1] < lengths[0], (seed, lengths)


def test_per_stream_state_gains_equal_sessions_of_one_gain_each(generator):
    """state_gains (B,): each stream samples as a session with that one gain would (same seeds),
    bit for bit in fp32 on the CPU; bad gains are refused before anything streams."""
    seed = int(torch.randint(1000, (1,), generator=generator))
    model = _model(seed)
    audio = torch.stack([_dialogue(16000 * 2, generator) for _ in range(3)])
    gains = [0.0, 1.5, 6.0]
    seeds = torch.tensor([11, 12, 13])
    sampling = SamplingConfig(temperature=1.0, state_gain=4.0)  # replaced stream by stream
    mixed = _stream(TokenStreamingSession(model, batch=3, vocoder=False, sampling=sampling, seeds=seeds,
                                          state_gains=gains), audio)[0]  # fmt: skip
    for row, gain in enumerate(gains):
        one = SamplingConfig(temperature=1.0, state_gain=gain)
        own_seed = seeds[row : row + 1]
        session = TokenStreamingSession(model, batch=1, vocoder=False, sampling=one, seeds=own_seed)
        alone = _stream(session, audio[row : row + 1])[0]
        assert torch.equal(mixed[row : row + 1], alone), (seed, gain)
    for bad in ([1.0, 2.0], [0.0, -1.0, 1.0], [0.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="state_gains"):
            TokenStreamingSession(model, batch=3, vocoder=False, state_gains=bad)


def test_a_v1_model_is_refused():
    from s2s.models.duplex import DuplexModel

    with pytest.raises(TypeError, match="StreamingSession for model v1"):
        TokenStreamingSession(DuplexModel())


def test_user_pitch_reads_the_pitch_channels_and_off_reads_the_log_mel_alone(generator):
    """With user_pitch the front end reads 2 more channels (the pitch changes the output; the log-mel
    alone is refused with the fix); without it, the model and its input are as before."""
    audio = torch.stack([_dialogue(16000 * 2, generator) for _ in range(2)])
    t = torch.arange(16000) / 16000
    audio[0, :16000] = 0.3 * torch.sin(2 * torch.pi * 140.0 * t)
    mel, pitch = LogMel()(audio), pitch_features(audio)
    assert pitch[0, 10:100, 0].min() > 0.9, "the tone should be voiced"
    tokens = torch.zeros(2, mel.shape[1] // 4, dtype=torch.int64)
    model = _model(5, user_pitch=True)
    assert model.front_end.subsample.conv.in_channels == 82
    with torch.no_grad():
        out = model(model.user_input(mel, pitch), tokens).mel
        flat = model(model.user_input(mel, torch.zeros_like(pitch)), tokens).mel
    assert (out - flat).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"data\.user_pitch=true"):
        model.user_input(mel, None)
    with pytest.raises(ValueError, match="82"):
        model(mel, tokens)
    off = _model(5)
    assert off.front_end.subsample.conv.in_channels == 80 and off.user_input(mel, pitch) is mel


def test_onset_quantile_streams_onsets_independent_of_the_seed_and_equal_to_offline(generator):
    """With onset_quantile the streams' first reply opens on the same frame whatever their seed (the
    onset is decided, not drawn), replies reset and reopen across chunks, the survival of a reset
    stream restarts, and the offline pass given the streamed tokens reproduces the logits."""
    seed = int(torch.randint(1000, (1,), generator=generator))
    model = _model(seed)
    with torch.no_grad():  # BOS likelier still: with _model's bias alone 2 of 200 seeds opened no reply
        model.token_head.bias[BOS] += 2.0  # in 3 s (and 816 in 17 of 20 dialogues); with it 0 of 1000
    audio = _dialogue(16000 * 3, generator).expand(4, -1).contiguous()
    sampling = SamplingConfig(temperature=0.8, state_gain=0.0, onset_quantile=0.5)
    session = TokenStreamingSession(
        model, batch=4, chunk=2, vocoder=False, sampling=sampling, seeds=torch.tensor([1, 2, 3, 4])
    )
    tokens, _, _, logits = _stream(session, audio)
    assert (tokens == BOS).any(dim=1).all(), f"seed {seed}: a stream opened no reply"
    first = (tokens == BOS).int().argmax(dim=1)
    assert (first == first[0]).all(), f"seed {seed}: first onsets {first.tolist()} differ by seed"
    assert not grammar_errors(tokens, False).any(), f"seed {seed}: tokens break the grammar"
    with torch.no_grad():
        offline = model(_offline_input(model, audio), tokens, chunk=2)
    error = (offline.token_logits - logits).abs().max().item()
    assert error <= 1e-4, (seed, error)
    survival = session.state.feedback.onset_survival
    assert survival.shape == (4,) and ((survival > 0) & (survival <= 1)).all(), f"seed {seed}"
    session.reset(torch.tensor([True, False, False, False]))
    assert session.state.feedback.onset_survival[0] == 1.0, f"seed {seed}: a reset stream restarts"
    assert torch.equal(session.state.feedback.onset_survival[1:], survival[1:]), f"seed {seed}"
