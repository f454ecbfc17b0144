"""`session.stream(waveform, sample_rate)` equals the session stepped by hand on the waveform padded to
whole frames (every frame written, the tail kept), and `python -m s2s.infer` writes the audio and the
timeline a recording calls for."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from s2s.data.audio import AudioError, resample
from s2s.data.tasks import say_in_german
from s2s.data.tokens import BOS
from s2s.infer import main
from s2s.models.config import DuplexConfig
from s2s.models.duplex import DuplexModel
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.models.token_sampling import SamplingConfig
from s2s.pretrained import save_pretrained
from s2s.streaming.session import StreamingSession
from s2s.streaming.token_session import TokenStreamingSession

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"dim": 32, "heads": 2, "kv_heads": 1, "encoder_layers": 1, "decoder_layers": 1}
FRAME = 640


def _model(version: str, seed: int):
    torch.manual_seed(seed)
    if version == "v1":
        return DuplexModel(DuplexConfig(**SIZES)).eval()
    model = TokenDuplexModel(TokenDuplexConfig(**SIZES)).eval()
    with torch.no_grad():  # an untrained model barely opens replies; make BOS likely
        model.token_head.bias[BOS] += 3.0
    return model


def _session(model, batch: int = 1, chunk: int = 2):
    if isinstance(model, TokenDuplexModel):
        return TokenStreamingSession(
            model, batch=batch, chunk=chunk, sampling=SamplingConfig(temperature=1.0, state_gain=0.0)
        )
    return StreamingSession(model, batch=batch, chunk=chunk)


def _by_hand(session, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """The waveform (B, samples) padded with silence to whole frames, stepped chunk by chunk."""
    padded = torch.nn.functional.pad(audio, (0, -audio.shape[1] % FRAME))
    size, outs = session.chunk_samples, []
    for start in range(0, padded.shape[1], size):
        piece = padded[:, start : start + size]
        lengths = torch.full((audio.shape[0],), piece.shape[1])
        piece = torch.nn.functional.pad(piece, (0, size - piece.shape[1]))
        outs.append(session.step(piece, lengths=lengths, final=start + size >= padded.shape[1]))
    frames = padded.shape[1] // FRAME
    result = {
        "mel": torch.cat([o.mel for o in outs], 1)[:, : 4 * frames],
        "speaking": torch.cat([o.speaking for o in outs], 1)[:, :frames],
        "audio": torch.cat([o.audio for o in outs], 1)[:, : frames * FRAME],
    }
    if isinstance(session, TokenStreamingSession):
        result["tokens"] = torch.cat([o.raw.feedback for o in outs], 1)[:, :frames]
    return result


def _streamed(session, waveform, sample_rate) -> tuple[dict[str, torch.Tensor], list]:
    chunks = list(session.stream(waveform, sample_rate))
    names = ["mel", "speaking", "audio"] + (["tokens"] if chunks[0].tokens is not None else [])
    return {name: torch.cat([getattr(c, name) for c in chunks], 1) for name in names}, chunks


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_stream_equals_the_session_stepped_by_hand_and_keeps_the_tail(version, generator):
    seed = int(torch.randint(10**6, (1,), generator=generator))
    model = _model(version, seed)
    samples = 3 * 1280 + FRAME + 100  # three chunks of 2 frames, one frame, and a 100-sample tail
    audio = 0.1 * torch.randn(2, samples, generator=generator)
    expected = _by_hand(_session(model, batch=2), audio)
    session = _session(model, batch=2)
    got, chunks = _streamed(session, audio, 16000)
    assert [c.start_frame for c in chunks] == [0, 2, 4, 6] and [c.frames for c in chunks] == [2, 2, 2, 2]
    assert [c.padded_samples for c in chunks] == [0, 0, 0, FRAME - 100]
    assert got["speaking"].shape[1] == math.ceil(samples / FRAME) == 8, f"seed {seed}: the tail is a frame"
    for name, value in expected.items():
        assert torch.equal(value, got[name]), f"seed {seed}: stream() and the steps by hand differ in {name}"
    again, _ = _streamed(session, audio, 16000)  # the session starts over
    assert all(torch.equal(again[name], got[name]) for name in got), f"seed {seed}"
    one, _ = _streamed(_session(model), audio[0], 16000)  # (samples,) for a one-stream session
    if version == "v1":  # model v2's sampling is seeded per stream: stream 0 of the batch is the same
        error = (one["mel"] - got["mel"][:1]).abs().max()  # a batch of one rounds differently
        assert error < 1e-4, f"seed {seed}: {error}"
    else:
        assert torch.equal(one["tokens"], got["tokens"][:1]), f"seed {seed}"


def test_stream_resamples_to_the_models_rate(generator):
    model = _model("v1", 5)
    audio = 0.1 * torch.randn(8000 + 123, generator=generator)  # 8 kHz
    got, _ = _streamed(_session(model), audio, 8000)
    expected, _ = _streamed(_session(model), resample(audio, 8000, 16000), 16000)
    assert got["speaking"].shape[1] == math.ceil(16246 / FRAME)
    assert all(torch.equal(got[name], expected[name]) for name in got)


def test_stream_refuses_what_it_cannot_stream():
    session = _session(_model("v1", 6))
    with pytest.raises(ValueError, match=r"a stereo recording\? pick the user's channel"):
        session.stream(torch.zeros(2, 1600), 16000)
    with pytest.raises(TypeError, match="float tensor"):
        session.stream(torch.zeros(1600, dtype=torch.int16), 16000)
    with pytest.raises(AudioError, match="empty"):
        session.stream(torch.zeros(0), 16000)
    with pytest.raises(AudioError, match="sample_rate must be a positive"):
        session.stream(torch.zeros(1600), 0)
    with pytest.raises(AudioError, match="NaN"):
        session.stream(torch.full((1600,), float("nan")), 16000)


def _write(path: Path, audio: np.ndarray, rate: int) -> Path:
    soundfile.write(str(path), audio.T if audio.ndim == 2 else audio, rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return save_pretrained(
        _model("v2", 7), tmp_path_factory.mktemp("model") / "v2", task=say_in_german().describe()
    )


def test_infer_writes_the_system_audio_and_the_timeline(artifact, tmp_path):
    rate = 22050
    samples = int(1.3 * rate) + 77
    rng = np.random.default_rng(0)
    user = (0.1 * rng.standard_normal(samples)).astype(np.float32)
    mono = _write(tmp_path / "user.wav", user, rate)
    threads = torch.get_num_threads()
    # state_gain=0: the untrained user-state head would veto the biased BOS at random
    args = [str(mono), str(tmp_path / "out.wav"), f"model={artifact}", "chunk=2", "threads=1", "state_gain=0"]
    assert main(args) == 0
    assert torch.get_num_threads() == threads, "the caller's thread count is restored"
    at_model_rate = resample(torch.from_numpy(user)[None], rate, 16000).shape[1]
    frames = math.ceil(at_model_rate / FRAME)
    out, out_rate = soundfile.read(tmp_path / "out.wav")
    assert out_rate == 16000 and out.ndim == 1 and len(out) == at_model_rate, "cut to the input's length"
    timeline = json.loads((tmp_path / "out.json").read_text())
    assert timeline["frames"] == frames == len(timeline["speaking"]) == len(timeline["tokens"])
    assert timeline["padded_samples"] == frames * FRAME - at_model_rate
    assert timeline["input_sample_rate"] == rate and timeline["chunk_frames"] == 2
    assert timeline["token_names"][0] in ("<pad>", "<bos>") and len(timeline["token_names"]) == frames
    assert timeline["replies"], "the biased model opens a reply: the timeline lists it"
    assert timeline["replies"][0]["start"] == round(timeline["tokens"].index(BOS) * 0.04, 3)
    speaking = np.asarray(timeline["speaking"])
    for span in timeline["speaking_segments"]:
        assert speaking[round(span["start"] / 0.04) : round(span["end"] / 0.04)].min() >= 0.5

    # The user on channel 1 of a stereo file, user | system out: the same stream.
    stereo = _write(tmp_path / "dialogue.wav", np.stack([0.5 * user, user]), rate)
    assert main([str(stereo), str(tmp_path / "two.wav"), f"model={artifact}", "chunk=2"]) == 1
    arguments = [str(stereo), str(tmp_path / "two.wav"), f"model={artifact}", "chunk=2", "channel=1"]
    arguments.append("state_gain=0")  # as the mono run above
    assert main([*arguments, "stereo_out=true"]) == 0
    two, _ = soundfile.read(tmp_path / "two.wav")
    assert two.shape == (at_model_rate, 2)
    np.testing.assert_array_equal(two[:, 1], out)
    again = json.loads((tmp_path / "two.json").read_text())
    assert again["tokens"] == timeline["tokens"] and again["channel"] == 1


def test_infer_refuses_bad_input_with_the_fix(artifact, tmp_path, capsys):
    wav = _write(tmp_path / "in.wav", np.zeros(3200, np.float32), 16000)
    cases = [
        ([str(tmp_path / "missing.wav"), str(tmp_path / "o.wav"), f"model={artifact}"], "does not exist"),
        ([str(wav), str(tmp_path / "o.wav"), f"model={tmp_path / 'nomodel'}"], "train one"),
        ([str(wav), str(tmp_path / "o.mp3"), f"model={artifact}"], "must be a .wav path"),
        ([str(wav), str(wav), f"model={artifact}"], "would overwrite the input"),
        ([str(wav), str(tmp_path / "o.wav"), f"model={artifact}", "channel=3"], "channel=3 does not exist"),
        ([str(wav), str(tmp_path / "o.wav"), f"model={artifact}", "chunk=0"], "chunk must be >= 1"),
        ([str(wav), str(tmp_path / "o.wav"), f"model={artifact}", "threads=0"], "threads must be >= 1"),
        ([str(wav), str(tmp_path / "o.wav"), "modle=x"], "unknown option 'modle'"),
        ([str(wav)], "expected an input and an output wav"),
    ]
    for arguments, message in cases:
        assert main(arguments) == 1, arguments
        assert message in capsys.readouterr().err, (arguments, message)
    assert not (tmp_path / "o.wav").exists()


def test_the_infer_command_runs_as_a_module(tmp_path):
    model = save_pretrained(_model("v1", 8), tmp_path / "v1")
    wav = _write(
        tmp_path / "in.wav", 0.1 * np.random.default_rng(1).standard_normal(5000).astype(np.float32), 16000
    )
    command = [sys.executable, "-m", "s2s.infer", str(wav), str(tmp_path / "out.wav"), f"model={model}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(8 frames)" in result.stdout
    assert len(soundfile.read(tmp_path / "out.wav")[0]) == 5000
    timeline = json.loads((tmp_path / "out.json").read_text())
    assert timeline["tokens"] is None and len(timeline["speaking"]) == 8 and timeline["padded_samples"] == 120


def test_infer_streams_with_the_gain_the_run_chose_unless_given_one(tmp_path):
    """An artifact whose training chose a state gain on validation: infer uses it by default, a
    given state_gain wins, and the timeline records the gain it streamed with."""
    chosen = save_pretrained(
        _model("v2", 8), tmp_path / "chosen", task=say_in_german().describe(),
        training={"checkpoint": "x.ckpt", "global_step": 1, "state_gain": 1.5},
    )  # fmt: skip
    user = _write(tmp_path / "user.wav", np.zeros(16000, np.float32), 16000)
    assert main([str(user), str(tmp_path / "a.wav"), f"model={chosen}", "threads=1"]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["sampling"]["state_gain"] == 1.5
    assert main([str(user), str(tmp_path / "b.wav"), f"model={chosen}", "threads=1", "state_gain=0"]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["sampling"]["state_gain"] == 0.0


def test_infer_decodes_onsets_as_the_run_was_validated_unless_told(tmp_path):
    """An artifact validated with onset_quantile 0.5: infer decides onsets at 0.5 by default,
    onset_quantile=0.3 or =drawn win, and a bad value is refused by name."""
    validated = save_pretrained(
        _model("v2", 8), tmp_path / "validated", task=say_in_german().describe(),
        training={"checkpoint": "x.ckpt", "global_step": 1, "onset_quantile": 0.5},
    )  # fmt: skip
    user = _write(tmp_path / "user.wav", np.zeros(16000, np.float32), 16000)
    for name, extra, want in (
        ("a", [], 0.5),
        ("b", ["onset_quantile=0.3"], 0.3),
        ("c", ["onset_quantile=drawn"], None),
    ):
        args = [str(user), str(tmp_path / f"{name}.wav"), f"model={validated}", "threads=1", *extra]
        assert main(args) == 0, extra
        assert json.loads((tmp_path / f"{name}.json").read_text())["sampling"]["onset_quantile"] == want, (
            extra
        )
    assert main([str(user), str(tmp_path / "d.wav"), f"model={validated}", "onset_quantile=1.5"]) == 1


def test_history_seconds_bounds_the_sessions_caches():
    """history_seconds=S streams with the left_chunks that spans S at the streaming chunk, for both
    models; the model's own left_chunks otherwise; a history <= 0 is refused before anything loads."""
    from s2s.infer import InferOptions, OptionError, _session

    token_model = TokenDuplexModel(
        TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1)
    )
    v1_model = DuplexModel(
        DuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, left_chunks=7)
    )
    for model in (token_model, v1_model):
        chunk_seconds = model.config.chunk * model.config.frame_samples / model.config.sample_rate
        assert _session(model, InferOptions()).left_chunks == model.config.left_chunks
        bounded = _session(model, InferOptions(history_seconds=40 * chunk_seconds))
        assert bounded.left_chunks == 39
        halved = _session(
            model, InferOptions(history_seconds=40 * chunk_seconds, chunk=model.config.chunk * 2)
        )
        assert halved.left_chunks == 19  # the same seconds in chunks twice as long
        assert _session(model, InferOptions(history_seconds=math.inf)).left_chunks is None
    with pytest.raises(OptionError, match="history_seconds must be > 0"):
        InferOptions(history_seconds=0.0)


def test_infer_streams_with_the_validated_history_but_never_past_the_models_own(tmp_path, monkeypatch):
    """An artifact validated with 40 s of history: infer streams an unbounded model with 40 s, a
    model trained with left_chunks 3 with its 3 (the validation streamed it so too), and a given
    history_seconds as given."""
    import s2s.infer as infer_module

    seen = []
    original = infer_module._session

    def recording(model, options, validated_history=None):
        session = original(model, options, validated_history)
        seen.append(session.left_chunks)
        return session

    monkeypatch.setattr(infer_module, "_session", recording)
    user = _write(tmp_path / "user.wav", np.zeros(16000, np.float32), 16000)
    training = {"checkpoint": "x.ckpt", "global_step": 1, "history_seconds": 40.0}
    for name, left_chunks, extra in (
        ("open", None, []),
        ("bounded", 3, []),
        ("given", 3, ["history_seconds=2.0"]),
    ):
        model = _model("v2", 8)
        model.config = dataclasses.replace(model.config, left_chunks=left_chunks)
        path = save_pretrained(model, tmp_path / name, task=say_in_german().describe(), training=training)
        assert main([str(user), str(tmp_path / f"{name}.wav"), f"model={path}", "threads=1", *extra]) == 0
        chunk_seconds = model.config.chunk / model.config.frame_rate
        expected = {
            "open": math.floor(40.0 / chunk_seconds + 1e-9) - 1,
            "bounded": 3,
            "given": math.floor(2.0 / chunk_seconds + 1e-9) - 1,
        }[name]
        assert seen[-1] == expected, (name, seen[-1], expected)
