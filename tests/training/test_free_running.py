"""Free-running validation: the callback streams validation dialogues through a StreamingSession
during training, logs free/* metrics beside the losses, and the checkpoint callback can keep the
checkpoint that behaves best."""

import csv
import math

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from s2s.data.datamodule import DuplexDataModule
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.streaming import metrics
from s2s.streaming.report import free_running_summary
from s2s.streaming.runner import stream_dialogues
from s2s.training.free_running import FreeRunningValidation
from s2s.training.module import DuplexLightningModule

CONFIG = DuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, train_chunks=(2, 4))


def _fit(tiny_corpus, tmp_path, callback, checkpoint=None, seed=0):
    lightning.seed_everything(seed)
    data = DuplexDataModule(
        root=tiny_corpus.out_dir,
        num_workers=0,
        max_seconds=3.0,
        eval_max_seconds=3.0,
        batch_seconds=9.0,
        generate_if_missing=False,
    )
    module = DuplexLightningModule(DuplexModel(CONFIG))
    trainer = lightning.Trainer(
        max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv", version=""), enable_progress_bar=False,
        callbacks=[callback] + ([checkpoint] if checkpoint else []),
        enable_checkpointing=checkpoint is not None,
        limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return trainer, module, data


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_callback_logs_free_running_metrics_beside_the_losses(tiny_corpus, tmp_path):
    callback = FreeRunningValidation(every_n_validations=1, dialogues=2, streams=2, seconds=8.0)
    _trainer, module, data = _fit(tiny_corpus, tmp_path, callback)
    rows = [r for r in _rows(tmp_path / "csv" / "metrics.csv") if r.get("free/score")]
    assert [int(r["step"]) for r in rows] == [1, 3], "one free-running row per validation (steps 2 and 4)"
    for row in rows:
        assert row["val/loss"], "free-running metrics sit beside the teacher-forced losses"
        for key in ("free/response_rate", "free/false_takeovers_per_pause", "free/talk_overs_per_turn"):
            value = float(row[key])
            assert math.isnan(value) or 0.0 <= value <= 10.0, (key, value)
        assert 0.0 <= float(row["free/score"]) <= 1.0

    # The last row is the trained model run on its own output: stream the same dialogues again,
    # with an independent count of turns and responses from the manifests.
    model = module.model.eval()
    run = stream_dialogues(
        model, data.datasets["val"], indices=[0, 1], streams=1, max_seconds=8.0, vocoder=False
    )
    want = free_running_summary(run, model.config, window=3.0)
    last = rows[-1]
    for key in ("response_rate", "false_takeovers_per_pause", "talk_overs_per_turn", "score"):
        got, expected = float(last[f"free/{key}"]), want[key]
        assert (math.isnan(got) and expected is None) or got == pytest.approx(expected, abs=1e-6), key
    turns = responded = 0
    for dialogue in run.dialogues:
        events = metrics.events_from_manifest(dialogue.manifest)
        active = dialogue.speaking >= 0.5
        for end, following in zip(events.turn_ends, events.next_user_starts, strict=True):
            turns += 1
            first, last_frame = math.ceil(end / 0.04 - 1e-9), min(end + 3.0, following)
            responded += any(
                active[t] and (t == 0 or not active[t - 1])
                for t in range(first, min(len(active), math.ceil(last_frame / 0.04 - 1e-9)))
            )
    assert turns > 0
    assert float(last["free/response_rate"]) == pytest.approx(responded / turns)


def test_checkpoint_can_monitor_the_free_running_score(tiny_corpus, tmp_path):
    callback = FreeRunningValidation(every_n_validations=1, dialogues=2, streams=2, seconds=6.0)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="free/score", mode="max", save_top_k=1,
        filename="best-step{step}-score{free/score:.3f}", auto_insert_metric_name=False,
    )  # fmt: skip
    _fit(tiny_corpus, tmp_path, callback, checkpoint)
    saved = list((tmp_path / "checkpoints").glob("best-step*-score*.ckpt"))
    assert len(saved) == 1 and checkpoint.best_model_score is not None
    assert 0.0 <= float(checkpoint.best_model_score) <= 1.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="every_n_validations"):
        FreeRunningValidation(every_n_validations=0)
    with pytest.raises(ValueError, match="seconds"):
        FreeRunningValidation(seconds=-1.0)
    for bad in (0.0, -2.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="history_seconds must be a finite number"):
            FreeRunningValidation(history_seconds=bad)


def test_state_gains_choose_the_best_arm_and_its_checkpoint_keeps_the_gain(
    tiny_corpus, tmp_path, monkeypatch
):
    """Model v2 with state_gains: each validation streams every dialogue once per gain in one batch,
    logs every arm's score (equal to streaming that gain alone), takes the best arm's figures and
    gain, and the checkpoint of the best validation carries that gain to s2s.pretrained; the same for
    the streaming history (2 s at chunk 4 = 160 ms: 11 chunks before the current one)."""
    import s2s.training.free_running as free_running_module
    from s2s.data.tokens import BOS, EOS
    from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
    from s2s.models.token_sampling import SamplingConfig
    from s2s.pretrained import (
        chosen_state_gain,
        load_artifact,
        validated_history,
        validated_onset_quantile,
        validated_stop_gain,
    )

    streamed_with = []

    def recording_stream(*args, **kwargs):
        streamed_with.append(kwargs.get("left_chunks", ...))
        return stream_dialogues(*args, **kwargs)

    monkeypatch.setattr(free_running_module, "stream_dialogues", recording_stream)
    from s2s.training.checkpoint_callback import RunCheckpoint
    from s2s.training.token_module import TokenDuplexLightningModule

    lightning.seed_everything(0)
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, eval_max_seconds=3.0, batch_seconds=9.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, chunk=4)
    module = TokenDuplexLightningModule(TokenDuplexModel(config))
    with torch.no_grad():  # an untrained model barely opens replies: make it answer, so the arms differ
        module.model.token_head.bias[BOS] += 2.0
        module.model.token_head.bias[EOS] += 1.0
    gains = [0.0, 3.0]
    callback = FreeRunningValidation(
        dialogues=2, streams=1, seconds=8.0, state_gains=gains, history_seconds=2.0,
        sampling={"onset_quantile": 0.4, "stop_gain": 0.5},  # the checkpoint says how the arms decoded
    )  # fmt: skip
    checkpoint = RunCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="free/score", mode="max", save_top_k=1, save_last=True,
        filename="best-step{step}-score{free/score:.3f}", auto_insert_metric_name=False,
    )  # fmt: skip
    trainer = lightning.Trainer(
        max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv", version=""), enable_progress_bar=False,
        callbacks=[callback, checkpoint], limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    row = [r for r in _rows(tmp_path / "csv" / "metrics.csv") if r.get("free/score")][-1]
    scores = {g: float(row[f"free/score_at_gain_{g:g}"]) for g in gains}
    chosen = float(row["free/state_gain"])
    assert chosen == max(gains, key=lambda g: scores[g]), (scores, chosen)  # the first of equals
    assert float(row["free/score"]) == pytest.approx(scores[chosen])
    model = module.model.eval()
    alone = {}
    for gain in gains:  # each arm as a run of that gain alone
        run = stream_dialogues(
            model, data.datasets["val"], indices=[0, 1], streams=2, max_seconds=8.0, vocoder=False,
            sampling=SamplingConfig(state_gain=gain, onset_quantile=0.4, stop_gain=0.5), left_chunks=11,
        )  # fmt: skip
        alone[gain] = free_running_summary(run, model.config, window=3.0)
        assert scores[gain] == pytest.approx(alone[gain]["score"], abs=1e-6), (gain, scores, alone[gain])
    assert alone[0.0] != alone[3.0], "the gains should stream differently (else the test shows nothing)"
    for key, want in alone[chosen].items():  # the logged figures are the chosen arm's
        got = float(row[f"free/{key}"])
        assert (want is None and math.isnan(got)) or got == pytest.approx(want, abs=1e-6), (key, got, want)
    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert chosen_state_gain(load_artifact(best).provenance) == chosen
    assert callback.state_dict()["state_gain"] == chosen
    assert streamed_with == [11], streamed_with  # one validation, streamed with 2 s of history
    assert validated_history(load_artifact(best).provenance) == 2.0
    assert callback.state_dict()["history_seconds"] == 2.0
    assert validated_onset_quantile(load_artifact(best).provenance) == 0.4
    assert validated_stop_gain(load_artifact(best).provenance) == 0.5


def test_state_gains_are_checked():
    for bad in ([], [1.0, -1.0], [2.0, 2.0], [float("inf")]):
        with pytest.raises(ValueError, match="state_gains"):
            FreeRunningValidation(state_gains=bad)


def test_the_best_scoring_gain_wins_and_the_first_of_equals(monkeypatch):
    """The choice among arms, on constructed scores: highest wins, ties go to the earlier gain, an
    undefined score (no turns) counts lowest."""
    from types import SimpleNamespace

    import s2s.training.free_running as free_running

    scores = {0.0: 0.2, 1.0: 0.5, 2.0: 0.5, 4.0: None}
    monkeypatch.setattr(
        free_running, "free_running_summary",
        lambda run, config, window, recognizer: {"score": scores[run.dialogues[0].state_gain]},
    )  # fmt: skip
    callback = FreeRunningValidation(state_gains=list(scores))
    run = SimpleNamespace(dialogues=[SimpleNamespace(state_gain=g) for g in scores], step_seconds=[])
    summary = callback._best_gain(run, None, None)
    assert summary["state_gain"] == 1.0 and summary["score"] == 0.5 and callback.state_gain == 1.0
    assert [summary[f"score_at_gain_{g:g}"] for g in scores] == list(scores.values())
    scores.update({0.0: float("nan"), 1.0: None, 2.0: None, 4.0: 0.0})
    assert callback._best_gain(run, None, None)["state_gain"] == 4.0


def test_a_score_tolerance_chooses_the_strongest_veto_among_the_near_best(monkeypatch):
    """gain_score_tolerance: the largest gain whose score is within the tolerance of the best; arms
    below it, and undefined scores, never chosen; an out-of-range tolerance refused."""
    from types import SimpleNamespace

    import s2s.training.free_running as free_running

    scores = {1.0: 0.906, 2.0: 0.906, 4.0: 0.903, 8.0: 0.890, 16.0: None}
    monkeypatch.setattr(
        free_running, "free_running_summary",
        lambda run, config, window, recognizer: {"score": scores[run.dialogues[0].state_gain]},
    )  # fmt: skip
    run = SimpleNamespace(dialogues=[SimpleNamespace(state_gain=g) for g in scores], step_seconds=[])
    for tolerance, want in ((None, 1.0), (0.0, 2.0), (0.005, 4.0), (0.02, 8.0)):
        callback = FreeRunningValidation(state_gains=list(scores), gain_score_tolerance=tolerance)
        summary = callback._best_gain(run, None, None)
        assert summary["state_gain"] == want == callback.state_gain, (tolerance, summary)
        assert summary["score"] == scores[want], (tolerance, summary)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="gain_score_tolerance"):
            FreeRunningValidation(state_gains=[1.0], gain_score_tolerance=bad)
