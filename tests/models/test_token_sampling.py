"""Sampling tokens under the grammar: never broken, reproducible, greedy = masked argmax, calibrated,
and the PAD/BOS/EOS biases move the decisions the way they promise."""

import math

import pytest
import torch

from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, PAD
from s2s.models.token_sampling import (
    SampledTokens,
    SamplingConfig,
    allowed_tokens,
    frame_noise,
    generator_noise,
    sample_tokens,
    state_bos_shift,
    state_eos_shift,
)

V = 13  # PAD, BOS, EOS and ten words


def _walk(tokens: list[int], in_reply: bool) -> tuple[bool, list[bool], bool]:
    """Independent reference: (grammar kept, speaking per frame, state after)."""
    ok, speaking = True, []
    for token in tokens:
        if (in_reply and token == BOS) or (not in_reply and token not in (PAD, BOS)):
            ok = False
        after = token == BOS or (in_reply and token != EOS)
        speaking.append(in_reply and after)
        in_reply = after
    return ok, speaking, in_reply


def _masked_argmax(scores: list[float], in_reply: bool) -> int:
    """Independent reference of greedy decoding: the best allowed token, lowest id on ties."""
    allowed = [t for t in range(len(scores)) if (t != BOS if in_reply else t in (PAD, BOS))]
    return max(allowed, key=lambda t: (scores[t], -t))


def _draw(generator: torch.Generator, streams: int, frames: int):
    logits = torch.randn(streams, frames, V, generator=generator) * 3
    in_reply = torch.randint(0, 2, (streams,), generator=generator).bool()
    seeds = torch.randint(-(2**62), 2**62, (streams,), generator=generator)
    return logits, in_reply, seeds


def test_the_grammar_holds_over_many_random_draws_and_chunks(generator):
    seed = generator.initial_seed()
    for trial in range(60):
        streams, frames = 16, int(torch.randint(1, 9, (1,), generator=generator))
        _, state, seeds = _draw(generator, streams, frames)
        config = SamplingConfig(
            temperature=float(torch.rand(1, generator=generator)) * 2,
            top_k=int(torch.randint(0, V + 2, (1,), generator=generator)),
            pad_bias=float(torch.randn(1, generator=generator)) * 3,
            bos_bias=float(torch.randn(1, generator=generator)) * 3,
            eos_bias=float(torch.randn(1, generator=generator)) * 3,
        )
        for chunk in range(4):  # the state carries from chunk to chunk
            logits = torch.randn(streams, frames, V, generator=generator) * 3
            noise = frame_noise(seeds, torch.full((streams,), chunk * frames), frames)
            out = sample_tokens(logits, state, config, noise)
            for b in range(streams):
                ok, speaking, after = _walk(out.tokens[b].tolist(), bool(state[b]))
                where = f"seed {seed}, trial {trial}, chunk {chunk}, stream {b}, {config}"
                assert ok, f"{where}: tokens {out.tokens[b].tolist()} after in_reply={bool(state[b])}"
                assert out.speaking[b].tolist() == speaking and bool(out.in_reply[b]) == after, where
            state = out.in_reply


def test_same_seed_same_tokens_in_any_batch(generator):
    seed = generator.initial_seed()
    logits, in_reply, seeds = _draw(generator, 8, 6)
    config = SamplingConfig(temperature=1.0)
    positions = torch.randint(0, 1000, (8,), generator=generator)
    first = sample_tokens(logits, in_reply, config, frame_noise(seeds, positions, 6))
    again = sample_tokens(logits, in_reply, config, frame_noise(seeds, positions, 6))
    assert torch.equal(first.tokens, again.tokens), f"seed {seed}"
    # A stream alone, or in another order, draws the same numbers: they are its seed's and frames'.
    order = torch.randperm(8, generator=generator)
    shuffled = sample_tokens(
        logits[order], in_reply[order], config, frame_noise(seeds[order], positions[order], 6)
    )
    assert torch.equal(shuffled.tokens, first.tokens[order]), f"seed {seed}"
    # Two chunks of 3 frames draw what one chunk of 6 does.
    assert torch.equal(
        torch.cat([frame_noise(seeds, positions, 3), frame_noise(seeds, positions + 3, 3)], dim=1),
        frame_noise(seeds, positions, 6),
    )
    other = sample_tokens(logits, in_reply, config, frame_noise(seeds + 1, positions, 6))
    assert not torch.equal(other.tokens, first.tokens), f"seed {seed}: another seed, the same 48 tokens"

    # Per-stream torch generators reproduce too.
    def gens():
        return [torch.Generator().manual_seed(int(s) % 2**31) for s in seeds]

    assert torch.equal(
        sample_tokens(logits, in_reply, config, generator_noise(gens(), 6)).tokens,
        sample_tokens(logits, in_reply, config, generator_noise(gens(), 6)).tokens,
    )


def test_frame_noise_is_uniform_and_independent_across_streams_and_frames():
    noise = frame_noise(torch.arange(64), torch.zeros(64, dtype=torch.long), 4096)
    assert noise.min() >= 0 and noise.max() < 1
    counts = torch.histc(noise, bins=16, min=0, max=1)
    expected = noise.numel() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50, f"chi-square {chi2:.1f} over 15 degrees of freedom: not uniform"
    correlation = torch.corrcoef(noise[:8])
    assert (correlation - torch.eye(8)).abs().max() < 0.06
    lagged = torch.corrcoef(torch.stack([noise[:, :-1].flatten(), noise[:, 1:].flatten()]))[0, 1]
    assert abs(float(lagged)) < 0.02


def test_greedy_is_the_masked_argmax_biases_included(generator):
    seed = generator.initial_seed()
    logits, in_reply, _ = _draw(generator, 32, 6)
    config = SamplingConfig(temperature=0.0, pad_bias=0.5, bos_bias=-0.25, eos_bias=1.0)
    out = sample_tokens(logits, in_reply, config)
    bias = [0.5, -0.25, 1.0] + [0.0] * (V - 3)
    for b in range(32):
        state, expected = bool(in_reply[b]), []
        for frame in range(6):
            token = _masked_argmax([float(x) + y for x, y in zip(logits[b, frame], bias, strict=True)], state)
            expected.append(token)
            state = token == BOS or (state and token != EOS)
        assert out.tokens[b].tolist() == expected, f"seed {seed}, stream {b}"


def test_greedy_words_sample_when_and_take_the_best_word(generator):
    """greedy_words: the same noise gives the same PAD / BOS / EOS / word decisions as plain sampling
    (the total probability of the words decides), and every word is the highest-scoring word."""
    seed = generator.initial_seed()
    logits, in_reply, seeds = _draw(generator, 64, 8)
    noise = frame_noise(seeds, torch.zeros(64, dtype=torch.long), 8)
    plain = sample_tokens(logits, in_reply, SamplingConfig(state_gain=0.0), noise).tokens
    greedy = sample_tokens(logits, in_reply, SamplingConfig(state_gain=0.0, greedy_words=True), noise)
    words = plain >= 3
    assert torch.equal(words, greedy.tokens >= 3), f"seed {seed}"
    assert torch.equal(plain[~words], greedy.tokens[~words]), f"seed {seed}"
    for b, frame in words.nonzero().tolist():
        scores = logits[b, frame].tolist()
        best = max(range(3, V), key=lambda t: (scores[t], -t))
        assert int(greedy.tokens[b, frame]) == best, f"seed {seed}, stream {b}, frame {frame}"
    assert int(words.sum()) > 20, f"seed {seed}: too few word frames to test"


def test_onset_temperature_decides_reply_onsets_alone(generator):
    """onset_temperature: outside a reply the PAD / BOS choice follows its own temperature (0: BOS
    exactly where its biased logit beats PAD's); inside a reply the tokens are plain sampling's."""
    seed = generator.initial_seed()
    streams = 4000
    logits, in_reply, seeds = _draw(generator, streams, 1)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), 1)
    plain = sample_tokens(logits, in_reply, SamplingConfig(state_gain=0.0, bos_bias=0.5), noise).tokens[:, 0]
    greedy = SamplingConfig(state_gain=0.0, bos_bias=0.5, onset_temperature=0.0)
    onsets = sample_tokens(logits, in_reply, greedy, noise).tokens[:, 0]
    assert torch.equal(onsets[in_reply], plain[in_reply]), f"seed {seed}: a reply's tokens changed"
    outside = ~in_reply
    want = torch.where(logits[:, 0, BOS] + 0.5 > logits[:, 0, PAD], BOS, PAD)
    assert torch.equal(onsets[outside], want[outside]), f"seed {seed}: onsets not the greedy choice"
    # at temperature 1.5 the BOS frequency follows softmax([PAD, BOS] / 1.5), not / 0.7
    pad, bos = 0.3, -0.4
    fixed = torch.zeros(streams, 1, V)
    fixed[..., PAD], fixed[..., BOS] = pad, bos
    silent = torch.zeros(streams, dtype=torch.bool)
    noise = frame_noise(seeds, torch.arange(streams), 1)
    warm = sample_tokens(fixed, silent, SamplingConfig(state_gain=0.0, onset_temperature=1.5), noise)
    p = 1 / (1 + math.exp((pad - bos) / 1.5))
    count = int((warm.tokens == BOS).sum())
    assert abs(count - streams * p) < 5 * math.sqrt(streams * p * (1 - p)), (
        f"seed {seed}: {count} BOS of {streams}, expected {streams * p:.0f}"
    )
    with pytest.raises(ValueError, match="onset_temperature must be >= 0"):
        SamplingConfig(onset_temperature=-1.0)


def test_sampled_frequencies_follow_the_masked_softmax(generator):
    """One frame, many streams with the same logits: token counts match the masked, tempered, top-k
    distribution (an independent computation) within 5 standard deviations."""
    seed = generator.initial_seed()
    streams = 20000
    scores = torch.randn(V, generator=generator).tolist()
    for in_reply, temperature, top_k in ((False, 1.0, 0), (True, 0.7, 0), (True, 1.5, 4)):
        config = SamplingConfig(temperature=temperature, top_k=top_k, eos_bias=0.3)
        logits = torch.tensor(scores).expand(streams, 1, V)
        state = torch.full((streams,), in_reply)
        noise = frame_noise(torch.full((streams,), seed), torch.arange(streams), 1)
        tokens = sample_tokens(logits, state, config, noise).tokens[:, 0]
        biased = [s + (0.3 if t == EOS else 0.0) for t, s in enumerate(scores)]
        allowed = [t for t in range(V) if (t != BOS if in_reply else t in (PAD, BOS))]
        if top_k:
            allowed = sorted(allowed, key=lambda t: -biased[t])[:top_k]
        weights = {t: math.exp(biased[t] / temperature) for t in allowed}
        total = sum(weights.values())
        for token in range(V):
            p = weights.get(token, 0.0) / total
            count = int((tokens == token).sum())
            sd = math.sqrt(streams * p * (1 - p))
            assert abs(count - streams * p) <= 5 * sd + 1, (
                f"seed {seed}, {config}, in_reply={in_reply}: token {token} drawn {count} times, "
                f"expected {streams * p:.0f}"
            )


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_biases_move_the_decisions_the_expected_way(generator, temperature):
    seed = generator.initial_seed()
    streams, frames = 512, 8
    logits = torch.randn(streams, frames, V, generator=generator)
    seeds = torch.randint(0, 2**31, (streams,), generator=generator)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), frames)

    def rate(token, in_reply, **bias):
        state = torch.full((streams,), in_reply)
        out = sample_tokens(logits, state, SamplingConfig(temperature=temperature, **bias), noise)
        return float((out.tokens[:, 0] == token).float().mean())

    outside = [rate(BOS, False, bos_bias=b) for b in (-2.0, 0.0, 2.0)]
    assert outside[0] < outside[1] < outside[2], f"seed {seed}: BOS rate by BOS bias {outside}"
    padded = [rate(BOS, False, pad_bias=b) for b in (-2.0, 0.0, 2.0)]
    assert padded[0] > padded[1] > padded[2], f"seed {seed}: BOS rate by PAD bias {padded}"
    stopping = [rate(EOS, True, eos_bias=b) for b in (-2.0, 0.0, 2.0)]
    assert stopping[0] < stopping[1] < stopping[2], f"seed {seed}: EOS rate by EOS bias {stopping}"


@pytest.mark.parametrize(("name", "token", "sign"), [("bos_shift", BOS, -1.0), ("eos_shift", EOS, 1.0)])
def test_a_shift_is_a_per_frame_bias_of_its_token(name, token, sign, generator):
    """A bos_shift (eos_shift) equals adding it to BOS's (EOS's) logit by hand, greedy and sampled,
    and one of the wrong shape is refused."""
    seed = generator.initial_seed()
    streams, frames = 64, 6
    logits = torch.randn(streams, frames, V, generator=generator)
    seeds = torch.randint(0, 2**31, (streams,), generator=generator)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), frames)
    shift = sign * 3.0 * torch.rand(streams, frames, generator=generator)
    in_reply = torch.rand(streams, generator=generator) < 0.5
    for temperature in (0.0, 0.7):
        config = SamplingConfig(temperature=temperature, bos_bias=0.5, eos_bias=-0.5)
        shifted = sample_tokens(logits, in_reply, config, noise, **{name: shift})
        by_hand = logits.clone()
        by_hand[..., token] += shift
        assert torch.equal(shifted.tokens, sample_tokens(by_hand, in_reply, config, noise).tokens), seed
    with pytest.raises(ValueError, match=f"{name} must be"):
        sample_tokens(logits, in_reply, SamplingConfig(), noise, **{name: shift[:, :2]})


def test_the_state_heads_bos_shift_is_gain_times_log_p_ended(generator):
    """The state head's BOS shift is gain times log P(ended | ended or pause) in float64, 0 where
    the head is sure of an end, and a gain of 0 leaves the decisions alone."""
    seed = generator.initial_seed()
    streams, frames = 64, 6
    state_logits = torch.randn(streams, frames, 4, generator=generator) * 3
    got = state_bos_shift(state_logits, 2.0)
    p = state_logits.double().softmax(-1)
    ended, pause = p[..., int(UserState.ENDED)], p[..., int(UserState.PAUSE)]
    want = 2.0 * torch.log(ended / (ended + pause))
    assert (got.double() - want).abs().max() < 1e-5, f"seed {seed}"
    sure_end = torch.zeros(1, 1, 4)
    sure_end[..., int(UserState.ENDED)] = 40.0
    assert abs(float(state_bos_shift(sure_end, 5.0))) < 1e-6
    assert torch.equal(state_bos_shift(state_logits, 0.0), torch.zeros(streams, frames))
    with pytest.raises(ValueError, match="state_gain"):
        SamplingConfig(state_gain=-1.0)


def test_the_state_heads_eos_shift_is_gain_times_p_speaking(generator):
    """The state head's EOS shift is gain times P(speaking) in float64; a reply the head hears the
    user talk over ends sooner, and outside a reply (EOS not allowed) the shift changes nothing."""
    seed = generator.initial_seed()
    streams, frames = 256, 6
    logits = torch.randn(streams, frames, V, generator=generator)
    seeds = torch.randint(0, 2**31, (streams,), generator=generator)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), frames)
    state_logits = torch.randn(streams, frames, 4, generator=generator) * 3
    got = state_eos_shift(state_logits, 2.5)
    want = 2.5 * state_logits.double().softmax(-1)[..., int(UserState.SPEAKING)]
    assert got.shape == (streams, frames) and (got.double() - want).abs().max() < 1e-6, f"seed {seed}"
    assert torch.equal(state_eos_shift(state_logits, 0.0), torch.zeros(streams, frames))

    speaking = torch.zeros(streams, frames, 4)
    speaking[..., int(UserState.SPEAKING)] = 20.0
    config = SamplingConfig(temperature=0.7)
    replying = torch.ones(streams, dtype=torch.bool)
    alone = sample_tokens(logits, replying, config, noise)
    pushed = sample_tokens(logits, replying, config, noise, eos_shift=state_eos_shift(speaking, 8.0))

    def frames_before_eos(tokens: torch.Tensor) -> int:
        ended = tokens == EOS
        return int(torch.where(ended.any(-1), ended.float().argmax(-1), frames).sum())

    alone_frames, pushed_frames = frames_before_eos(alone.tokens), frames_before_eos(pushed.tokens)
    assert pushed_frames < alone_frames, f"seed {seed}: {pushed_frames} vs {alone_frames}"
    silent = torch.zeros(streams, dtype=torch.bool)
    outside = sample_tokens(
        logits[:, :1], silent, config, noise[:, :1], eos_shift=state_eos_shift(speaking, 8.0)[:, :1]
    )
    unshifted = sample_tokens(logits[:, :1], silent, config, noise[:, :1])
    assert torch.equal(outside.tokens, unshifted.tokens), seed
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="stop_gain"):
            SamplingConfig(stop_gain=bad)


def test_a_pause_heard_by_the_state_head_holds_the_reply_back(generator):
    """With the head sure of a pause on every frame, a large gain leaves BOS (nearly) never drawn;
    with it sure of an end, the same draws as without the head."""
    seed = generator.initial_seed()
    streams, frames = 256, 8
    logits = torch.randn(streams, frames, V, generator=generator)
    logits[..., BOS] += 2.0  # eager to answer
    seeds = torch.randint(0, 2**31, (streams,), generator=generator)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), frames)
    silent = torch.zeros(streams, dtype=torch.bool)
    config = SamplingConfig(temperature=0.7, state_gain=4.0)
    heard = torch.zeros(streams, frames, 4)
    heard[..., int(UserState.PAUSE)] = 6.0
    vetoed = sample_tokens(logits, silent, config, noise, state_bos_shift(heard, config.state_gain))
    alone = sample_tokens(logits, silent, config, noise)
    assert (alone.tokens == BOS).float().mean() > 0.05, f"seed {seed}"
    assert (vetoed.tokens == BOS).float().mean() < 0.002, f"seed {seed}"
    heard = torch.zeros(streams, frames, 4)
    heard[..., int(UserState.ENDED)] = 30.0
    assert torch.equal(
        sample_tokens(logits, silent, config, noise, state_bos_shift(heard, 4.0)).tokens, alone.tokens
    )


def test_a_gain_per_stream_is_each_stream_with_its_own_gain(generator):
    seed = generator.initial_seed()
    logits = torch.randn(5, 3, len(UserState), generator=generator) * 3
    gains = torch.tensor([0.0, 0.5, 1.0, 2.0, 8.0])
    got = state_bos_shift(logits, gains)
    for row, gain in enumerate(gains.tolist()):
        assert torch.equal(got[row], state_bos_shift(logits[row : row + 1], gain)[0]), f"seed {seed}"
    with pytest.raises(ValueError, match="one per stream"):
        state_bos_shift(logits, torch.ones(4))


def test_broken_logits_stay_silent_and_other_streams_are_untouched(generator):
    logits, _, seeds = _draw(generator, 3, 4)
    logits[0] = float("nan")
    logits[1] = float("-inf")
    in_reply = torch.tensor([False, True, False])
    noise = frame_noise(seeds, torch.zeros(3, dtype=torch.long), 4)
    out = sample_tokens(logits, in_reply, SamplingConfig(temperature=1.0), noise)
    assert out.tokens[:2].tolist() == [[PAD] * 4] * 2
    logits[1, :, 5] = float("inf")  # certain, and allowed inside a reply
    logits[2, :, 5] = float("inf")  # certain, but not allowed outside one
    out = sample_tokens(logits, in_reply, SamplingConfig(temperature=1.0), noise)
    assert out.tokens[1].tolist() == [5] * 4 and int(out.tokens[2, 0]) in (PAD, BOS)
    alone = sample_tokens(logits[2:], in_reply[2:], SamplingConfig(temperature=1.0), noise[2:])
    assert torch.equal(out.tokens[2:], alone.tokens)
    assert isinstance(out, SampledTokens) and out.in_reply.tolist() == [False, True, bool(alone.in_reply[0])]


def test_allowed_tokens_and_bad_calls():
    allowed = allowed_tokens(torch.tensor([False, True]), 5)
    assert allowed.tolist() == [[True, True, False, False, False], [True, False, True, True, True]]
    logits = torch.zeros(2, 3, V)
    with pytest.raises(ValueError, match=r"needs noise of shape \(2, 3\)"):
        sample_tokens(logits, torch.tensor([False, True]), SamplingConfig(temperature=0.5))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        sample_tokens(logits, torch.tensor([0, 1]), SamplingConfig(temperature=0.0))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingConfig(temperature=-1.0)


def _quantile_reference(logits, in_reply, user_speaking, quantile, temperature, bos_bias, drawn):
    """Independent float64 walk of onset_quantile over every frame of every stream: outside a reply
    the survival is multiplied by P(PAD) at `temperature` (1 where the user speaks), and BOS comes
    exactly when 1 - survival reaches `quantile`; inside a reply the token is taken from `drawn`
    (the tokens under test: a reply's tokens are drawn, the walk checks the onsets and the states)."""
    tokens = []
    for b in range(logits.shape[0]):
        state, survival, row = bool(in_reply[b]), 1.0, []
        for t in range(logits.shape[1]):
            if state:
                token = int(drawn[b, t])
                survival = 1.0
            else:
                if user_speaking[b, t]:
                    survival = 1.0
                pad, bos = float(logits[b, t, PAD]), float(logits[b, t, BOS]) + bos_bias
                p_bos = 1.0 / (1.0 + math.exp((pad - bos) / temperature))
                remaining = survival * (1.0 - p_bos)
                token = BOS if 1.0 - remaining >= quantile else PAD
                survival = 1.0 if token == BOS else remaining
            row.append(token)
            state = token == BOS or (state and token != EOS)
        tokens.append(row)
    return torch.tensor(tokens)


@pytest.mark.parametrize("chunk", [1, 3, 12])
def test_onset_quantile_starts_replies_where_the_onset_distribution_reaches_it(chunk, generator):
    """onset_quantile against a float64 walk over 12 frames, streamed in chunks of 1, 3 or 12 frames
    (the survival carried between chunks): onsets where 1 - prod P(PAD) reaches the quantile,
    restarted after a reply and where the user speaks; replies' tokens as drawn; the grammar kept."""
    seed = generator.initial_seed()
    streams, frames = 300, 12
    logits = torch.randn(streams, frames, V, generator=generator) * 2
    logits[..., BOS] -= 2.0  # onsets spread over the frames
    in_reply = torch.randint(0, 2, (streams,), generator=generator).bool()
    seeds = torch.randint(-(2**62), 2**62, (streams,), generator=generator)
    user_speaking = torch.rand(streams, frames, generator=generator) < 0.1
    config = SamplingConfig(state_gain=0.0, bos_bias=0.3, onset_quantile=0.6, temperature=0.7)
    plain = SamplingConfig(state_gain=0.0, bos_bias=0.3, temperature=0.7)
    state, survival, got = in_reply, None, []
    for start in range(0, frames, chunk):
        part = logits[:, start : start + chunk]
        noise = frame_noise(seeds, torch.full((streams,), start), part.shape[1])
        out = sample_tokens(
            part, state, config, noise, onset_survival=survival,
            user_speaking=user_speaking[:, start : start + chunk],
        )  # fmt: skip
        if chunk == 1:  # inside a reply a frame's token is what a draw from the same state gives
            drawn = sample_tokens(part, state, plain, noise).tokens
            assert torch.equal(out.tokens[state], drawn[state]), f"seed {seed}: frame {start}"
        got.append(out.tokens)
        state, survival = out.in_reply, out.onset_survival
        assert survival.shape == (streams,) and ((survival > 0) & (survival <= 1)).all(), f"seed {seed}"
    tokens = torch.cat(got, dim=1)
    want = _quantile_reference(logits, in_reply, user_speaking, 0.6, 0.7, 0.3, tokens)
    assert torch.equal(tokens, want), f"seed {seed}, chunk {chunk}: {(tokens != want).sum()} frames differ"
    assert all(_walk(tokens[b].tolist(), bool(in_reply[b]))[0] for b in range(streams)), f"seed {seed}"
    assert (tokens == BOS).any() and (tokens == PAD).any(), f"seed {seed}: both decisions occur"


def test_onset_quantile_is_the_same_frame_for_any_seed(generator):
    """The onset is a decision, not a draw: other seeds give the same first BOS frame."""
    seed = generator.initial_seed()
    streams, frames = 64, 20
    logits = torch.randn(1, frames, V, generator=generator) * 2
    # BOS 0.5-2.5 below PAD at every frame: a draw starts the reply on different frames for different
    # seeds, and the onset distribution reaches its median within the 20 frames
    logits[..., BOS] = logits[..., PAD] - 0.5 - 2.0 * torch.rand(1, frames, generator=generator)
    logits = logits.expand(streams, -1, -1)
    silent = torch.zeros(streams, dtype=torch.bool)
    seeds = torch.randint(-(2**62), 2**62, (streams,), generator=generator)
    noise = frame_noise(seeds, torch.zeros(streams, dtype=torch.long), frames)
    config = SamplingConfig(state_gain=0.0, onset_quantile=0.5)
    tokens = sample_tokens(logits, silent, config, noise).tokens
    first = torch.where((tokens == BOS).any(dim=1), (tokens == BOS).int().argmax(dim=1), frames)
    assert (first == first[0]).all() and first[0] < frames, (
        f"seed {seed}: first onsets {first.unique().tolist()}"
    )
    drawn = sample_tokens(logits, silent, SamplingConfig(state_gain=0.0), noise).tokens
    firsts = torch.where((drawn == BOS).any(dim=1), (drawn == BOS).int().argmax(dim=1), frames)
    assert firsts.unique().numel() > 1 or frames == 1, f"seed {seed}: drawn onsets did not vary"
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="onset_quantile must lie strictly between 0 and 1"):
            SamplingConfig(onset_quantile=bad)
