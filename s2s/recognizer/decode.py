"""Greedy CTC decoding: the most likely class per frame, repeats collapsed, blanks dropped."""

from __future__ import annotations

import torch


def greedy_ctc_decode(
    logits: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0
) -> list[list[int]]:
    """(B, T, classes) scores (logits or log-probabilities) and valid frames per row -> token ids.

    Frames at or beyond a row's length are ignored, so padding never adds a word.
    """
    if logits.dim() != 3:
        raise ValueError(f"CTC decoding expects (batch, frames, classes) scores, got {tuple(logits.shape)}")
    best = logits.argmax(dim=-1).cpu()
    if lengths is None:
        lengths = torch.full((best.shape[0],), best.shape[1], dtype=torch.long)
    lengths = torch.as_tensor(lengths).cpu()
    if (
        lengths.shape != (best.shape[0],)
        or bool((lengths < 0).any())
        or bool((lengths > best.shape[1]).any())
    ):
        raise ValueError(f"lengths must be (batch,) within 0..{best.shape[1]}, got {lengths.tolist()}")
    out = []
    for row, length in zip(best, lengths.tolist(), strict=True):
        collapsed = torch.unique_consecutive(row[:length])
        out.append([int(t) for t in collapsed if int(t) != blank])
    return out
