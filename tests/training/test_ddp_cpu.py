"""`trainer=ddp` on two CPU processes (gloo), launched as a user launches it: scripts/train.py, whose
ranks 1.. Lightning starts by re-running the command. Each rank trains on its own share of every
epoch's batches; one DDP step's loss and gradients equal a float64 computation in one process on both
ranks' batches; rank 1 writes nothing into the run directory (samples, CSV rows, wandb and checkpoints
are rank 0's); a run killed after a checkpoint resumes on both ranks at its step, with the batches of
the uninterrupted run. Marked `ddp` (`pytest -m ddp` runs them alone); ~1 min in all on 2 cores."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from s2s.data.batching import DialogueBatch, DurationBatchSampler
from s2s.data.dataset import DialogueDataset
from s2s.training.checkpoints import load_checkpoint
from s2s.training.loggers import RUN_ID_FILE, wandb_run_id
from s2s.training.token_module import TokenDuplexLightningModule

pytestmark = pytest.mark.ddp

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = Path(__file__).with_name("ddp_launch.py")
STEPS = 6  # 8 dialogues, 2 crops a batch: 4 batches an epoch, 2 per rank; 6 steps = 3 epochs
PER_RANK = 2  # batches per rank and epoch; checkpoints every 3 steps: the first is mid-epoch
CROP, BATCH = 2.0, 4.0  # seconds
# Float32 DDP against float64 in one process. Measured on this model: losses agree to 8e-8 relative
# and gradients to 2.4e-7 of their largest entry; the bounds leave over two orders of magnitude, and a
# wrong reduction is far outside them (one rank's own gradients differ from the mean by 13% of the
# largest entry, a sum instead of a mean by 100%).
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-4  # of the largest gradient entry


@dataclass
class Launch:
    run_dir: Path
    record: Path  # the BatchRecorder's folder
    writes: Path  # files rank 1 wrote under run_dir
    output: str


def _command(run_dir: Path, corpus: Path, record: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(LAUNCH), f"hydra.run.dir={run_dir}", f"data.root={corpus}",
        "data.generate_if_missing=false", "data.num_workers=0", f"data.max_seconds={CROP}",
        f"data.eval_max_seconds={CROP}", f"data.batch_seconds={BATCH}",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        f"trainer.max_steps={STEPS}", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "++callbacks.free_running=null",
        "callbacks.samples.every_n_validations=1", "callbacks.samples.dialogues=1",
        "callbacks.checkpoint.monitor=val/loss", "callbacks.checkpoint.mode=min",
        "callbacks.checkpoint.filename='best-step{step}'", "attention.train_chunks=[4]",
        "module.augment.freq_masks=0", "++callbacks.recorder._target_=batch_recorder.BatchRecorder",
        f"++callbacks.recorder.folder={record}", *extra,
    ]  # fmt: skip


def _env(writes: Path) -> dict:
    return {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT), "S2S_WRITES_RECORD": str(writes)}


def _run(run_dir: Path, corpus: Path, record: Path, *extra: str) -> Launch:
    """Launch and wait; a launch that hangs is killed with its other rank (one process group)."""
    writes = record.with_suffix(".writes")
    launch = subprocess.Popen(
        _command(run_dir, corpus, record, *extra), cwd=run_dir.parent, env=_env(writes),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = launch.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        launch.communicate()
        raise
    assert launch.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return Launch(run_dir, record, writes, stdout)


def _batches(record: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(eight_dialogue_corpus, tmp_path_factory) -> Launch:
    """A 2-rank run to step 6 with wandb (offline) and CSV logging, samples and checkpoints."""
    folder = tmp_path_factory.mktemp("ddp")
    return _run(folder / "run", eight_dialogue_corpus.out_dir, folder / "record", "logger=wandb")


def test_each_rank_trains_on_its_own_share_and_together_they_cover_each_epoch_once(
    uninterrupted, eight_dialogue_corpus
):
    dataset = DialogueDataset(eight_dialogue_corpus.out_dir / "train")
    taken = [_batches(uninterrupted.record, rank) for rank in range(2)]
    assert [b["step"] for b in taken[0]] == [b["step"] for b in taken[1]] == list(range(STEPS))
    for epoch in range(3):
        shares = []
        for rank in range(2):
            sampler = DurationBatchSampler(
                dataset.lengths, 16000, BATCH, CROP, seed=0, rank=rank, world_size=2
            )
            sampler.set_epoch(epoch)
            expected = [[dataset.files[c.index].name for c in batch] for batch in sampler]
            got = [b["names"] for b in taken[rank] if b["epoch"] == epoch]
            assert got == expected, f"rank {rank}, epoch {epoch}"
            shares.append({name for batch in got for name in batch})
        assert not shares[0] & shares[1]
        assert sorted(shares[0] | shares[1]) == sorted(f.name for f in dataset.files)


def test_evaluation_shares_every_batch_among_the_ranks_where_training_drops_the_remainder():
    def shards(**changes) -> list[list]:
        return [
            list(
                DurationBatchSampler(
                    [16000 * 3] * 3, 16000, 3.0, shuffle=False, rank=r, world_size=2, **changes
                )
            )
            for r in range(2)
        ]

    batches = DurationBatchSampler([16000 * 3] * 3, 16000, 3.0, shuffle=False).batches()
    assert len(batches) == 3
    assert shards() == [[batches[0]], [batches[1]]]
    assert shards(repeat_to_share=True) == [[batches[0], batches[2]], [batches[1], batches[0]]]


def test_only_rank_zero_makes_the_wandb_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")  # Slurm starts every rank at once: rank 1 may come first
    wandb_run_id(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    made = wandb_run_id(tmp_path / "run")
    assert (tmp_path / "run" / RUN_ID_FILE).read_text().strip() == made == wandb_run_id(tmp_path / "run")


def _float64(batch: dict) -> DialogueBatch:
    batch = DialogueBatch(**batch)
    return replace(
        batch,
        **{
            f.name: getattr(batch, f.name).double()
            for f in fields(batch)
            if isinstance(getattr(batch, f.name), torch.Tensor) and getattr(batch, f.name).is_floating_point()
        },
    )


def test_one_ddp_step_equals_one_float64_process_on_both_ranks_batches(uninterrupted):
    config = OmegaConf.load(uninterrupted.run_dir / "config.yaml")
    module = TokenDuplexLightningModule(instantiate(config.model), weights=dict(config.module.weights))
    module = module.double()
    steps = [torch.load(uninterrupted.record / f"step0_rank{rank}.pt") for rank in range(2)]
    module.model.load_state_dict({k: v.double() for k, v in steps[0]["weights"].items()})
    losses = []
    for step in steps:
        batch = _float64(step["batch"])
        chunks = torch.full((len(batch),), 4, dtype=torch.int32)  # attention.train_chunks=[4]
        _, rank_losses = module.run(batch, chunks, augment=False)
        assert step["loss"].item() == pytest.approx(rank_losses.total.item(), rel=LOSS_RTOL)
        losses.append(rank_losses.total)
    assert steps[0]["batch"]["names"] != steps[1]["batch"]["names"]
    (sum(losses) / 2).backward()  # DDP averages the ranks' gradients
    reference = {name: p.grad for name, p in module.model.named_parameters()}
    scale = max(g.abs().max() for g in reference.values())
    for rank, step in enumerate(steps):
        assert step["grads"].keys() == reference.keys()
        worst = max((step["grads"][n].double() - reference[n]).abs().max() for n in reference)
        assert worst <= GRAD_TOL * scale, f"rank {rank}: gradients off by {worst:.3g} (largest {scale:.3g})"


def test_only_rank_zero_writes_samples_metrics_wandb_and_checkpoints(uninterrupted):
    run = uninterrupted.run_dir
    assert not uninterrupted.writes.exists() or uninterrupted.writes.read_text() == ""
    assert uninterrupted.output.count("trained to global step") == 1
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_{s:06d}" for s in (0, 3, 6)]
    rows = [r for r in _csv(run / "csv" / "metrics.csv") if r.get("train/loss")]
    assert sorted(int(r["step"]) for r in rows) == list(range(STEPS))  # one row a step, not one a rank
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_killed_run_resumes_on_both_ranks_at_its_step_with_the_uninterrupted_batches(
    uninterrupted, eight_dialogue_corpus, tmp_path
):
    run_dir, corpus = tmp_path / "run", eight_dialogue_corpus.out_dir
    first = subprocess.Popen(
        _command(run_dir, corpus, tmp_path / "first", "logger=csv"), cwd=tmp_path,
        env=_env(tmp_path / "first.writes"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # both ranks, right after the first checkpoint
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first launch ended before it could be killed"
    saved = load_checkpoint(last)["global_step"]
    assert 0 < saved < STEPS and saved % PER_RANK, f"step {saved} is not mid-epoch"

    resumed = _run(run_dir, corpus, tmp_path / "resumed", "logger=csv")
    assert f"at global step {saved}" in resumed.output
    for rank in range(2):
        whole = _batches(uninterrupted.record, rank)
        again = _batches(resumed.record, rank)
        assert again[0]["step"] == saved, f"rank {rank} resumed at step {again[0]['step']}, not {saved}"
        assert again == whole[saved:], f"rank {rank}"
    assert load_checkpoint(last)["global_step"] == STEPS
