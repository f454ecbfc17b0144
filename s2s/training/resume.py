"""Where a launch stands in its run directory, decided before anything there is written.

A launch either starts the run, resumes it from `checkpoints/last.ckpt`, or stops: when its
max_steps is already reached (nothing to do), when the checkpoint cannot be read (the error names
an intact checkpoint to resume from, if the run has one), or when the requested model is not the
one the run trained (the error names the differing fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from s2s.training.checkpoints import RESUME_FIX, CheckpointError, load_checkpoint, resume_checkpoint
from s2s.training.csv_metrics import ROWS_KEY

# How attention is computed (sdpa on a CPU, cute on Hopper), not what the model is: may change on resume.
RUNTIME_MODEL_FIELDS = ("attention_backend",)


class ResumeMismatchError(RuntimeError):
    """The run's checkpoint holds another model than the one this launch asks for."""


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    global_step: int
    model_config: dict  # hyper_parameters["model"] of the checkpoint ({} when it has none)
    metrics_rows: int | None  # rows csv/metrics.csv held when the checkpoint was written (None: unknown)
    best_checkpoint: Path | None


def find_resume_point(run_dir: str | Path) -> ResumePoint | None:
    """The run's last checkpoint, read safely; None when the run has none yet."""
    last = resume_checkpoint(run_dir)
    if last is None:
        return None
    try:
        state = load_checkpoint(last, fix=RESUME_FIX)
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_intact_alternative(last)}") from error
    best = None
    for name, callback_state in (state.get("callbacks") or {}).items():
        if (
            "Checkpoint" in str(name)
            and isinstance(callback_state, dict)
            and callback_state.get("best_model_path")
        ):
            best = Path(callback_state["best_model_path"])
    return ResumePoint(
        checkpoint=last,
        global_step=int(state["global_step"]),
        model_config=dict((state.get("hyper_parameters") or {}).get("model") or {}),
        metrics_rows=state.get(ROWS_KEY),
        best_checkpoint=best if best is not None and best.is_file() else None,
    )


def check_same_model(point: ResumePoint, requested: dict, run_dir: str | Path) -> None:
    """Refuse to resume `point` with a model config that differs in anything but runtime fields."""
    differences = [
        (key, point.model_config[key], requested[key])
        for key in point.model_config
        if key in requested
        and key not in RUNTIME_MODEL_FIELDS
        and _plain(point.model_config[key]) != _plain(requested[key])
    ]
    if not differences:
        return
    stored = ", ".join(f"{key}={old!r}" for key, old, _ in differences)
    wanted = ", ".join(f"{key}={new!r}" for key, _, new in differences)
    raise ResumeMismatchError(
        f"cannot resume {run_dir}: its checkpoint (global step {point.global_step}) holds a model with "
        f"{stored}, but this launch asks for {wanted}. Nothing was changed. Either launch with the run's "
        f"own model settings (see {Path(run_dir) / 'config.yaml'}), or train the new model as a separate "
        "run with run_name=<another name> (or resume=false to train this run directory from scratch)"
    )


def max_steps_reached(point: ResumePoint, max_steps: int) -> bool:
    return max_steps >= 0 and point.global_step >= max_steps


def _intact_alternative(broken: Path) -> str:
    """A sentence naming the newest other checkpoint of the run that reads back, or ''."""
    candidates = []
    for path in broken.parent.glob("*.ckpt"):
        if path == broken:
            continue
        try:
            candidates.append((int(load_checkpoint(path)["global_step"]), path))
        except CheckpointError:
            continue
    if not candidates:
        return ""
    step, path = max(candidates)
    return (
        f". This run has an intact checkpoint at global step {step}: {path}; to resume from it, "
        f"`cp {path} {broken}` and re-run the same command"
    )


def _plain(value):
    """Lists and tuples compare equal (a config may hold either)."""
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value
