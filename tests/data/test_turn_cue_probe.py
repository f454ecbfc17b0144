"""The turn-cue probe: onsets exactly as the manifests list them, causal windows, and ROC figures
equal to brute-force references."""

import json

import numpy as np
import pytest
import torch

from s2s.data.audio import load_audio
from s2s.data.features import LogMel
from s2s.data.manifest import Manifest, Segment
from s2s.data.turn_cue_classifier import (
    ProbeTraining,
    confusable_shares,
    cross_validated_scores,
    probe_figures,
)
from s2s.data.turn_cue_probe import (
    PAUSE,
    TURN_END,
    ProbeExamples,
    ProbeWindow,
    SilenceOnset,
    collect_examples,
    silence_onsets,
)
from s2s.streaming.detection import RocPoints, roc_auc

SPLITS = ("train", "val", "test")


def _manifest_onsets(root) -> dict[tuple[str, int], int]:
    """Straight from the JSON: user pause starts (1) and user turn ends (0)."""
    onsets = {}
    for split in SPLITS:
        for path in sorted((root / split).glob("*.json")):
            record = json.loads(path.read_text())
            for s in record["segments"]:
                if s["speaker"] == "user" and s["kind"] == "pause":
                    onsets[(record["id"], s["start_sample"])] = PAUSE
                if s["speaker"] == "user" and s["kind"] == "turn":
                    onsets[(record["id"], s["end_sample"])] = TURN_END
    return onsets


def test_examples_are_the_manifests_pauses_and_turn_ends(tiny_corpus):
    root = tiny_corpus.out_dir
    examples = collect_examples([root / s for s in SPLITS], ProbeWindow(before=0.5))
    expected = _manifest_onsets(root)
    found = {(o.dialogue, o.sample): o.label for o in examples.onsets}
    assert found == expected
    assert len(examples.onsets) == len(expected), "an onset was collected twice"
    assert examples.labels.tolist() == [o.label for o in examples.onsets]
    assert 0 < sum(expected.values()) < len(expected), "the tiny corpus should have pauses and turn ends"
    assert examples.features.shape == (len(expected), 50, 80)

    # Causal: the window's last frame is the last log-mel frame of the user's audio cut at the onset.
    for index in (0, len(examples.onsets) // 2, len(examples.onsets) - 1):
        onset = examples.onsets[index]
        split = onset.dialogue.split("_")[0]
        audio, _ = load_audio(root / split / f"{onset.dialogue}.wav")
        cut = LogMel()(audio[0:1, : onset.sample])[0]
        torch.testing.assert_close(examples.features[index, -1], cut[-1])
        torch.testing.assert_close(examples.features[index, -50:], cut[-50:])


def test_waiting_skips_onsets_the_user_breaks_and_looks_past_the_onset(tiny_corpus):
    root = tiny_corpus.out_dir
    examples = collect_examples([root / "train"], ProbeWindow(before=0.5, after=0.3, pitch=True))
    short = [o for o in examples.onsets if o.silence < 0.3 * 16000]
    assert not short
    assert examples.features.shape[1:] == (80, 82)
    total = sum(1 for (d, _) in _manifest_onsets(root) if d.startswith("train"))
    assert len(examples.onsets) + examples.skipped == total


def test_speaker_calibration_subtracts_the_mean_of_the_speech_before_the_onset(tiny_corpus):
    folder = tiny_corpus.out_dir / "val"
    plain = collect_examples([folder], ProbeWindow(before=0.5, after=0.1))
    calibrated = collect_examples([folder], ProbeWindow(before=0.5, after=0.1, speaker=True))
    index = len(plain.onsets) - 1
    onset = plain.onsets[index]
    record = json.loads((folder / f"{onset.dialogue}.json").read_text())
    audio, _ = load_audio(folder / f"{onset.dialogue}.wav")
    mel = LogMel()(audio[0:1])[0]
    speech = np.zeros(len(mel), dtype=bool)
    for kind, value in (("turn", True), ("barge-in", True), ("pause", False)):
        for s in record["segments"]:
            if s["speaker"] == "user" and s["kind"] == kind:
                speech[s["start_sample"] // 160 : s["end_sample"] // 160] = value
    speech[onset.sample // 160 :] = False
    mean = mel[torch.from_numpy(speech)].mean(dim=0)
    torch.testing.assert_close(calibrated.features[index], plain.features[index] - mean, atol=1e-4, rtol=0)


def test_onsets_of_a_constructed_manifest_carry_the_silence_that_follows():
    def seg(speaker, kind, start, end, text=""):
        return Segment(speaker, kind, start, end, text, 0, 16000)

    manifest = Manifest("d", 16000, 20000, (
        seg("user", "turn", 100, 5000, "one two"), seg("user", "pause", 2000, 3000),
        seg("system", "reply", 5200, 7000, "eins zwei"), seg("user", "barge-in", 5100, 6000, "stop"),
        seg("user", "turn", 9000, 20000, "three"),
    ))  # fmt: skip
    assert silence_onsets(manifest) == [
        SilenceOnset("d", 2000, PAUSE, 1000),
        SilenceOnset("d", 5000, TURN_END, 100),  # the barge-in breaks the silence 100 samples later
        SilenceOnset("d", 20000, TURN_END, 0),  # the dialogue ends with the turn
    ]


def _brute_force(positives, negatives, false_alarm, detection):
    """Every threshold (each score, and +inf), scanned in a Python loop."""
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in positives for n in negatives])
    points = [
        ((positives >= t).mean(), (negatives >= t).mean())
        for t in [*np.concatenate([positives, negatives]), np.inf]
    ]
    detect = max(d for d, f in points if f <= false_alarm)
    alarm = min(f for d, f in points if d >= detection)
    return auc, detect, alarm


@pytest.mark.parametrize("trial", range(4))
def test_roc_figures_equal_a_brute_force_reference(trial):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    positives = np.round(rng.normal(1.0, 1.0, rng.integers(1, 60)), 1)  # rounding makes ties
    negatives = np.round(rng.normal(0.0, 1.0, rng.integers(1, 200)), 1)
    roc = RocPoints.of(positives, negatives)
    for false_alarm, detection in ((0.05, 0.95), (0.1, 0.5), (0.2, 0.9), (0.0, 1.0)):
        auc, detect, alarm = _brute_force(positives, negatives, false_alarm, detection)
        assert roc_auc(positives, negatives) == pytest.approx(auc, abs=1e-12), f"seed {seed}"
        assert roc.detection_at(false_alarm) == pytest.approx(detect, abs=1e-12), (
            f"seed {seed} fa {false_alarm}"
        )
        assert roc.false_alarm_at(detection) == pytest.approx(alarm, abs=1e-12), (
            f"seed {seed} det {detection}"
        )


@pytest.mark.parametrize("trial", range(3))
def test_confusable_shares_equal_a_pairwise_count(trial):
    """Each pause's share of turn ends scoring >= it and each turn end's share of pauses scoring <= it,
    against an explicit count over all pairs (ties included: rounded scores)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.r_[np.ones(rng.integers(1, 40)), np.zeros(rng.integers(1, 120))].astype(int))
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)
    shares = confusable_shares(scores, labels)
    pauses, ends = scores[labels == 1], scores[labels == 0]
    for score, label, share in zip(scores, labels, shares, strict=True):
        count = (
            sum(e >= score for e in ends) / len(ends)
            if label == 1
            else sum(p <= score for p in pauses) / len(pauses)
        )
        assert share == pytest.approx(count, abs=1e-12), f"seed {seed}"
    with pytest.raises(ValueError, match="pauses and turn ends"):
        confusable_shares(scores[labels == 1], labels[labels == 1])


def test_probe_figures_report_the_point_estimate_inside_its_interval():
    rng = np.random.default_rng(7)
    labels = np.r_[np.ones(80), np.zeros(300)].astype(int)
    scores = rng.normal(labels * 1.5, 1.0)
    figures = probe_figures(scores, labels, seed=3, resamples=200)
    assert (figures.pauses, figures.turn_ends) == (80, 300)
    assert figures.auc == pytest.approx(roc_auc(scores[labels == 1], scores[labels == 0]))
    for key, value in figures.row().items():
        if key in figures.intervals:
            low, high = figures.intervals[key]
            assert low - 1e-9 <= value <= high + 1e-9, key


def _separable(count: int, seed: int) -> ProbeExamples:
    """Pauses end with a rising ramp in channel 0, turn ends with a falling one, under noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    ramp = torch.linspace(-1, 1, 20)
    features = torch.randn(count, 20, 3, generator=g)
    features[:, :, 0] += 2 * torch.where(labels[:, None] == 1, ramp, -ramp)
    names = tuple(f"d{i // 4}" for i in range(count))
    return ProbeExamples(features, labels, names, tuple(range(count)), 0)


@pytest.mark.parametrize("kind", ["logistic", "conv"])
def test_probes_separate_a_planted_cue_across_dialogue_folds(kind):
    torch.set_num_threads(1)
    examples = _separable(160, seed=11)
    scores = cross_validated_scores(examples, ProbeTraining(kind=kind, seed=5, epochs=15), folds=4)
    labels = examples.labels.numpy()
    assert roc_auc(scores[labels == 1], scores[labels == 0]) > 0.95
