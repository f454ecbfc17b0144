"""Compiled CuTe kernels on disk, so a new process skips the ~10 s of code generation.

Each specialization is exported as an object file named by what it was built from: the
specialization, every source file of this package (found on disk, so a new or edited helper module
counts without anyone listing it) and the CuTe DSL version. A changed kernel or DSL gets a new
name, so a stale build is never loaded. Files are written atomically (temp dir, then rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

KERNEL_PACKAGE = Path(__file__).parent


def cache_dir() -> Path:
    """``S2S_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/s2s/cute`` (``~/.cache/s2s/cute``)."""
    if path := os.environ.get("S2S_KERNEL_CACHE"):
        return Path(path)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "s2s" / "cute"


def kernel_sources(package: Path = KERNEL_PACKAGE) -> list[Path]:
    """Every Python file the kernels may be built from: all of s2s/attention/cute/, sorted."""
    return sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)


def sources_digest(package: Path = KERNEL_PACKAGE) -> str:
    """SHA-256 over the package's file names and bytes (a rename counts as a change)."""
    digest = hashlib.sha256()
    for path in kernel_sources(package):
        name = path.relative_to(package).as_posix().encode()
        content = path.read_bytes()
        digest.update(len(name).to_bytes(8, "little") + name + len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


def build_key(specialization: str, package: Path = KERNEL_PACKAGE) -> str:
    import importlib.metadata

    digest = hashlib.sha256(specialization.encode())
    digest.update(sources_digest(package).encode())
    digest.update(importlib.metadata.version("nvidia-cutlass-dsl").encode())
    arch = os.environ.get("CUTE_DSL_ARCH", "native")
    digest.update(arch.encode())
    return f"{specialization}_{digest.hexdigest()[:16]}"


def load_or_build(specialization: str, build: Callable[[], object]) -> object:
    """The compiled function for ``specialization``: from disk if built before, else ``build()``
    and save it. A cache that cannot be read or written is skipped, never fatal."""
    from cutlass.cute.runtime import load_module

    key = build_key(specialization)
    prefix = "s2s_" + key.replace("-", "_")
    path = cache_dir() / f"{key}.o"
    if path.exists():
        try:
            return getattr(load_module(str(path)), prefix)
        except Exception:  # a truncated or foreign file: rebuild below and replace it
            pass
    compiled = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            compiled.export_to_c(tmp, key, function_prefix=prefix)
            os.replace(Path(tmp) / f"{key}.o", path)
    except OSError:  # read-only or full disk: this process still has its compiled kernel
        pass
    return compiled
