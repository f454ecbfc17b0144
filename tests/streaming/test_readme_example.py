"""The README's "Use a trained model" Python example, run as written: it writes what `python -m
s2s.infer` writes for the same model and recording (the example keeps the padded tail)."""

import re
from pathlib import Path

import soundfile as sf
import torch

from s2s.infer import main as infer
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.pretrained import save_pretrained

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Use a trained model") :]
    section = section[: section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_example_streams_what_infer_writes(tmp_path, monkeypatch, generator):
    seed = int(torch.randint(10**6, (1,), generator=generator))
    torch.manual_seed(seed)
    model = TokenDuplexModel(TokenDuplexConfig(dim=32, heads=2, kv_heads=1, encoder_layers=1,
                                               decoder_layers=1, chunk=2))  # fmt: skip
    save_pretrained(model, tmp_path / "models" / "tiny")
    rate = 22050  # not the model's: both resample
    audio = 0.1 * torch.randn(int(1.3 * rate), generator=generator)  # not a whole number of chunks
    sf.write(tmp_path / "in.wav", audio.numpy(), rate)
    monkeypatch.chdir(tmp_path)

    exec(compile(_example(), str(README), "exec"), {"__name__": "readme_example"})
    assert infer(["in.wav", "out.wav", "model=models/tiny"]) == 0

    reply, reply_rate = sf.read("reply.wav", dtype="float32")
    expected, expected_rate = sf.read("out.wav", dtype="float32")
    frame = model.config.frame_samples
    assert reply_rate == expected_rate == model.config.sample_rate
    assert len(reply) % frame == 0 and 0 <= len(reply) - len(expected) < frame, (
        f"seed {seed}: one padded frame at most"
    )
    # Each file rounds to 16 bits on its own, after float paths that differ by float32 noise (the
    # example resamples inside session.stream, infer while reading; Griffin-Lim amplifies the
    # difference a little): 1 LSB each way, so 2 apart (seen once in 60 seeds: 117 vs 119)
    deviation = abs(reply[: len(expected)] - expected).max() * 32768
    assert deviation <= 3, f"seed {seed}: the same audio up to 16-bit rounding, got {deviation:.0f} LSB apart"
    assert abs(expected).max() > 100 / 32768, f"seed {seed}: near-silence would hide a mismatch"
