"""Which streams of a batched session a call applies to: `reset`'s selection and a step's `final`.

Two forms, told apart by type, never by value: boolean flags, exactly one per stream, or stream
indices (an int, a list of ints, an integer tensor). Converting indices to flags with `.bool()`
silently resets the wrong streams (`[0, 1]` -> `[False, True]`), so anything else is refused.
A step's `final` is narrower: one bool for every stream, or one bool flag per stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stream_flags(selection, streams: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`selection` -> (streams,) bool flags on `device`.

    Flags: a bool tensor or a list of bools of exactly (streams,). Indices: an int, a list or tuple
    of ints, or a 1-D integer tensor, each in [0, streams) (an empty list selects none)."""
    if isinstance(selection, torch.Tensor):
        if selection.dtype == torch.bool:
            if tuple(selection.shape) != (streams,):
                raise ValueError(
                    f"stream flags must be one bool per stream, shape ({streams},), got "
                    f"{tuple(selection.shape)}; to name streams pass their indices as an integer tensor"
                )
            return selection.to(device)
        if selection.is_floating_point() or selection.is_complex() or selection.dim() > 1:
            raise TypeError(
                f"streams are selected by bool flags ({streams},) or integer indices, got a "
                f"{selection.dtype} tensor of shape {tuple(selection.shape)}"
            )
        return _flags_from_indices(selection.reshape(-1).tolist(), streams, device)
    if isinstance(selection, bool):
        raise TypeError(f"a single bool does not say which streams: pass ({streams},) bool flags or indices")
    if isinstance(selection, int):
        return _flags_from_indices([selection], streams, device)
    if isinstance(selection, Sequence) and not isinstance(selection, str):
        items = list(selection)
        if items and all(isinstance(item, bool) for item in items):
            return stream_flags(torch.tensor(items, dtype=torch.bool), streams, device)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            return _flags_from_indices(items, streams, device)
        raise TypeError(
            f"a stream selection list must be all bools (flags) or all ints (indices), got {selection!r}"
        )
    raise TypeError(
        f"streams are selected by ({streams},) bool flags or integer indices, got {type(selection).__name__}"
    )


def final_flags(
    final: bool | torch.Tensor, batch: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """`final` of a step: one bool for every stream, or (batch,) bool flags (a bool tensor or a list
    of bools). Anything else is refused rather than cast (`.bool()` of indices or 0/1 floats would
    end the wrong streams, and `bool()` of a list is True for any non-empty one)."""
    if isinstance(final, (list, tuple)):
        if len(final) != batch or not all(isinstance(item, bool) for item in final):
            raise ValueError(f"final must be a bool or one bool flag per stream ({batch},), got {final!r}")
        return torch.tensor(final, dtype=torch.bool, device=device)
    if isinstance(final, torch.Tensor):
        if final.dtype != torch.bool or final.shape != (batch,):
            raise ValueError(
                f"final must be a bool or a bool tensor with one flag per stream ({batch},), got a "
                f"{final.dtype} tensor of shape {tuple(final.shape)}"
            )
        return final.to(device=device)
    if not isinstance(final, bool):
        raise TypeError(
            f"final must be a bool or ({batch},) bool flags, got {type(final).__name__}; a stream's "
            "last step is final=True (one stream) or a flag per stream"
        )
    return torch.full((batch,), final, dtype=torch.bool, device=device)


def _flags_from_indices(indices: list[int], streams: int, device) -> torch.Tensor:
    outside = [i for i in indices if not 0 <= i < streams]
    if outside:
        raise ValueError(
            f"stream indices {outside} are outside the session's {streams} streams [0, {streams})"
        )
    flags = torch.zeros(streams, dtype=torch.bool)
    flags[indices] = True
    return flags.to(device)
