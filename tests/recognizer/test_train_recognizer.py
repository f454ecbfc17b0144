"""`scripts/train_recognizer.py` end to end on the tiny corpus: artifact written, loads, scores recorded."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s.data.corpus import CorpusError
from s2s.recognizer.artifact import load_recognizer
from s2s.recognizer.run import corpus_task
from s2s.recognizer.windows import reply_windows

ROOT = Path(__file__).resolve().parents[2]


def _command(data_dir, run_dir, cache_dir, *extra):
    return [
        sys.executable, str(ROOT / "scripts" / "train_recognizer.py"), f"data_dir={data_dir}",
        f"hydra.run.dir={run_dir}", f"cache_dir={cache_dir}", "trainer.max_steps=6",
        "trainer.val_check_interval=3", "batch_size=4", "round_trip.iterations=2", "workers=1", "threads=1",
        "progress=false", "trainer.enable_progress_bar=false", "model.channels=16", "model.gru_hidden=8",
        *extra,
    ]  # fmt: skip


def _run(data_dir, run_dir, cache_dir, cwd, *extra):
    return subprocess.run(
        _command(data_dir, run_dir, cache_dir, *extra), cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_a_tiny_training_run_writes_a_loadable_artifact(tiny_corpus, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    result = _run(tiny_corpus.out_dir, run_dir, cache, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test reference" in result.stdout and "exact match" in result.stdout
    artifact = run_dir / "recognizer.pt"
    record = torch.load(artifact, weights_only=True)
    corpus = json.loads((tiny_corpus.out_dir / "corpus.json").read_text())
    assert record["task"] == corpus["recipe"]["task"]
    recognizer = load_recognizer(artifact)
    recognizer.check_task(corpus)
    assert recognizer.vocabulary.words == tuple(corpus["recipe"]["task"]["system_digit_words"])
    test = recognizer.figures["test"]
    assert set(test) >= {"reference", "vocoder", "vocoder-stream16", "reference (cut-off reply)"}
    from s2s.data.manifest import load_manifest

    replies = sum(
        w.kind == "reply"
        for path in (tiny_corpus.out_dir / "test").glob("*.json")
        for w in reply_windows(load_manifest(path))
    )
    assert test["reference"]["replies"] == replies
    assert 0.0 <= test["reference"]["exact_match"] <= 1.0
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == test
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
    assert list(cache.glob("train-*.pt")), "window features are cached"
    cached = {path: path.stat().st_mtime_ns for path in cache.iterdir()}
    # the same command again resumes the finished run and only re-scores (features from the cache)
    again = _run(tiny_corpus.out_dir, run_dir, cache, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == cached, (
        "features are read, not redone"
    )


def test_a_missing_corpus_says_how_to_make_it(tmp_path):
    result = subprocess.run(
        _command(tmp_path / "corpus", tmp_path / "run", tmp_path / "cache"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "does not exist" in result.stderr and "scripts/make_data.py" in result.stderr


def test_an_incomplete_corpus_says_how_to_finish_it(tmp_path):
    (tmp_path / "corpus.json").write_text(json.dumps({"format": "s2s-corpus/1", "complete": False}))
    with pytest.raises(CorpusError, match=r"incomplete.*scripts/make_data\.py"):
        corpus_task(tmp_path)
