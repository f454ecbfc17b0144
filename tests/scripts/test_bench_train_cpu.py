"""scripts/bench_train.py on the CPU: the synthetic batch holds what model v2 trains on, its FLOP
count against a hand count of the batch's masks and parameters, and the smoke run's report
(throughput, MFU and breakdown tables)."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from s2s.data.token_targets import UserState
from s2s.data.tokens import BOS, EOS, PAD, grammar_errors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_train")


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_the_presets_are_model_v2_as_the_configs_say(bench, name):
    """Every field configs/model/<name>.yaml sets to a value (not an interpolation of the attention
    group) is the script's."""
    fields = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())["config"]
    config = bench.preset_config(name)
    assert isinstance(config, bench.TokenDuplexConfig)
    values = {k: v for k, v in fields.items() if not k.startswith("_") and "${" not in str(v)}
    assert {"dim", "heads", "kv_heads", "encoder_layers", "decoder_layers", "system_vocab"} <= set(values)
    assert {k: getattr(config, k) for k in values} == values


def test_the_batch_holds_model_v2s_targets(bench):
    config = bench.preset_config("tiny")
    batch, chunks = bench.make_batch(
        config, dialogues=6, frames=200, generator=torch.Generator().manual_seed(2)
    )
    lengths = batch.frame_lengths // 4
    assert (lengths[:3] == 200).all() and (lengths[3:] >= 100).all() and (lengths <= 200).all()
    assert set(chunks.tolist()) <= {1, 2, 4, 8}
    assert batch.user_mel.shape == batch.system_mel.shape == (6, 800, 80)
    tokens, states = batch.system_tokens, batch.user_state
    assert tokens.shape == states.shape == (6, 200)
    past = torch.arange(200)[None, :] >= lengths[:, None]
    assert (tokens[past] == PAD).all() and (states[past] == UserState.SILENT).all()
    assert not grammar_errors(tokens, batch.in_reply_at_start).any()
    for row in range(6):  # every dialogue has replies, closed before its end, with words in them
        row_tokens = tokens[row]
        assert (row_tokens == BOS).sum() == (row_tokens == EOS).sum() > 0
        assert ((row_tokens >= 3) & (row_tokens < config.system_vocab)).sum() > 0
        assert {UserState.SPEAKING, UserState.PAUSE, UserState.ENDED} <= set(states[row].tolist())
    assert (tokens < config.system_vocab).all() and (tokens >= 0).all()
    counts = batch.user_word_counts
    assert (counts > 0).all() and batch.user_words.shape == (6, int(counts.max()))
    words = torch.arange(batch.user_words.shape[1])[None, :] < counts[:, None]
    assert ((batch.user_words[words] >= 3) & (batch.user_words[words] < config.user_vocab)).all()
    assert (batch.user_words[~words] == PAD).all()


def test_another_bucket_is_a_batch_of_the_same_shape_in_another_bucket(bench):
    """+rows times the first step of a batch in another row bucket: same dialogues and frames, a
    real-frame count that rounds up to another multiple of the bucket, lengths cut as asked."""
    config = bench.preset_config("tiny")
    batch, _ = bench.make_batch(config, 8, 200, torch.Generator().manual_seed(0), False, 8)
    for bucket in (64, 128):
        other, chunks = bench.batch_in_another_bucket(config, batch, bucket, 8)
        assert other.system_tokens.shape == batch.system_tokens.shape and chunks.shape == (8,)
        real, home = bench.real_frames(other, config), bench.real_frames(batch, config)
        assert -(-real // bucket) != -(-home // bucket), (bucket, real, home)
        assert ((other.frame_lengths // config.mel_per_frame) % 8 == 0).all()
    with pytest.raises(SystemExit, match="no batch of 8 x 200 frames found outside the bucket"):
        bench.batch_in_another_bucket(config, batch, 10**6, 8)


@pytest.mark.slow
def test_run_backend_counts_the_batch_masks(bench):
    """Attention FLOPs are 4 * head_dim * heads * visible pairs per call; the tiny model makes 12
    calls (4 encoder self, 4 decoder self, 4 cross) over the same per-dialogue chunk-causal masks:
    visible keys of row i under chunk C are min(length, (i // C + 1) * C). The dense FLOPs count
    every parameter but the token embeddings (a lookup): token_in, the token head's W - 1 recent
    tokens and the mel head's W, a row per token each."""
    config = bench.preset_config("tiny")
    batch, chunks = bench.make_batch(
        config, dialogues=3, frames=20, generator=torch.Generator().manual_seed(1)
    )
    args = argparse.Namespace(model="tiny", warmup=1, steps=1, profile_steps=1, top_kernels=3, op_table=0)
    run = bench.run_backend("sdpa", args, batch, chunks)

    lengths = (batch.frame_lengths // 4).tolist()
    pairs = 0
    for length, chunk in zip(lengths, chunks.tolist(), strict=True):
        pairs += sum(min(length, (i // chunk + 1) * chunk) for i in range(length))
    assert run.attention_calls == 12
    assert run.flops.attention_forward == 12 * 4 * config.head_dim * config.heads * pairs
    assert run.flops.frames == sum(lengths)
    embeddings = (1 + (config.recent_tokens - 1) + config.recent_tokens) * config.system_vocab * config.dim
    assert run.flops.parameters == bench.TokenDuplexModel(config).parameter_count() - embeddings
    assert run.frames_per_second == pytest.approx(run.flops.frames / run.seconds_per_step)
    assert run.breakdown is not None and run.breakdown.wall_us > 0


@pytest.mark.slow
def test_cpu_smoke_run_prints_every_table(bench, monkeypatch, capsys, tmp_path):
    argv = "--device cpu --model tiny --backends sdpa --dialogues 2 --seconds 1 --warmup 1 --steps 1"
    argv += f" --profile-steps 1 --op-table 4 --json {tmp_path / 'rows.json'}"
    monkeypatch.setattr(sys, "argv", ["bench_train.py", *argv.split()])
    bench.main()
    out = capsys.readouterr().out
    # --json: one row per backend, the figures the tables print (what bench_variants compares)
    (row,) = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert (row["backend"], row["model"], row["dialogues"]) == ("sdpa", "tiny", 2)
    step_ms = float(out.split("TFLOP per step in ")[1].split(" ms)")[0])
    assert row["step_ms"] == pytest.approx(step_ms, abs=0.05), (row, step_ms)
    assert row["model_tflops"] > 0 and row["mfu"] is None  # no datasheet peak for a CPU
    assert row["frames_per_second"] == pytest.approx(row["frames"] / (row["step_ms"] / 1000))
    assert "sdpa: " in out and " model frames/s" in out
    assert "| backend | model frames/s | vs flex with the same options |" in out
    assert "peak unknown: pass --peak-tflops" in out  # no datasheet peak for a CPU
    assert "| backend | step ms | model TFLOP/s | MFU | of measured GEMM |" in out
    assert "| run | wall ms/step | attention | matmul | optimizer | elementwise/other | idle |" in out
    # --op-table 4: the host operators' table, 4 rows with their input shapes and owners (the
    # project's Python lines or the autograd node that called them)
    table = out.split("sdpa: host operators by their own device time, 1 steps (torch.profiler)\n")[1]
    lines = table.splitlines()
    assert lines[0] == "| ms/step | calls/step | operator | input shapes | called from |", lines[0]
    rows = [line.split(" | ") for line in lines[2:6]]
    assert len(rows) == 4 and all(len(row) == 5 for row in rows), lines[:6]
    assert any(row[2].startswith("aten::") for row in rows), rows
    assert any(row[4].rstrip(" |") != "-" for row in rows), f"no row names its caller: {rows}"
    assert len(lines) == 6 or not lines[6].startswith("| "), "more rows than --op-table asked for"


def test_op_table_must_not_be_negative(bench, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "cpu", "--op-table", "-1"])
    with pytest.raises(SystemExit, match="--op-table must be 0"):
        bench.main()


@pytest.mark.parametrize(
    ("backend", "peer"),
    [
        ("cute", "flex"),
        ("cute-deterministic", "flex"),
        ("cute+compile+graphs", "flex+compile+graphs"),
        ("sdpa+compile", "flex+compile"),
        ("flex+graphs", "flex+graphs"),
        ("cute+compile+graphs+rows", "flex+compile+graphs"),  # flex never packs rows: its peer runs padded
    ],
)
def test_each_backend_is_compared_with_flex_under_its_own_options(bench, backend, peer):
    """The issue's step ratio is taken with every other optimisation on: cute+compile+graphs
    against flex+compile+graphs, not against plain flex (and not printed as '-')."""
    assert bench.flex_peer(backend) == peer
