"""Launching train.py into a run directory: a killed run resumes with every metric row once, a second
launch is refused while one runs, a finished or mismatched run is left untouched, a hostile or broken
last.ckpt is refused with the way out, and bad config values are named."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from s2s.training.checkpoints import CheckpointError, load_checkpoint
from s2s.training.resume import find_resume_point
from s2s.training.run import LaunchConfigError, train
from s2s.training.run_lock import RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}


def _command(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={run_dir}",
        f"data.root={corpus}", "data.generate_if_missing=false", "data.num_workers=0", "data.max_seconds=4",
        "data.eval_max_seconds=4", "data.batch_seconds=16", "trainer.enable_progress_bar=false",
        "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "++callbacks.free_running=null",
        "++callbacks.samples=null", *_BEST_ON_VAL_LOSS, *extra,
    ]  # fmt: skip


# Without the free-running validation (time) there is no free/score: keep the best on val/loss.
_BEST_ON_VAL_LOSS = (
    "callbacks.checkpoint.monitor=val/loss", "callbacks.checkpoint.mode=min",
    "callbacks.checkpoint.filename='best-step{step}-val{val/loss:.4f}'",
)  # fmt: skip


def _launch(run_dir: Path, corpus: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = _command(run_dir, corpus, *extra)
    return subprocess.run(
        command, cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _snapshot(folder: Path) -> dict:
    """Every file and folder under `folder` with its size, mtime and (small files) contents."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.stat()
        small = path.is_file() and info.st_size < 100_000
        state[str(path.relative_to(folder))] = (
            info.st_size,
            info.st_mtime_ns,
            path.read_bytes() if small else None,
        )
    return state


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@dataclass
class KilledAndResumed:
    run_dir: Path
    saved_step: int  # the step of the checkpoint the kill left
    before: list[dict]  # csv/metrics.csv rows at the kill
    first_wandb: dict[Path, int]  # the first launch's wandb record files and their sizes
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_corpus, tmp_path_factory) -> KilledAndResumed:
    """A tiny run SIGKILLed right after its first checkpoint, then re-launched to global step 6
    (validations at steps 2, 4, 6); the finished run also serves the tests that launch over it."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    command = _command(run_dir, tiny_corpus.out_dir, "trainer.max_steps=6")
    first = subprocess.Popen(
        command, cwd=run_dir.parent, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # right after its first checkpoint (written atomically)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first launch ended before it could be killed"
    saved_step = load_checkpoint(last)["global_step"]
    before = _csv(run_dir / "csv" / "metrics.csv")
    first_wandb = {p: p.stat().st_size for p in (run_dir / "wandb").rglob("*.wandb")}
    resumed = subprocess.run(
        command, cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=600
    )
    return KilledAndResumed(run_dir, saved_step, before, first_wandb, resumed)


@pytest.fixture
def run_copy(killed_and_resumed, tmp_path) -> Path:
    assert killed_and_resumed.resumed.returncode == 0, killed_and_resumed.resumed.stderr[-3000:]
    copy = tmp_path / "run"
    shutil.copytree(killed_and_resumed.run_dir, copy)
    return copy


def test_killed_run_resumes_with_every_logged_step_once(killed_and_resumed):
    run = killed_and_resumed
    assert run.resumed.returncode == 0, run.resumed.stdout[-3000:] + run.resumed.stderr[-3000:]
    assert f"at global step {run.saved_step}" in run.resumed.stdout
    assert "trained to global step 6" in run.resumed.stdout
    assert run.before, "the rows logged up to the checkpoint were on disk at the kill"

    rows = _csv(run.run_dir / "csv" / "metrics.csv")
    aside = [row for path in (run.run_dir / "csv").glob("metrics.abandoned-*.csv") for row in _csv(path)]
    kept = [row for row in run.before if int(row["step"]) < run.saved_step]
    assert all(row in rows for row in kept), "a row logged before the checkpoint was removed"
    assert all(row in rows or row in aside for row in run.before)
    for metric in ("train/loss", "val/loss", "lr-AdamW/pg1"):
        steps = [int(row["step"]) for row in rows if row.get(metric)]
        assert not [s for s, n in Counter(steps).items() if n > 1], (
            f"{metric} logged twice at a step: {steps}"
        )
        if metric == "train/loss":
            assert steps == list(range(6))
        if metric == "val/loss":
            assert len(steps) == 4  # the step-0 baseline and validations at global steps 2, 4, 6
    # wandb: the first launch's records stay as they were; the resumed launch writes the same run id
    assert all(path.stat().st_size == size for path, size in run.first_wandb.items())
    run_id = (run.run_dir / "wandb_run_id.txt").read_text().strip()
    assert len(list((run.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from s2s.training.run_lock import RunLock
    lock = RunLock.acquire(sys.argv[1])
    lock.record_holder()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_a_second_launch_into_a_running_run_is_refused_at_once(tiny_corpus, run_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_copy)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run_copy)
        second = _launch(run_copy, tiny_corpus.out_dir, "trainer.max_steps=8")
        assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
        assert f"in use by another launch (pid {holder.pid} on" in second.stderr
        assert "run_name=<another name>" in second.stderr and "Traceback" not in second.stderr
        assert _snapshot(run_copy) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunLock.acquire(run_copy).release()  # the kernel released the killed holder's lock


def test_run_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    lock = RunLock.acquire(tmp_path)
    lock.record_holder()
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on .*run_name=<another name>"):
        RunLock.acquire(tmp_path)
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""  # no stale holder line after a clean exit
    RunLock.acquire(tmp_path).release()


def test_a_launch_whose_max_steps_is_reached_says_so_and_changes_nothing(tiny_corpus, run_copy):
    before = _snapshot(run_copy)
    result = _launch(run_copy, tiny_corpus.out_dir, "trainer.max_steps=5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "already trained to global step 6 (trainer.max_steps=5): nothing to do" in result.stdout
    assert "trainer.max_steps=12" in result.stdout and "run_name=" in result.stdout
    assert _snapshot(run_copy) == before


def test_resuming_with_another_model_is_refused_before_anything_is_written(tiny_corpus, run_copy):
    before = _snapshot(run_copy)
    result = _launch(run_copy, tiny_corpus.out_dir, "trainer.max_steps=8", "model.config.encoder_layers=2")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    message = result.stderr
    assert "holds a model with encoder_layers=4, but this launch asks for encoder_layers=2" in message
    assert (
        "run_name=<another name>" in message and "resume=false" in message and "size mismatch" not in message
    )
    assert _snapshot(run_copy) == before  # config.yaml, wandb, metrics: all untouched


def test_a_hostile_last_ckpt_is_refused_by_the_launch_without_running(tiny_corpus, run_copy, tmp_path):
    marker = tmp_path / "payload-ran"
    state = torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, run_copy / "checkpoints" / "last.ckpt")
    result = _launch(run_copy, tiny_corpus.out_dir, "trainer.max_steps=8")
    assert result.returncode == 1 and "refusing to load checkpoint" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_corrupt_last_ckpt_names_the_intact_best_checkpoint(run_copy):
    last = run_copy / "checkpoints" / "last.ckpt"
    best = next(p for p in (run_copy / "checkpoints").glob("best-*.ckpt"))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError) as error:
        find_resume_point(run_copy)
    message = str(error.value)
    assert "corrupt or truncated" in message and "resume=false" in message
    assert f"intact checkpoint at global step 6: {best}" in message and f"cp {best} {last}" in message


def _compose(overrides, run_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("value", ["abc", "1.5", "-2"])
def test_a_max_steps_that_is_not_a_step_count_is_named(value, tmp_path):
    cfg = _compose([f"trainer.max_steps={value}"], tmp_path / "run")
    with pytest.raises(LaunchConfigError, match=r"trainer.max_steps must be a whole number.*-1 for no limit"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
