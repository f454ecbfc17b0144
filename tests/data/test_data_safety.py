"""Data faults that used to hang or fail with raw errors: a killed synthesis worker, an unwritable
corpus folder, JSON lists where objects belong, a truncated wav, and the task group of train.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tiny_corpus import tiny_config

from s2s.data.audio import AudioError, load_audio
from s2s.data.corpus import CorpusError, generate_corpus, read_record
from s2s.data.datamodule import DuplexDataModule
from s2s.data.dataset import DialogueDataset
from s2s.data.manifest import ManifestError, load_manifest
from s2s.data.tasks import say_in_german

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_killed_synthesis_worker_fails_make_data_at_once_and_a_rerun_resumes(tmp_path):
    out_dir = tmp_path / "corpus"
    command = [
        sys.executable, str(ROOT / "scripts" / "make_data.py"), f"corpus.out_dir={out_dir}", "workers=2",
        "corpus.hours.train=0.06", "corpus.hours.val=0", "corpus.hours.test=0", "progress=false",
        "corpus.timing.seconds=[20.0,21.0]", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]  # fmt: skip
    make = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(_children(make.pid)) < 2 and make.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        workers = _children(make.pid)
        assert len(workers) == 2, "make_data.py ended before its workers could be seen"
        time.sleep(0.3)  # let them start on dialogues
        os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer would
        killed_at = time.time()
        _, stderr = make.communicate(timeout=60)  # before: waited forever for the lost dialogue
    finally:
        if make.poll() is None:
            make.kill()
            make.wait()
    assert time.time() - killed_at < 20
    assert make.returncode != 0
    assert "a synthesis worker died while making" in stderr and "re-run the same command to resume" in stderr
    assert "train_000" in stderr.split("while making")[1][:60], "the message names the dialogue"
    assert not read_record(out_dir)["complete"]

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert read_record(out_dir)["complete"]
    made = read_record(out_dir)["splits"]["train"]["dialogues"]
    assert len(list((out_dir / "train").glob("*.json"))) == made and made >= 8


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create: under a read-only folder, or under /sys for root."""
    if os.geteuid() == 0:
        return Path("/sys/s2s-test-corpus")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "corpus"


def test_an_unwritable_corpus_folder_is_named_with_the_fix(tmp_path):
    root = _unwritable(tmp_path)
    with pytest.raises(CorpusError, match=r"cannot write the corpus into .*data\.root=.*corpus\.out_dir="):
        generate_corpus(tiny_config(root), say_in_german(), progress=False)
    data = DuplexDataModule(root=root, corpus=tiny_config(root), num_workers=0)
    with pytest.raises(CorpusError, match=rf"cannot write the corpus into {root}"):
        data.prepare_data()


def test_json_lists_where_objects_belong_are_named(tmp_path, tiny_corpus):
    (tmp_path / "corpus.json").write_text("[1, 2]")
    with pytest.raises(CorpusError, match=r"corpus\.json holds a JSON list, not an s2s corpus record"):
        read_record(tmp_path)
    manifest = tmp_path / "a.json"
    manifest.write_text('[{"format": "s2s-dialogue/1"}]')
    with pytest.raises(ManifestError, match=r"a\.json holds a JSON list, not a dialogue manifest"):
        load_manifest(manifest)


def test_a_truncated_wav_is_named_not_its_manifest(tmp_path, tiny_corpus):
    folder = tmp_path / "val"
    shutil.copytree(tiny_corpus.out_dir / "val", folder)
    wav = sorted(folder.glob("*.wav"))[0]
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(AudioError, match=rf"{wav.name} is truncated: its header promises \d+ samples"):
        DialogueDataset(folder)
    with pytest.raises(AudioError, match="is truncated"):
        load_audio(wav)
    whole = soundfile.info(str(tiny_corpus.out_dir / "val" / wav.name)).frames
    assert whole > soundfile.info(str(wav)).frames  # what libsndfile reads silently: half the dialogue


def test_a_short_read_is_an_error_not_silence(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros((16000, 2), dtype=np.float32), 16000)
    real_read = soundfile.read
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: (real_read(*a, **k)[0][:100], 16000))
    with pytest.raises(AudioError, match=r"ended after 100 of the 8000 samples"):
        load_audio(path, start=0, frames=8000)


def _train_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_train_takes_a_task_for_the_corpus_it_synthesizes(tmp_path, tiny_corpus):
    cfg = _train_config("task=echo", f"data.root={tmp_path / 'echo'}")
    data = instantiate(cfg.data)
    assert data.task.name == "echo"
    assert instantiate(_train_config().data).task is None  # no task: whatever data.root holds

    # a corpus of another task in data.root is refused (read only), not trained on
    other = DuplexDataModule(root=tiny_corpus.out_dir, task=data.task, num_workers=0)
    with pytest.raises(CorpusError, match=r"holds the corpus of task 'say_in_german', but this run asks"):
        other.prepare_data()

    # an empty data.root gets the task's corpus
    data.corpus = tiny_config(data.root, hours={"train": 0.006, "val": 0.006, "test": 0.0})
    data.prepare_data()
    manifest = json.loads(next((tmp_path / "echo" / "train").glob("*.json")).read_text())
    assert manifest["task"] == "echo"


def test_model_v2_on_recordings_without_labels_is_refused_with_the_v1_baseline_named(tmp_path, tiny_corpus):
    """data=folder trains model v2 on token targets: a folder without manifests (or without the task
    in corpus.json) is refused at setup with both ways out; experiment=v1_baseline trains on it."""
    root = tmp_path / "recordings"
    for split in ("train", "val"):
        shutil.copytree(tiny_corpus.out_dir / split, root / split)
    small = ["data=folder", f"data.root={root}", "data.num_workers=0", "data.max_seconds=4"]

    with pytest.raises(
        CorpusError, match=r"corpus\.json does not name one.*experiment=v1_baseline.*manifest"
    ):
        instantiate(_train_config(*small).data).setup("fit")

    shutil.copy(tiny_corpus.out_dir / "corpus.json", root / "corpus.json")
    instantiate(_train_config(*small).data).setup("fit")  # labelled, with the task: model v2 trains
    unlabelled = sorted((root / "train").glob("*.json"))[1]
    unlabelled.unlink()
    count = len(list((root / "train").glob("*.wav")))
    folder = re.escape(str(root / "train"))
    with pytest.raises(
        CorpusError,
        match=rf"1 of the {count} dialogues in {folder} have none \(e.g. {unlabelled.stem}\.wav\)"
        r".*experiment=v1_baseline.*manifest",
    ):
        instantiate(_train_config(*small).data).setup("fit")

    baseline = instantiate(_train_config(*small, "experiment=v1_baseline").data)
    baseline.setup("fit")
    batch = next(iter(baseline.train_dataloader()))
    assert batch.system_tokens is None and batch.user_audio.shape[1] == 4 * 16000
