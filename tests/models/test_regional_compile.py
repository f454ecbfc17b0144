"""Regional compilation: compiled blocks give the eager model's outputs and gradients, keep the
checkpoint's keys, serve every batch shape from the graphs built once, and leave streaming eager;
compiled output heads give the eager heads' outputs and gradients in training passes only."""

import copy
import pickle

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


def _assert_same_gradients(got: dict, want: dict, where: str) -> None:
    for name, w in want.items():
        error = (got[name] - w).norm() / w.norm().clamp(min=1e-12)
        assert error < 1e-4, f"{where}: {name}: gradient off by {error:.2e}"


def _twin_models(seed: int) -> tuple[TokenDuplexModel, TokenDuplexModel]:
    """Two models with the same weights: one stays eager, the other is compiled."""
    torch.manual_seed(seed)
    eager = TokenDuplexModel(CONFIG)
    twin = TokenDuplexModel(CONFIG)
    twin.load_state_dict(eager.state_dict())
    return eager, twin


def test_compiled_blocks_match_the_eager_model_on_every_batch_shape(generator):
    seed = generator.initial_seed()
    eager, compiled = _twin_models(seed)
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
        _assert_same_gradients(got_grads, want_grads, f"seed {seed}, B={batch} T={frames}")
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
    assert not module.model.compiled_heads
    assert all(block._compiled_call_impl is None for block in regional_compile.compiled_blocks(module.model))


def _all_heads_pass(model, mel, tokens, lengths, chunks, weights, generator):
    """Outputs of every head and the gradients of a loss that reads all four."""
    model.zero_grad(set_to_none=True)
    out = model(mel, tokens, lengths=lengths, chunk=chunks)
    fields = (out.token_logits, out.mel, out.user_ctc_logits, out.user_state_logits)
    probes = [torch.randn(f.shape, generator=generator) for f in fields]
    sum((f * p).sum() for f, p in zip(fields, probes, strict=True)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [f.detach() for f in fields], grads


def test_compiled_heads_match_the_eager_heads_in_training_and_stay_eager_otherwise(generator):
    seed = generator.initial_seed()
    eager, compiled = _twin_models(seed)
    assert regional_compile.compile_heads(compiled) is compiled and compiled.compiled_heads
    assert not eager.compiled_heads
    before, built = _graphs(), []
    for batch, frames, padded in [(2, 40, False), (3, 33, True), (4, 48, True)]:
        inputs = _batch(generator, batch, frames, padded)
        probe_seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        want, want_grads = _all_heads_pass(eager, *inputs, torch.Generator().manual_seed(probe_seed))
        got, got_grads = _all_heads_pass(compiled, *inputs, torch.Generator().manual_seed(probe_seed))
        names = ("token_logits", "mel", "user_ctc_logits", "user_state_logits")
        for name, g, w in zip(names, got, want, strict=True):
            assert g.shape == w.shape and torch.isfinite(g).all(), f"seed {seed}: {name}"
            assert (g - w).abs().max() <= 1e-4 * w.abs().max(), f"seed {seed}: {name} differs at T={frames}"
        head_parameters = {n for n in want_grads if "head" in n or "recent" in n}
        assert head_parameters and got_grads.keys() == want_grads.keys()
        _assert_same_gradients(got_grads, want_grads, f"seed {seed}, T={frames}")
        built.append(_graphs() - before)
    # static for the first shape, dynamic from the second on: the third builds nothing
    assert built[0] > 0 and built[2] == built[1], f"seed {seed}: graphs built after each shape {built}"
    compiled.eval()  # evaluation (and a deep copy streamed in validation) runs the heads eagerly
    with torch.no_grad():
        compiled(*_batch(generator, 2, 24, False)[:2])
    assert _graphs() - before == built[-1]
    assert copy.deepcopy(compiled).compiled_heads and pickle.loads(pickle.dumps(compiled)).compiled_heads


def test_the_training_module_compiles_the_heads_with_its_blocks():
    module = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks=True)
    module.on_fit_start()
    assert module.model.compiled_heads
    graphed = TokenDuplexLightningModule(TokenDuplexModel(CONFIG), compile_blocks=True, cuda_graphs=True)
    graphed.on_fit_start()
    assert graphed.model.compiled_heads
    for module in (
        TokenDuplexLightningModule(TokenDuplexModel(CONFIG)),
        TokenDuplexLightningModule(TokenDuplexModel(CONFIG), cuda_graphs=True),
    ):
        module.on_fit_start()
        assert not module.model.compiled_heads
