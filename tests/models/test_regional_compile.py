"""Regional compilation: compiled blocks give the eager model's outputs and gradients, keep the
checkpoint's keys, serve every batch shape from the graphs built once, and leave streaming eager."""

import pytest
import torch

from s2s.models import regional_compile
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training.token_module import TokenDuplexLightningModule

CONFIG = TokenDuplexConfig(
    dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2, dropout=0.0, attention_backend="sdpa"
)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _batch(generator, batch: int, frames: int, padded: bool):
    lengths = torch.full((batch,), frames)
    if padded:
        lengths[1:] = torch.randint(frames // 2, frames, (batch - 1,), generator=generator)
    mel = 3 * torch.randn(batch, frames * CONFIG.mel_per_frame, CONFIG.n_mels, generator=generator) - 6
    tokens = torch.randint(0, CONFIG.system_vocab, (batch, frames), generator=generator)
    chunks = torch.tensor([4, 2, 1, 8], dtype=torch.int32)[:batch]
    weights = torch.randn(batch, frames, CONFIG.system_vocab, generator=generator)
    return mel, tokens, lengths, chunks, weights


def _pass(model, mel, tokens, lengths, chunks, weights):
    model.zero_grad(set_to_none=True)
    out = model(mel, tokens, lengths=lengths, chunk=chunks)
    mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None])[..., None]
    ((out.token_logits * weights * mask).sum() + (out.user_state_logits * mask).sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.token_logits.detach(), grads


def test_compiled_blocks_match_the_eager_model_on_every_batch_shape(generator):
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    eager = TokenDuplexModel(CONFIG)
    compiled = TokenDuplexModel(CONFIG)
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    regional_compile.compile_blocks(compiled)
    assert list(compiled.state_dict()) == keys, "compiling in place keeps the checkpoint's keys"
    before = _graphs()
    built = None
    for batch, frames, padded in [(2, 40, False), (3, 33, True), (4, 48, True)]:
        inputs = _batch(generator, batch, frames, padded)
        want_out, want_grads = _pass(eager, *inputs)
        got_out, got_grads = _pass(compiled, *inputs)
        assert got_out.shape == want_out.shape and torch.isfinite(got_out).all()
        scale = want_out.abs().max()
        assert (got_out - want_out).abs().max() <= 1e-4 * scale, (
            f"seed {seed}: compiled output differs at B={batch} T={frames}"
        )
        block_parameters = {n for n, _ in eager.named_parameters() if ".blocks." in n}
        assert got_grads.keys() == want_grads.keys() and block_parameters <= got_grads.keys()
        for name, want in want_grads.items():
            error = (got_grads[name] - want).norm() / want.norm().clamp(min=1e-12)
            assert error < 1e-4, f"seed {seed}: {name}: gradient off by {error:.2e}, B={batch} T={frames}"
        if built is None:
            built = _graphs() - before
            assert built > 0, "the blocks were not compiled"
        else:
            assert _graphs() - before == built, f"seed {seed}: B={batch} T={frames} recompiled"


def test_training_module_compiles_its_blocks_when_fitting_starts():
    eager = TokenDuplexLightningModule(TokenDuplexModel(CONFIG))
    eager.on_fit_start()
    assert all(block._compiled_call_impl is None for block in regional_compile.compiled_blocks(eager.model))
    module = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks=True)
    assert module.hparams["compile_blocks"] is True
    module.on_fit_start()
    blocks = regional_compile.compiled_blocks(module.model)
    assert all(block._compiled_call_impl is not None for block in blocks)
    with pytest.raises(TypeError, match="compile_blocks must be true or false"):
        TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks="yes")


def test_with_cuda_graphs_the_blocks_are_compiled_inside_the_graphs_only():
    """module.compile_blocks with module.cuda_graphs: the graphed stacks compile their captures, the
    model's own blocks (packed batches, validation, streaming) stay eager."""
    module = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks=True, cuda_graphs=True)
    module.on_fit_start()
    assert module.model.encoder.graphs.compiled and module.model.decoder.graphs.compiled
    assert all(block._compiled_call_impl is None for block in regional_compile.compiled_blocks(module.model))
    graphs_only = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), cuda_graphs=True)
    graphs_only.on_fit_start()
    assert not graphs_only.model.encoder.graphs.compiled


def test_a_multi_process_run_leaves_graphs_and_compiled_blocks_off_with_a_warning(monkeypatch):
    module = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks=True, cuda_graphs=True)
    monkeypatch.setattr(module, "_trainer", type("Trainer", (), {"world_size": 2})())
    with pytest.warns(UserWarning, match="module.cuda_graphs .* is off in this 2-process run"):
        module.on_fit_start()
    assert module.model.encoder.graphs is None and module.model.decoder.graphs is None
    assert all(block._compiled_call_impl is None for block in regional_compile.compiled_blocks(module.model))
