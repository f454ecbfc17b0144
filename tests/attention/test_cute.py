"""The CuTe DSL kernels: they build for sm_90a anywhere (CI has no GPU), and on a Hopper GPU the
forward and both backward paths match the float64 reference on fresh inputs, writing every output
element; the deterministic backward repeats bit for bit."""

import os
import subprocess
import sys

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.problem import make_problem

pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU")
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 4e-3}


def per_seq(*values):
    return torch.tensor(values, dtype=torch.int32)


# (name, seqlens_q, seqlens_k, heads_q, heads_k, head_dim, spec); a list of lengths means packed.
CASES = [
    ("chunk128", 1000, 1000, 4, 4, 128, ChunkSpec(128)),
    ("chunk37-odd-d64", 777, 777, 4, 2, 64, ChunkSpec(37)),
    ("chunk1-causal", 300, 300, 2, 2, 128, ChunkSpec(1)),
    ("chunk-ge-length", 200, 200, 2, 1, 64, ChunkSpec(512)),
    ("left-chunks", 900, 900, 4, 4, 128, ChunkSpec(64, left_chunks=2)),
    ("left-chunks-0-small", 500, 500, 2, 2, 64, ChunkSpec(16, left_chunks=0)),
    ("cross-4-16", 300, 1200, 4, 2, 128, ChunkSpec(4, chunk_k=16)),
    ("offsets", 400, 460, 2, 2, 128, ChunkSpec(8, q_offset=100, k_offset=40)),
    ("streaming-step", 4, 3000, 8, 2, 128, ChunkSpec(4, q_offset=2996)),
    ("mqa", 513, 513, 8, 1, 64, ChunkSpec(256)),
    ("empty-rows", 64, 32, 2, 2, 128, ChunkSpec(2, left_chunks=0, q_offset=40)),
    (
        "per-sequence",
        600,
        600,
        4,
        2,
        128,
        ChunkSpec(per_seq(1, 48, 200), left_chunks=3, q_offset=per_seq(0, 5, 100)),
    ),
    (
        "varlen",
        [1, 130, 517, 1000],
        [1, 130, 517, 1000],
        4,
        2,
        128,
        ChunkSpec(per_seq(16, 128, 7, 300), left_chunks=None),
    ),
    # Long sequences at head dim 64 run 192-row tiles (three consumer warpgroups).
    ("d64-long-left-chunks", 2300, 2300, 4, 2, 64, ChunkSpec(40, left_chunks=5)),
    ("d64-long-varlen", [2049, 3000], [2049, 3000], 2, 1, 64, ChunkSpec(per_seq(1, 96))),
    (
        "varlen-cross-left",
        [200, 33, 640],
        [800, 132, 2560],
        2,
        2,
        64,
        ChunkSpec(per_seq(4, 1, 8), chunk_k=per_seq(16, 4, 32), left_chunks=4),
    ),
    # The fused backward's 128-row query tiles at head dim 64: tiles that straddle chunks, a
    # limited history, GQA groups of 4, a decode step and rows that see no key.
    ("d64-offsets-left-gqa4", 700, 900, 8, 2, 64, ChunkSpec(200, left_chunks=1, q_offset=250, k_offset=30)),
    ("streaming-step-d64", 4, 3000, 8, 2, 64, ChunkSpec(4, q_offset=2996)),
    ("empty-rows-d64", 64, 32, 2, 2, 64, ChunkSpec(2, left_chunks=0, q_offset=40)),
]
CASE_IDS = [c[0] for c in CASES]
# The fused backward runs either tiling at head dim 64 (S2S_CUTE_BWD_D64) and 128
# (S2S_CUTE_BWD_D128): every case runs both, the default first.
D64_TILINGS = ("wide", "legacy")
FUSED_TILINGS = {64: D64_TILINGS, 128: ("wide", "legacy")}
FUSED_CASES = [
    pytest.param(case, tiling, id=f"{case[0]}-{tiling}")
    for case in CASES
    for tiling in FUSED_TILINGS[case[5]]
]


def make_case(case, dtype, generator):
    _, lens_q, lens_k, hq, hk, d, spec = case
    cuda = torch.device("cuda")

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(cuda, dtype)

    if isinstance(lens_q, list):
        cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=cuda)
        cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=cuda)
        q, k, v = rand(sum(lens_q), hq, d), rand(sum(lens_k), hk, d), rand(sum(lens_k), hk, d)
        batch = len(lens_q)
    else:
        cu_q = cu_k = None
        batch = 3 if spec.is_per_sequence else 2
        q, k, v = rand(batch, lens_q, hq, d), rand(batch, lens_k, hk, d), rand(batch, lens_k, hk, d)
    return q, k, v, _to(spec, cuda), cu_q, cu_k


def _to(spec: ChunkSpec, device) -> ChunkSpec:
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x

    return ChunkSpec(
        move(spec.chunk_q), move(spec.chunk_k), spec.left_chunks, move(spec.q_offset), move(spec.k_offset)
    )


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-12)).item()


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_reference(case, dtype, generator):
    from s2s.attention.cute.launch import forward

    q, k, v, spec, cu_q, cu_k = make_case(case, dtype, generator)
    want, want_lse = chunk_attention(
        q, k, v, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="reference", return_lse=True
    )
    problem = make_problem(q, k, v, spec, cu_q, cu_k)
    rows = q.shape[0] * (1 if cu_q is not None else q.shape[1])
    out = torch.full((rows, q.shape[-2], q.shape[-1]), float("nan"), dtype=dtype, device=q.device)
    lse = torch.full((q.shape[-2], rows), float("nan"), dtype=torch.float32, device=q.device)
    got, got_lse = forward(problem, out=out, lse=lse)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any(), f"{int(torch.isnan(out).sum())} output elements never written"
    assert not torch.isnan(lse).any(), f"{int(torch.isnan(lse).sum())} LSE values never written"
    assert got.shape == q.shape
    error = relative_error(got, want)
    assert error <= TOLERANCE[dtype], f"output relative error {error:.2e}"
    finite = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(got_lse), finite), "LSE -inf exactly where a query sees no key"
    assert (got_lse[~finite] == float("-inf")).all()
    assert (got[~finite.transpose(-1, -2) if cu_q is None else ~finite.t()] == 0).all()
    lse_error = (got_lse[finite].double() - want_lse[finite]).abs().max().item() if finite.any() else 0.0
    assert lse_error <= 2e-2, f"LSE max abs error {lse_error:.2e}"


EDGE_CASES = ("varlen", "empty", "streaming", "d64-long-varlen", "d64-offsets")
WRITE_CASES = [
    pytest.param(case, deterministic, tiling, id=f"{case[0]}-{name}")
    for case in CASES
    if case[0].startswith(EDGE_CASES)
    for deterministic, tiling, name in (
        [(False, None, "fused")]
        + ([(False, "legacy", "fused-d64-legacy")] if case[5] == 64 else [])
        + ([(False, "legacy", "fused-d128-legacy")] if case[5] == 128 else [])
        + [(True, None, "deterministic")]
    )
]


def reference_gradients(q, k, v, spec, cu_q, cu_k, grad_out):
    inputs = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = chunk_attention(*inputs, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="reference")
    return torch.autograd.grad(out, inputs, grad_out.double())


def cute_gradients(q, k, v, spec, cu_q, cu_k, grad_out):
    inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = chunk_attention(*inputs, spec, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="cute")
    return torch.autograd.grad(out, inputs, grad_out)


def assert_gradients_close(got, want, dtype):
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert g.shape == w.shape and g.dtype == dtype
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        error = relative_error(g, w)
        assert error <= 2e-2, f"{name} relative error {error:.2e}"


def use_fused_tiling(monkeypatch, head_dim, tiling):
    """Select the fused backward's tiling at ``head_dim`` the way a benchmark does, through
    S2S_CUTE_BWD_D64 or S2S_CUTE_BWD_D128 (None: the default)."""
    from s2s.attention.cute.backward import FUSED_TILING_CHOICES

    env, _ = FUSED_TILING_CHOICES[head_dim]
    if tiling is None:
        monkeypatch.delenv(env, raising=False)
    else:
        monkeypatch.setenv(env, tiling)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("case", "tiling"), FUSED_CASES)
def test_fused_gradients_match_reference(case, tiling, dtype, generator, monkeypatch):
    """The default backward: one fused kernel, dQ reduced in float32 by TMA reduce-adds; in both
    tilings of each head dim."""
    use_fused_tiling(monkeypatch, case[5], tiling)
    q, k, v, spec, cu_q, cu_k = make_case(case, dtype, generator)
    grad_out = torch.randn(q.shape, generator=generator).to(q.device, dtype)
    got = cute_gradients(q, k, v, spec, cu_q, cu_k, grad_out)
    assert_gradients_close(got, reference_gradients(q, k, v, spec, cu_q, cu_k, grad_out), dtype)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_deterministic_gradients_match_reference_and_repeat_bit_for_bit(case, dtype, generator):
    """torch.use_deterministic_algorithms (Lightning's deterministic=True) selects the
    two-kernel backward, whose every output row has one owner."""
    q, k, v, spec, cu_q, cu_k = make_case(case, dtype, generator)
    grad_out = torch.randn(q.shape, generator=generator).to(q.device, dtype)
    want = reference_gradients(q, k, v, spec, cu_q, cu_k, grad_out)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        got = cute_gradients(q, k, v, spec, cu_q, cu_k, grad_out)
        again = cute_gradients(q, k, v, spec, cu_q, cu_k, grad_out)
    finally:
        torch.use_deterministic_algorithms(was)
    assert_gradients_close(got, want, dtype)
    for name, g, h in zip(("dq", "dk", "dv"), got, again, strict=True):
        assert torch.equal(g, h), f"{name} differs between two identical backward passes"


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(("case", "deterministic", "tiling"), WRITE_CASES)
def test_backward_writes_every_gradient(case, deterministic, tiling, generator, monkeypatch):
    """NaN-filled gradient buffers come back finite and right: every element is written (the
    fused kernel in both tilings of each head dim)."""
    from s2s.attention.cute.backward import backward
    from s2s.attention.cute.launch import prepare

    use_fused_tiling(monkeypatch, case[5], tiling)
    q, k, v, spec, cu_q, cu_k = make_case(case, torch.bfloat16, generator)
    grad_out = torch.randn(q.shape, generator=generator).to(q.device, q.dtype)
    problem = make_problem(q, k, v, spec, cu_q, cu_k)
    prepared = prepare(problem)
    prepared.launch()
    grads = tuple(torch.full_like(t, float("nan")) for t in prepared.inputs)
    got = backward(
        problem,
        *prepared.inputs,
        prepared.out,
        prepared.lse,
        prepared.table,
        grad_out.reshape(prepared.out.shape),
        deterministic=deterministic,
        grads=grads,
    )
    torch.cuda.synchronize()
    for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
        assert not torch.isnan(g).any(), f"{name}: {int(torch.isnan(g).sum())} elements never written"
    want = reference_gradients(q, k, v, spec, cu_q, cu_k, grad_out)
    shaped = [g.view(t.shape) for g, t in zip(got, (q, k, v), strict=True)]
    assert_gradients_close(shaped, want, torch.bfloat16)


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(
    ("lengths", "total_q", "head_dim", "dtype"),
    [
        # odd starts, an empty sequence, and 3 rows past the last sequence
        ((301, 0, 377, 96), 777, 64, torch.float16),
        ((1000,), 1000, 128, torch.bfloat16),
        ((250, 250, 250, 250), 1000, 64, torch.bfloat16),
    ],
)
def test_prologue_row_statistics_match_float64(lengths, total_q, head_dim, dtype, generator):
    """The prologue's delta = rowsum(dO * O), and the row statistics the dK/dV kernels copy by
    TMA: LSE * log2(e) and delta * scale per (head, row), each sequence's rows from its
    16-byte-aligned start (q start rounded down to 4, plus 4 a sequence); every element of a
    sequence's rows written (the buffers' memory is NaN-poisoned first)."""
    import math

    import cuda.bindings.driver as cuda

    from s2s.attention.cute.backward import prologue
    from s2s.attention.cute.seqlen_info import COLUMNS
    from s2s.attention.cute.views import ROW_STATISTICS, row_stats_rows

    seed = generator.initial_seed()
    heads, scale, batch = 3, 1 / math.sqrt(head_dim), len(lengths)
    out, grad_out = (
        torch.randn(total_q, heads, head_dim, generator=generator).to("cuda", dtype) for _ in "od"
    )
    lse = (torch.randn(heads, total_q, generator=generator) * 4).cuda()
    starts = [sum(lengths[:b]) for b in range(batch)]
    table = torch.zeros(batch, len(COLUMNS), dtype=torch.int32)
    table[:, COLUMNS.index("q_start")] = torch.tensor(starts)
    table[:, COLUMNS.index("seqlen_q")] = torch.tensor(lengths)
    padded = row_stats_rows(total_q, batch)
    # Freed NaN blocks of the sizes the prologue allocates: its buffers reuse them.
    poison = [torch.full((heads, n), float("nan"), device="cuda") for n in (total_q, ROW_STATISTICS * padded)]
    del poison
    stream = cuda.CUstream(torch.cuda.current_stream().cuda_stream)
    delta, row_stats, dq_accum = prologue(
        out, grad_out, lse, table.cuda(), softmax_scale=scale, zero_dq=True, stream=stream
    )
    torch.cuda.synchronize()
    want_delta = (out.double() * grad_out.double()).sum(-1).T  # (heads, total_q)
    assert row_stats.shape == (heads, ROW_STATISTICS, padded) and padded % 4 == 0
    torch.testing.assert_close(delta.double(), want_delta, rtol=1e-5, atol=1e-4, msg=f"seed {seed}: delta")
    previous_end = 0
    for b, (first, length) in enumerate(zip(starts, lengths, strict=True)):
        begin = first - first % 4 + 4 * b  # aligned for TMA, clear of the sequence before
        assert begin % 4 == 0 and begin >= previous_end and begin + length <= padded, (b, begin)
        previous_end = begin + length
        got = row_stats[:, :, begin : begin + length].double()
        assert not torch.isnan(got).any(), f"seed {seed}: sequence {b}'s statistics never written"
        rows = slice(first, first + length)
        want_lse = lse[:, rows].double() * math.log2(math.e)
        msg = f"seed {seed}, sequence {b}"
        torch.testing.assert_close(got[:, 0], want_lse, rtol=1e-6, atol=1e-6, msg=f"{msg}: LSE * log2(e)")
        want = want_delta[:, rows] * scale
        torch.testing.assert_close(got[:, 1], want, rtol=1e-5, atol=1e-4, msg=f"{msg}: delta * scale")
    assert torch.equal(dq_accum, torch.zeros_like(dq_accum)), f"seed {seed}: dQ buffer not zeroed"


@pytest.mark.gpu
@needs_hopper
def test_auto_picks_cute_for_inference_and_training(generator):
    from s2s.attention.api import select_backend

    q, k, v, spec, _, _ = make_case(CASES[0], torch.bfloat16, generator)
    assert select_backend(make_problem(q, k, v, spec), "auto", True).name == "cute"
    q.requires_grad_(True)
    assert select_backend(make_problem(q, k, v, spec), "auto", True).name == "cute"


@pytest.mark.gpu
@needs_hopper
def test_unsupported_head_dim_names_the_reason(generator):
    q = torch.randn(1, 64, 2, 96, generator=generator).to("cuda", torch.bfloat16)
    with pytest.raises(NotImplementedError, match="head dims"):
        chunk_attention(q, q, q, ChunkSpec(8), backend="cute")
    assert chunk_attention(q, q, q, ChunkSpec(8)).shape == q.shape  # auto falls back


def test_calls_past_int32_element_indexing_are_refused():
    """2^31 elements of q (rows x heads x head dim) would overflow the kernels' int32 offsets:
    a clear error instead. Meta tensors: nothing is allocated."""
    from s2s.attention.cute.launch import sequence_table

    too_big = torch.empty(1, 2**20, 16, 128, device="meta", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="int32"):
        sequence_table(make_problem(too_big, too_big, too_big, ChunkSpec(128)))
    fits = torch.empty(1, 2**19, 16, 128, device="meta", dtype=torch.bfloat16)
    assert sequence_table(make_problem(fits, fits, fits, ChunkSpec(128))).shape == (1, 8)


COMPILE_SCRIPT = """
import sys, time, torch
from s2s.attention.cute.launch import compiled_forward, default_tiles
dtype = getattr(torch, sys.argv[1])
start = time.perf_counter()
compiled_forward(dtype, default_tiles(int(sys.argv[2]), int(sys.argv[3])))
print(f"{time.perf_counter() - start:.2f}")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "head_dim", "seqlen"), [("bfloat16", 128, 4096), ("float16", 64, 512), ("bfloat16", 64, 4096)]
)
def test_kernel_builds_for_sm90a_and_is_cached_on_disk(dtype, head_dim, seqlen, tmp_path):
    """Runs in a child process so CUTE_DSL_ARCH applies; the second process reads the disk cache."""
    env = dict(os.environ, S2S_KERNEL_CACHE=str(tmp_path / "cache"))
    if not HOPPER:
        env["CUTE_DSL_ARCH"] = "sm_90a"
    seconds = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-c", COMPILE_SCRIPT, dtype, str(head_dim), str(seqlen)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        seconds.append(float(run.stdout.strip().splitlines()[-1]))
    built = list((tmp_path / "cache").glob("*.o"))
    assert len(built) == 1, f"expected one kernel file in the disk cache, found {built}"
    assert seconds[1] < seconds[0] / 2, f"second process compiled again: {seconds}"
    if head_dim == 128:  # a truncated cache file is rebuilt and replaced, not fatal
        size = built[0].stat().st_size
        built[0].write_bytes(built[0].read_bytes()[: size // 3])
        run = subprocess.run(
            [sys.executable, "-c", COMPILE_SCRIPT, dtype, str(head_dim), str(seqlen)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert built[0].stat().st_size == size


BACKWARD_COMPILE_SCRIPT = """
import sys, torch
from s2s.attention.cute.backward import backward_tiles, compiled_backward, compiled_prologue
dtype, head_dim = getattr(torch, sys.argv[1]), int(sys.argv[2])
for kind in ("fused", "dq", "dkdv"):
    compiled_backward(kind, dtype, backward_tiles(head_dim, kind))
# The fused kernel's other tiling, selectable with S2S_CUTE_BWD_D64 / S2S_CUTE_BWD_D128.
compiled_backward("fused", dtype, backward_tiles(head_dim, "fused", "legacy"))
for zero_dq in (True, False):
    compiled_prologue(dtype, head_dim, zero_dq)
print("built")
"""


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "head_dim"), [("bfloat16", 128), ("float16", 64)])
def test_backward_kernels_build_for_sm90a(dtype, head_dim, tmp_path):
    env = dict(os.environ, S2S_KERNEL_CACHE=str(tmp_path / "cache"))
    if not HOPPER:
        env["CUTE_DSL_ARCH"] = "sm_90a"
    run = subprocess.run(
        [sys.executable, "-c", BACKWARD_COMPILE_SCRIPT, dtype, str(head_dim)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("bwd_*.o"))) == 6  # both fused tilings, dq, dkdv, 2 prologues


def test_d64_backward_tiling_follows_the_environment(monkeypatch):
    """S2S_CUTE_BWD_D64 picks the fused kernel's head-dim-64 tiling at launch (wide by default);
    the two are different specializations; d128 and the deterministic pair do not change."""
    from s2s.attention.cute.backward import BWD_D64_ENV, BWD_D128_ENV, backward_tiles
    from s2s.attention.cute.launch import specialization_name

    monkeypatch.delenv(BWD_D64_ENV, raising=False)
    monkeypatch.delenv(BWD_D128_ENV, raising=False)
    wide = backward_tiles(64, "fused")
    assert (wide.tile_m, wide.q_stages, wide.dq_by_rows, wide.dq_slice) == (128, 2, True, (64, 64))
    monkeypatch.setenv(BWD_D64_ENV, "legacy")
    legacy = backward_tiles(64, "fused")
    assert (legacy.tile_m, legacy.q_stages, legacy.dq_by_rows, legacy.dq_slice) == (64, 3, False, (64, 32))
    assert specialization_name("bwd_fused", torch.bfloat16, wide) != specialization_name(
        "bwd_fused", torch.bfloat16, legacy
    )
    for tiling in ("wide", "legacy"):
        monkeypatch.setenv(BWD_D64_ENV, tiling)
        assert backward_tiles(128, "fused").tile_m == 64
        assert backward_tiles(64, "dkdv").tile_m == 64
    monkeypatch.setenv(BWD_D64_ENV, "huge")
    with pytest.raises(ValueError, match=BWD_D64_ENV):
        backward_tiles(64, "fused")


def test_d128_backward_tiling_follows_the_environment(monkeypatch):
    """S2S_CUTE_BWD_D128 picks the fused kernel's head-dim-128 tiling at launch: wide by default
    (the 64-row tiles and 64 x 64 dQ slices in FlashAttention's order within a tile); legacy, with
    the kernel-cache name it always had, as another specialization. The d64 variable, the
    deterministic pair and unknown values."""
    from s2s.attention.cute.backward import BWD_D64_ENV, BWD_D128_ENV, backward_tiles
    from s2s.attention.cute.backward_dkdv_sm90 import ChunkAttentionBackwardDkDvSm90
    from s2s.attention.cute.launch import specialization_name

    monkeypatch.delenv(BWD_D64_ENV, raising=False)
    monkeypatch.delenv(BWD_D128_ENV, raising=False)
    default = backward_tiles(128, "fused")
    monkeypatch.setenv(BWD_D128_ENV, "legacy")
    legacy = backward_tiles(128, "fused")
    assert (legacy.tile_m, legacy.q_stages, legacy.dq_slice, legacy.split_commits) == (64, 3, (64, 64), False)
    assert not legacy.row_statistics and not legacy.ds_by_stmatrix
    assert legacy.label == "d128_wg2_keys128_m64_s3"  # the disk-cache name it always had
    monkeypatch.setenv(BWD_D128_ENV, "wide")
    wide = backward_tiles(128, "fused")
    assert (wide.tile_m, wide.q_stages, wide.dq_by_rows, wide.dq_slice) == (64, 3, False, (64, 64))
    assert wide.split_commits and wide.row_statistics and wide.ds_by_stmatrix
    assert default == wide
    assert specialization_name("bwd_fused", torch.float16, wide) != specialization_name(
        "bwd_fused", torch.float16, legacy
    )
    assert backward_tiles(128, "dkdv") == backward_tiles(128, "dkdv", "legacy")  # not the fused kernel's
    assert backward_tiles(64, "fused").tile_m == 128  # d64 follows its own variable
    monkeypatch.setenv(BWD_D128_ENV, " LEGACY ")
    assert backward_tiles(128, "fused") == legacy
    monkeypatch.setenv(BWD_D64_ENV, "legacy")
    assert backward_tiles(128, "fused") == legacy
    with pytest.raises(ValueError, match="split tile order"):
        ChunkAttentionBackwardDkDvSm90(wide, with_dq=False)
    monkeypatch.setenv(BWD_D128_ENV, "wider")
    with pytest.raises(ValueError, match=BWD_D128_ENV):
        backward_tiles(128, "fused")
    backward_tiles(64, "fused")  # the d128 variable's value does not reach d64
