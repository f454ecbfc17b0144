"""The judged figures split by user voice: each dialogue in the group its manifest names, the
groups' figures those of their own dialogues, unlabelled dialogues in neither."""

from types import SimpleNamespace

import torch

import s2s.streaming.by_voice as by_voice


def _dialogue(name: str, held_out) -> SimpleNamespace:
    voice = {} if held_out is None else {"user_voice": {"name": "x", "held_out": held_out}}
    return SimpleNamespace(name=name, manifest=SimpleNamespace(info=voice))


def test_groups_follow_the_manifests_and_figures_come_from_their_own_dialogues(monkeypatch, generator):
    seed = generator.initial_seed()
    held = [bool(x) for x in torch.randint(0, 2, (12,), generator=generator).tolist()]
    held[0], held[1] = True, False  # both groups present
    dialogues = [_dialogue(f"d{i}", h) for i, h in enumerate(held)] + [_dialogue("unlabelled", None)]
    dialogues.append(SimpleNamespace(name="no_manifest", manifest=None))
    seen_calls = []

    def fake_turn_taking(members, config, window, sources):
        names = [m.name for m in members]
        seen_calls.append(names)
        return {"probability": {
            "turns": 10 * len(members), "missed_response_rate": 0.1, "pauses": len(members),
            "false_takeovers_per_pause": 1.0 / len(members),
        }}  # fmt: skip

    monkeypatch.setattr(by_voice, "turn_taking", fake_turn_taking)
    replies = [
        {"dialogue": f"d{i}", "cut_off": i % 3 == 0, "exact": i % 2 == 0} for i in range(len(held))
    ] + [{"dialogue": "unlabelled", "cut_off": False, "exact": True}]
    split = by_voice.by_user_voice(dialogues, None, 3.0, {"replies": replies})
    want = {
        "held_out": [f"d{i}" for i, h in enumerate(held) if h],
        "seen": [f"d{i}" for i, h in enumerate(held) if not h],
    }
    assert sorted(seen_calls) == sorted(want.values()), f"seed {seed}"
    for group, names in want.items():
        figures = split[group]
        assert figures["dialogues"] == len(names) and figures["turns"] == 10 * len(names), seed
        complete = [i for i, h in enumerate(held) if f"d{i}" in names and i % 3 != 0]
        assert figures["complete_replies"] == len(complete), seed
        assert figures["exact_replies"] == sum(i % 2 == 0 for i in complete), seed
    rows = by_voice.by_voice_rows(split)
    assert any(r.startswith("| held-out |") for r in rows) and any(r.startswith("| seen |") for r in rows)
    assert by_voice.by_user_voice([dialogues[-1], dialogues[-2]], None, 3.0) == {}
    assert by_voice.by_voice_rows({}) == []
