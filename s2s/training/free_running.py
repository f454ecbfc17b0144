"""Free-running validation: judge the model as it runs, next to its teacher-forced losses.

Teacher-forced validation loss does not predict what a duplex model does on its own output (a lower
loss gave more missed replies). So every few validations this callback streams a few validation
dialogues through a StreamingSession, the model reading back its own output as deployed, and logs
what `stream_eval` reports: response rate and latency, false take-overs, talk-over, barge-in stop
latency and, with a recognizer, whether the replies said the right words. The checkpoint callback
monitors `free/score` (configs/train.yaml; any `free/...` value would do) so the best checkpoint is
the one that behaves best.

With `state_gains` (model v2) the dialogues are streamed once per user-state gain, all in one
batched session, and the gain whose arm scores best is the operating point of that validation:
`free/*` are its figures, `free/state_gain` the gain, `free/score_at_gain_<g>` every arm's score.
With `gain_score_tolerance` the largest gain scoring within it of the best is chosen instead (arms
the validation cannot tell apart: the one that vetoes replies in pauses hardest).
The gain is kept in the callback's state, so the checkpoint of that validation carries it
(s2s.pretrained reads it back; `stream_eval` uses it unless told a gain). The gain is thus chosen
on the validation split, per run: a model whose head is surer or less sure gets its own.

`history_seconds` bounds how far back the streams attend (s2s/streaming/history.py: a recipe sets
its training window), kept in the state the same way, so the checkpoint is chosen and later judged
streaming with the same history.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import lightning
import torch

from s2s.models.token_sampling import SamplingConfig
from s2s.streaming.cpu_threads import cpu_threads
from s2s.streaming.history import resolve_left_chunks
from s2s.streaming.precision import streaming_dtype
from s2s.streaming.report import free_running_summary
from s2s.streaming.runner import StreamRun, stream_dialogues

log = logging.getLogger(__name__)


class FreeRunningValidation(lightning.Callback):
    """Every `every_n_validations` validations (the first included), stream the first `dialogues`
    validation dialogues (their first `seconds`) and log `free/<metric>` values.

    `precision` "auto" streams a bf16 copy of the model on a GPU (attention through the CuTe
    kernel on Hopper) and fp32 on the CPU. A `recognizer` artifact (scripts/train_recognizer.py)
    adds the reply exact-match; it needs audio, so the vocoder runs only then.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        dialogues: int = 8,
        seconds: float | None = 20.0,
        streams: int = 8,
        precision: str = "auto",
        recognizer: str | None = None,
        window: float = 3.0,
        cpu_threads: int | None = 1,
        sampling: SamplingConfig | dict | None = None,
        state_gains: list[float] | None = None,
        history_seconds: float | None = None,
        gain_score_tolerance: float | None = None,
    ):
        if every_n_validations < 1 or dialogues < 1 or streams < 1:
            raise ValueError(
                "free-running validation needs every_n_validations, dialogues and streams >= 1, got "
                f"{every_n_validations}, {dialogues}, {streams}"
            )
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be > 0 (or null for whole dialogues), got {seconds}")
        self.every = every_n_validations
        self.dialogues = dialogues
        self.seconds = seconds
        self.streams = streams
        self.precision = precision
        self.recognizer_path = recognizer
        self.window = window
        self.cpu_threads = cpu_threads
        self.sampling = (
            sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**dict(sampling or {}))
        )
        if state_gains is not None:
            state_gains = [float(g) for g in state_gains]
            valid = all(math.isfinite(g) and g >= 0 for g in state_gains)
            if not state_gains or not valid or len(set(state_gains)) != len(state_gains):
                raise ValueError(
                    f"state_gains must be a non-empty list of distinct finite gains >= 0 (or null), got "
                    f"{state_gains}"
                )
        self.state_gains = state_gains
        if gain_score_tolerance is not None and not 0 <= float(gain_score_tolerance) < 1:
            raise ValueError(
                f"gain_score_tolerance must be a score difference in [0, 1) (null: the best score's gain), "
                f"got {gain_score_tolerance}"
            )
        # None: the best-scoring gain. A number: the strongest veto (largest gain) among the arms that
        # score within it of the best: one validation event moves the score by ~0.005-0.015, so arms
        # within that are not told apart, and the bar that binds is the take-overs' (docs/results.md)
        self.gain_score_tolerance = None if gain_score_tolerance is None else float(gain_score_tolerance)
        if history_seconds is not None and not 0 < float(history_seconds) < math.inf:
            raise ValueError(
                f"history_seconds must be a finite number of seconds > 0 (null: the model's left_chunks), "
                f"got {history_seconds}"
            )
        # the most history the streams attend to (None: the model's left_chunks); kept with the run so
        # that stream_eval streams its checkpoints as they were chosen (s2s/streaming/history.py)
        self.history_seconds = None if history_seconds is None else float(history_seconds)
        self.state_gain: float | None = None  # the gain the latest validation chose
        self.validations = 0
        self._recognizer = None

    def state_dict(self) -> dict:
        return {
            "validations": self.validations,
            "state_gain": self.state_gain,
            "history_seconds": self.history_seconds,
            # the onset rule the arms streamed with (None: drawn): evaluation decodes the same way
            "onset_quantile": self.sampling.onset_quantile,
            # the head's say over stopping (sampling.stop_gain) the arms streamed with: the same in evaluation
            "stop_gain": self.sampling.stop_gain,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = int(state_dict.get("validations", 0))
        gain = state_dict.get("state_gain")
        self.state_gain = None if gain is None else float(gain)

    def on_validation_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.validations += 1
        if (self.validations - 1) % self.every:
            return
        summary = self.evaluate(trainer, module) if trainer.is_global_zero else None
        summary = trainer.strategy.broadcast(summary, src=0)  # every rank logs (and monitors) the same
        for name, value in summary.items():
            module.log(f"free/{name}", float("nan") if value is None else float(value), sync_dist=False)

    @torch.no_grad()
    def evaluate(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> dict:
        """Stream, score and return the summary. On the CPU with `cpu_threads` torch threads: a
        streaming step is many small operations, which extra threads only slow down (measured on
        a busy 2-core machine: 28 ms per step with one thread, over 1 s with two)."""
        on_cpu = next(module.model.parameters()).device.type == "cpu"
        with cpu_threads(self.cpu_threads if on_cpu else None):
            return self._evaluate(trainer, module)

    def _evaluate(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> dict:
        began = time.perf_counter()
        dataset = trainer.datamodule.datasets["val"]
        model = self._streaming_model(module.model)
        arms = 1 if self.state_gains is None else len(self.state_gains)
        config = model.config
        # at most the history the model was trained with (its left_chunks), whatever the recipe asks
        left_chunks, _ = resolve_left_chunks(
            config.left_chunks, config.chunk / config.frame_rate, None, self.history_seconds
        )
        run = stream_dialogues(
            model,
            dataset,
            indices=range(min(self.dialogues, len(dataset))),
            left_chunks=left_chunks,
            streams=self.streams * arms,
            max_seconds=self.seconds,
            vocoder=self.recognizer_path is not None,
            sampling=self.sampling,
            state_gains=self.state_gains,
        )
        recognizer = self._load_recognizer(model)
        if self.state_gains is None:
            summary = free_running_summary(run, model.config, self.window, recognizer)
        else:
            summary = self._best_gain(run, model.config, recognizer)
        summary["seconds"] = time.perf_counter() - began
        log.info(
            "free-running validation at step %d: %s",
            trainer.global_step,
            ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if v is not None and math.isfinite(v)),
        )
        return summary

    def _best_gain(self, run: StreamRun, config, recognizer) -> dict:
        """The summary of the best-scoring gain's arm (the first of equals, in the listed order),
        with the gain and every arm's score."""
        arms = {}
        for gain in self.state_gains:
            dialogues = [d for d in run.dialogues if d.state_gain == gain]
            arm = StreamRun(dialogues, run.step_seconds)
            arms[gain] = free_running_summary(arm, config, self.window, recognizer)
        best = max(self.state_gains, key=lambda g: _finite(arms[g]["score"]))  # first of equals
        top = _finite(arms[best]["score"])
        if self.gain_score_tolerance is not None and math.isfinite(top):
            best = max(
                g for g in self.state_gains if _finite(arms[g]["score"]) >= top - self.gain_score_tolerance
            )
        summary = dict(arms[best])
        summary["state_gain"] = best
        for gain, figures in arms.items():
            summary[f"score_at_gain_{gain:g}"] = figures["score"]
        self.state_gain = best
        return summary

    def _streaming_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """An eval-mode copy in the streaming precision (the training weights stay untouched)."""
        device = next(model.parameters()).device
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        return copy.deepcopy(model).to(streaming_dtype(precision, device)).eval()

    def _load_recognizer(self, model: torch.nn.Module):
        if self.recognizer_path is None:
            return None
        if self._recognizer is None:
            from s2s.recognizer import load_recognizer

            self._recognizer = load_recognizer(self.recognizer_path, device=next(model.parameters()).device)
        return self._recognizer


def _finite(score: float | None) -> float:
    return -math.inf if score is None or not math.isfinite(score) else score
