"""Build every CuTe kernel specialization the tests and CI build, for sm_90a on any machine (no GPU
needed), and write each one's cubin, its SASS and a manifest of digests: the gate for refactors
that must not change the generated code.

    python scripts/dump_kernel_sass.py /tmp/sass_before            # record
    python scripts/dump_kernel_sass.py /tmp/sass_after --compare /tmp/sass_before

What is compared. The raw cubin embeds the kernel's symbol name, which the DSL mangles from the
Python module, class and ``@cute.kernel`` method and from the kernel's argument types (for
example ``kernel_cutlass_kernel_s2sattentioncuteforward_sm90ChunkAttentionForwardSm90_...``).
Moving a kernel method to another module, renaming its class or passing its arguments as one
object renames the symbol and changes the cubin's bytes (names, string table, section offsets)
while the machine code stays the same. So the gate compares, per specialization:

- ``sass``: ``cuobjdump -sass`` with every kernel symbol replaced by ``KERNEL``: each instruction
  with its 128-bit encoding (so scheduling and control bits count), in order;
- ``resources``: ``cuobjdump -res-usage`` with the same replacement: registers, shared memory,
  stack, local memory and parameter space.

The raw cubin's digest is recorded too; it matches only when the symbol is unchanged. The build
carries no line information (the DSL's ``CUTE_DSL_LINEINFO`` is off), and ``cuobjdump -sass``
prints none, so moving source lines changes nothing here.

``cuobjdump`` is found on PATH, in a CUDA toolkit, or in packages of this environment that ship
one (triton does); without it only cubin digests are written and the comparison says so.
The DSL's file cache is bypassed (``CUTE_DSL_KEEP=cubin`` needs a fresh build) and so is ours:
the script calls the build functions, not the cached loaders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_SYMBOL = re.compile(r"kernel_cutlass_\w+")
INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/", re.MULTILINE)


@dataclass(frozen=True)
class Specialization:
    """One compiled kernel: a name for the files and how to build it."""

    name: str
    kind: str  # "fwd", "bwd_fused", "bwd_dq", "bwd_dkdv", "prologue"
    dtype: str
    head_dim: int
    variant: int = 0  # fwd: max_seqlen_q picking the tile shape; prologue: zero_dq

    def build(self):
        import torch

        dtype = getattr(torch, self.dtype)
        if self.kind == "fwd":
            from s2s.attention.cute.launch import compile_forward, default_tiles

            return compile_forward(dtype, default_tiles(self.head_dim, self.variant))
        if self.kind == "prologue":
            from s2s.attention.cute.backward import compile_prologue

            return compile_prologue(dtype, self.head_dim, bool(self.variant))
        from s2s.attention.cute.backward import backward_tiles, compile_backward

        kind = self.kind.removeprefix("bwd_")
        return compile_backward(kind, dtype, backward_tiles(self.head_dim, kind))


def specializations() -> list[Specialization]:
    """What CI builds (tests/attention/test_cute.py) and what a call can pick: the forward at both
    head dims with 128-row tiles and, at head dim 64, the 192-row tiles of long sequences; the
    fused backward and the deterministic pair; both prologues; each in bf16 and fp16."""
    specs = []
    for dtype, short in (("bfloat16", "bf16"), ("float16", "fp16")):
        for d in (64, 128):
            for seqlen in (512, 4096) if d == 64 else (512,):  # 4096: 192-row tiles at d64
                rows = "long" if seqlen >= 2048 else "short"
                specs.append(Specialization(f"fwd_{short}_d{d}_{rows}", "fwd", dtype, d, seqlen))
            for kind in ("fused", "dq", "dkdv"):
                specs.append(Specialization(f"bwd_{kind}_{short}_d{d}", f"bwd_{kind}", dtype, d))
            for zero in (1, 0):
                specs.append(Specialization(f"prologue_{short}_d{d}_zero{zero}", "prologue", dtype, d, zero))
    return specs


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, in a CUDA toolkit, or shipped by a package of this environment."""
    if found := shutil.which("cuobjdump"):
        return found
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    site = Path(sys.prefix) / "lib"
    candidates += sorted(site.glob("python3*/site-packages/nvidia/*/bin/cuobjdump"))
    candidates += sorted(site.glob("python3*/site-packages/triton/backends/nvidia/bin/cuobjdump"))
    return next((str(c) for c in candidates if c.is_file()), None)


def normalized(text: str) -> str:
    return KERNEL_SYMBOL.sub("KERNEL", text)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump_one(spec: Specialization, out: Path, cuobjdump: str | None) -> dict:
    """Build ``spec`` in this process (the DSL environment is set by ``main``) and write its files."""
    start = time.perf_counter()
    compiled = spec.build()
    cubin = compiled.__cubin__
    if not isinstance(cubin, bytes):
        raise RuntimeError(f"{spec.name}: the DSL kept no cubin (got {cubin!r}); is CUTE_DSL_KEEP=cubin set?")
    path = out / f"{spec.name}.cubin"
    path.write_bytes(cubin)
    entry = {"cubin": digest(cubin), "seconds": round(time.perf_counter() - start, 1)}
    if cuobjdump:
        texts = {}
        for key, flag in (("sass", "-sass"), ("resources", "-res-usage")):
            run = subprocess.run([cuobjdump, flag, str(path)], capture_output=True, text=True, check=True)
            texts[key] = normalized(run.stdout)
            (out / f"{spec.name}.{key}").write_text(texts[key])
            entry[key] = digest(texts[key].encode())
        entry["instructions"] = len(INSTRUCTION.findall(texts["sass"]))
    return entry


def compare(manifest: dict, reference: dict) -> bool:
    """Print one line per specialization; True when every one's SASS and resources match."""
    same = True
    for name in sorted(set(manifest["kernels"]) | set(reference["kernels"])):
        now, before = manifest["kernels"].get(name), reference["kernels"].get(name)
        if now is None or before is None:
            print(f"{name:32s} MISSING {'now' if now is None else 'in the reference'}")
            same = False
            continue
        if "sass" not in now or "sass" not in before:
            verdict = "cubin identical" if now["cubin"] == before["cubin"] else "cubin DIFFERS (no cuobjdump)"
            same &= now["cubin"] == before["cubin"]
        else:
            sass, res = now["sass"] == before["sass"], now["resources"] == before["resources"]
            verdict = "SASS identical" if sass and res else f"DIFFERS (sass {sass}, resources {res})"
            if now["cubin"] == before["cubin"]:
                verdict += ", cubin identical"
            elif sass and res:
                verdict += " (the cubin differs in symbol names only)"
            same &= sass and res
        print(f"{name:32s} {verdict}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the cubins, SASS and manifest.json")
    parser.add_argument("--compare", type=Path, help="a directory written before: exit 1 if any SASS differs")
    parser.add_argument("--only", default="", help="build only specializations whose name contains this")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    keep = Path(tempfile.mkdtemp(prefix="cute_keep_"))
    # Before the DSL is imported: build for Hopper without a GPU and keep each cubin.
    os.environ["CUTE_DSL_ARCH"] = "sm_90a"
    os.environ["CUTE_DSL_KEEP"] = "cubin"
    os.environ["CUTE_DSL_DUMP_DIR"] = str(keep)
    os.environ.pop("CUTE_DSL_LINEINFO", None)
    sys.path.insert(0, str(REPO))
    import importlib.metadata

    cuobjdump = find_cuobjdump()
    manifest = {
        "dsl": importlib.metadata.version("nvidia-cutlass-dsl"),
        "cuobjdump": cuobjdump,
        "compared": "cuobjdump -sass, -res-usage; symbols as KERNEL" if cuobjdump else "cubin",
        "kernels": {},
    }
    for spec in specializations():
        if args.only in spec.name:
            manifest["kernels"][spec.name] = entry = dump_one(spec, args.out, cuobjdump)
            print(f"built {spec.name} in {entry['seconds']} s", flush=True)
    shutil.rmtree(keep, ignore_errors=True)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if args.compare is None:
        return 0
    reference = json.loads((args.compare / "manifest.json").read_text())
    if args.only:
        reference["kernels"] = {k: v for k, v in reference["kernels"].items() if args.only in k}
    identical = compare(manifest, reference)
    print("gate:", "every specialization identical" if identical else "SASS CHANGED")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
