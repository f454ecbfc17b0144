"""The README.md of a model artifact: what the model is, what it was trained on, how it streams.

Generated from the artifact's own records (config, task, recipe, commit, stream_eval figures), so
the card cannot disagree with the files beside it; a figure that was not measured says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

STREAM_EVAL_KEYS = ("duplex", "compute", "quality", "streaming_vs_offline_max_abs", "dialogues")


def model_card(model_class: str, config: Mapping, parameters: int, provenance) -> str:
    """Markdown for a model of `model_class` with `config`; `provenance` is s2s.pretrained.Provenance."""
    version = (
        "model v2 (sampled tokens)" if model_class == "TokenDuplexModel" else "model v1 (mel regression)"
    )
    frame_ms = 1000 * config["hop"] * config["mel_per_frame"] / config["sample_rate"]
    lines = [
        f"# s2s {model_class}",
        "",
        f"A full-duplex speech-to-speech model, {version}: {parameters:,} parameters, "
        f"{config['sample_rate']} Hz audio, {frame_ms:.0f} ms model frames, streamed in chunks of "
        f"{config['chunk']} frame(s) ({config['chunk'] * frame_ms:.0f} ms).",
        "",
        "## Use",
        "",
        "```",
        "python -m s2s.infer in.wav out.wav model=THIS_DIRECTORY",
        "```",
        "",
        "```python",
        "from s2s.pretrained import load_pretrained",
        "model = load_pretrained('THIS_DIRECTORY')",
        "```",
        "",
        "## Trained on",
        "",
        *_training(provenance),
        "",
        "## Streaming evaluation",
        "",
        *_figures(provenance.metrics),
        "",
        "## Config",
        "",
        "| field | value |",
        "| --- | --- |",
        *(f"| {name} | {json.dumps(value)} |" for name, value in config.items()),
        "",
    ]
    return "\n".join(lines)


def _training(provenance) -> list[str]:
    task, recipe, training, commit = (
        provenance.task,
        provenance.recipe,
        provenance.training,
        provenance.commit,
    )
    lines = []
    if task is not None:
        fields = ", ".join(
            f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in task.items() if k not in ("name", "class")
        )
        lines.append(f"- task: **{task.get('name', '?')}** ({task.get('class', '?')}; {fields})")
    else:
        lines.append(
            "- task: unknown (no corpus record was found when the artifact was written; export with "
            "corpus=DATA_DIR to record it)"
        )
    if provenance.vocabularies is not None:
        for speaker, vocabulary in provenance.vocabularies.items():
            lines.append(
                f"- {speaker} tokens: {vocabulary.size} (PAD, BOS, EOS, {' '.join(vocabulary.words)})"
            )
    data = (recipe or {}).get("data") or {}
    if data:
        corpus = data.get("corpus") or {}
        hours = corpus.get("hours")
        lines.append(
            f"- data: {data.get('root', '?')} (corpus seed {corpus.get('seed', '?')}, hours "
            f"{json.dumps(hours)}, windows of {data.get('max_seconds', '?')} s)"
        )
    trainer = (recipe or {}).get("trainer") or {}
    if trainer:
        lines.append(
            f"- trainer: max_steps {trainer.get('max_steps', '?')}, precision {trainer.get('precision', '?')}"
        )
    if training:
        step = training.get("global_step")
        lines.append(f"- from checkpoint {training.get('checkpoint', '?')} at global step {step}")
        trained_by = training.get("commit")
        if trained_by:
            dirty = " with uncommitted changes" if trained_by.get("dirty") else ""
            lines.append(f"- trained by s2s at commit {trained_by.get('commit')}{dirty}")
        elif "commit" in training:
            lines.append("- trained by s2s at an unrecorded commit (no git checkout, or an old checkpoint)")
    if recipe is None:
        lines.append("- recipe: not recorded (recipe.json holds none)")
    else:
        lines.append("- recipe: the resolved training config is in recipe.json")
    if commit is not None:
        dirty = " with uncommitted changes" if commit.get("dirty") else ""
        lines.append(f"- written by s2s at commit {commit.get('commit')}{dirty}")
    return lines


def _figures(metrics: Mapping | None) -> list[str]:
    if metrics is None:
        return ["Not measured: export with metrics=<stream_eval run>/metrics.json to show its figures here."]
    if all(key in metrics for key in STREAM_EVAL_KEYS):
        from s2s.streaming.evaluate import markdown_table

        source = f"{metrics.get('dialogues')} dialogues of {metrics.get('data', '?')}"
        try:
            return [f"From `scripts/stream_eval.py` on {source}:", "", markdown_table(dict(metrics)).rstrip()]
        except (KeyError, TypeError, ValueError):
            pass  # another version's metrics.json: every figure as it is below
    rows = ["| metric | value |", "| --- | --- |"]
    for key, value in _leaves(metrics):
        rows.append(f"| {key} | {value} |")
    return rows


def _leaves(values: Mapping, prefix: str = ""):
    """(dotted key, value) of every number or string in nested `values` (lists are left out)."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{name}.")
        elif isinstance(value, int | float | str) or value is None:
            yield name, value
