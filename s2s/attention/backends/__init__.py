"""The registry of attention backends, in the order ``auto`` prefers them."""

from __future__ import annotations

from s2s.attention.backends.base import AttentionBackend
from s2s.attention.backends.cute import CuteBackend
from s2s.attention.backends.flex import FlexBackend
from s2s.attention.backends.reference import ReferenceBackend
from s2s.attention.backends.sdpa import SdpaBackend

BACKENDS: dict[str, AttentionBackend] = {
    backend.name: backend for backend in (CuteBackend(), FlexBackend(), SdpaBackend(), ReferenceBackend())
}

__all__ = ["BACKENDS", "AttentionBackend"]
