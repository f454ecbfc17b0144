"""How much of the GPU a training step uses (MFU) and where its GPU time goes.

MFU counts the work the model needs, not what the kernels happen to do: 6 x parameters x model
frames (forward 2, backward 4 per parameter and frame) plus attention from the exact chunk mask
(forward 4 * head_dim * visible pairs per query head, backward 2.5x that, as
scripts/bench_attention.py counts), over the GPU's dense bf16 peak.

The breakdown sorts the kernels of profiled steps by name into attention, matmul, optimizer and
elementwise/other, and counts as idle whatever part of the steps' wall time no kernel covers
(host overhead, syncs, launch gaps). Names, not call stacks, decide: the backward kernels run on
autograd's thread, where the Python call that caused them is gone.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

BACKWARD_FLOPS_RATIO = 2.5  # attention backward: five GEMMs to the forward's two
CATEGORIES = ("attention", "matmul", "optimizer", "elementwise/other")

# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s, without sparsity), matched against
# torch.cuda.get_device_name() in order: the first entry whose words all appear wins.
DATASHEET_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
)

# Lower-case name fragments per category, tried in this order. Attention comes first because our
# CuTe kernels' names also contain "cutlass" (the DSL's prefix): they carry their module path
# ("s2sattentioncute..."); FlashAttention's carry "flash", cuDNN's SDPA "sdpa", flex's Triton
# templates the operator's name ("flex_attention") when inductor names kernels by their operators
# (its default); an otherwise named Triton template ("triton_tem_...") that is not a matmul or a
# convolution is taken as flex too, the only other template in our steps.
_NAME_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("attention", "attn", "fmha", "flash", "sdpa")),
    ("optimizer", ("adam", "multi_tensor_apply")),
    ("matmul", ("gemm", "nvjet", "xmma", "cublas", "cutlass", "wgmma", "matmul", "addmm", "bmm", "_mm")),
)


def classify_kernel(name: str) -> str:
    """The category of one GPU activity (kernel, memcpy, memset) from its name.

    Optimizer: the fused AdamW kernels and the multi-tensor kernels, which in our steps only the
    optimizer launches (zero_grad sets gradients to None).
    """
    lowered = name.lower()
    if "triton_tem" in lowered and not any(op in lowered for op in ("mm", "conv")):
        return "attention"
    for category, fragments in _NAME_RULES:
        if any(fragment in lowered for fragment in fragments):
            return category
    return "elementwise/other"


@dataclass(frozen=True)
class KernelSpan:
    """One GPU activity on the profiler's clock (microseconds)."""

    name: str
    start_us: float
    end_us: float

    @property
    def duration_us(self) -> float:
        return self.end_us - self.start_us


def covered_length(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals: overlapping kernels (several streams) count once."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


@dataclass(frozen=True)
class StepBreakdown:
    """GPU time of ``steps`` profiled steps by category, in microseconds over all steps."""

    steps: int
    wall_us: float
    busy_us: float
    category_us: dict[str, float]
    top_kernels: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def idle_us(self) -> float:
        return max(self.wall_us - self.busy_us, 0.0)

    def per_step_ms(self, category: str) -> float:
        value = self.idle_us if category == "idle" else self.category_us.get(category, 0.0)
        return value / self.steps / 1000

    def share(self, category: str) -> float:
        """Fraction of wall time; categories may add past 1 when kernels overlap."""
        return self.per_step_ms(category) * self.steps * 1000 / self.wall_us if self.wall_us else 0.0


def breakdown(
    kernels: Sequence[KernelSpan], window: tuple[float, float], steps: int, top: int = 3
) -> StepBreakdown:
    """Sort kernels inside ``window`` (the profiled steps' start and end) by category.

    Kernels are clipped to the window, so one left running from before the steps does not count.
    """
    start, end = window
    category_us: dict[str, float] = defaultdict(float)
    by_name: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    clipped = []
    for kernel in kernels:
        lo, hi = max(kernel.start_us, start), min(kernel.end_us, end)
        if hi <= lo:
            continue
        category = classify_kernel(kernel.name)
        category_us[category] += hi - lo
        by_name[category][kernel.name] += hi - lo
        clipped.append((lo, hi))
    top_kernels = {
        category: sorted(names.items(), key=lambda item: -item[1])[:top]
        for category, names in by_name.items()
    }
    return StepBreakdown(
        steps=steps,
        wall_us=end - start,
        busy_us=covered_length(clipped),
        category_us={category: category_us.get(category, 0.0) for category in CATEGORIES},
        top_kernels=top_kernels,
    )


def _is_marker(event) -> bool:
    """A device-timeline event that is no GPU work: a mirrored annotation or a host sync."""
    kind = str(getattr(event, "activity_type", "") or "").lower()
    return bool(getattr(event, "is_user_annotation", False)) or "annotation" in kind or "sync" in kind


def kernels_and_window(events: Iterable, step_name: str) -> tuple[list[KernelSpan], tuple[float, float]]:
    """GPU activities of a torch.profiler run and the window of its ``step_name`` ranges.

    ``events`` are ``profile.events()``: device-side ones are the kernels, memcpys and memsets
    (user annotations that kineto mirrors onto the GPU timeline, and sync records, are skipped);
    host-side ``record_function(step_name)``
    ranges give the window, which runs on to the last kernel of the last step.
    """
    from torch.autograd import DeviceType

    kernels, steps = [], []
    for event in events:
        span = (event.time_range.start, event.time_range.end)
        if event.device_type == DeviceType.CPU:
            if event.name == step_name:
                steps.append(span)
        elif event.name != step_name and not _is_marker(event):
            kernels.append(KernelSpan(event.name, *span))
    if not steps:
        raise ValueError(f"no {step_name!r} range in the profile: wrap each step in record_function")
    start = min(lo for lo, _ in steps)
    host_end = max(hi for _, hi in steps)
    last_kernel = max((k.end_us for k in kernels if k.start_us >= start), default=host_end)
    return kernels, (start, max(host_end, last_kernel))


def format_breakdown(rows: dict[str, StepBreakdown]) -> str:
    """A markdown table: ms per step and share of wall time per category, one row per run."""
    columns = [*CATEGORIES, "idle"]
    lines = [
        "| run | wall ms/step | " + " | ".join(columns) + " |",
        "|" + " --- |" * (len(columns) + 2),
    ]
    for run, b in rows.items():
        cells = [f"{b.per_step_ms(c):.1f} ({100 * b.share(c):.0f}%)" for c in columns]
        lines.append(f"| {run} | {b.wall_us / b.steps / 1000:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class StepFlops:
    """Model FLOPs of one training step (forward + backward)."""

    parameters: int
    frames: int
    attention_forward: int  # FLOPs of one forward pass's attention, from the exact masks

    @property
    def dense(self) -> float:
        return 6.0 * self.parameters * self.frames

    @property
    def attention(self) -> float:
        return (1.0 + BACKWARD_FLOPS_RATIO) * self.attention_forward

    @property
    def total(self) -> float:
        return self.dense + self.attention


def achieved_tflops(flops_per_step: float, seconds_per_step: float) -> float:
    return flops_per_step / seconds_per_step / 1e12


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak."""
    return achieved_tflops(flops_per_step, seconds_per_step) / peak_tflops


def datasheet_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name; None when the name is not in the table."""
    for pattern, tflops in DATASHEET_BF16_TFLOPS:
        if all(word in device_name for word in pattern.split()):
            return tflops
    return None


@dataclass
class AttentionFlopCounter:
    """Forward attention FLOPs of the chunk_attention calls made while counting."""

    flops: int = 0
    calls: int = 0


@contextlib.contextmanager
def count_attention_flops() -> Iterator[AttentionFlopCounter]:
    """Count the attention FLOPs of model code run inside: 4 * head_dim * query heads * visible
    pairs of each call's own mask (its ChunkSpec and its sequences' lengths; the work a padded batch
    does on its padded rows is not counted).

    The model's layers call ``attend`` through s2s.models.attention, so that name is wrapped for the
    duration; each call is counted, then run as before.
    """
    import torch

    import s2s.models.attention as layers
    from s2s.attention.mask import visible_pair_count
    from s2s.models.packing import PackedLayout

    counter = AttentionFlopCounter()
    original = layers.attend

    def counting(q, k, v, spec, layout, backend):
        batch, frames_q, frames_k = q.shape[0], q.shape[1], k.shape[1]
        chunks = spec.resolve(batch, q.device)
        if isinstance(layout, PackedLayout) and layout.has_padding:
            lengths_q = lengths_k = torch.tensor(layout.lengths, device=q.device)
        else:
            lengths_q = torch.full((batch,), frames_q, device=q.device)
            lengths_k = torch.full((batch,), frames_k, device=q.device)
        counter.flops += 4 * q.shape[-1] * q.shape[-2] * visible_pair_count(chunks, lengths_q, lengths_k)
        counter.calls += 1
        return original(q, k, v, spec, layout, backend)

    layers.attend = counting
    try:
        yield counter
    finally:
        layers.attend = original
