"""Padded query rows with per-sequence used lengths (flash-attention's ``seqused_q``): a padded
training batch runs unpacked without computing its padding rows. Every backend against a float64
oracle written here from the rule, with NaN in every unused query row (and in grad_out's): those
rows are never attended, their output is exactly 0 and their LSE -inf, and they get and give no
gradient. The CuTe backward needs them finite (flash-attention's contract): its GPU tests put
large finite values there."""

import importlib.util

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention
from s2s.attention.api import select_backend
from s2s.attention.problem import make_problem
from tests.attention.test_seqused_k import (
    RULES,
    assert_close,
    assert_lse_close,
    garbage_like,
    int32,
    oracle,
    per_sequence,
    randint,
)

NAN, INF = float("nan"), float("inf")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2}
GRAD_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 4e-2}
CPU_BACKENDS = ["reference", "sdpa", "flex"]
WITH_LSE = {"reference", "flex"}  # sdpa returns no LSE
RULE_IDS = [r[0] for r in RULES]
# Gradients on CPU: reference and sdpa (flex has no CPU backward).
GRAD_RULES = [RULES[0], RULES[4], RULES[5], RULES[6]]


class Case:
    """Fresh random inputs of one rule: B sequences padded to ``seqlen_q`` query rows, the first
    ``used_q[b]`` of them real and every other NaN (as are grad_out's); keys ``seqlen_k`` rows,
    with ``with_k`` also a ``seqused_k`` and NaN in the unused key rows. A training batch: the
    queries and keys start near each other on the timeline (random per-sequence offsets)."""

    def __init__(
        self,
        rule,
        seqlen_q,
        heads,
        dtype,
        generator,
        *,
        device="cpu",
        head_dim=16,
        seqlen_k=None,
        used_q=None,
        with_k=False,
        offsets=True,
        padding="nan",
    ):
        _, chunk_q, chunk_k, self.left_chunks = rule
        self.seed = generator.initial_seed()
        heads_q, heads_k = heads
        self.seqlen_q = seqlen_q
        self.seqlen_k = randint(generator, max(1, seqlen_q // 2), 40) if seqlen_k is None else seqlen_k
        if used_q is None:
            used_q = [randint(generator, 1, seqlen_q), randint(generator, 0, seqlen_q), seqlen_q]
        self.used_q = list(used_q)
        batch = len(self.used_q)
        if with_k:
            self.used_k = [randint(generator, 0, self.seqlen_k) for _ in range(batch - 1)] + [self.seqlen_k]
        else:
            self.used_k = [self.seqlen_k] * batch
        self.with_k = with_k
        self.q_offset = [randint(generator, 0, 12) if offsets else 0 for _ in range(batch)]
        self.k_offset = [randint(generator, 0, 12) if offsets else 0 for _ in range(batch)]
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
        self.q = torch.randn(batch, seqlen_q, heads_q, head_dim, generator=generator)
        self.k = torch.randn(batch, self.seqlen_k, heads_k, head_dim, generator=generator)
        self.v = torch.randn(batch, self.seqlen_k, heads_k, head_dim, generator=generator)
        self.grad_out = torch.randn(self.q.shape, generator=generator)
        for b, (n, m) in enumerate(zip(self.used_q, self.used_k, strict=True)):
            if padding == "nan":
                self.q[b, n:], self.grad_out[b, n:] = NAN, NAN
            else:  # large finite values, what the CuTe backward takes
                self.q[b, n:] = 1e2 * torch.randn(self.q[b, n:].shape, generator=generator)
                self.grad_out[b, n:] = 1e2 * torch.randn(self.q[b, n:].shape, generator=generator)
            self.k[b, m:], self.v[b, m:] = NAN, NAN
        self.q, self.k, self.v, self.grad_out = (
            t.to(device, dtype) for t in (self.q, self.k, self.v, self.grad_out)
        )
        self.seqused_q = int32(self.used_q).to(device)
        self.seqused_k = int32(self.used_k).to(device) if with_k else None

    def __repr__(self) -> str:
        return (
            f"seed {self.seed}: used_q {self.used_q} of {self.seqlen_q}, used_k {self.used_k} of "
            f"{self.seqlen_k}{' (seqused_k)' if self.with_k else ''}, q_offset {self.q_offset}, "
            f"k_offset {self.k_offset}, chunks {self.chunk_q}/{self.chunk_k}, left {self.left_chunks}"
        )

    def oracle(self):
        rule = (self.chunk_q, self.chunk_k, self.q_offset, self.k_offset, self.left_chunks)
        return oracle(self.q, self.k, self.v, self.used_k, *rule, used_q=self.used_q)

    def attend(self, backend, q=None, k=None, v=None, **kwargs):
        """chunk_attention with the case's lengths; ``q``, ``k``, ``v`` replace the case's."""
        return chunk_attention(
            self.q if q is None else q,
            self.k if k is None else k,
            self.v if v is None else v,
            self.spec,
            seqused_q=self.seqused_q,
            seqused_k=self.seqused_k,
            backend=backend,
            **kwargs,
        )

    def sliced_reference(self):
        """float64 output and LSE as ``oracle`` gives them, from the reference backend on each
        sequence's used rows and keys alone (no seqused_q or seqused_k): fast on a GPU, for the
        long GPU cases."""
        batch, seqlen_q, heads_q, head_dim = self.q.shape
        out = torch.zeros(batch, seqlen_q, heads_q, head_dim, dtype=torch.float64, device=self.q.device)
        lse = torch.full((batch, heads_q, seqlen_q), -INF, dtype=torch.float64, device=self.q.device)
        for b, (n, m) in enumerate(zip(self.used_q, self.used_k, strict=True)):
            if n == 0 or m == 0:
                continue
            inputs = [t[b : b + 1, :rows].double() for t, rows in ((self.q, n), (self.k, m), (self.v, m))]
            one, one_lse = chunk_attention(*inputs, self.one_spec(b), backend="reference", return_lse=True)
            out[b, :n], lse[b, :, :n] = one[0], one_lse[0]
        return out.cpu(), lse.cpu()

    def one_spec(self, b: int) -> ChunkSpec:
        """Sequence b's rule as a spec of host ints."""
        rule = (self.chunk_q[b], self.chunk_k[b], self.left_chunks, self.q_offset[b], self.k_offset[b])
        return ChunkSpec(*rule)

    def oracle_gradients(self):
        """float64 dq, dk, dv: each sequence on its used rows and keys alone, without seqused_q or
        seqused_k (the reference backend on the slices; the rule is top-left aligned with the
        spec's offsets, so slicing keeps it); everything else zero."""
        want = [torch.zeros(t.shape, dtype=torch.float64, device=t.device) for t in (self.q, self.k, self.v)]
        for b, (n, m) in enumerate(zip(self.used_q, self.used_k, strict=True)):
            if n == 0 or m == 0:
                continue
            inputs = [
                t[b : b + 1, :rows].detach().double().requires_grad_()
                for t, rows in ((self.q, n), (self.k, m), (self.v, m))
            ]
            out = chunk_attention(*inputs, self.one_spec(b), backend="reference")
            grads = torch.autograd.grad(out, inputs, self.grad_out[b : b + 1, :n].double(), allow_unused=True)
            for w, g in zip(want, grads, strict=True):
                if g is not None:
                    w[b, : g.shape[1]] = g[0]
        return want


def check_padding_rows(case, out, lse, what):
    """Rows past seqused_q: output exactly 0, LSE exactly -inf."""
    for b, n in enumerate(case.used_q):
        assert (out[b, n:] == 0).all(), f"{what}: output rows past seqused_q[{b}] = {n} not zero"
        if lse is not None:
            assert (lse[b, :, n:] == -INF).all(), f"{what}: LSE rows past seqused_q[{b}] = {n} not -inf"


@pytest.mark.parametrize("with_k", [False, True], ids=["q-only", "with-seqused_k"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_matches_float64_oracle_with_nan_padding(rule, backend, dtype, with_k, generator):
    case = Case(rule, randint(generator, 1, 24), (4, 2), dtype, generator, with_k=with_k)
    want, want_lse = case.oracle()
    lse = None
    if backend in WITH_LSE:
        got, lse = case.attend(backend, return_lse=True)
        assert_lse_close(lse, want_lse, 10 * TOLERANCE[dtype], f"{backend} {case}")
    else:
        got = case.attend(backend)
    assert got.dtype == dtype, f"{backend} {case}: dtype {got.dtype}"
    assert_close(got, want, TOLERANCE[dtype], f"{backend} {case}")
    check_padding_rows(case, got, lse, f"{backend} {case}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mqa_and_float64(backend, generator):
    """One K/V head for eight query heads, in float64 (the tightest tolerance)."""
    case = Case(RULES[2], 20, (8, 1), torch.float64, generator, with_k=True)
    want, _ = case.oracle()
    got = case.attend(backend)
    assert_close(got, want, TOLERANCE[torch.float64], f"{backend} {case}")
    check_padding_rows(case, got, None, f"{backend} {case}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_and_full_sequences(backend, generator):
    """seqused_q = 0 gives a sequence of zeros and -inf; seqused_q = Sq gives, bit for bit, what
    the call without seqused_q gives that sequence."""
    case = Case(RULES[1], 12, (4, 2), torch.float32, generator, used_q=[0, 12, 5])
    want, want_lse = case.oracle()
    lse = None
    if backend in WITH_LSE:
        got, lse = case.attend(backend, return_lse=True)
        assert_lse_close(lse, want_lse, 2e-4, f"{backend} {case}")
    else:
        got = case.attend(backend)
    assert_close(got, want, TOLERANCE[torch.float32], f"{backend} {case}")
    check_padding_rows(case, got, lse, f"{backend} {case}")
    plain = chunk_attention(case.q, case.k, case.v, case.spec, backend=backend)
    assert torch.equal(got[1], plain[1]), f"{backend}: the full sequence differs from the plain call: {case}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_full_use_is_the_plain_call(backend, generator):
    """seqused_q = Sq everywhere computes what the call without it computes, bit for bit."""
    case = Case(RULES[3], 16, (4, 2), torch.float32, generator, used_q=[16, 16, 16])
    got = case.attend(backend)
    want = chunk_attention(case.q, case.k, case.v, case.spec, backend=backend)
    assert torch.equal(got, want), f"{backend} {case}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_padding_values_never_reach_the_used_rows(backend, generator):
    """The used rows' output is bit-identical whatever the padding rows hold (NaN, +-inf, 1e30)."""
    case = Case(RULES[2], 16, (4, 2), torch.float32, generator, used_q=[3, 9, 16])
    before = case.attend(backend)
    q = case.q.clone()
    for b, n in enumerate(case.used_q):
        q[b, n:] = garbage_like(q[b, n:], generator)
    after = case.attend(backend, q=q)
    assert torch.equal(after, before), f"{backend}: padding values changed the output: {case}"


@pytest.mark.parametrize("with_k", [False, True], ids=["q-only", "with-seqused_k"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("rule", GRAD_RULES, ids=[r[0] for r in GRAD_RULES])
def test_gradients_match_the_oracle_through_nan_padding(rule, backend, dtype, with_k, generator):
    """NaN in q's and grad_out's padding rows: every gradient finite and right, dq exactly 0 past
    seqused_q, and (with seqused_k) dk, dv exactly 0 past it."""
    case = Case(rule, randint(generator, 1, 20), (4, 2), dtype, generator, with_k=with_k)
    q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))
    got = torch.autograd.grad(case.attend(backend, q, k, v), (q, k, v), case.grad_out)
    for name, g in zip("qkv", got, strict=True):
        assert torch.isfinite(g).all(), f"{backend} d{name} not finite: {case}"
    for b, (n, m) in enumerate(zip(case.used_q, case.used_k, strict=True)):
        assert (got[0][b, n:] == 0).all(), f"{backend} dq rows past seqused_q[{b}] = {n}: {case}"
        assert (got[1][b, m:] == 0).all() and (got[2][b, m:] == 0).all(), f"{backend} unused keys: {case}"
    for name, g, w in zip("qkv", got, case.oracle_gradients(), strict=True):
        # floor 1: where every query sees one key or none, the true dQ is 0 and the rounding
        # of the attention weights is all there is
        assert_close(g, w, GRAD_TOLERANCE[dtype], f"{backend} d{name}: {case}", floor=1.0)


def test_flex_block_mask_hides_blocks_of_padding_rows():
    """A query block of padding rows only is never visited; one that holds the end of the used
    rows runs mask_mod (partial), even where every used row in it sees every key."""
    from s2s.attention.backends.flex import build_block_mask

    chunks = ChunkSpec(1024).resolve(4)
    mask = build_block_mask(chunks, 256, 128, seqused_q=int32([10, 128, 0, 256]), block_size=128)
    partial = mask.kv_num_blocks[:, 0, :].tolist()
    full = mask.full_kv_num_blocks[:, 0, :].tolist()
    assert partial == [[1, 0], [0, 0], [0, 0], [0, 0]], f"partial {partial}"
    assert full == [[0, 0], [1, 0], [0, 0], [1, 1]], f"full {full}"


def test_no_keys_gives_zeros_without_nan():
    """Sk = 0: every row gets zeros and -inf, the padding rows' NaN included (0 x NaN is NaN)."""
    q = torch.randn(2, 4, 2, 16)
    q[0, 1:] = NAN
    k = torch.randn(2, 0, 2, 16)
    out, lse = chunk_attention(q, k, k, ChunkSpec(4), seqused_q=int32([1, 4]), return_lse=True)
    assert (out == 0).all() and (lse == -INF).all()


def test_auto_picks_a_backend_that_runs_and_is_right(generator):
    case = Case(RULES[2], 12, (4, 2), torch.float32, generator)
    want, want_lse = case.oracle()

    def chosen(q, return_lse):
        problem = make_problem(q, case.k, case.v, case.spec, seqused_q=case.seqused_q)
        return select_backend(problem, "auto", return_lse).name

    assert chosen(case.q, False) == "sdpa" and chosen(case.q, True) == "flex"
    out, lse = case.attend("auto", return_lse=True)
    assert_close(out, want, 2e-5, f"auto {case}")
    assert_lse_close(lse, want_lse, 2e-4, f"auto {case}")
    q = case.q.clone().requires_grad_()
    assert chosen(q, True) == "reference"
    case.attend("auto", q=q).backward(case.grad_out)
    assert torch.isfinite(q.grad).all(), f"auto gradients: {case}"


def test_the_cute_backend_takes_seqused_q_with_gradients(generator):
    """Unlike seqused_k, seqused_q is taken by the CuTe backward too (on CPU the backend refuses
    for the device and dtype, never for seqused_q)."""
    from s2s.attention.backends import BACKENDS

    case = Case(RULES[1], 8, (4, 2), torch.float32, generator)
    q = case.q.clone().requires_grad_()
    problem = make_problem(q, case.k, case.v, case.spec, seqused_q=case.seqused_q)
    reason = BACKENDS["cute"].unsupported_reason(problem, True)
    assert reason is None or "seqused" not in reason, reason


def test_problem_keeps_the_shapes_and_lengths_without_reading_them():
    """seqlens_q is seqused_q; max_seqlen_q and rows_q the shapes'. Meta tensors have no values to
    read, so this also shows make_problem reads none (no host sync)."""
    q = torch.empty(2, 40, 4, 16, device="meta")
    k = torch.empty(2, 50, 2, 16, device="meta")
    used = torch.empty(2, dtype=torch.int32, device="meta")
    problem = make_problem(q, k, k, ChunkSpec(4), seqused_q=used, seqused_k=used)
    assert problem.seqused_q is used and problem.max_seqlen_q == 40 and problem.rows_q == 80
    assert problem.seqlens_q.dtype == torch.int64 and problem.seqlens_q.shape == (2,)
    cpu = make_problem(torch.randn(2, 4, 4, 16), *[torch.randn(2, 50, 2, 16)] * 2, ChunkSpec(4),
                       seqused_q=int32([3, 99]))  # fmt: skip
    assert cpu.seqlens_q.tolist() == [3, 99] and cpu.max_seqlen_q == 4
    assert cpu.seqlens_k.tolist() == [50, 50] and cpu.seqused_k is None


# GPU: the CuTe kernels on padded training batches (self-attention, no offsets, as the model
# calls them) whose used lengths cross the kernels' tiles in every way: empty, one row, around a
# 64- and a 128-row tile's end, mid-tile and the whole length; Sq = 300 is no multiple of any
# tile, so a sequence's last tile also covers the next sequence's first rows.
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU")
GPU_SEQLEN = 300
GPU_USED = [300, 0, 1, 63, 64, 127, 128, 129, 200, 299]
GPU_RULES = [
    ("chunk16", 16, 16, None),
    ("chunk4-left8", 4, 4, 8),
    ("per-sequence", list(range(1, 11)), None, 3),
]
GPU_RULE_IDS = [r[0] for r in GPU_RULES]


def gpu_case(rule, head_dim, generator, padding: str, with_k=False) -> Case:
    name, chunk_q, chunk_k, left = rule
    rule = (name, chunk_q, chunk_q if chunk_k is None else chunk_k, left)
    return Case(
        rule, GPU_SEQLEN, (4, 2), torch.bfloat16, generator, device="cuda", head_dim=head_dim,
        seqlen_k=GPU_SEQLEN, used_q=GPU_USED, with_k=with_k, offsets=False, padding=padding,
    )  # fmt: skip


def relative_error(got, want) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-12)).item()


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("with_k", [False, True], ids=["q-only", "with-seqused_k"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rule", GPU_RULES, ids=GPU_RULE_IDS)
def test_cute_forward_with_nan_padding(rule, head_dim, with_k, generator):
    """The forward kernel into NaN-filled output and LSE buffers, NaN in every padding row of q:
    used rows against the float64 oracle, padding rows 0 and -inf; the public call gives the
    same bits."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    from s2s.attention.cute.launch import prepare, problem_layout

    case = gpu_case(rule, head_dim, generator, "nan", with_k)
    problem = make_problem(
        case.q, case.k, case.v, case.spec, seqused_q=case.seqused_q, seqused_k=case.seqused_k
    )
    rows, heads = case.q.shape[0] * case.q.shape[1], case.q.shape[2]
    out = torch.full((rows, heads, head_dim), NAN, dtype=torch.bfloat16, device="cuda")
    lse = torch.full((heads, rows), NAN, dtype=torch.float32, device="cuda")
    prepared = prepare(problem, out, lse)
    prepared.launch()
    got, got_lse = problem_layout(problem, prepared.out, prepared.lse)
    torch.cuda.synchronize()
    want, want_lse = case.sliced_reference()
    assert not torch.isnan(got).any(), f"{int(torch.isnan(got).sum())} output elements NaN: {case}"
    assert not torch.isnan(got_lse).any(), f"{int(torch.isnan(got_lse).sum())} LSE values NaN: {case}"
    error = relative_error(got.cpu(), want)
    assert error <= 1e-2, f"output relative error {error:.2e}: {case}"
    check_padding_rows(case, got, got_lse, f"cute {case}")
    assert_lse_close(got_lse, want_lse, 2e-2, f"cute {case}")
    public, public_lse = case.attend("cute", return_lse=True)
    assert torch.equal(public, got) and torch.equal(public_lse, got_lse), f"the public call differs: {case}"


def cute_gradients_into_nan_buffers(case: Case, deterministic: bool):
    """The forward, then the backward into NaN-filled dq, dk, dv buffers."""
    from s2s.attention.cute.backward import backward
    from s2s.attention.cute.launch import prepare

    problem = make_problem(case.q, case.k, case.v, case.spec, seqused_q=case.seqused_q)
    prepared = prepare(problem)
    prepared.launch()
    grads = tuple(torch.full_like(t, NAN) for t in prepared.inputs)
    backward(
        problem,
        *prepared.inputs,
        prepared.out,
        prepared.lse,
        prepared.table,
        case.grad_out.reshape(prepared.out.shape),
        deterministic=deterministic,
        grads=grads,
    )
    torch.cuda.synchronize()
    return [g.view(t.shape) for g, t in zip(grads, (case.q, case.k, case.v), strict=True)]


def check_cute_gradients(case: Case, got, what: str):
    for name, g in zip("qkv", got, strict=True):
        assert not torch.isnan(g).any(), f"{what} d{name}: {int(torch.isnan(g).sum())} NaN elements: {case}"
    for b, n in enumerate(case.used_q):
        assert (got[0][b, n:] == 0).all(), f"{what}: dq rows past seqused_q[{b}] = {n}: {case}"
    for name, g, w in zip("qkv", got, case.oracle_gradients(), strict=True):
        error = relative_error(g, w)
        assert error <= 2e-2, f"{what} d{name} relative error {error:.2e}: {case}"


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("path", ["fused", "fused-legacy", "deterministic"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rule", GPU_RULES, ids=GPU_RULE_IDS)
def test_cute_backward_with_finite_padding(rule, head_dim, path, generator, monkeypatch):
    """Large finite values (100 x randn) in q's and grad_out's padding rows, as the CuTe backward
    requires: every gradient element written (NaN-filled buffers), against the float64 oracle of
    the used rows alone, dq exactly 0 past seqused_q. The deterministic path also through the
    public call under torch.use_deterministic_algorithms, bit for bit and repeatable."""
    pytest.importorskip("cutlass", reason="nvidia-cutlass-dsl is not installed (pip install -e '.[cute]')")
    from s2s.attention.cute.backward import FUSED_TILING_CHOICES

    env, _ = FUSED_TILING_CHOICES[head_dim]
    if path == "fused-legacy":
        monkeypatch.setenv(env, "legacy")
    else:
        monkeypatch.delenv(env, raising=False)
    case = gpu_case(rule, head_dim, generator, "finite")
    deterministic = path == "deterministic"
    got = cute_gradients_into_nan_buffers(case, deterministic)
    check_cute_gradients(case, got, path)

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        public = []
        for _ in range(2 if deterministic else 1):
            q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))
            out = chunk_attention(q, k, v, case.spec, seqused_q=case.seqused_q, backend="cute")
            public.append(torch.autograd.grad(out, (q, k, v), case.grad_out))
    finally:
        torch.use_deterministic_algorithms(was)
    check_cute_gradients(case, public[0], f"{path} (public call)")
    if deterministic:
        for name, g, h, again in zip("qkv", got, public[0], public[1], strict=True):
            assert torch.equal(g, h) and torch.equal(h, again), (
                f"deterministic d{name} not bit-identical: {case}"
            )


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_gpu_backends_give_finite_gradients_through_nan_padding(backend, generator):
    """SDPA and compiled flex on CUDA (flex's backward runs there only), NaN in q's and
    grad_out's padding rows."""
    case = gpu_case(GPU_RULES[1], 64, generator, "nan", with_k=True)
    q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))
    if backend == "flex":
        out, lse = case.attend(backend, q, k, v, return_lse=True)
    else:
        out, lse = case.attend(backend, q, k, v), None
    check_padding_rows(case, out.detach(), None if lse is None else lse.detach(), f"{backend} {case}")
    want, _ = case.sliced_reference()
    assert relative_error(out.detach().cpu(), want) <= 1e-2, f"{backend} output: {case}"
    got = torch.autograd.grad(out, (q, k, v), case.grad_out)
    for name, g in zip("qkv", got, strict=True):
        assert torch.isfinite(g).all(), f"{backend} d{name} not finite: {case}"
    for b, n in enumerate(case.used_q):
        assert (got[0][b, n:] == 0).all(), f"{backend} dq rows past seqused_q[{b}] = {n}: {case}"
    for name, g, w in zip("qkv", got, case.oracle_gradients(), strict=True):
        error = relative_error(g, w)
        assert error <= 2e-2, f"{backend} d{name} relative error {error:.2e}: {case}"


@pytest.mark.gpu
@needs_hopper
def test_auto_picks_cute_for_training_with_seqused_q(generator):
    if importlib.util.find_spec("cutlass") is None:
        pytest.skip("nvidia-cutlass-dsl is not installed")
    case = gpu_case(GPU_RULES[0], 128, generator, "finite")
    q = case.q.detach().requires_grad_()
    problem = make_problem(q, case.k, case.v, case.spec, seqused_q=case.seqused_q)
    assert select_backend(problem, "auto", False).name == "cute", f"auto on Hopper: {case}"
