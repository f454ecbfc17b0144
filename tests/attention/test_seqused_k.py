"""Padded keys with per-sequence used lengths (flash-attention's ``seqused_k``): what a KV cache
preallocated per stream needs to be attended in place. Every backend against a float64 oracle
written here from the rule, with NaN in every unused key and value row: those rows are storage
and must never reach an output, not even as 0 x NaN."""

import importlib.util

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.api import select_backend
from s2s.attention.problem import make_problem

NAN, INF = float("nan"), float("inf")
BATCH = 3
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2}
GRAD_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 4e-2}
CPU_BACKENDS = ["reference", "sdpa", "flex"]
# Backends that return the LSE (sdpa does not).
WITH_LSE = {"reference", "flex"}

# (name, chunk_q, chunk_k, left_chunks); a list is one value per sequence. Offsets are always
# per-sequence int32 tensors.
RULES = [
    ("causal", 1, 1, None),
    ("chunk4", 4, 4, None),
    ("chunk4-left2", 4, 4, 2),
    ("chunk24-left2", 24, 24, 2),  # larger than Sq, and most of the capacity
    ("chunk128", 128, 128, None),  # beyond Sk: full attention over the used keys
    ("cross-3-5-left2", 3, 5, 2),
    ("per-sequence-chunks", [1, 4, 16], [2, 4, 8], 2),
]
RULE_IDS = [r[0] for r in RULES]
HEADS = [pytest.param((4, 2), id="gqa4-2"), pytest.param((2, 2), id="mha2")]


def int32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def per_sequence(value, batch: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * batch


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def oracle(q, k, v, used, chunk_q, chunk_k, q_offset, k_offset, left_chunks, used_q=None):
    """float64 output (B, Sq, Hq, D) and LSE (B, Hq, Sq), one query row at a time over the keys it
    sees by the rule (host ints per sequence): key j of sequence b is visible to query i iff
    j < used[b], ck <= cq and (no limit or ck >= cq - left_chunks), with
    cq = (q_offset[b] + i) // chunk_q[b] and ck = (k_offset[b] + j) // chunk_k[b]. With
    ``used_q`` only rows i < used_q[b] are attended; the others get 0 and -inf without being read.
    Storage rows are never indexed. Starts as NaN, so a row the loop missed shows."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    batch, seqlen_q, heads_q, head_dim = q.shape
    kv_head = torch.arange(heads_q) // (heads_q // k.shape[2])
    out = torch.full((batch, seqlen_q, heads_q, head_dim), NAN, dtype=torch.float64)
    lse = torch.full((batch, heads_q, seqlen_q), NAN, dtype=torch.float64)
    for b in range(batch):
        for i in range(seqlen_q):
            cq = (q_offset[b] + i) // chunk_q[b]
            keys = []
            attended = used_q is None or i < used_q[b]
            for j in range(used[b] if attended else 0):
                ck = (k_offset[b] + j) // chunk_k[b]
                if ck <= cq and (left_chunks is None or ck >= cq - left_chunks):
                    keys.append(j)
            if not keys:
                out[b, i], lse[b, :, i] = 0.0, -INF
                continue
            kk, vv = k[b, keys][:, kv_head], v[b, keys][:, kv_head]  # (n, Hq, D)
            scores = torch.einsum("hd,nhd->hn", q[b, i], kk) / head_dim**0.5
            out[b, i] = torch.einsum("hn,nhd->hd", torch.softmax(scores, -1), vv)
            lse[b, :, i] = torch.logsumexp(scores, -1)
    assert not out.isnan().any() and not lse.isnan().any(), "the oracle left rows unwritten"
    return out, lse


class Case:
    """Fresh random inputs of one rule: B streams with a cache of ``capacity`` rows each, its
    first ``used[b]`` rows in use and every other row NaN; each stream's query chunk sits at the
    end of its used keys (a decode step), give or take a few positions."""

    def __init__(
        self, rule, seqlen_q, heads, dtype, generator, *, device="cpu", head_dim=16, capacity=None, used=None
    ):
        _, chunk_q, chunk_k, self.left_chunks = rule
        self.seed = generator.initial_seed()
        heads_q, heads_k = heads
        self.capacity = randint(generator, seqlen_q, 64) if capacity is None else capacity
        if used is None:
            used = [randint(generator, 0, self.capacity) for _ in range(BATCH - 1)] + [self.capacity]
        self.used = list(used)
        batch = len(self.used)
        self.k_offset = [randint(generator, 0, 20) for _ in range(batch)]
        self.q_offset = [
            max(0, ko + n - seqlen_q + randint(generator, -2, 2))
            for ko, n in zip(self.k_offset, self.used, strict=True)
        ]
        self.chunk_q, self.chunk_k = per_sequence(chunk_q, batch), per_sequence(chunk_k, batch)

        def tensor_or_int(value):
            return int32(value).to(device) if isinstance(value, list) else value

        self.spec = ChunkSpec(
            tensor_or_int(chunk_q),
            tensor_or_int(chunk_k),
            self.left_chunks,
            int32(self.q_offset).to(device),
            int32(self.k_offset).to(device),
        )
        self.q = torch.randn(batch, seqlen_q, heads_q, head_dim, generator=generator).to(device, dtype)
        self.k = torch.randn(batch, self.capacity, heads_k, head_dim, generator=generator).to(device, dtype)
        self.v = torch.randn(batch, self.capacity, heads_k, head_dim, generator=generator).to(device, dtype)
        for b, n in enumerate(self.used):
            self.k[b, n:] = NAN
            self.v[b, n:] = NAN
        self.seqused_k = int32(self.used).to(device)

    def __repr__(self) -> str:
        return (
            f"seed {self.seed}: used {self.used} of {self.capacity}, q_offset {self.q_offset}, "
            f"k_offset {self.k_offset}, chunks {self.chunk_q}/{self.chunk_k}, left {self.left_chunks}"
        )

    def oracle(self):
        rule = (self.chunk_q, self.chunk_k, self.q_offset, self.k_offset, self.left_chunks)
        return oracle(self.q, self.k, self.v, self.used, *rule)

    def attend(self, backend, **kwargs):
        return chunk_attention(
            self.q, self.k, self.v, self.spec, seqused_k=self.seqused_k, backend=backend, **kwargs
        )


def assert_close(got, want, tol, what, floor=1e-6):
    """Max error relative to the largest expected value (at least ``floor``)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{what}: {int(torch.isnan(got).sum())} NaN elements"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = want.abs().max().clamp(min=floor)
    error = ((got.cpu().double() - want.cpu().double()).abs().max() / scale).item()
    assert error <= tol, f"{what}: relative error {error:.2e} > {tol:.0e}"


def assert_lse_close(got, want, tol, what):
    got, want = got.cpu().double(), want.cpu().double()
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{what}: -inf LSE where no key is seen, only there"
    assert (got[~finite] == -INF).all(), f"{what}: LSE of rows that see no key"
    if finite.any():
        error = (got[finite] - want[finite]).abs().max().item()
        assert error <= tol, f"{what}: LSE max abs error {error:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("seqlen_q", [1, 4, 16])
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_matches_float64_oracle_with_nan_storage(rule, seqlen_q, heads, backend, dtype, generator):
    case = Case(rule, seqlen_q, heads, dtype, generator)
    want, want_lse = case.oracle()
    if backend in WITH_LSE:
        got, lse = case.attend(backend, return_lse=True)
        assert_lse_close(lse, want_lse, 10 * TOLERANCE[dtype], f"{backend} {case}")
    else:
        got = case.attend(backend)
    assert got.dtype == dtype, f"{backend} {case}: dtype {got.dtype}"
    assert_close(got, want, TOLERANCE[dtype], f"{backend} {case}")


def garbage_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """NaN, +-inf and huge finite values, scattered."""
    values = torch.tensor([NAN, INF, -INF, 1e30, -1e30]).to(t.dtype)
    index = torch.randint(0, len(values), t.shape, generator=generator)
    return values[index]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_stream_does_not_see_other_streams_or_its_own_storage(backend, generator):
    """Stream b's output is bit-identical when every other stream's keys, values and used length
    change (garbage included) and its own unused rows hold other garbage."""
    case = Case(RULES[2], 4, (4, 2), torch.float32, generator, capacity=48)
    before = case.attend(backend)
    for b in range(BATCH):
        k, v, used = case.k.clone(), case.v.clone(), list(case.used)
        for c in range(BATCH):
            if c != b:
                used[c] = randint(generator, 0, case.capacity)
                k[c] = torch.randn(k[c].shape, generator=generator)
                v[c] = torch.randn(v[c].shape, generator=generator)
                k[c, used[c] :] = garbage_like(k[c, used[c] :], generator)
                v[c, used[c] :] = NAN
        k[b, used[b] :] = garbage_like(k[b, used[b] :], generator)
        v[b, used[b] :] = garbage_like(v[b, used[b] :], generator)
        after = chunk_attention(case.q, k, v, case.spec, seqused_k=int32(used), backend=backend)
        assert torch.equal(after[b], before[b]), f"{backend}, stream {b} changed: {case}, then used {used}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_streams_with_no_used_keys_give_zeros(backend, generator):
    case = Case(RULES[1], 4, (4, 2), torch.float32, generator)
    case.seqused_k = int32([0, case.capacity, 0])
    case.used = case.seqused_k.tolist()
    case.k[1] = torch.randn(case.k[1].shape, generator=generator)
    case.v[1] = torch.randn(case.v[1].shape, generator=generator)
    case.k[0], case.v[2] = NAN, NAN
    want, want_lse = case.oracle()
    if backend in WITH_LSE:
        got, lse = case.attend(backend, return_lse=True)
        assert (lse[[0, 2]] == -INF).all(), f"{backend} {case}: LSE of empty streams"
        assert_lse_close(lse, want_lse, 2e-4, f"{backend} {case}")
    else:
        got = case.attend(backend)
    assert (got[[0, 2]] == 0).all(), f"{backend} {case}: streams with no keys must give zeros"
    assert_close(got, want, TOLERANCE[torch.float32], f"{backend} {case}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_full_use_is_the_plain_call(backend, generator):
    """seqused_k = Sk everywhere computes what the call without it computes, bit for bit."""
    case = Case(RULES[3], 16, (4, 2), torch.float32, generator, capacity=40)
    k = torch.randn(case.k.shape, generator=generator)
    v = torch.randn(case.v.shape, generator=generator)
    full = int32([case.capacity] * BATCH)
    got = chunk_attention(case.q, k, v, case.spec, seqused_k=full, backend=backend)
    want = chunk_attention(case.q, k, v, case.spec, backend=backend)
    assert torch.equal(got, want), f"{backend} {case}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gradients_stay_finite_and_skip_storage_rows(backend, dtype, generator):
    """Through NaN storage, gradients match the float64 reference of the used keys alone, and
    storage rows get exact zeros."""
    case = Case(RULES[5], 4, (4, 2), dtype, generator)
    grad_out = torch.randn(case.q.shape, generator=generator).to(dtype)
    q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))
    out = chunk_attention(q, k, v, case.spec, seqused_k=case.seqused_k, backend=backend)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, g in zip("qkv", got, strict=True):
        assert torch.isfinite(g).all(), f"{backend} d{name} not finite: {case}"
    for b, n in enumerate(case.used):
        assert (got[1][b, n:] == 0).all() and (got[2][b, n:] == 0).all(), f"{backend} storage grads: {case}"
    # The float64 oracle of the gradients: each stream on its used keys only, no seqused_k;
    # storage rows get zeros.
    want = [torch.zeros(t.shape, dtype=torch.float64) for t in (q, k, v)]
    for b, n in enumerate(case.used):
        rule = (case.chunk_q[b], case.chunk_k[b], case.left_chunks, case.q_offset[b], case.k_offset[b])
        one = ChunkSpec(*rule)
        inputs = [t[b : b + 1, :m].detach().double().requires_grad_() for t, m in ((q, None), (k, n), (v, n))]
        reference = chunk_attention(*inputs, one, backend="reference")
        # allow_unused: a stream with no used key makes no use of its (empty) keys
        grads = torch.autograd.grad(reference, inputs, grad_out[b : b + 1].double(), allow_unused=True)
        for w, g in zip(want, grads, strict=True):
            if g is not None:
                w[b, : g.shape[1]] = g[0]
    for name, g, w in zip("qkv", got, want, strict=True):
        # floor 1: where every query sees one key or none, the true dQ is 0 and the rounding
        # of the attention weights (near 1e-7 in float32) is all there is
        assert_close(g, w, GRAD_TOLERANCE[dtype], f"{backend} d{name}: {case}", floor=1.0)


def test_flex_block_mask_masks_the_tile_where_used_keys_end():
    """A key block that holds the end of the used keys runs mask_mod (partial), one past them is
    never loaded, even where every used key in it is visible. (Eager flex on CPU applies mask_mod
    everywhere; the compiled GPU kernel trusts the full blocks.)"""
    from s2s.attention.backends.flex import build_block_mask

    chunks = ChunkSpec(1024).resolve(4)
    mask = build_block_mask(chunks, 4, 256, seqused_k=int32([10, 128, 0, 256]), block_size=128)
    partial = mask.kv_num_blocks[:, 0, 0].tolist()
    full = mask.full_kv_num_blocks[:, 0, 0].tolist()
    assert (partial, full) == ([1, 0, 0, 0], [0, 1, 0, 2]), f"partial {partial}, full {full}"


def test_auto_picks_a_backend_that_runs_and_is_right(generator):
    case = Case(RULES[2], 4, (4, 2), torch.float32, generator)
    want, want_lse = case.oracle()

    def chosen(q, return_lse):
        problem = make_problem(q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
        return select_backend(problem, "auto", return_lse).name

    assert chosen(case.q, False) == "sdpa" and chosen(case.q, True) == "flex"
    assert_close(case.attend("auto"), want, 2e-5, f"auto {case}")
    out, lse = case.attend("auto", return_lse=True)
    assert_close(out, want, 2e-5, f"auto with LSE {case}")
    assert_lse_close(lse, want_lse, 2e-4, f"auto {case}")
    q = case.q.clone().requires_grad_()
    assert chosen(q, True) == "reference"
    out = chunk_attention(q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
    out.sum().backward()
    assert torch.isfinite(q.grad).all(), f"auto gradients: {case}"


def test_the_cute_backend_takes_seqused_k_without_gradients_only(generator):
    """The forward takes seqused_k (on CPU it refuses for the device and dtype, never for
    seqused_k); a call that needs gradients is refused, with the way out."""
    from s2s.attention.backends import BACKENDS

    case = Case(RULES[1], 4, (4, 2), torch.float32, generator)
    problem = make_problem(case.q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
    reason = BACKENDS["cute"].unsupported_reason(problem, False)
    assert reason is None or "seqused_k" not in reason, reason
    case.q.requires_grad_()
    with pytest.raises(NotImplementedError, match=r"CuTe backward does not take seqused_k.*no_grad"):
        case.attend("cute")
    with torch.no_grad():
        problem = make_problem(case.q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
        reason = BACKENDS["cute"].unsupported_reason(problem, False)
    assert reason is None or "seqused_k" not in reason, reason


def test_problem_keeps_capacity_and_lengths_without_reading_them():
    """seqlens_k is seqused_k; max_seqlen_k the capacity. Meta tensors have no values to read, so
    this also shows make_problem reads none (no host sync), out-of-range ones included."""
    q = torch.empty(2, 4, 4, 16, device="meta")
    k = torch.empty(2, 50, 2, 16, device="meta")
    used = torch.empty(2, dtype=torch.int32, device="meta")
    problem = make_problem(q, k, k, ChunkSpec(4, q_offset=7), seqused_k=used)
    assert problem.seqused_k is used and problem.max_seqlen_k == 50
    assert problem.seqlens_k.dtype == torch.int64 and problem.seqlens_k.shape == (2,)
    cpu = make_problem(torch.randn(2, 4, 4, 16), *[torch.randn(2, 50, 2, 16)] * 2, ChunkSpec(4),
                       seqused_k=int32([3, 99]))  # fmt: skip
    assert cpu.seqlens_k.tolist() == [3, 99] and cpu.max_seqlen_k == 50


# GPU: the CuTe forward kernel on a decode step of long caches, called directly into NaN-filled
# output buffers, and `auto` (the CuTe kernel on Hopper) on CUDA. bf16, head dim 64, Sq = 4, GQA 8/2. The used
# lengths cross the kernel's 128-key tiles in every way: empty, one key, just past a tile, a
# tile's end, mid-tile, and the whole capacity; 2000 is not a multiple of 128, so a stream's last
# tile also covers the next stream's first rows (stream 1 after stream 0: all storage).
GPU_USED = [1999, 0, 1, 127, 128, 129, 1000, 2000]
GPU_RULES = [("chunk4", 4, 4, None), ("chunk16-left2", 16, 16, 2)]
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU")


def gpu_case(rule, generator, storage: str) -> Case:
    """A decode step on CUDA; storage rows NaN (``"nan"``) or large finite values (``"finite"``)."""
    case = Case(
        rule, 4, (8, 2), torch.bfloat16, generator, device="cuda", head_dim=64, capacity=2000, used=GPU_USED
    )
    if storage == "finite":
        for b, n in enumerate(case.used):
            big = 1e4 * torch.randn(case.k[b, n:].shape, generator=generator)
            case.k[b, n:], case.v[b, n:] = big.to(case.k), (-big).to(case.v)
    return case


def nan_buffers(rows: int, heads: int, head_dim: int):
    """Output and LSE buffers for the kernel, NaN-filled: what comes back finite was written."""
    out = torch.full((rows, heads, head_dim), NAN, dtype=torch.bfloat16, device="cuda")
    lse = torch.full((heads, rows), NAN, dtype=torch.float32, device="cuda")
    return out, lse


def cute_forward(case: Case, warpgroups: int | None = None):
    """The kernel into NaN-filled output and LSE buffers; ``warpgroups`` picks the tile shape
    (default: the shipped one)."""
    from s2s.attention.cute.launch import prepare, problem_layout
    from s2s.attention.cute.tiles import ForwardTiles

    problem = make_problem(case.q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
    batch, seqlen_q, heads_q, head_dim = case.q.shape
    out, lse = nan_buffers(batch * seqlen_q, heads_q, head_dim)
    tiles = None if warpgroups is None else ForwardTiles(head_dim=head_dim, consumer_warpgroups=warpgroups)
    prepared = prepare(problem, out, lse, tiles=tiles)
    prepared.launch()
    torch.cuda.synchronize()
    return problem_layout(problem, prepared.out, prepared.lse)


def check_cute(case: Case, warpgroups: int | None = None):
    got, got_lse = cute_forward(case, warpgroups)
    want, want_lse = case.oracle()
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} output elements NaN: {case}"
    assert not torch.isnan(got_lse).any(), f"{int(torch.isnan(got_lse).sum())} LSE values NaN: {case}"
    error = ((got.cpu().double() - want).norm() / want.norm()).item()
    assert error <= 1e-2, f"output relative error {error:.2e}: {case}"
    empty = [b for b, n in enumerate(case.used) if n == 0]
    assert (got[empty] == 0).all(), f"the streams with no used key, {empty}: {case}"
    assert_lse_close(got_lse, want_lse, 2e-2, f"cute {case}")
    return got, got_lse


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("rule", GPU_RULES, ids=[r[0] for r in GPU_RULES])
def test_cute_kernel_honours_used_lengths(rule, generator):
    """With large finite values in storage: the kernel masks every key past seqlen_k (its own
    storage and the next stream's rows in its last tile) and writes every output element."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    check_cute(gpu_case(rule, generator, "finite"))


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("rule", GPU_RULES, ids=[r[0] for r in GPU_RULES])
def test_cute_kernel_keeps_nan_storage_out(rule, generator):
    """The last key tile's V rows past seqlen_k hold NaN and enter P @ V with P = 0: the kernel
    zeroes them in shared memory first (0 x NaN would be NaN)."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    check_cute(gpu_case(rule, generator, "nan"))


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("warpgroups", [1, 2, 3], ids=["wg1", "wg2", "wg3"])
@pytest.mark.parametrize("seqlen_q", [1, 4, 16])
@pytest.mark.parametrize("capacity", [200, 300])
def test_cute_decode_step_on_nan_caches_matches_the_oracle(capacity, seqlen_q, warpgroups, generator):
    """A streaming decode step (chunk 4, 1 to 16 query rows, GQA 12:4, head dim 64, bf16) on
    caches whose capacity is no multiple of 128, every unused row NaN, used lengths across the
    tile edges: the kernel (every tile shape) into NaN-filled buffers against the float64
    oracle, and the public call (backend="cute") gives the shipped kernel's bits."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    used = [capacity, 0, 1, 127, 128, 129, capacity - 1, randint(generator, 1, capacity)]
    case = Case(
        RULES[1], seqlen_q, (12, 4), torch.bfloat16, generator, device="cuda", head_dim=64,
        capacity=capacity, used=used,
    )  # fmt: skip
    got, got_lse = check_cute(case, warpgroups)
    from s2s.attention.cute.launch import default_tiles

    if warpgroups == default_tiles(64, seqlen_q).consumer_warpgroups:  # the shipped shape here
        public, lse = case.attend("cute", return_lse=True)
        assert torch.equal(public, got), f"chunk_attention(backend='cute') differs from the kernel: {case}"
        assert torch.equal(lse, got_lse), f"chunk_attention(backend='cute') LSE differs: {case}"


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("step", ["decode", "prefill"])
def test_cute_packed_sequences_keep_trailing_nan_storage_out(step, generator):
    """Packed (varlen) layout: two sequences of 200 and 300 keys (no multiple of 128), then 60 NaN
    rows of storage after the last one. Sequence 0's last key tile reads sequence 1's first
    rows, sequence 1's reads the NaN rows (and past the tensor, TMA's zeros)."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    from s2s.attention.cute.launch import forward

    seed = generator.initial_seed()
    heads_q, heads_k, head_dim, chunk = 12, 4, 64, 4
    lengths_k = [200, 300]
    lengths_q = [16, 5] if step == "decode" else lengths_k
    k_offset = [randint(generator, 0, 20) for _ in lengths_k]
    # A decode step's queries are the last positions of its keys; a prefill's are its keys.
    q_offset = [ko + nk - nq for ko, nk, nq in zip(k_offset, lengths_k, lengths_q, strict=True)]
    cu_q = [0, lengths_q[0], sum(lengths_q)]
    cu_k = [0, lengths_k[0], sum(lengths_k)]
    q = torch.randn(cu_q[-1], heads_q, head_dim, generator=generator).to(torch.bfloat16)
    k = torch.randn(cu_k[-1] + 60, heads_k, head_dim, generator=generator).to(torch.bfloat16)
    v = torch.randn(cu_k[-1] + 60, heads_k, head_dim, generator=generator).to(torch.bfloat16)
    k[cu_k[-1] :], v[cu_k[-1] :] = NAN, NAN
    spec = ChunkSpec(chunk, chunk, None, int32(q_offset).cuda(), int32(k_offset).cuda())
    problem = make_problem(
        q.cuda(), k.cuda(), v.cuda(), spec, cu_seqlens_q=int32(cu_q).cuda(), cu_seqlens_k=int32(cu_k).cuda()
    )
    what = f"seed {seed}: {step}, q {lengths_q}, k {lengths_k}, q_offset {q_offset}, k_offset {k_offset}"
    out, lse = nan_buffers(cu_q[-1], heads_q, head_dim)
    got, got_lse = forward(problem, out=out, lse=lse)
    torch.cuda.synchronize()
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} output elements NaN: {what}"
    assert not torch.isnan(got_lse).any(), f"{int(torch.isnan(got_lse).sum())} LSE values NaN: {what}"
    for b in range(2):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        rule = ([chunk], [chunk], [q_offset[b]], [k_offset[b]], None)
        want, want_lse = oracle(q[None, rows], k[None, keys], v[None, keys], [lengths_k[b]], *rule)
        error = ((got[rows].cpu().double() - want[0]).norm() / want.norm()).item()
        assert error <= 1e-2, f"sequence {b}: output relative error {error:.2e}: {what}"
        assert_lse_close(got_lse[:, rows], want_lse[0], 2e-2, f"sequence {b}: {what}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "sdpa", "flex"])
@pytest.mark.parametrize("rule", GPU_RULES, ids=[r[0] for r in GPU_RULES])
def test_gpu_backends_keep_nan_storage_out(rule, backend, generator):
    """`auto` (the CuTe kernel on Hopper), SDPA and compiled flex on CUDA."""
    case = gpu_case(rule, generator, "nan")
    problem = make_problem(case.q, case.k, case.v, case.spec, seqused_k=case.seqused_k)
    if HOPPER and importlib.util.find_spec("cutlass") is not None:
        assert select_backend(problem, "auto", False).name == "cute", f"auto on Hopper: {case}"
    got = case.attend(backend)
    want, _ = case.oracle()
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} output elements NaN: {case}"
    error = ((got.cpu().double() - want).norm() / want.norm()).item()
    assert error <= 1e-2, f"output relative error {error:.2e}: {case}"
