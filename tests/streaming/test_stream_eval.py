"""scripts/stream_eval.py end to end on a checkpoint trained in the test."""

import json
import subprocess
import sys
from pathlib import Path

import lightning
import matplotlib.image
import soundfile

from s2s.data.datamodule import DuplexDataModule
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.training.module import DuplexLightningModule

ROOT = Path(__file__).resolve().parents[2]


def test_stream_eval_writes_the_report(tiny_corpus, tmp_path):
    data = DuplexDataModule(root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0)
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
        f"hydra.run.dir={out}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["dialogues"] == tiny_corpus.dialogues["test"]
    for source in ("probability", "energy"):
        duplex = report["duplex"][source]
        assert duplex["turns"] > 0 and duplex["pauses"] > 0 and duplex["barge_ins"] > 0
        assert 0.0 <= duplex["missed_response_rate"] <= 1.0
    assert report["compute"]["chunk_ms"] == 80 and report["compute"]["real_time_factor"] > 0
    assert report["streaming_vs_offline_max_abs"] < 1e-4
    assert "| response latency mean |" in (out / "metrics.md").read_text()
    pngs, wavs = sorted(out.glob("*.png")), sorted(out.glob("*.wav"))
    assert len(pngs) == 1 and len(wavs) == 1
    image = matplotlib.image.imread(pngs[0])
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01
    audio, rate = soundfile.read(wavs[0])
    assert rate == 16000 and audio.shape[1] == 2
    assert list((out / "wandb").glob("offline-run-*"))
