"""Checkpoints: loading never runs code from the file, bad files get errors that name the fix, the
writer survives a kill mid-write whatever $TMPDIR is, and last.ckpt always holds the latest state."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from s2s.training.checkpoint_callback import RunCheckpoint
from s2s.training.checkpoint_io import RunCheckpointIO, remove_stale_temporaries
from s2s.training.checkpoints import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"global_step": 1, "state_dict": {}, "optimizer_states": [], "x": _Payload(marker)}, path)
    return path


def test_a_pickled_payload_never_runs_on_load(tmp_path):
    marker = tmp_path / "payload-ran"
    hostile = _hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*posix\.system.*could run code"):
        load_checkpoint(hostile)
    with pytest.raises(CheckpointError, match="refusing"):
        RunCheckpointIO().load_checkpoint(hostile, weights_only=False)  # whatever Lightning asks for
    assert not marker.exists()


def test_lightning_resume_reads_through_the_safe_loader(tmp_path):
    """`trainer.fit(ckpt_path=...)` loads the checkpoint itself: with RunCheckpointIO it is safe too."""
    marker = tmp_path / "payload-ran"
    hostile = _hostile_checkpoint(tmp_path / "hostile.ckpt", marker)
    trainer = lightning.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        plugins=[RunCheckpointIO()], default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="refusing"):
        trainer.fit(BoringModel(), ckpt_path=hostile)
    assert not marker.exists()


def test_bad_checkpoint_files_get_errors_that_say_what_is_wrong(tmp_path):
    random_bytes = tmp_path / "random.ckpt"
    random_bytes.write_bytes(os.urandom(4096))
    with pytest.raises(
        CheckpointError, match=r"corrupt, truncated or not a PyTorch checkpoint.*scripts/train\.py"
    ):
        load_checkpoint(random_bytes)
    number = tmp_path / "five.ckpt"
    torch.save(5, number)
    with pytest.raises(CheckpointError, match=r"holds a Python int, not a Lightning training checkpoint"):
        load_checkpoint(number)
    with pytest.raises(CheckpointError, match=r"nowhere\.ckpt does not exist; check the path") as missing:
        load_checkpoint(tmp_path / "nowhere.ckpt")
    assert "corrupt" not in str(missing.value) and "resume=false" not in str(missing.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(empty)


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from s2s.training.checkpoint_io import RunCheckpointIO
    target, io = Path(sys.argv[1]), RunCheckpointIO()
    weights = torch.randn(24_000_000 // 4)
    for step in range(1, 10_000):
        io.save_checkpoint({"global_step": step, "state_dict": {"w": weights + step},
                            "optimizer_states": []}, target)
        print(step, flush=True)
    """
)


def test_a_kill_while_last_ckpt_is_rewritten_leaves_it_intact_whatever_tmpdir_is(tmp_path):
    """$TMPDIR on another filesystem (tmpfs) made Lightning's writer copy across filesystems: a kill
    mid-copy truncated last.ckpt and left the staged file behind."""
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    tmpdir = Path(os.environ.get("S2S_TEST_TMPDIR", other_fs)) / f"s2s-tmpdir-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    target = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT)}
    try:
        for delay in (0.03, 0.11, 0.19):
            writer = subprocess.Popen(
                [sys.executable, "-c", _WRITER, str(target)], env=env, stdout=subprocess.PIPE, text=True
            )
            assert writer.stdout.readline().strip() == "1"  # one complete checkpoint on disk
            subprocess.run(["sleep", str(delay)], check=True)  # then kill somewhere inside a rewrite
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            assert load_checkpoint(target)["global_step"] >= 1
            assert not list(tmpdir.iterdir()), "a staged checkpoint was left in $TMPDIR"
        left = remove_stale_temporaries(target.parent)
        assert all(p.name.startswith("last.ckpt.tmp-") for p in left)
        assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    finally:
        for path in tmpdir.iterdir():
            path.unlink()
        tmpdir.rmdir()


class _ScoredModel(BoringModel):
    """Logs a constant `score` (it never improves) at every other validation only."""

    def __init__(self):
        super().__init__()
        self.validations = 0

    def on_validation_epoch_end(self):
        self.validations += 1
        if self.validations % 2 == 1:
            self.log("score", 1.0)


def test_last_ckpt_is_the_latest_state_whatever_the_monitored_score_does(tmp_path):
    callback = RunCheckpoint(
        dirpath=tmp_path / "checkpoints", filename="best-step{step}", auto_insert_metric_name=False,
        monitor="score", mode="min",
        save_top_k=1, save_last=True,
    )  # fmt: skip
    trainer = lightning.Trainer(
        max_steps=13, val_check_interval=4, check_val_every_n_epoch=None, limit_val_batches=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[callback], plugins=[RunCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_ScoredModel())  # validations at steps 4, 8, 12; `score` only at 4 and 12, never better
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 13  # the end of fit, not the step-4 best
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-step4.ckpt", "last.ckpt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best-step4.ckpt")["global_step"] == 4


def test_last_ckpt_follows_every_validation(tmp_path):
    seen = []

    class Spy(lightning.Callback):  # checkpoint callbacks run last: look at the next validation's start
        def on_validation_start(self, trainer, module):
            last = tmp_path / "checkpoints" / "last.ckpt"
            seen.append(load_checkpoint(last)["global_step"] if last.exists() else None)

    callback = RunCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="score", mode="min", save_top_k=1, save_last=True
    )
    trainer = lightning.Trainer(
        max_steps=12, val_check_interval=4, check_val_every_n_epoch=None, limit_val_batches=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[callback, Spy()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_ScoredModel())
    assert seen == [None, 4, 8]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 12
