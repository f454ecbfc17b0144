"""scripts/probe_turn_cue.py on the tiny corpus: the counts it reports are the manifests' and the
figures it writes are the ROC figures of the probe it names, both protocols."""

import json


def test_probe_reports_counts_and_figures_of_both_protocols(load_script, tiny_corpus, tmp_path, capsys):
    script = load_script("probe_turn_cue")
    out = tmp_path / "figures.json"
    rows = script.main(
        [
            str(tiny_corpus.out_dir),
            "--probes",
            "logistic",
            "--before",
            "0.5",
            "--folds",
            "2",
            "--json",
            str(out),
        ]
    )
    pauses = turn_ends = 0
    for path in (tiny_corpus.out_dir / "train").glob("*.json"):
        for s in json.loads(path.read_text())["segments"]:
            pauses += s["speaker"] == "user" and s["kind"] == "pause"
            turn_ends += s["speaker"] == "user" and s["kind"] == "turn"
    assert [r["protocol"] for r in rows] == ["held-out", "2-fold"]
    assert (rows[1]["pauses"], rows[1]["turn_ends"]) == (pauses, turn_ends)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
    for row in rows:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["fa@detect95"] <= 1.0
        assert row["detect@fa5"] <= row["detect@fa10"] <= row["detect@fa20"]
    assert "seed 0" in capsys.readouterr().out


def test_probe_lists_the_hardest_held_out_onsets_from_the_manifests(load_script, tiny_corpus, capsys):
    """--hardest N: N pauses then N turn ends of the held-out splits, most confused first, each with
    its manifest's words around the onset and user voice."""
    script = load_script("probe_turn_cue")
    rows = script.main(
        [
            str(tiny_corpus.out_dir),
            "--probes",
            "logistic",
            "--protocol",
            "held-out",
            "--before",
            "0.5",
            "--hardest",
            "2",
        ]
    )
    hardest = rows[0]["hardest"]
    kinds = [r["kind"] for r in hardest]
    assert kinds == ["pause"] * kinds.count("pause") + ["turn end"] * kinds.count("turn end")
    assert 1 <= kinds.count("pause") <= 2 and kinds.count("turn end") == 2
    for kind in ("pause", "turn end"):
        shares = [r["share"] for r in hardest if r["kind"] == kind]
        assert shares == sorted(shares, reverse=True)
    for row in hardest:
        split = row["dialogue"].split("_")[0]
        record = json.loads((tiny_corpus.out_dir / split / f"{row['dialogue']}.json").read_text())
        rate = record["sample_rate"]
        turn = next(
            s for s in record["segments"]
            if s["speaker"] == "user" and s["kind"] == "turn"
            and s["start_sample"] <= row["time_s"] * rate + 1 and row["time_s"] * rate - 1 <= s["end_sample"]
        )  # fmt: skip
        assert " ".join(row["words_before"] + row["words_after"]) == turn["text"]
        assert row["voice"] == record["user_voice"]["name"]
        if row["kind"] == "turn end":
            assert row["words_after"] == []
    out = capsys.readouterr().out
    assert out.count(" s  confused with ") == len(hardest)
    # the voice groups count every held-out onset once (the tiny corpus: val seen, test held out)
    groups = rows[0]["confused_by_voice"]
    pauses = turn_ends = 0
    for split in ("val", "test"):
        for path in (tiny_corpus.out_dir / split).glob("*.json"):
            segments = [s for s in json.loads(path.read_text())["segments"] if s["speaker"] == "user"]
            pauses += sum(s["kind"] == "pause" for s in segments)
            turn_ends += sum(s["kind"] == "turn" for s in segments)
    assert sum(g["pauses"] for g in groups.values()) == pauses
    assert sum(g["turn_ends"] for g in groups.values()) == turn_ends
    shares_listed = [r for r in hardest if r["share"] >= 0.1]
    for kind, key in (("pause", "pauses_confused"), ("turn end", "turn_ends_confused")):
        listed = sum(r["kind"] == kind for r in shares_listed)
        assert sum(g[key] for g in groups.values()) >= listed  # every listed confused one is counted
    assert out.count(" voices: ") == len(groups)
