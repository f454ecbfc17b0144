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
