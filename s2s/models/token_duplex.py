"""Model v2: the system's decisions and words as tokens it samples and reads back (an inner monologue).

Per 40 ms model frame the decoder predicts one system token (PAD, BOS, EOS or a word of the task,
s2s/data/tokens.py) and the system's log-mel of that frame conditioned on the frame's token. Its
input at frame t is the embedding of the token at t - C (the previous chunk: the reference tokens in
training, the sampled ones when streaming), so the speak / stop decision is read back exactly as it
was trained, instead of a blurred mel and a probability (what made model v1 drift). Optionally the
mel of t - C comes in too, through a prenet whose dropout stays on at inference (Tacotron 2), so it
cannot carry the decision.

A chunk's frames come out of one decoder pass, so the decoder has not read the tokens sampled
earlier in the same chunk. The heads read them directly: both see the `recent_tokens` - 1 tokens
before their frame (an embedding per lag and token, summed), and the mel head the frame's own token
too. So the token of frame t is sampled knowing every token before it (a word just said is not said
again on the next frame, a missed one can still come), and the mel of frame t knows which word it
is in even when that word began inside the chunk. `recent_tokens=1` reads only the frame's own
token for the mel and none for the token head.

The encoder gets two auxiliary heads that give the turn decision a direct signal: CTC over the
user's words and, per frame, the user's state (silent, speaking, pausing inside a turn, ended the
turn). The speaking flag is derived from the tokens (between BOS and EOS), never predicted alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from s2s.data.tokens import PAD
from s2s.models.config import DuplexConfig
from s2s.models.decoder import Decoder
from s2s.models.duplex import ChunkedDuplexBase, ChunkSize, shift_by_chunk
from s2s.models.encoder import Encoder
from s2s.models.frontend import ConvFrontEnd

USER_STATES = 4  # s2s.data.token_targets.UserState


@dataclass(frozen=True)
class TokenDuplexConfig(DuplexConfig):
    """DuplexConfig plus the token streams: vocabulary sizes (PAD, BOS, EOS + words) and the mel
    feedback (0: tokens only; > 0: a prenet of that width with `prenet_dropout`, on at inference)."""

    system_vocab: int = 13
    user_vocab: int = 15
    mel_prenet: int = 0
    prenet_dropout: float = 0.5
    recent_tokens: int = 4  # the heads read the tokens of frames t - recent_tokens + 1 .. t

    def __post_init__(self):
        super().__post_init__()
        if self.system_vocab < 4 or self.user_vocab < 4:
            raise ValueError(
                f"token vocabularies hold PAD, BOS, EOS and at least one word, got {self.system_vocab} "
                f"(system) and {self.user_vocab} (user); build them with TokenVocabulary.from_task"
            )
        if self.recent_tokens < 1:
            raise ValueError(
                f"recent_tokens must be >= 1 (1: the mel head reads only its frame's token), got "
                f"{self.recent_tokens}"
            )
        if self.mel_prenet < 0 or not 0.0 <= self.prenet_dropout < 1.0:
            raise ValueError(
                f"mel_prenet must be >= 0 and prenet_dropout in [0, 1), got {self.mel_prenet}, "
                f"{self.prenet_dropout}"
            )


@dataclass
class TokenDuplexOutput:
    token_logits: torch.Tensor  # (B, T, system_vocab)
    mel: torch.Tensor  # (B, T * r, n_mels) system log-mel, conditioned on the given tokens of frame t
    user_ctc_logits: torch.Tensor  # (B, T, user_vocab): CTC over the user's words (PAD id 0 = blank)
    user_state_logits: torch.Tensor  # (B, T, 4)


def shift_tokens(tokens: torch.Tensor, chunk: ChunkSize) -> torch.Tensor:
    """(B, T) -> frame t holds tokens[t - C] (PAD for t < C, as a stream starts); C per sequence or shared."""
    batch, length = tokens.shape
    chunk = torch.as_tensor(chunk, device=tokens.device).to(torch.int64).expand(batch)
    source = torch.arange(length, device=tokens.device)[None, :] - chunk[:, None]
    shifted = tokens.gather(1, source.clamp(min=0))
    return torch.where(source >= 0, shifted, torch.full_like(shifted, PAD))


def recent_windows(tokens: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """(B, n) tokens and the (B, W - 1) tokens before them -> (B, n, W): [..., j] holds the token of
    frame t - j (the offline pass and the stream build the same windows from the same tokens)."""
    lags = before.shape[1]
    history = torch.cat([before.to(tokens.dtype), tokens], dim=1)
    return history.unfold(1, lags + 1, 1).flip(-1)


class MelPrenet(nn.Module):
    """Two narrow layers with dropout that stays on at inference: the mel of the previous chunk
    helps the voice along but is too noisy to carry the speak / stop decision."""

    def __init__(self, inputs: int, width: int, dim: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.out = nn.Linear(width, dim)
        self.dropout = dropout

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = nn.functional.dropout(x, self.dropout, training=True)
        return self.out(x)


def output_heads(
    model: TokenDuplexModel, hidden: torch.Tensor, encoded: torch.Tensor, windows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four heads of a whole pass: token logits and mel from the decoder's `hidden`, the user's
    CTC and state logits from `encoded` (a function of tensors, for torch.compile)."""
    return (
        model.token_logits(hidden, windows),
        model.mel_for(hidden, windows),
        model.user_ctc_head(encoded),
        model.user_state_head(encoded),
    )


@functools.cache
def compiled_output_heads():
    """`output_heads` through torch.compile, built on first use. Shapes as torch.compile's default:
    static first (training with data.static_shapes has one), dynamic from the first other shape
    on. Compiled dynamic from the start, the heads took over 50 s to build on an H100 (static:
    under 1 s beside the blocks' 24 s)."""
    return torch.compile(output_heads)


class TokenDuplexModel(ChunkedDuplexBase):
    """Front end, encoder and decoder as model v1 (same streaming caches); token in, token and mel out."""

    # s2s.models.regional_compile.compile_heads sets it: training passes run the heads compiled
    compiled_heads = False

    def __init__(self, config: TokenDuplexConfig | None = None):
        super().__init__()
        self.config = config = config or TokenDuplexConfig()
        self.front_end = ConvFrontEnd(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.token_in = nn.Embedding(config.system_vocab, config.dim)
        self.mel_in = (
            MelPrenet(
                config.mel_per_frame * config.n_mels, config.mel_prenet, config.dim, config.prenet_dropout
            )
            if config.mel_prenet
            else None
        )
        self.token_head = nn.Linear(config.dim, config.system_vocab)
        vocab, lags = config.system_vocab, config.recent_tokens
        # One embedding row per (lag, token): the token head reads lags 1..W-1, the mel head 0..W-1.
        self.token_recent = nn.Embedding((lags - 1) * vocab, config.dim) if lags > 1 else None
        self.mel_recent = nn.Embedding(lags * vocab, config.dim)
        self.mel_head = nn.Sequential(
            nn.Linear(config.dim, config.dim),
            nn.GELU(),
            nn.Linear(config.dim, config.mel_per_frame * config.n_mels),
        )
        self.user_ctc_head = nn.Linear(config.dim, config.user_vocab)
        self.user_state_head = nn.Linear(config.dim, USER_STATES)

    def decoder_input(self, tokens: torch.Tensor, mel_frames: torch.Tensor | None) -> torch.Tensor:
        """Decoder input from already shifted tokens (B, n) and, with a prenet, shifted normalized
        mel frames (B, n, r * n_mels)."""
        x = self.token_in(tokens)
        if self.mel_in is not None:
            if mel_frames is None:
                raise ValueError("this model reads back the previous chunk's mel (mel_prenet > 0): pass it")
            x = x + self.mel_in(mel_frames.to(x.dtype))
        return x

    def mel_frames(self, mel: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, >= frames * r, n_mels) log-mel -> (B, frames, r * n_mels) normalized, a row per frame."""
        c = self.config
        return self.normalize_mel(mel[:, : frames * c.mel_per_frame]).reshape(
            mel.shape[0], frames, c.mel_per_frame * c.n_mels
        )

    def no_tokens_before(self, batch: int, device=None) -> torch.Tensor:
        """The (B, W - 1) tokens before a stream starts: PAD, as the decoder's input."""
        return torch.full((batch, self.config.recent_tokens - 1), PAD, dtype=torch.int64, device=device)

    def _read_recent(self, table: nn.Embedding, windows: torch.Tensor) -> torch.Tensor:
        """The sum of the (lag, token) rows of each frame's window (B, n, W) -> (B, n, dim), as the
        product of each frame's row counts (B, n, rows) with the table, in the table's dtype. The
        lags index disjoint row ranges, so a frame's W rows are distinct and its counts are 0 or 1.
        Why a product: an embedding bag's backward scatters B * n * W rows into a few dozen with
        atomics (1.3 ms of a training step at 32 x 40 s on an H100) and a gather then sum writes
        and reads back (B, n, W, dim); the product's backward is one GEMM over the frames."""
        vocab, weight = self.config.system_vocab, table.weight
        rows = windows.long() + vocab * torch.arange(windows.shape[-1], device=windows.device)
        counts = torch.zeros(*rows.shape[:-1], weight.shape[0], dtype=weight.dtype, device=weight.device)
        counts.scatter_(-1, rows, 1.0)
        with torch.autocast(weight.device.type, enabled=False):  # float32 tables stay float32
            return counts @ weight

    def token_logits(self, hidden: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Token logits of frames (B, n, dim) given their `recent_windows` (B, n, W); the frame's own
        token ([..., 0], not sampled yet when streaming) is not read."""
        if self.token_recent is not None:
            hidden = hidden + self._read_recent(self.token_recent, windows[..., 1:])
        return self.token_head(hidden)

    def mel_for(self, hidden: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """The log-mel (B, n * r, n_mels) of frames (B, n, dim) whose `recent_windows` are (B, n, W)."""
        c = self.config
        normalized = self.mel_head(hidden + self._read_recent(self.mel_recent, windows))
        return normalized.reshape(hidden.shape[0], -1, c.n_mels) * c.mel_std + c.mel_mean

    def forward(
        self,
        user_mel: torch.Tensor,
        tokens: torch.Tensor,
        system_mel: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        chunk: ChunkSize | None = None,
        left_chunks=...,
    ) -> TokenDuplexOutput:
        """One offline pass over whole dialogues (training, and the streaming check).

        user_mel (B, F, n_mels) (with user_pitch: + 2 pitch channels, `user_input`); tokens
        (B, >= T) the system's tokens of every frame (the reference in training, the streamed ones to
        reproduce a stream), T = F // r: the decoder reads them one chunk late, the heads the most
        recent ones (`recent_windows`); system_mel (B, >= T * r, n_mels) the system's log-mel, needed
        only with a mel prenet.
        """
        p = self.encode(user_mel, lengths, chunk, left_chunks)
        batch, frames = p.positions.shape
        if tokens.dim() != 2 or tokens.shape[0] != batch or tokens.shape[1] < frames:
            raise ValueError(
                f"tokens must be (B={batch}, >= {frames}) system token ids for {user_mel.shape[1]} mel "
                f"frames, got {tuple(tokens.shape)}"
            )
        tokens = tokens[:, :frames].long()
        mel_frames = None
        if self.mel_in is not None:
            if system_mel is None:
                raise ValueError(
                    "this model reads back the previous chunk's mel (mel_prenet > 0): pass system_mel"
                )
            mel_frames = shift_by_chunk(self.mel_frames(system_mel, frames), p.chunk_sizes)
        decoder_in = self.decoder_input(shift_tokens(tokens, p.chunk_sizes), mel_frames)
        hidden = self.decoder(decoder_in, p.positions, p.encoded, p.attention, p.attention)
        windows = recent_windows(tokens, self.no_tokens_before(batch, tokens.device))
        compiled = self.compiled_heads and self.training and torch.is_grad_enabled()
        heads = compiled_output_heads() if compiled else output_heads
        return TokenDuplexOutput(*heads(self, hidden, p.encoded, windows))
