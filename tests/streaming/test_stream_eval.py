"""scripts/stream_eval.py end to end on a checkpoint trained in the test."""

import json
import subprocess
import sys
from pathlib import Path

import lightning
import matplotlib.image
import pytest
import soundfile

from s2s.data.datamodule import DuplexDataModule
from s2s.data.features import LogMelConfig
from s2s.data.manifest import load_manifest
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.recognizer import reply_windows, save_recognizer, vocabulary_from_task
from s2s.recognizer.model import CTCRecognizer, RecognizerConfig
from s2s.training.module import DuplexLightningModule

ROOT = Path(__file__).resolve().parents[2]


def _recognizer(corpus_dir: Path, path: Path) -> Path:
    """An untrained recognizer for the corpus's task: the content figures' plumbing, not their values."""
    task = json.loads((corpus_dir / "corpus.json").read_text())["recipe"]["task"]
    vocabulary = vocabulary_from_task(task)
    model = CTCRecognizer(RecognizerConfig(classes=vocabulary.size, channels=16, blocks=1, gru_hidden=8))
    return save_recognizer(path, model, vocabulary, LogMelConfig(), task)


def test_stream_eval_writes_the_report(tiny_corpus, tmp_path):
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0, generate_if_missing=False
    )
    model = DuplexModel(DuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=1, decoder_layers=1))
    trainer = lightning.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(DuplexLightningModule(model), datamodule=data)
    checkpoint = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(checkpoint)

    out = tmp_path / "eval"
    command = [
        sys.executable, str(ROOT / "scripts" / "stream_eval.py"), f"checkpoint={checkpoint}",
        f"data_dir={tiny_corpus.out_dir / 'test'}", "streams=2", "chunk=2", "examples=1", "mcd_seconds=4",
        f"hydra.run.dir={out}", f"recognizer={_recognizer(tiny_corpus.out_dir, tmp_path / 'rec.pt')}",
        "threads=1", "progress=false",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["dialogues"] == tiny_corpus.dialogues["test"]
    for source in ("probability", "energy"):
        duplex = report["duplex"][source]
        assert duplex["turns"] > 0 and duplex["pauses"] > 0 and duplex["barge_ins"] > 0
        assert 0.0 <= duplex["missed_response_rate"] <= 1.0
        buckets = duplex["missed_by_turn_end"]  # every turn in exactly one bucket, misses adding up
        assert sum(b["turns"] for b in buckets) == duplex["turns"]
        missed = sum(b["missed"] for b in buckets)
        assert abs(missed / duplex["turns"] - duplex["missed_response_rate"]) < 1e-12
        by_window = duplex["missed_by_reply_window"]  # the same turns and misses, by reply window
        assert sum(b["turns"] for b in by_window) == duplex["turns"]
        assert sum(b["missed"] for b in by_window) == missed
        by_length = duplex["takeovers_by_pause_length"]  # every pause in one bucket, take-overs adding up
        assert sum(b["pauses"] for b in by_length) == duplex["pauses"]
        taken = sum(b["takeovers"] for b in by_length)
        assert abs(taken / duplex["pauses"] - duplex["false_takeovers_per_pause"]) < 1e-12
    assert report["compute"]["chunk_ms"] == 80 and report["compute"]["real_time_factor"] > 0
    assert report["streaming_vs_offline_max_abs"] < 1e-4
    windows = [
        w
        for path in sorted((tiny_corpus.out_dir / "test").glob("*.json"))
        for w in reply_windows(load_manifest(path))
    ]
    content = report["content"]
    assert len(content["replies"]) == len(windows) > 0
    assert (
        content["model"]["complete"]
        == content["reference"]["complete"]
        == sum(w.kind == "reply" for w in windows)
    )
    assert [r["expected"] for r in content["replies"]] == [list(w.words) for w in windows]
    for summary in (content["model"], content["reference"]):
        assert 0.0 <= summary["exact_match_rate"] <= 1.0 and summary["word_error_rate"] >= 0.0
    assert report["duplex"]["probability"]["talk_overs_per_turn"] is not None
    assert report["quality"]["mcd_db"] > 0
    assert "reply exact match" in (out / "metrics.md").read_text()
    for source in ("probability", "energy"):  # each judged share with its 95% interval
        figures = report["duplex"][source]
        low, high = figures["intervals"]["missed_response_rate"]
        assert low <= figures["missed_response_rate"] <= high
    assert "| missed response rate [95% interval] | " in (out / "metrics.md").read_text()
    assert (out / "stream_eval.log").stat().st_size > 0, "the evaluation logs through logging, not print"
    assert "| response latency mean |" in (out / "metrics.md").read_text()
    assert "| missed, turns ending 40+ s into the dialogue |" in (out / "metrics.md").read_text()
    assert "| attention history | unlimited (the model's) |" in (out / "metrics.md").read_text()
    # the tiny corpus gives every test dialogue a held-out voice: one group, the whole split's figures
    split = report["by_user_voice"]
    assert list(split) == ["held_out"] and split["held_out"]["dialogues"] == report["dialogues"]
    overall = report["duplex"]["probability"]
    assert split["held_out"]["turns"] == overall["turns"] and split["held_out"]["pauses"] == overall["pauses"]
    assert split["held_out"]["missed_response_rate"] == overall["missed_response_rate"]
    assert split["held_out"]["complete_replies"] == content["model"]["complete"]
    assert split["held_out"]["exact_replies"] == content["model"]["exact"]
    assert "| held-out | " in (out / "metrics.md").read_text()
    events = report["events"]  # one row per dialogue, its turns and pauses adding up to the totals
    assert len(events) == report["dialogues"]
    assert sum(len(r["turns"]) for r in events) == overall["turns"]
    assert sum(len(r["pauses"]) for r in events) == overall["pauses"]
    assert report["compute"]["left_chunks"] is None and report["compute"]["history_source"] == "the model's"
    assert (
        "| take-overs in pauses of 0.55+ s (onset into the pause p50) |" in (out / "metrics.md").read_text()
    )
    pngs, wavs = sorted(out.glob("*.png")), sorted(out.glob("*.wav"))
    assert len(pngs) == 1 and len(wavs) == 1
    image = matplotlib.image.imread(pngs[0])
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01
    audio, rate = soundfile.read(wavs[0])
    assert rate == 16000 and audio.shape[1] == 2
    assert list((out / "wandb").glob("offline-run-*"))


def test_bad_options_fail_before_loading_and_leave_nothing_behind(tmp_path):
    """Named errors for streams / max_dialogues / precision / a missing recognizer, before the
    checkpoint is even looked at (it does not exist here), and no empty run directory."""
    for option, message in (
        ("streams=0", "streams must be >= 1"),
        ("max_dialogues=0", "max_dialogues must be >= 1"),
        ("precision=fp8", "precision must be one of"),
        ("recognizer=missing.pt", "train one with"),
    ):
        out = tmp_path / option.split("=")[0]
        command = [
            sys.executable, str(ROOT / "scripts" / "stream_eval.py"), f"checkpoint={tmp_path / 'none.ckpt'}",
            option, f"hydra.run.dir={out}", "wandb.enabled=false",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode != 0 and message in result.stderr, (option, result.stderr[-2000:])
        assert not out.exists(), f"{option}: a failed evaluation left {out} behind"


def test_the_state_gain_is_the_given_one_else_the_runs_choice_else_the_default():
    from s2s.models.token_sampling import SamplingConfig
    from s2s.streaming.evaluate import EvalOptions, resolved_sampling

    base = SamplingConfig(temperature=0.5, bos_bias=1.0)
    given, source = resolved_sampling(EvalOptions(sampling=base, state_gain=2.5), chosen=1.0)
    assert (given.state_gain, source) == (2.5, "given") and given.bos_bias == 1.0
    chosen, source = resolved_sampling(EvalOptions(sampling=base), chosen=1.0)
    assert (chosen.state_gain, source) == (1.0, "chosen on validation by the run")
    assert chosen.temperature == 0.5
    default, source = resolved_sampling(EvalOptions(sampling=base), chosen=None)
    assert (default.state_gain, source) == (SamplingConfig().state_gain, "default")
    with pytest.raises(ValueError, match="state_gain"):
        EvalOptions(state_gain=-1.0)


def test_the_stop_gain_is_the_given_one_else_the_one_the_run_was_validated_with():
    from s2s.models.token_sampling import SamplingConfig
    from s2s.streaming.evaluate import EvalOptions, resolved_sampling

    base = SamplingConfig(temperature=0.5, stop_gain=1.0)
    assert resolved_sampling(EvalOptions(sampling=base), None, None, 6.0)[0].stop_gain == 6.0
    assert resolved_sampling(EvalOptions(sampling=base), None, None, None)[0].stop_gain == 1.0
    given = resolved_sampling(EvalOptions(sampling=base, stop_gain=0.0), 2.0, None, 6.0)[0]
    assert given.stop_gain == 0.0 and given.state_gain == 2.0 and given.temperature == 0.5
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError, match="stop_gain must be"):
            EvalOptions(stop_gain=bad)


def test_the_onset_rule_is_the_given_one_else_the_one_the_run_was_validated_with():
    from s2s.models.token_sampling import SamplingConfig
    from s2s.streaming.evaluate import EvalOptions, resolved_sampling

    base = SamplingConfig(temperature=0.5)
    assert resolved_sampling(EvalOptions(sampling=base), None, 0.5)[0].onset_quantile == 0.5
    assert resolved_sampling(EvalOptions(sampling=base), None, None)[0].onset_quantile is None
    assert (
        resolved_sampling(EvalOptions(sampling=base, onset_quantile=0.3), None, 0.5)[0].onset_quantile == 0.3
    )
    drawn = resolved_sampling(EvalOptions(sampling=base, onset_quantile="drawn"), 2.0, 0.5)[0]
    assert drawn.onset_quantile is None and drawn.state_gain == 2.0 and drawn.temperature == 0.5
    for bad in (0.0, 1.0, "median", True):
        with pytest.raises(ValueError, match="onset_quantile must be"):
            EvalOptions(onset_quantile=bad)


def test_the_history_is_the_given_one_else_the_runs_else_the_models():
    import math

    from s2s.streaming.evaluate import EvalOptions, resolved_history

    at_160ms = 0.16
    assert resolved_history(EvalOptions(history_seconds=8.0), 3, at_160ms, 40.0) == (49, "given")
    assert resolved_history(EvalOptions(history_seconds=math.inf), 3, at_160ms, 40.0) == (None, "given")
    assert resolved_history(EvalOptions(left_chunks=5), 3, at_160ms, 40.0) == (5, "given as left_chunks")
    # the run's history, never past the model's own left_chunks (which it trained with)
    assert resolved_history(EvalOptions(), None, at_160ms, 40.0) == (249, "the run's free-running validation")
    assert resolved_history(EvalOptions(), 3, at_160ms, 40.0) == (3, "the run's free-running validation")
    assert resolved_history(EvalOptions(), 300, at_160ms, 40.0) == (249, "the run's free-running validation")
    assert resolved_history(EvalOptions(), 3, at_160ms, None) == (3, "the model's")
    assert resolved_history(EvalOptions(), None, at_160ms, None) == (None, "the model's")
    with pytest.raises(ValueError, match="not both"):
        EvalOptions(history_seconds=8.0, left_chunks=5)
    with pytest.raises(ValueError, match="history_seconds must be > 0"):
        EvalOptions(history_seconds=0.0)


@pytest.mark.parametrize(
    "options",
    [{"engine": "ring"}, {"cuda_graph": True}, {"engine": "packed", "cuda_graph": True}],
    ids=["unknown-engine", "graph-on-cpu", "graph-on-packed"],
)
def test_eval_options_name_a_bad_engine(options):
    from s2s.streaming.evaluate import EvalOptions

    with pytest.raises(ValueError, match="engine"):
        EvalOptions(**options)
