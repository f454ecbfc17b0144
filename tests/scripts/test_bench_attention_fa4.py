"""scripts/bench_attention.py's CPU-side pieces: FlashAttention-4's block lists against the dense
chunk mask, the float32 rows every backend is checked against, and how failed rows are shown."""

import importlib.util

import pytest
import torch

from s2s.attention import ChunkSpec, chunk_attention


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_attention")


def block_classes_from_dense(mask: torch.Tensor, block: int) -> torch.Tensor:
    """(B, rows, cols) of 0 hidden / 1 partial / 2 full from a dense (B, Sq, Sk) mask."""
    batch, seqlen_q, seqlen_k = mask.shape
    tiles = mask.view(batch, seqlen_q // block, block, seqlen_k // block, block)
    visible = tiles.sum(dim=(2, 4))
    return torch.where(visible == block * block, 2, (visible > 0).long())


def block_classes_from_lists(lists, rows: int, cols: int) -> torch.Tensor:
    """The same classes read back from one head of the (count, index) lists."""
    batch = lists.mask_count.shape[0]
    classes = torch.zeros(batch, rows, cols, dtype=torch.long)
    for b in range(batch):
        for r in range(rows):
            for value, count, index in (
                (1, lists.mask_count, lists.mask_index),
                (2, lists.full_count, lists.full_index),
            ):
                for c in index[b, 0, r, : count[b, 0, r]].tolist():
                    assert classes[b, r, c] == 0, "a block listed twice"
                    classes[b, r, c] = value
    return classes


@pytest.mark.parametrize("chunk", [1, 16, 128, 200, 512])
def test_chunk_block_lists_match_the_dense_mask(bench, chunk):
    batch, heads, seqlen, block = 2, 3, 512, 128
    forward, backward = bench.chunk_block_lists(ChunkSpec(chunk), batch, heads, seqlen, seqlen, block)
    for lists in (forward, backward):
        for t in (lists.mask_count, lists.mask_index, lists.full_count, lists.full_index):
            assert t.dtype == torch.int32 and t.is_contiguous() and t.shape[:2] == (batch, heads)
        assert torch.equal(lists.mask_index[:, 0], lists.mask_index[:, heads - 1])
    dense = ChunkSpec(chunk).dense_mask(seqlen, seqlen, batch=batch)
    want = block_classes_from_dense(dense, block)
    n = seqlen // block
    assert torch.equal(block_classes_from_lists(forward, n, n), want)  # per query block
    assert torch.equal(block_classes_from_lists(backward, n, n), want.transpose(1, 2))  # per key block


@pytest.mark.parametrize(("name", "chunk"), [("flex", 16), ("fa4-chunk", 200), ("cudnn-causal", 16)])
def test_float32_rows_match_the_reference_backend(bench, name, chunk, generator):
    """Outputs and dQ of the checked rows against autograd through the reference backend in
    float64, under the mask the row computes (causal for the anchors)."""
    q, k, v, grad_out = (torch.randn(2, 160, 2, 16, generator=generator) for _ in range(4))
    spec = ChunkSpec(chunk)
    out, dq = bench.float32_rows(q, k, v, bench.checked_spec(name, spec), 0.3, grad_out)

    want_spec = ChunkSpec(1) if name == "cudnn-causal" else spec
    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q, k, v))
    want = chunk_attention(q64, k64, v64, want_spec, backend="reference", softmax_scale=0.3)
    (want_dq,) = torch.autograd.grad(want, q64, grad_out.double())
    rows = slice(160 - bench.CHECK_ROWS, 160)
    torch.testing.assert_close(out.double(), want[0, rows].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dq.double(), want_dq[0, rows], rtol=1e-5, atol=1e-5)
    assert bench.relative_error(want[0, rows].detach(), out.double()) < 1e-6


def test_failed_rows_read_na_or_error_with_their_reasons(bench):
    shape = {"head_dim": 64, "seqlen": 1024, "chunk": 16}
    rows = [
        {"backend": "cute", **shape, "tflops": 300.4, "bwd_tflops": 250.0},
        {"backend": "fa4-chunk", **shape, "tflops": 280.0, "bwd_error": "n/a: NotImplementedError: no bwd"},
        {"backend": "fa4-causal", **shape, "error": "n/a: AssertionError at interface.py:788"},
        {"backend": "flex", **shape, "error": "wrong result (relative error 3.00e-01)"},
    ]
    backends = ["cute", "flex", "fa4-causal", "fa4-chunk"]
    assert "| 64 | 1024 | 16 | 300 | error | n/a | 280 | - |" in bench.print_table(rows, backends)
    assert "| 64 | 1024 | 16 | 250 | error | n/a | n/a | - |" in bench.print_table(
        rows, backends, "bwd_tflops"
    )
    assert bench.failure_notes(rows) == [
        "fa4-chunk d=64 S=1024 C=16 backward: n/a: NotImplementedError: no bwd",
        "fa4-causal d=64 S=1024 C=16 forward: n/a: AssertionError at interface.py:788",
        "flex d=64 S=1024 C=16 forward: wrong result (relative error 3.00e-01)",
    ]


def test_failure_says_why_in_one_line(bench):
    def bare_assert():
        raise AssertionError  # as a bare `assert` in library code raises it

    try:
        bare_assert()
    except AssertionError as error:
        text = bench.failure("fa4-chunk", error)
    assert text.startswith("n/a: AssertionError at test_bench_attention_fa4.py:")
    long = RuntimeError("line one " + "x" * 500 + "\nline two")
    assert bench.failure("cute", long).startswith("error: RuntimeError: line one x")
    assert len(bench.failure("cute", long)) <= len("error: ") + 200


def test_fa4_rows_say_why_they_are_absent(bench):
    reason = bench.fa4_unavailable()
    if importlib.util.find_spec("flash_attn") is None:
        assert reason.startswith("flash_attn.cute does not import (ModuleNotFoundError")


def test_bench_shape_rows_on_the_cpu(bench, monkeypatch):
    """One shape's rows end to end, timing stubbed: the masked and the causal SDPA rows pass their
    forward and dQ checks and get TFLOP/s from their own pair counts; a FlashAttention-4 row that
    cannot run reads "n/a" with its reason instead of stopping the others."""
    monkeypatch.setattr(bench, "median_ms", lambda fn, warmup_ms=50: (fn(), 2.0)[1])
    if importlib.util.find_spec("flash_attn") is None:
        backends = ["sdpa-mask", "fa4-chunk", "sdpa-flash-causal"]
    else:  # where it imports it still needs a GPU: the row fails all the same
        backends = ["sdpa-mask", "sdpa-flash-causal"]
    rows = bench.bench_shape(16, 128, 16, 256, 32, backends, backward=True, device="cpu")
    by_name = {r["backend"]: r for r in rows}
    # batch 2, heads 2, d 16: chunk 16 sees 8 chunks x 16 rows x (1..8) x 16 keys = 9216 pairs per
    # sequence; causal sees 128 * 129 / 2 = 8256.
    chunk_flops, causal_flops = 4 * 16 * 2 * 2 * 9216, 4 * 16 * 2 * 2 * 8256
    for name, flops in (("sdpa-mask", chunk_flops), ("sdpa-flash-causal", causal_flops)):
        row = by_name[name]
        assert "error" not in row and "bwd_error" not in row, row
        assert row["rel_error"] < 1e-2 and row["bwd_rel_error"] < 2e-2
        assert row["tflops"] == pytest.approx(flops / 2.0 / 1e9)
        assert row["bwd_tflops"] == pytest.approx(2.5 * flops / 2.0 / 1e9)
    if "fa4-chunk" in by_name:
        assert by_name["fa4-chunk"]["error"].startswith("n/a: ModuleNotFoundError")
        assert "tflops" not in by_name["fa4-chunk"] and "bwd_error" not in by_name["fa4-chunk"]


def test_main_leaves_out_fa4_with_a_reason_and_keeps_to_its_time_budget(bench, monkeypatch, capsys):
    """The driver on a stubbed GPU: FlashAttention-4 rows absent with one line saying why; after
    the budget no new shape starts, and the tables of the shapes done still print."""
    clock = iter(range(0, 1000, 10))  # each reading of the clock is 10 s later
    shapes_run = []

    def fake_shape(head_dim, seqlen, chunk, tokens, width, backends, backward, clocks, heat_seconds):
        shapes_run.append((head_dim, seqlen, chunk, tuple(backends)))
        assert clocks and heat_seconds == 0.0  # sampled unless --no-clocks; no heat unless --heat
        return [
            {
                "backend": b,
                "head_dim": head_dim,
                "seqlen": seqlen,
                "chunk": chunk,
                "tflops": 1.0,
                "bwd_tflops": 2.0,
            }
            for b in backends
        ]

    monkeypatch.setattr(bench.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(bench, "bench_shape", fake_shape)
    monkeypatch.setattr(bench, "cuda_context_lost", lambda: None)
    monkeypatch.setattr(bench, "fa4_unavailable", lambda: "flash_attn.cute does not import (ImportError: x)")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda: "Fake GPU")
    argv = ["bench_attention.py", "--backward", "--dims", "64", "--chunks", "128", "--time-budget", "15"]
    monkeypatch.setattr(bench.sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    assert "FlashAttention-4 rows left out: flash_attn.cute does not import (ImportError: x)" in out
    # started at 0; shape 1 starts at 10 s, shape 2 at 20 s > 15: only one shape runs.
    assert shapes_run == [(64, 1024, 128, bench.BACKENDS)]
    assert "time budget of 15 s spent: not run: d64 S4096 C128, d64 S16384 C128" in out
    assert "| 64 | 1024 | 128 | 1 | 1 | 1 | 1 | 1 | 1 | 1.00x |" in out
    assert "| 64 | 1024 | 128 | 2 | 2 | 2 | 2 | 2 | 2 | 1.00x |" in out


def test_clock_fields_and_table(bench):
    """A timed pass's clock summary becomes float fields (bench_variants reads floats as
    measurements, not as the row's name), the clock table has no speed-ratio column, and a row
    without clocks leaves its cell blank."""
    from s2s.gpu_clocks import ClockSummary

    fields = bench.clock_fields(
        ClockSummary(samples=7, median_mhz=1605, min_mhz=1200, median_watts=694.5, capped=0.5), "bwd_"
    )
    assert fields == {"bwd_mhz": 1605.0, "bwd_min_mhz": 1200.0, "bwd_watts": 694.5, "bwd_capped": 0.5}
    assert all(isinstance(v, float) for v in fields.values())
    assert bench.clock_fields(None, "") == {}
    rows = [
        {"backend": "cute", "head_dim": 64, "seqlen": 1024, "chunk": 16, "mhz": 1605.0},
        {"backend": "flex", "head_dim": 64, "seqlen": 1024, "chunk": 16, "mhz": 1980.0},
        {"backend": "cute", "head_dim": 64, "seqlen": 1024, "chunk": 128, "bwd_error": "boom"},
    ]
    table = bench.print_table(rows, ["cute", "flex"], key="mhz")
    assert "| 64 | 1024 | 16 | 1605 | 1980 | - |" in table
    assert "| 64 | 1024 | 128 | - | - | - |" in table
    assert "| 64 | 1024 | 128 | error | - | - |" in bench.print_table(rows, ["cute", "flex"], key="bwd_mhz")


def test_heat_lengthens_the_timed_warm_up(bench, monkeypatch):
    """--heat S: the pass runs S seconds more in do_bench's warm-up before it is timed (50 ms
    without), with and without clock sampling."""
    warmups = []
    monkeypatch.setattr(bench, "median_ms", lambda fn, warmup_ms=50: (warmups.append(warmup_ms), 2.0)[1])
    assert bench.timed_with_clocks(lambda: None, None, 1.5) == (2.0, None)
    assert bench.timed_with_clocks(lambda: None, None) == (2.0, None)
    monkeypatch.setenv("PATH", "")  # no nvidia-smi: the sampler records nothing
    assert bench.timed_with_clocks(lambda: None, "GPU-1234", 0.25) == (2.0, None)
    assert warmups == [1550, 50, 300]
