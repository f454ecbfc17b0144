"""The heads of model v2 read the chunk's most recent tokens: the token logits of frame t depend on
the tokens of frames t - W + 1 .. t - 1 (never on frame t's own), the mel of frame t on t - W + 1 .. t."""

import pytest
import torch

from s2s.data.tokens import BOS, PAD
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel, recent_windows

CONFIG = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, recent_tokens=4)


def test_recent_windows_hold_the_tokens_of_the_frames_before(generator):
    seed = int(torch.randint(1000, (1,), generator=generator))
    tokens = torch.randint(13, (3, 9), generator=generator)
    before = torch.randint(13, (3, 3), generator=generator)
    windows = recent_windows(tokens, before)
    history = torch.cat([before, tokens], dim=1)
    expected = torch.full((3, 9, 4), -1)
    for t in range(9):
        for lag in range(4):
            expected[:, t, lag] = history[:, 3 + t - lag]
    assert torch.equal(windows, expected), f"seed {seed}"


@pytest.mark.parametrize("recent", [1, 2, 4])
def test_heads_read_exactly_the_recent_tokens(recent, generator):
    seed = int(torch.randint(1000, (1,), generator=generator))
    torch.manual_seed(seed)
    model = TokenDuplexModel(TokenDuplexConfig(**{**CONFIG.__dict__, "recent_tokens": recent})).eval()
    hidden = torch.randn(1, 12, 32)
    tokens = torch.full((1, 12), PAD)
    base_windows = recent_windows(tokens, model.no_tokens_before(1))
    base_logits = model.token_logits(hidden, base_windows)
    base_mel = model.mel_for(hidden, base_windows).reshape(1, 12, -1)
    changed = tokens.clone()
    changed[0, 5] = BOS
    windows = recent_windows(changed, model.no_tokens_before(1))
    logit_moved = (model.token_logits(hidden, windows) - base_logits).abs().amax(-1)[0] > 1e-6
    mel_moved = (model.mel_for(hidden, windows).reshape(1, 12, -1) - base_mel).abs().amax(-1)[0] > 1e-6
    frames = torch.arange(12)
    assert torch.equal(logit_moved, (frames > 5) & (frames < 5 + recent)), (seed, logit_moved)
    assert torch.equal(mel_moved, (frames >= 5) & (frames < 5 + recent)), (seed, mel_moved)


def test_recent_tokens_must_be_positive():
    with pytest.raises(ValueError, match="recent_tokens must be >= 1"):
        TokenDuplexConfig(recent_tokens=0)


@pytest.mark.parametrize("recent", [1, 3, 4])
def test_recent_rows_are_summed_as_each_lag_and_token_row(recent, generator):
    """The heads' window read (row counts times the table) equals the sum over lags of row
    lag x vocab + token of the table, with the same gradients for the table, in float64 on random
    windows."""
    seed = int(torch.randint(10**6, (1,), generator=generator))
    torch.manual_seed(seed)
    model = TokenDuplexModel(TokenDuplexConfig(**{**CONFIG.__dict__, "recent_tokens": recent})).double()
    vocab = model.config.system_vocab
    windows = torch.randint(vocab, (3, 7, recent), generator=generator)
    upstream = torch.randn(3, 7, model.config.dim, generator=generator, dtype=torch.float64)
    got = model._read_recent(model.mel_recent, windows)
    (got * upstream).sum().backward()
    table = model.mel_recent.weight.detach().clone().requires_grad_(True)
    want = sum(table[lag * vocab + windows[..., lag]] for lag in range(recent))
    (want * upstream).sum().backward()
    assert got.shape == want.shape == (3, 7, model.config.dim), f"seed {seed}"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=f"seed {seed}")
    torch.testing.assert_close(
        model.mel_recent.weight.grad, table.grad, rtol=0, atol=1e-12, msg=f"seed {seed}"
    )


def test_recent_rows_keep_a_float32_table_float32_under_autocast(generator):
    """Training runs the heads under bf16 autocast; the window read must not round a float32 table
    to bf16 (as an embedding bag, which autocast leaves alone, did not): same values as outside it."""
    seed = int(torch.randint(10**6, (1,), generator=generator))
    torch.manual_seed(seed)
    model = TokenDuplexModel(CONFIG)
    vocab, recent = model.config.system_vocab, model.config.recent_tokens
    windows = torch.randint(vocab, (2, 5, recent), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model._read_recent(model.mel_recent, windows)
    want = sum(model.mel_recent.weight[lag * vocab + windows[..., lag]] for lag in range(recent))
    assert got.dtype == torch.float32, f"seed {seed}: {got.dtype}"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"seed {seed}")
