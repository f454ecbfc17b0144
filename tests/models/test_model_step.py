"""DuplexModel.step: the layers' own code, one chunk at a time against a DuplexState, gives the
offline pass's frames; an idle stream's state is left as it was."""

import pytest
import torch

from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel, shift_by_chunk

CONFIG = DuplexConfig(dim=64, heads=4, kv_heads=2, encoder_layers=2, decoder_layers=2)


@pytest.mark.parametrize("engine", ["static", "packed"])
@pytest.mark.parametrize("left_chunks", [None, 1])
def test_stepping_the_model_equals_its_offline_pass(engine, left_chunks, generator):
    seed = generator.initial_seed()
    torch.manual_seed(seed)
    model = DuplexModel(CONFIG).eval()
    batch, chunk, chunks, r = 2, 2, 5, CONFIG.mel_per_frame
    frames = chunk * chunks
    mel = 3 * torch.randn(batch, frames * r, CONFIG.n_mels, generator=generator) - 6
    feedback = torch.randn(batch, frames, CONFIG.feedback_dim, generator=generator)
    with torch.no_grad():
        offline = model(mel, feedback, chunk=chunk, left_chunks=left_chunks)
        decoder_in = model.feedback_in(shift_by_chunk(feedback, chunk))
        state = model.initial_state(batch, chunk, left_chunks, engine=engine, capacity_frames=frames)
        counts, final = torch.full((batch,), chunk), torch.zeros(batch, dtype=torch.bool)
        hidden = []
        for n in range(chunks):
            part = slice(n * chunk, (n + 1) * chunk)
            features = mel[:, n * chunk * r : (n + 1) * chunk * r]
            out, _, state = model.step(state, features, counts, final, decoder_in[:, part])
            hidden.append(out)
        streamed = model.heads(torch.cat(hidden, dim=1))
    assert state.positions.tolist() == [frames] * batch
    error = (streamed.mel - offline.mel).abs().max().item()
    assert error <= 1e-4, f"seed {seed}: streamed mel off by {error:.2e}"


def test_an_idle_stream_keeps_its_state(generator):
    torch.manual_seed(generator.initial_seed())
    model = DuplexModel(CONFIG).eval()
    chunk, r = 2, CONFIG.mel_per_frame
    state = model.initial_state(2, chunk, None, capacity_frames=8)
    features = torch.randn(2, chunk * r, CONFIG.n_mels, generator=generator)
    decoder_in = torch.randn(2, chunk, CONFIG.dim, generator=generator)
    final = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        _, _, state = model.step(state, features, torch.tensor([chunk, chunk]), final, decoder_in)
        _, _, after = model.step(state, features, torch.tensor([chunk, 0]), final, decoder_in)
    assert after.positions.tolist() == [2 * chunk, chunk]
    assert torch.equal(after.front_end.mix[1], state.front_end.mix[1])
    assert not torch.equal(after.front_end.mix[0], state.front_end.mix[0])
    assert after.caches is state.caches  # written in place
