"""Channel roles: a folder of bare stereo wavs is refused until something says which channel is the
user; the setting swaps the roles; the synthetic corpus (its corpus.json and manifests say it) reads
as before; a setting that contradicts the data is refused."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from s2s.data.channels import ChannelError, ChannelRoles
from s2s.data.datamodule import DuplexDataModule
from s2s.data.dataset import DialogueDataset
from s2s.data.manifest import ManifestError, load_manifest

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000


def _moshi_like_call(folder: Path, generator: torch.Generator) -> np.ndarray:
    """2 s: the left channel (the system, as moshi-finetune records it) speaks 1.0-2.0 s, the right
    channel (the user) 0.25-0.75 s."""
    folder.mkdir(parents=True)
    audio = np.zeros((2 * RATE, 2), dtype=np.float32)
    audio[RATE:, 0] = 0.3 * torch.randn(RATE, generator=generator).numpy()
    audio[RATE // 4 : 3 * RATE // 4, 1] = 0.3 * torch.randn(RATE // 2, generator=generator).numpy()
    soundfile.write(folder / "call.wav", audio, RATE, subtype="FLOAT")
    return audio


def test_bare_stereo_wavs_are_refused_with_the_fix_named(tmp_path, generator):
    _moshi_like_call(tmp_path / "calls" / "train", generator)
    _moshi_like_call(tmp_path / "calls" / "val", generator)
    fix = re.escape("data.channels={user: 0, system: 1}") + r".*" + re.escape("{user: 1, system: 0}")
    with pytest.raises(ChannelError, match=rf"nothing says which channel .*{fix}"):
        DialogueDataset(tmp_path / "calls" / "train")
    data = DuplexDataModule(root=tmp_path / "calls", generate_if_missing=False, num_workers=0)
    with pytest.raises(ChannelError, match=fix):
        data.setup("fit")


def test_the_setting_puts_each_channel_in_its_role(tmp_path, generator):
    audio = _moshi_like_call(tmp_path / "train", generator)
    swapped = DialogueDataset(tmp_path / "train", channels={"user": 1, "system": 0})
    item = swapped[0]
    assert torch.equal(item["user"], torch.from_numpy(audio[:, 1]))
    assert torch.equal(item["system"], torch.from_numpy(audio[:, 0]))
    user, system = item["user_speaking"], item["system_speaking"]  # 10 ms frames, from energy
    assert user[27:73].all() and not user[:23].any() and not user[77:].any()
    assert system[102:].all() and not system[:98].any()
    as_is = DialogueDataset(tmp_path / "train", channels=ChannelRoles(user=0, system=1))[0]
    assert torch.equal(as_is["user"], item["system"]) and torch.equal(as_is["user_speaking"], system)


def test_the_synthetic_corpus_says_its_roles_and_a_contradiction_is_refused(tmp_path, tiny_corpus):
    record = json.loads((tiny_corpus.out_dir / "corpus.json").read_text())
    assert record["channels"] == ["user", "system"]
    plain = DialogueDataset(tiny_corpus.out_dir / "val")
    assert plain.roles == ChannelRoles(0, 1)
    same = DialogueDataset(tiny_corpus.out_dir / "val", channels={"user": 0, "system": 1})
    torch.testing.assert_close(same[0]["user"], plain[0]["user"], rtol=0, atol=0)
    with pytest.raises(
        ChannelError, match=r"contradicts .*corpus\.json, which records \{user: 0, system: 1\}"
    ):
        DialogueDataset(tiny_corpus.out_dir / "val", channels={"user": 1, "system": 0})

    # without corpus.json the s2s manifests say it (they record "channels": ["user", "system"])
    shutil.copytree(tiny_corpus.out_dir / "val", tmp_path / "copy" / "val")
    assert DialogueDataset(tmp_path / "copy" / "val").roles == ChannelRoles(0, 1)
    with pytest.raises(
        ChannelError, match=r"contradicts the s2s manifests in .*val \(e\.g\. val_00000\.json\)"
    ):
        DialogueDataset(tmp_path / "copy" / "val", channels={"user": 1, "system": 0})

    # a manifest that records another order is refused rather than read as s2s's
    manifest = tmp_path / "copy" / "val" / "val_00000.json"
    changed = json.loads(manifest.read_text())
    changed["channels"] = ["system", "user"]
    manifest.write_text(json.dumps(changed))
    with pytest.raises(ManifestError, match=r"records channels \['system', 'user'\].*re-write the wav"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"user": 0, "system": 0}, r"channels 0 and 1, one each"),
        ({"user": 0}, r"must name exactly 'user' and 'system'"),
        ({"user": 2, "system": 0}, r"channels 0 and 1, one each"),
        ("left", r"must be \{user: <0 or 1>, system: <0 or 1>\}"),
    ],
)
def test_malformed_settings_are_named(value, message):
    with pytest.raises(ChannelError, match=message):
        ChannelRoles.parse(value)


def test_the_folder_config_takes_channels_from_the_command_line(tmp_path, generator):
    _moshi_like_call(tmp_path / "calls" / "train", generator)
    _moshi_like_call(tmp_path / "calls" / "val", generator)
    overrides = [
        "data=folder", f"data.root={tmp_path / 'calls'}", "data.num_workers=0", "data.max_seconds=1",
        "data.token_targets=false", "data.channels={user: 1, system: 0}",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    data = instantiate(cfg.data)
    assert data.channels == ChannelRoles(user=1, system=0)
    data.setup("fit")
    assert data.datasets["train"].roles == ChannelRoles(user=1, system=0)
    assert ChannelRoles.parse(["system", "user"]) == ChannelRoles(user=1, system=0)
    assert ChannelRoles(user=1, system=0).names == ["system", "user"]
