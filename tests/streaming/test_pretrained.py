"""s2s.pretrained: an artifact (or a training checkpoint) loads into a model that streams exactly as the
one saved; Lightning's load_from_checkpoint works; bad input is refused with the problem and the fix."""

import json
import os
import pickle
import subprocess
from pathlib import Path

import lightning
import pytest
import safetensors.torch
import torch
import yaml

from s2s.data.tasks import say_in_german
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.pretrained import PretrainedError, load_artifact, load_pretrained, main, save_pretrained
from s2s.streaming.session import StreamingSession
from s2s.streaming.token_session import TokenStreamingSession
from s2s.training.checkpoints import CheckpointError
from s2s.training.code_record import CodeCommitInCheckpoint
from s2s.training.module import DuplexLightningModule
from s2s.training.token_module import TokenDuplexLightningModule

SIZES = {"dim": 32, "heads": 2, "kv_heads": 1, "encoder_layers": 1, "decoder_layers": 1}


def _model(version: str, seed: int):
    torch.manual_seed(seed)
    if version == "v2":
        return TokenDuplexModel(TokenDuplexConfig(**SIZES, chunk=2)).eval()
    return DuplexModel(DuplexConfig(**SIZES, chunk=2)).eval()


def _streamed(model, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mel, speaking and (model v2) tokens of streaming `audio` (samples,) through a fresh session."""
    if isinstance(model, TokenDuplexModel):
        session = TokenStreamingSession(model, vocoder=False, sampling=SamplingConfig(temperature=1.0))
    else:
        session = StreamingSession(model, vocoder=False)
    outs = [session.step(piece) for piece in audio.split(session.chunk_samples)]
    result = {name: torch.cat([getattr(o, name) for o in outs], 1) for name in ("mel", "speaking")}
    if isinstance(model, TokenDuplexModel):
        result["tokens"] = torch.cat([o.raw.feedback for o in outs], 1)
    return result


def _assert_same_stream(original, loaded, generator, seed):
    audio = 0.1 * torch.randn(8 * 1280, generator=generator)  # 8 chunks of 2 frames
    expected, got = _streamed(original, audio), _streamed(loaded, audio)
    assert expected["mel"].dtype == torch.float32
    for name, value in expected.items():
        assert torch.equal(value, got[name]), f"seed {seed}: {name} differs after the round trip"


def _checkpoint(module: lightning.LightningModule, path):
    """A checkpoint as Lightning writes it in training (without the training)."""
    trainer = lightning.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[CodeCommitInCheckpoint()],  # as scripts/train.py adds it
    )  # fmt: skip
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_save_then_load_streams_bit_identically(version, tmp_path, generator):
    seed = int(torch.randint(10**6, (1,), generator=generator))
    model = _model(version, seed)
    task = say_in_german().describe()
    out = save_pretrained(model, tmp_path / "artifact", task=task, metrics={"response_latency_s": 0.5})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "task.json", "recipe.json", "metrics.json", "README.md"]
    )
    loaded = load_artifact(out)
    assert type(loaded.model) is type(model) and loaded.model.config == model.config
    _assert_same_stream(model, loaded.model, generator, seed)
    assert loaded.provenance.task == task and loaded.provenance.metrics == {"response_latency_s": 0.5}
    card = (out / "README.md").read_text()
    assert "say_in_german" in card and "| response_latency_s | 0.5 |" in card
    if version == "v2":
        assert loaded.provenance.vocabularies["system"].decode([3, 4]) == ["null", "eins"]
        assert json.loads((out / "task.json").read_text())["vocabularies"]["system"][:4] == [
            "<pad>", "<bos>", "<eos>", "null"
        ]  # fmt: skip
    assert not list(tmp_path.glob(".artifact.*")), "no temporary folder is left behind"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_training_checkpoint_loads_and_exports(version, tmp_path, generator):
    seed = int(torch.randint(10**6, (1,), generator=generator))
    model = _model(version, seed)
    module = TokenDuplexLightningModule(model) if version == "v2" else DuplexLightningModule(model)
    run = tmp_path / "run"
    checkpoint = _checkpoint(module, run / "checkpoints" / "last.ckpt")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    task = say_in_german().describe()
    (corpus / "corpus.json").write_text(json.dumps({"format": "s2s-corpus/1", "recipe": {"task": task}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(corpus)}, "seed": 0}))

    _assert_same_stream(model, load_pretrained(checkpoint), generator, seed)
    module_class = type(module)
    reloaded = module_class.load_from_checkpoint(checkpoint)
    assert type(reloaded) is module_class and reloaded.model.config == model.config
    _assert_same_stream(model, reloaded.model.eval(), generator, seed)

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(_stream_eval_metrics()))
    arguments = ["export", f"checkpoint={checkpoint}", f"out={tmp_path / 'exported'}", f"metrics={metrics}"]
    assert main(arguments) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "From `scripts/stream_eval.py` on 3 dialogues of data/synth/test" in card
    assert "| response latency mean | 420 ms |" in card and "| real-time factor | 0.125 |" in card
    assert "say_in_german" in card and "global step 0" in card
    exported = load_artifact(tmp_path / "exported")
    _assert_same_stream(model, exported.model, generator, seed)
    assert exported.provenance.recipe == {"data": {"root": str(corpus)}, "seed": 0}
    assert exported.provenance.training["checkpoint"] == str(checkpoint)
    head = _git_head()  # the code that wrote the checkpoint, asked of git here, not through s2s
    trained_by = exported.provenance.training["commit"]
    assert (trained_by and trained_by["commit"]) == head
    if head is not None:
        assert f"trained by s2s at commit {head}" in card
    assert exported.provenance.task == task
    assert (exported.provenance.vocabularies is not None) == (version == "v2")
    assert main(["export", f"checkpoint={checkpoint}", f"out={tmp_path / 'exported'}"]) == 1, "no overwrite"


def _git_head() -> str | None:
    """HEAD of the checkout the tests run from, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 else None


def _stream_eval_metrics() -> dict:
    """The figures of a metrics.json as scripts/stream_eval.py writes it (values made up)."""
    stats = {"mean": 0.42, "p50": 0.4, "p90": 0.6}
    reading = {
        "response_latency_s": stats, "barge_in_stop_latency_s": stats, "missed_response_rate": 0.1,
        "ignored_barge_in_rate": 0.2, "false_takeovers_per_pause": 0.0, "talk_overs_per_turn": 0.3,
        "turns": 5, "barge_ins": 2, "pauses": 3,
    }  # fmt: skip
    compute = {
        "device": "CPU (2 threads)", "precision": "fp32", "chunk_ms": 160.0, "streams": 4,
        "step_ms_p50": 10.0, "step_ms_p95": 12.0, "step_ms_p99": 14.0, "real_time_factor": 0.125,
    }  # fmt: skip
    return {
        "data": "data/synth/test", "dialogues": 3, "duplex": {"probability": reading, "energy": reading},
        "compute": compute, "quality": {"mel_l1": 1.1, "mcd_db": 9.5}, "streaming_vs_offline_max_abs": 1e-6,
    }  # fmt: skip


def test_each_lightning_module_refuses_the_other_models_checkpoint(tmp_path):
    v2 = _checkpoint(TokenDuplexLightningModule(_model("v2", 0)), tmp_path / "v2.ckpt")
    v1 = _checkpoint(DuplexLightningModule(_model("v1", 0)), tmp_path / "v1.ckpt")
    with pytest.raises(TypeError, match=r"model v2 trains .* TokenDuplexLightningModule"):
        DuplexLightningModule.load_from_checkpoint(v2)
    with pytest.raises(TypeError, match="trains a TokenDuplexModel, got DuplexModel"):
        TokenDuplexLightningModule.load_from_checkpoint(v1)
    with pytest.raises(ValueError, match="weights_only=True"):
        DuplexLightningModule.load_from_checkpoint(v1, weights_only=False)


def _edit_config(artifact, change):
    record = json.loads((artifact / "config.json").read_text())
    change(record)
    (artifact / "config.json").write_text(json.dumps(record))


def test_bad_artifacts_are_refused_with_the_fix(tmp_path):
    model = _model("v2", 1)
    artifact = save_pretrained(model, tmp_path / "a")
    with pytest.raises(PretrainedError, match=r"nowhere does not exist; pass a directory"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(PretrainedError, match=r"holds no config.json: it is not an s2s model artifact"):
        load_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="pass its directory"):
        load_pretrained(artifact / "model.safetensors")

    def unknown_class(record):
        record["model_class"] = "os.system"

    _edit_config(artifact, unknown_class)
    with pytest.raises(PretrainedError, match=r"model class 'os.system'.*known classes: DuplexModel"):
        load_pretrained(artifact)

    artifact = save_pretrained(model, tmp_path / "a", overwrite=True)
    _edit_config(artifact, lambda record: record["config"].update(wings=2))
    with pytest.raises(PretrainedError, match=r"unknown field\(s\) \['wings'\].*another version of s2s"):
        load_pretrained(artifact)
    artifact = save_pretrained(model, tmp_path / "a", overwrite=True)
    _edit_config(artifact, lambda record: record["config"].pop("recent_tokens"))
    with pytest.raises(PretrainedError, match=r"missing field\(s\) \['recent_tokens'\]"):
        load_pretrained(artifact)
    artifact = save_pretrained(model, tmp_path / "a", overwrite=True)
    _edit_config(artifact, lambda record: record.update(version=99))
    with pytest.raises(PretrainedError, match="artifact version 99; this s2s reads version 1"):
        load_pretrained(artifact)

    artifact = save_pretrained(model, tmp_path / "a", overwrite=True)
    wider = TokenDuplexModel(TokenDuplexConfig(**{**SIZES, "dim": 64}))
    safetensors.torch.save_file(wider.state_dict(), artifact / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"shape mismatch.*64.* in the file, .*32.*for the config"):
        load_pretrained(artifact)
    (artifact / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(PretrainedError, match="corrupt or truncated"):
        load_pretrained(artifact)
    (artifact / "model.safetensors").unlink()
    with pytest.raises(PretrainedError, match=r"lacks model.safetensors"):
        load_pretrained(artifact)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"global_step": 0, "state_dict": {}, "optimizer_states": [], "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_pretrained(path)
    plain = tmp_path / "plain.ckpt"
    with open(plain, "wb") as file:
        pickle.dump({"a": 1}, file, protocol=2)
    with pytest.raises(CheckpointError, match=r"corrupt|not a PyTorch checkpoint"):
        load_pretrained(plain)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"global_step": 0, "state_dict": {}, "optimizer_states": []}, foreign)
    with pytest.raises(PretrainedError, match="no model config in its hyper_parameters"):
        load_pretrained(foreign)


def test_writing_never_overwrites_by_accident_and_is_atomic(tmp_path, monkeypatch):
    model, other = _model("v1", 2), _model("v1", 3)
    target = save_pretrained(model, tmp_path / "a")
    with pytest.raises(PretrainedError, match="already exists; pass overwrite=True"):
        save_pretrained(other, target)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(PretrainedError, match=r"not an s2s model artifact \(.*\); refusing to replace it"):
        save_pretrained(model, folder, overwrite=True)
    assert (folder / "mine.txt").read_text() == "keep me"
    with pytest.raises(PretrainedError, match="plain JSON"):
        save_pretrained(model, tmp_path / "b", metrics={"x": float("nan")})
    assert not (tmp_path / "b").exists()

    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr("s2s.pretrained.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(other, target, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "notes"], "no partial folder left"
    weights = load_pretrained(target).state_dict()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "the old one is intact"
    save_pretrained(other, target, overwrite=True)
    weights = load_pretrained(target).state_dict()
    assert all(torch.equal(weights[k], v) for k, v in other.state_dict().items())


def test_vocabularies_that_do_not_fit_the_model_are_refused(tmp_path):
    model = _model("v2", 4)
    with pytest.raises(PretrainedError, match=r"not the model's .*system_vocab=13"):
        save_pretrained(model, tmp_path / "a", vocabularies={"system": ["ja"], "user": ["eins"]})


def test_a_run_directory_means_the_checkpoint_the_run_chose(tmp_path):
    from s2s.pretrained import run_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(PretrainedError, match="without checkpoints"):
        run_checkpoint(run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_checkpoint(run).name == "last.ckpt"
    for name in (
        "best-step600-score0.176.ckpt",
        "best-step1200-score0.231.ckpt",
        "best-step300-score-0.5.ckpt",
    ):
        (run / "checkpoints" / name).write_bytes(b"")
    assert run_checkpoint(run).name == "best-step1200-score0.231.ckpt"
    model = _model("v2", 3)
    trained = _checkpoint(
        TokenDuplexLightningModule(model), run / "checkpoints" / "best-step1800-score0.5.ckpt"
    )
    loaded = load_pretrained(run)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), f"{name} differs from {trained}"
    assert main(["export", f"checkpoint={run}", f"out={tmp_path / 'exported'}"]) == 0
    exported = load_artifact(tmp_path / "exported")
    assert exported.provenance.training["checkpoint"] == str(trained), "export takes the run's choice too"
    assert all(torch.equal(exported.model.state_dict()[k], v) for k, v in model.state_dict().items())
