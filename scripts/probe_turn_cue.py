"""How separable are pauses inside a user's turn from ends of turn, from the user's audio up to the silence?

    python scripts/probe_turn_cue.py CORPUS [--before 1.0] [--after 0.0] [--pitch] [--speaker]

CORPUS is a corpus root with split folders (train/, val/, test/) of dialogues with s2s manifests.
Probes (s2s/data/turn_cue_classifier.py) are fitted on the train split and score val+test
("held-out"), and/or scored by K-fold cross-validation over the train split's dialogues ("kfold",
for corpora whose held-out splits have few pauses). Prints the counts, the seeds and, per probe and
protocol, ROC AUC, the pause-detection rate when at most 5/10/20% of turn ends are called pauses,
and the false-alarm rate at 95% detection, each with a 95% bootstrap interval. These are probe
figures of the corpus, an upper-bound-style diagnostic for a model's take-over / late-reply trade-off.
`--hardest N` also lists, per held-out probe, the N pauses and N turn ends it confuses most (the share
of the other class it ranks on their wrong side), with dialogue, time, silence, words and user voice:
the rows to set beside `stream_eval`'s take-over and missed-turn rows of the same split.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from s2s.data.manifest import load_manifest
from s2s.data.turn_cue_classifier import (
    ProbeTraining,
    confusable_shares,
    cross_validated_scores,
    held_out_scores,
    probe_figures,
)
from s2s.data.turn_cue_probe import ProbeWindow, collect_examples, split_folders


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", help="corpus root holding the split folders")
    parser.add_argument("--before", type=float, default=1.0, help="seconds of audio up to the onset (W)")
    parser.add_argument(
        "--after", type=float, default=0.0, help="seconds past the onset (a model that waits)"
    )
    parser.add_argument("--pitch", action="store_true", help="add voicing and relative log F0 channels")
    parser.add_argument(
        "--speaker",
        action="store_true",
        help="subtract the mean log-mel of the user's speech so far in the dialogue",
    )
    parser.add_argument("--probes", nargs="+", default=["conv", "logistic"], choices=["conv", "logistic"])
    parser.add_argument("--protocol", choices=["held-out", "kfold", "both"], default="both")
    parser.add_argument("--train-splits", nargs="+", default=["train"])
    parser.add_argument("--eval-splits", nargs="+", default=["val", "test"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=ProbeTraining.epochs)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--hardest", type=int, default=0, help="list the N most confused held-out pauses and turn ends"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    window = ProbeWindow(before=args.before, after=args.after, pitch=args.pitch, speaker=args.speaker)
    started = time.perf_counter()
    train = collect_examples(split_folders(args.corpus, tuple(args.train_splits)), window)
    held = None
    if args.protocol != "kfold":
        held = collect_examples(split_folders(args.corpus, tuple(args.eval_splits)), window)
    print(f"window {window}; features {tuple(train.features.shape[1:])} (frames, channels); "
          f"seed {args.seed}; extracted in {time.perf_counter() - started:.1f} s")  # fmt: skip
    print(f"train ({'+'.join(args.train_splits)}): {_describe(train)}")
    if held is not None:
        print(f"held-out ({'+'.join(args.eval_splits)}): {_describe(held)}")

    rows, manifests = [], None
    protocols = [p for p in ("held-out", "kfold") if args.protocol in (p, "both")]
    for kind in args.probes:
        config = ProbeTraining(kind=kind, seed=args.seed, epochs=args.epochs)
        for protocol in protocols:
            fitted = time.perf_counter()
            if protocol == "held-out":
                scores, labels = held_out_scores(train, held, config), held.labels
            else:
                scores, labels = cross_validated_scores(train, config, args.folds), train.labels
                protocol = f"{args.folds}-fold"
            figures = probe_figures(scores, labels.numpy(), seed=args.seed)
            row = {
                "probe": kind,
                "protocol": protocol,
                **figures.row(),
                "seconds": time.perf_counter() - fitted,
            }
            rows.append(row | {"intervals": figures.intervals, "window": vars(window), "seed": args.seed})
            print(_line(row, figures.intervals))
            if args.hardest > 0 and protocol == "held-out":
                if manifests is None:  # read once, for every held-out probe
                    manifests = _manifests(split_folders(args.corpus, tuple(args.eval_splits)))
                shares = confusable_shares(scores, held.labels.numpy())
                hardest = hardest_onsets(held, scores, shares, manifests, args.hardest)
                groups = confused_by_voice(held, shares, manifests)
                rows[-1] |= {"hardest": hardest, "confused_by_voice": groups}
                print("\n".join(_onset_line(r) for r in hardest))
                for group, n in groups.items():
                    print(
                        f"  {group} voices: {n['pauses_confused']} of {n['pauses']} pauses confused with "
                        f">= {CONFUSED:.0%} of turn ends, {n['turn_ends_confused']} of {n['turn_ends']} "
                        f"turn ends with >= {CONFUSED:.0%} of pauses"
                    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=1)
    return rows


CONFUSED = 0.1  # an onset counts as confused when the probe puts >= this share of the other class past it


def _manifests(folders: list) -> dict:
    """Dialogue id -> its manifest, for the split folders."""
    return {path.stem: load_manifest(path) for folder in folders for path in sorted(folder.glob("*.json"))}


def confused_by_voice(examples, shares: np.ndarray, manifests: dict) -> dict[str, dict[str, int]]:
    """Per user-voice group of the manifests (seen / held-out in training; recordings: unknown): how
    many pauses and turn ends there are and how many of each have a confusable share >= CONFUSED."""
    held_out = {name: m.info.get("user_voice", {}).get("held_out") for name, m in manifests.items()}
    groups: dict[str, dict[str, int]] = {}
    for onset, label, share in zip(examples.onsets, examples.labels.tolist(), shares, strict=True):
        group = {True: "held-out", False: "seen"}.get(held_out.get(onset.dialogue), "unknown")
        kind = "pauses" if label == 1 else "turn_ends"
        counts = groups.setdefault(
            group, {"pauses": 0, "pauses_confused": 0, "turn_ends": 0, "turn_ends_confused": 0}
        )
        counts[kind] += 1
        counts[f"{kind}_confused"] += bool(share >= CONFUSED)
    return dict(sorted(groups.items()))


def hardest_onsets(
    examples, scores: np.ndarray, shares: np.ndarray, manifests: dict, count: int
) -> list[dict]:
    """The `count` pauses and `count` turn ends with the highest confusable share (most confused
    first), each with where it is and who speaks: dialogue, onset time, silence, the turn's words up
    to the onset and after it, and the manifest's user voice."""
    rows = []
    for label, kind in ((1, "pause"), (0, "turn end")):
        chosen = [i for i in np.argsort(-shares, kind="stable") if examples.labels[i] == label][:count]
        for i in chosen:
            onset = examples.onsets[i]
            manifest = manifests[onset.dialogue]
            turn = next(
                s for s in manifest.segments
                if s.speaker == "user" and s.kind == "turn" and s.start_sample <= onset.sample <= s.end_sample
            )  # fmt: skip
            words = [w.text for w in turn.words or ()]
            before = sum(w.end_sample <= onset.sample for w in turn.words or ())
            voice = manifest.info.get("user_voice", {})
            rows.append({
                "kind": kind, "dialogue": onset.dialogue,
                "time_s": round(onset.sample / manifest.sample_rate, 2),
                "silence_s": round(onset.silence / manifest.sample_rate, 2), "share": float(shares[i]),
                "score": float(scores[i]), "words_before": words[:before], "words_after": words[before:],
                "voice": voice.get("name"), "held_out": voice.get("held_out"),
                "pitch_range": voice.get("pitch_range"),
            })  # fmt: skip
    return rows


def _onset_line(row: dict) -> str:
    other = "turn ends" if row["kind"] == "pause" else "pauses"
    words = " ".join(row["words_before"]) + " | " + " ".join(row["words_after"])
    group = {True: "held-out", False: "seen"}.get(row["held_out"], "?")
    return (
        f"  {row['kind']:>8} {row['dialogue']} {row['time_s']:7.2f} s  silence {row['silence_s']:.2f} s  "
        f"confused with {row['share']:.0%} of {other}  [{words}]  {row['voice']} ({group}, pitch range "
        f"{row['pitch_range']})"
    )


def _describe(examples) -> str:
    return f"{examples.counts()} from {len(set(examples.dialogues))} dialogues"


def _line(row: dict, intervals: dict) -> str:
    parts = [f"{row['probe']:>8} {row['protocol']:>8}: {row['pauses']} pauses / {row['turn_ends']} turn ends"]
    for key, value in row.items():
        if key in intervals:
            low, high = intervals[key]
            parts.append(f"{key} {value:.3f} [{low:.2f}, {high:.2f}]")
    return "  ".join(parts) + f"  ({row['seconds']:.0f} s)"


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
