"""Model v2 training: token targets reach the batch as the crops' targets, the losses equal a
float64 computation written out by hand, and a model whose vocabularies are not the corpus's task's
is refused before it trains."""

import math

import lightning
import pytest
import torch

from s2s.data.datamodule import DuplexDataModule
from s2s.data.token_targets import UserState, frame_targets
from s2s.data.tokens import BOS, EOS, PAD
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training.run import LaunchConfigError
from s2s.training.token_module import TokenDuplexLightningModule, user_state_loss


def _data(tiny_corpus) -> DuplexDataModule:
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=6.0, eval_max_seconds=6.0, batch_seconds=18.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    data.setup("fit")
    return data


def test_batches_carry_each_crops_token_targets(tiny_corpus):
    data = _data(tiny_corpus)
    sampler = data.train_dataloader().batch_sampler
    crops = sampler.batches()[0]
    batch = next(iter(data.train_dataloader()))
    dataset = data.datasets["train"]
    vocabularies = dataset.vocabularies
    frames = batch.user_mel.shape[1] // 4
    assert batch.system_tokens.shape == batch.user_state.shape == (len(crops), frames)
    for row, crop in enumerate(crops):
        want = frame_targets(
            dataset.files[crop.index].manifest, vocabularies.system, vocabularies.user, 640,
            start=crop.start, num_samples=crop.length, sample_rate=16000,
        )  # fmt: skip
        n = want.frames
        assert torch.equal(batch.system_tokens[row, :n], want.system_tokens)
        assert (batch.system_tokens[row, n:] == PAD).all()
        assert torch.equal(batch.user_state[row, :n], want.user_state)
        count = int(batch.user_word_counts[row])
        assert torch.equal(batch.user_words[row, :count], want.user_words)
        assert bool(batch.in_reply_at_start[row]) == want.in_reply_at_start
    assert (batch.system_tokens == BOS).any() and (batch.system_tokens == EOS).any()


def test_losses_equal_a_float64_computation(tiny_corpus, generator):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    torch.manual_seed(seed)
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, chunk=4)
    pad, bos, eos, pause = 0.3, 3.0, 3.0, 4.0  # explicit, so the reference does not follow the defaults
    module = TokenDuplexLightningModule(
        TokenDuplexModel(config).eval(), weights={"pad": pad, "bos": bos, "eos": eos, "user_pause": pause}
    )
    batch = next(iter(_data(tiny_corpus).val_dataloader()))
    with torch.no_grad():
        out, losses = module.run(batch, 4)

    frames = out.token_logits.shape[1]
    lengths = batch.frame_lengths // 4
    mask = (torch.arange(frames)[None, :] < lengths[:, None]).double()
    tokens = batch.system_tokens[:, :frames]
    weights = torch.ones(config.system_vocab, dtype=torch.float64)
    weights[PAD], weights[BOS], weights[EOS] = pad, bos, eos
    log_p = out.token_logits.double().log_softmax(-1)
    picked = -log_p.gather(-1, tokens[..., None])[..., 0]
    w = weights[tokens] * mask
    token_ce = (picked * w).sum() / w.sum()

    target = batch.system_mel[:, : frames * 4].double()
    mel_mask = mask.repeat_interleave(4, dim=1)[..., None]
    mel_l1 = ((out.mel.double() - target).abs() * mel_mask).sum() / (mel_mask.sum() * 80)

    adjust = torch.zeros(len(UserState), dtype=torch.float64)
    adjust[int(UserState.PAUSE)] = math.log(pause)  # logit-adjusted: calibrated raw logits
    state_log_p = (out.user_state_logits.double() + adjust).log_softmax(-1)
    states = batch.user_state[:, :frames]
    state = -state_log_p.gather(-1, states[..., None])[..., 0]
    state_w = torch.where(states == int(UserState.PAUSE), pause, 1.0).double() * mask
    assert (states[mask.bool()] == int(UserState.PAUSE)).any(), f"seed {seed}: the batch has no pause"
    state_ce = (state * state_w).sum() / state_w.sum()

    ctc = 0.0
    for row in range(len(batch)):
        n, k = int(lengths[row]), int(batch.user_word_counts[row])
        ctc += torch.nn.functional.ctc_loss(
            out.user_ctc_logits[row, :n].double().log_softmax(-1), batch.user_words[row, :k],
            torch.tensor(n), torch.tensor(k), blank=PAD, reduction="sum", zero_infinity=True,
        )  # fmt: skip
    ctc = ctc / mask.sum()
    total = token_ce + mel_l1 / config.mel_std + 0.2 * ctc + 0.5 * state_ce

    for name, got, want in (
        ("token_ce", losses.token_ce, token_ce), ("mel_l1", losses.mel_l1, mel_l1),
        ("user_state_ce", losses.user_state_ce, state_ce), ("user_ctc", losses.user_ctc, ctc),
        ("total", losses.total, total),
    ):  # fmt: skip
        assert torch.isfinite(got)
        assert abs(float(got) - float(want)) <= 1e-4 * max(1.0, abs(float(want))), (seed, name, got, want)

    adjusted = TokenDuplexLightningModule(
        module.model,
        weights={"pad": pad, "bos": bos, "eos": eos, "user_pause": pause, "token_logit_adjusted": True},
    )
    with torch.no_grad():
        _, adjusted_losses = adjusted.run(batch, 4)
    log_p = (out.token_logits.double() + weights.log()).log_softmax(-1)
    want = (-log_p.gather(-1, tokens[..., None])[..., 0] * w).sum() / w.sum()
    got = adjusted_losses.token_ce
    assert abs(float(got) - float(want)) <= 1e-4 * max(1.0, float(want)), (
        seed,
        "adjusted token_ce",
        got,
        want,
    )


def test_a_few_steps_fit_one_batch(tiny_corpus):
    torch.manual_seed(0)
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, chunk=4)
    module = TokenDuplexLightningModule(TokenDuplexModel(config))
    batch = next(iter(_data(tiny_corpus).train_dataloader()))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        _, losses = module.run(batch, 4)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        first = first if first is not None else float(losses.total.detach())
    assert float(losses.total) < 0.7 * first, (first, float(losses.total))


def test_vocabularies_that_are_not_the_corpus_tasks_are_refused_before_training(tiny_corpus, tmp_path):
    config = TokenDuplexConfig(
        dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, system_vocab=12, user_vocab=15
    )
    module = TokenDuplexLightningModule(TokenDuplexModel(config))
    before = [p.detach().clone() for p in module.parameters()]
    trainer = lightning.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = DuplexDataModule(
        root=tiny_corpus.out_dir, num_workers=0, max_seconds=3.0, batch_seconds=9.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    with pytest.raises(
        LaunchConfigError,
        match=r"vocabularies \(system_vocab=12, user_vocab=15\).*13 system, 15 user tokens.*"
        r"model.config.system_vocab=13 model.config.user_vocab=15",
    ):
        trainer.fit(module, datamodule=data)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_the_pause_weight_leaves_the_state_head_calibrated(generator):
    """Free logits fitted to frames of known state frequencies under the logit-adjusted loss: their
    softmax is the frequencies, whatever the pause weight (a plain weighted loss would give pause
    weight x its frequency, renormalized)."""
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    frequencies = torch.rand(len(UserState), generator=g) + 0.05
    frequencies = frequencies / frequencies.sum()
    frames = 4000
    counts = (frequencies * frames).round().long()
    states = torch.repeat_interleave(torch.arange(len(UserState)), counts)[None]
    states = states[:, torch.randperm(states.shape[1], generator=g)]
    mask = torch.ones_like(states, dtype=torch.bool)
    empirical = counts.double() / counts.sum()
    for weight in (1.0, 4.0, 8.0):
        fitted = _fit_state_logits(states, mask, weight)
        assert torch.allclose(fitted, empirical.to(fitted.dtype), atol=2e-3), (seed, weight, fitted)


def _fit_state_logits(states: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """One free logit vector shared by all frames, fitted by L-BFGS; its softmax."""
    logits = torch.zeros(1, 1, len(UserState), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = user_state_loss(logits.expand(1, states.shape[1], -1), states, mask, weight)
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach()[0, 0].softmax(-1)


def test_the_logit_adjusted_token_loss_leaves_the_decoder_calibrated(generator):
    """Free token logits fitted to frames of known token frequencies: under the logit-adjusted loss
    their softmax is the frequencies whatever the class weights; under the plain weighted loss it is
    weight x frequency, renormalised (BOS's odds against PAD raised by bos / pad). And the adjusted
    loss on random logits against a float64 computation written out by hand."""
    from s2s.training.token_module import TokenLossWeights, token_loss

    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    vocab = 7
    frequencies = torch.rand(vocab, generator=g) + 0.05
    frequencies = frequencies / frequencies.sum()
    counts = (frequencies * 4000).round().long()
    tokens = torch.repeat_interleave(torch.arange(vocab), counts)[None]
    tokens = tokens[:, torch.randperm(tokens.shape[1], generator=g)]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    empirical = counts.double() / counts.sum()
    weights = torch.ones(vocab, dtype=torch.float64)
    weights[PAD], weights[BOS], weights[EOS] = 0.5, 2.0, 3.0
    for adjusted in (True, False):
        fitted = _fit_token_logits(tokens, mask, weights.float(), adjusted)
        want = empirical if adjusted else empirical * weights / (empirical * weights).sum()
        assert torch.allclose(fitted, want, atol=2e-3), (seed, adjusted, fitted, want)
        odds = (fitted[BOS] / fitted[PAD]) / (empirical[BOS] / empirical[PAD])
        assert float(odds) == pytest.approx(1.0 if adjusted else 4.0, rel=0.02), (seed, adjusted, float(odds))

    logits = torch.randn(3, 50, vocab, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (3, 50), generator=g)
    mask = torch.rand(3, 50, generator=g) > 0.2
    log_p = (logits + weights.log()).log_softmax(-1)
    nll = -log_p.gather(-1, tokens[..., None])[..., 0]
    w = weights[tokens] * mask
    reference = (nll * w).sum() / w.sum()
    got = token_loss(logits, tokens, mask, weights.float(), logit_adjusted=True)
    assert abs(float(got) - float(reference)) <= 1e-5 * float(reference), (seed, float(got), float(reference))
    with pytest.raises(ValueError, match=r"token_logit_adjusted.*must be > 0"):
        TokenLossWeights(pad=0.0, token_logit_adjusted=True)


def _fit_token_logits(tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, adjusted: bool):
    """One free token logit vector shared by all frames, fitted by L-BFGS; its softmax."""
    from s2s.training.token_module import token_loss

    logits = torch.zeros(1, 1, weights.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = token_loss(logits.expand(1, tokens.shape[1], -1), tokens, mask, weights, adjusted)
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach()[0, 0].double().softmax(-1)


def test_frames_near_a_silence_onset_are_found_and_weighted(generator):
    """near_silence_onset against a loop over random state sequences, and the onset-weighted state
    loss against a float64 computation written out by hand."""
    from s2s.training.token_module import TokenLossWeights, near_silence_onset

    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, len(UserState), (6, 80), generator=g)
    runs = torch.randint(1, 12, (6, 80), generator=g)  # make runs of one state, as in dialogues
    for row in range(6):
        t = 0
        while t < 80:
            states[row, t : t + int(runs[row, t])] = states[row, t]
            t += int(runs[row, t])
    frames = 7
    want = torch.zeros_like(states, dtype=torch.bool)
    for row in range(6):
        last = None
        for t in range(80):
            state = int(states[row, t])
            if state == UserState.SPEAKING:
                last = t
            silent = state in (UserState.PAUSE, UserState.ENDED)
            want[row, t] = silent and last is not None and t - last <= frames
    assert torch.equal(near_silence_onset(states, frames), want), f"seed {seed}"

    logits = torch.randn(6, 80, len(UserState), generator=g, dtype=torch.float64)
    mask = torch.rand(6, 80, generator=g) > 0.1
    pause, onset = 3.0, 5.0
    adjust = torch.zeros(len(UserState), dtype=torch.float64)
    adjust[int(UserState.PAUSE)] = math.log(pause)
    log_p = (logits + adjust).log_softmax(-1)
    nll = -log_p.gather(-1, states[..., None])[..., 0]
    weight = torch.where(states == int(UserState.PAUSE), pause, 1.0).double()
    weight = weight * torch.where(want, onset, 1.0) * mask
    reference = (nll * weight).sum() / weight.sum()
    got = user_state_loss(logits, states, mask, pause, onset, frames)
    assert abs(float(got) - float(reference)) <= 1e-5 * float(reference), (seed, float(got), float(reference))
    assert float(user_state_loss(logits, states, mask, pause)) != pytest.approx(float(got)), f"seed {seed}"
    for bad in ({"user_onset": 0.0}, {"user_pause": -1.0}, {"onset_frames": 0}, {"onset_frames": 2.5}):
        with pytest.raises(ValueError, match=r"module\.weights"):
            TokenLossWeights(**bad)


def test_the_training_step_never_reads_lengths_from_the_device(tiny_corpus, generator):
    """The step packs attention and runs the CTC loss from the batch's host copies of the lengths:
    with the device tensors guarded against host reads it runs, and gives the losses it gives when
    only the device tensors are there to read."""
    import dataclasses

    from tests.models.test_packing import NoHostReads

    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    torch.manual_seed(seed)
    config = TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0)
    module = TokenDuplexLightningModule(TokenDuplexModel(config).train())
    batch = next(iter(_data(tiny_corpus).train_dataloader()))
    assert batch.host_frame_lengths == tuple(batch.frame_lengths.tolist()), f"seed {seed}"
    assert batch.host_user_word_counts == tuple(batch.user_word_counts.tolist()), f"seed {seed}"
    chunks = torch.tensor([4, 2, 1])[torch.randint(3, (len(batch),))].to(torch.int32)
    guarded = dataclasses.replace(
        batch,
        frame_lengths=batch.frame_lengths.as_subclass(NoHostReads),
        user_word_counts=batch.user_word_counts.as_subclass(NoHostReads),
    )
    _, losses = module.run(guarded, chunks)
    _, want = module.run(
        dataclasses.replace(batch, host_frame_lengths=None, host_user_word_counts=None), chunks
    )
    for name in ("token_ce", "mel_l1", "user_ctc", "user_state_ce", "total"):
        got = getattr(losses, name).as_subclass(torch.Tensor)
        assert torch.isfinite(got), f"seed {seed}: {name}"
        torch.testing.assert_close(got, getattr(want, name), msg=lambda m, n=name: f"seed {seed}: {n}: {m}")
