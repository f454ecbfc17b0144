"""Validation samples: every few validations, user | reference | model audio and a spectrogram image
of the first validation dialogues, the model's audio from its teacher-forced mel of the validation
pass (model v2: conditioned on the reference tokens), for model v1 and model v2 alike."""

import lightning
import pytest
import torch

from s2s.data.audio import load_audio
from s2s.data.datamodule import DuplexDataModule
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.vocoder import GriffinLimVocoder
from s2s.training.module import DuplexLightningModule
from s2s.training.samples import ValidationSamples
from s2s.training.token_module import TokenDuplexLightningModule

SIZES = dict(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, train_chunks=(2, 4))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_samples_hold_user_reference_and_the_teacher_forced_model_audio(version, tiny_corpus, tmp_path):
    lightning.seed_everything(0)
    v2 = version == "v2"
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, eval_max_seconds=6.0, batch_seconds=12.0,
        generate_if_missing=False, token_targets=v2,
    )  # fmt: skip
    if v2:
        module = TokenDuplexLightningModule(TokenDuplexModel(TokenDuplexConfig(**SIZES)))
    else:
        module = DuplexLightningModule(DuplexModel(DuplexConfig(**SIZES)))
    samples = ValidationSamples(tmp_path, every_n_validations=1, dialogues=2, seconds=5.0)
    trainer = lightning.Trainer(
        max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_checkpointing=False, callbacks=[samples], limit_val_batches=1,
        num_sanity_val_steps=0, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    batch, out = module.last_validation
    assert len(batch) >= 1
    with torch.no_grad():  # the stored output is the validation pass's: teacher-forced, streaming chunk
        again, _ = module.eval().run(batch, module.model.config.chunk)
    torch.testing.assert_close(out.mel, again.mel)
    folder = tmp_path / "samples" / "step_000002"
    for row in range(min(2, len(batch))):
        name = batch.names[row]
        frames = min(int(batch.frame_lengths[row]), 500)  # 5 s of 10 ms frames
        user, rate = load_audio(folder / f"{name}_user.wav")
        assert rate == 16000 and torch.allclose(user[0], batch.user_audio[row, : frames * 160], atol=1e-4)
        reference, _ = load_audio(folder / f"{name}_reference.wav")
        assert torch.allclose(reference[0], batch.system_audio[row, : frames * 160], atol=1e-4)
        model_audio, _ = load_audio(folder / f"{name}_model.wav")
        want = GriffinLimVocoder()(out.mel[row : row + 1, :frames].float())[0]
        assert model_audio.shape == (1, len(want)) and len(want) > 0.9 * frames * 160
        assert torch.allclose(model_audio[0], want.clamp(-1, 1), atol=1e-3)
        assert (folder / f"{name}.png").stat().st_size > 1000
