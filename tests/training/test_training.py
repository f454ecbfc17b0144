"""Training: every config group composes and builds, a model and module that do not go together are
refused, losses against a float64 reference, a fast_dev_run, kill-and-resume with the same wandb
run, sweeps, and a corrupt checkpoint's error."""

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from s2s.data.datamodule import DuplexDataModule
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexModel
from s2s.training import loggers as loggers_module
from s2s.training.checkpoints import CheckpointError, check_checkpoint
from s2s.training.module import DuplexLightningModule
from s2s.training.run import LaunchConfigError, check_model_and_module, train
from s2s.training.schedule import OptimizerConfig, adamw_warmup_cosine, warmup_cosine
from s2s.training.token_module import TokenDuplexLightningModule

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _compose(overrides, run_dir: Path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _small_data(root) -> list[str]:
    return [
        f"data.root={root}", "data.generate_if_missing=false", "data.num_workers=0", "data.max_seconds=4",
        "data.eval_max_seconds=4", "data.batch_seconds=16",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "group_option",
    [
        (g, o)
        for g in ("model", "module", "data", "trainer", "logger", "attention", "experiment")
        for o in _options(g)
    ],
)
def test_every_config_group_composes_and_instantiates(group_option, tmp_path, tiny_corpus):
    group, option = group_option
    overrides = [f"{group}={option}", *_small_data(tiny_corpus.out_dir)]
    if (group, option) in (("model", "tiny_v1"), ("module", "v1")):  # model v1 trains with module v1
        overrides = ["experiment=v1_baseline", *overrides[1:]]
    if (group, option) == ("data", "folder"):
        overrides = [o for o in overrides if "generate_if_missing" not in o]
    if group == "trainer" or (group, option) == ("experiment", "base_gpu"):
        # a CPU machine cannot build a GPU trainer; everything else about it must hold
        overrides += ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"]
        if option == "ddp":
            overrides += ["trainer.strategy=auto"]
    cfg = _compose(overrides, tmp_path)
    check_model_and_module(cfg)  # what train.py checks first: model, module and data go together
    model = instantiate(cfg.model)
    v2 = cfg.data.get("token_targets", False)
    assert isinstance(model, TokenDuplexModel if v2 else DuplexModel)
    assert model.config.attention_backend == cfg.attention.backend
    assert model.config.train_chunks == tuple(cfg.attention.train_chunks)
    assert isinstance(instantiate(cfg.data), DuplexDataModule)
    module_class = TokenDuplexLightningModule if v2 else DuplexLightningModule
    assert isinstance(instantiate(cfg.module)(model=model), module_class)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert isinstance(instantiate(cfg.trainer, callbacks=callbacks, logger=False), lightning.Trainer)
    loggers = instantiate(cfg.logger)(run_dir=tmp_path / "run")
    wandb = ["WandbLogger"] if importlib.util.find_spec("wandb") else []  # an optional extra
    assert [type(x).__name__ for x in loggers] == {
        "wandb": ["RunCSVLogger", *wandb], "csv": ["RunCSVLogger"], "none": [],
        "tensorboard": ["RunCSVLogger", "TensorBoardLogger"],
    }[cfg.logger.kind]  # fmt: skip
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()


def test_the_default_run_is_the_tiny_model_v2_kept_on_its_free_running_score(tmp_path):
    cfg = _compose([], tmp_path)
    assert cfg.run_name == "tiny-synth-auto"  # README command 1 evaluates outputs/train/tiny-synth-auto
    assert cfg.model._target_ == "s2s.models.token_duplex.TokenDuplexModel"
    assert cfg.module._target_ == "s2s.training.token_module.TokenDuplexLightningModule"
    assert cfg.data.token_targets is True
    assert (cfg.callbacks.checkpoint.monitor, cfg.callbacks.checkpoint.mode) == ("free/score", "max")
    assert cfg.callbacks.free_running.every_n_validations == 1  # the score at every validation
    baseline = _compose(["experiment=v1_baseline"], tmp_path)
    assert baseline.run_name == "tiny_v1-synth-auto"
    assert baseline.model._target_ == "s2s.models.duplex.DuplexModel" and not baseline.data.token_targets


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model=tiny_v1"],
            r"model=tiny_v1 is model v1 .*needs module=v1 data.token_targets=false.*module=v2",
        ),
        (["model=tiny_v1", "module=v1"], r"data.token_targets=true\): use experiment=v1_baseline"),
        (
            ["module=v1"],
            r"model=tiny is model v2 .*trains with module=v2 .*not module=v1.*experiment=v1_baseline",
        ),
        (["experiment=base_gpu", "module=v1"], r"model=base is model v2"),
        (["data.token_targets=false"], r"trains on token targets, data.token_targets=true.*v1_baseline"),
        (["experiment=v1_baseline", "model=tiny"], r"model=tiny is model v2 .*not module=v1"),
    ],
)
def test_a_model_and_module_that_do_not_go_together_are_refused_before_anything_is_written(
    overrides, message, tmp_path
):
    cfg = _compose(overrides, tmp_path / "run")
    with pytest.raises(LaunchConfigError, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_slurm_launcher_config_composes_when_the_plugin_is_installed(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(["hydra/launcher=slurm"], tmp_path)
    assert cfg.hydra.launcher.tasks_per_node == 8


def test_losses_match_a_float64_reference(tiny_corpus, generator):
    torch.manual_seed(0)
    data = DuplexDataModule(root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = DuplexLightningModule(DuplexModel(), speaking_weight=0.7)
    out, losses = module.run(batch, 4)
    mel_error, mel_count, bce_sum, bce_count = 0.0, 0, 0.0, 0
    for row in range(len(batch)):
        frames = int(batch.frame_lengths[row]) // 4
        predicted = out.mel[row, : frames * 4].double()
        mel_error += (predicted - batch.system_mel[row, : frames * 4].double()).abs().sum().item()
        mel_count += frames * 4 * 80
        for t in range(frames):
            target = float(batch.system_speaking[row, 4 * t : 4 * t + 4].double().mean() >= 0.5)
            p = torch.sigmoid(out.speaking_logit[row, t].double()).item()
            bce_sum += -(target * math.log(p) + (1 - target) * math.log(1 - p))
            bce_count += 1
    assert math.isclose(losses.mel_l1.item(), mel_error / mel_count, rel_tol=1e-4)
    assert math.isclose(losses.speaking_bce.item(), bce_sum / bce_count, rel_tol=1e-4)
    assert math.isclose(
        losses.total.item(), mel_error / mel_count / 4.0 + 0.7 * bce_sum / bce_count, rel_tol=1e-4
    )


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, floor=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert warmup_cosine(110, 10, 110, floor=0.2) == pytest.approx(0.2)
    assert warmup_cosine(500, 10, 110, floor=0.2) == pytest.approx(0.2)


def test_the_optimizer_decays_matrices_only_and_is_fused_on_a_gpu():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.RMSNorm(3))
    optimizer = adamw_warmup_cosine(model, OptimizerConfig(weight_decay=0.1), max_steps=10)["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.1
    assert {tuple(p.shape) for p in no_decay["params"]} == {(3,)} and no_decay["weight_decay"] == 0.0
    assert not decay["fused"]  # on the CPU: torch's default implementation
    if torch.cuda.is_available():
        fused = adamw_warmup_cosine(model.cuda(), OptimizerConfig(), max_steps=10)["optimizer"]
        assert all(group["fused"] for group in fused.param_groups)


def test_fast_dev_run_on_cpu(tiny_corpus, tmp_path):
    data = DuplexDataModule(root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0)
    module = DuplexLightningModule(DuplexModel())
    before = [p.detach().clone() for p in module.parameters()]
    trainer = lightning.Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == min(2, len(data.train_dataloader()))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def _train_command(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "scripts" / "train.py"), f"hydra.run.dir={run_dir}", *_small_data(corpus),
        "trainer.max_steps=30", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
        "callbacks.samples.every_n_validations=5", *extra,
    ]  # fmt: skip


def test_killed_run_resumes_at_its_step_with_the_same_wandb_run(tiny_corpus, tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    command = _train_command(run_dir, tiny_corpus.out_dir)
    env = {**os.environ, "WANDB_SILENT": "true"}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let the checkpoint file be completely written
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    saved_step = check_checkpoint(last)
    assert saved_step >= 3
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"at global step {saved_step}" in second.stdout
    assert "trained to global step 30" in second.stdout
    assert (run_dir / "wandb_run_id.txt").read_text().strip() == run_id
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    # the resumed launch writes to the same wandb run: its records carry the same run id and config
    records = b"".join(p.read_bytes() for p in (run_dir / "wandb").rglob(f"run-{run_id}.wandb"))
    assert run_id.encode() in records and b"encoder_layers" in records
    steps = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()]
    assert max(int(row[steps[0].index("step")]) for row in steps[1:] if row[steps[0].index("step")]) >= 29
    assert sorted((run_dir / "samples").glob("step_*/*.png")) and sorted(
        (run_dir / "samples").glob("step_*/*.wav")
    )

    # a corrupt checkpoint is refused with the fix, by the helper and by the script
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*resume=false"):
        check_checkpoint(last)
    third = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode != 0 and "corrupt or truncated" in third.stderr


def test_sweep_gives_one_run_directory_and_wandb_run_each(tiny_corpus, tmp_path):
    pytest.importorskip("wandb")
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "attention.chunk=2,4",
        *_small_data(tiny_corpus.out_dir),
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "validate_first=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    fixed = [o.split("=")[0] for o in command[4:] if "=" in o and not o.startswith("attention.")]
    command.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]")  # short names
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.startswith("attention"))
    assert [p.name for p in runs] == ["attention.chunk=2", "attention.chunk=4"]
    ids = {(p / "wandb_run_id.txt").read_text() for p in runs}
    assert len(ids) == 2 and all((p / "checkpoints" / "last.ckpt").is_file() for p in runs)
    assert "chunk: 2" in (runs[0] / "config.yaml").read_text()
    # each offline wandb run (what `wandb sync` uploads) holds the resolved config and the metrics
    for run in runs:
        run_id = (run / "wandb_run_id.txt").read_text().strip()
        records = b"".join(p.read_bytes() for p in (run / "wandb").rglob(f"run-{run_id}.wandb"))
        assert b"encoder_layers" in records and b"train_chunks" in records
        assert b"val/mel_l1" in records and b"train/mel_l1" in records


def test_wandb_failure_falls_back_to_csv_with_a_warning(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no wandb here")

    monkeypatch.setattr("lightning.pytorch.loggers.WandbLogger", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = loggers_module.make_loggers(tmp_path, kind="wandb")
    assert [type(x).__name__ for x in result] == ["RunCSVLogger"]
    assert any("wandb is unavailable" in str(w.message) for w in caught)
