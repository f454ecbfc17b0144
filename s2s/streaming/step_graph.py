"""The static engine's step as one CUDA graph, replayed every chunk.

A step of the base model launches ~2,000 kernels from Python; for a few streams the host, not the
GPU, sets the pace (35 ms a step on an H100 for one stream, docs/benchmarks.md). The static engine
reads nothing back from the device inside a step and keeps its caches where they are, so the whole
step can be captured once and replayed: the graph reads the chunk's audio and per-stream values
from fixed input buffers, and writes the carried state (front-end tails, feedback, positions, cache
frame counts) back into the same tensors it read them from. The vocoder stays outside: torch.istft
reads the device to check its window, which a capture refuses; the session runs it after each
replay, its state updated in place.

What changes between steps arrives in those buffers; what changes the graph's shape is settled on
the host before a replay: the session's checks refuse a bad step before anything runs (so a
replayed step is atomic), `reset` writes fresh rows into the carried tensors in place (streams join
and leave without a recapture), and a linear cache that has to grow drops the graph (the next step
captures a new one; a session with `max_history_frames` or `left_chunks` never grows).
"""

from __future__ import annotations

import dataclasses

import torch


def tensor_leaves(value) -> list[torch.Tensor]:
    """Every tensor in `value`, following dataclasses, lists and tuples, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in tensor_leaves(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in tensor_leaves(getattr(value, f.name))]
    return []


def cloned(value):
    """`value` with every tensor in it cloned (dataclasses, lists and tuples rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(cloned(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: cloned(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def _copy_leaves(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """targets[i] <- sources[i], in place (a source that is its target is left as it is)."""
    if len(targets) != len(sources):
        raise RuntimeError(
            f"the carried state changed structure ({len(targets)} tensors before, {len(sources)} after)"
        )
    for target, source in zip(targets, sources, strict=True):
        if source is target:
            continue
        if source.shape != target.shape or source.dtype != target.dtype:
            raise RuntimeError(
                f"a carried tensor changed from {tuple(target.shape)} {target.dtype} to "
                f"{tuple(source.shape)} {source.dtype}; the step cannot be replayed as a graph"
            )
        target.copy_(source)


class StepGraph:
    """One captured step of a static-engine session (`StreamingSession(..., cuda_graph=True)`).

    `carried` are the session's state tensors at capture time: the graph's fixed addresses. The
    session's own objects keep pointing at them between replays (`adopt` copies in whatever a
    host-side change, such as `reset`, put in their place).
    """

    def __init__(self, session, warmup_steps: int = 2):
        self.session = session
        device = session.device
        self.audio = torch.zeros(session.batch, session.chunk_samples, device=device)
        self.values = torch.zeros(3, session.batch, dtype=torch.int64, device=device)
        self.carried_state = session.state
        self.carried = session.carried_tensors()
        self.output = None
        self._capture(warmup_steps)

    def _body(self):
        """The step the graph records: inputs from the buffers, the carried state updated in place."""
        session = self.session
        output = session.step_on_device(self.audio, self.values, vocode=False)  # the session vocodes
        _copy_leaves(self.carried, session.carried_tensors())
        session.bind_carried(self.carried_state, self.carried)
        return output

    def _capture(self, warmup_steps: int) -> None:
        """Warm up on a side stream (lazy initialisation, cuBLAS and cuFFT plans), undo what the warm-up
        stepped (a step writes only cache slots no query sees before it ends, so restoring the carried
        tensors undoes it), then capture."""
        device = self.session.device
        if device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, the session is on {device}")
        self.graph = torch.cuda.CUDAGraph()
        # the step's host values go through one pinned buffer, reused once its last copy is done
        self._host_values = torch.zeros(3, self.session.batch, dtype=torch.int64).pin_memory()
        self._host_values_read = torch.cuda.Event()
        saved = [t.clone() for t in self.carried]
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup_steps):
                    self._body()
                    _copy_leaves(self.carried, saved)
            torch.cuda.current_stream(device).wait_stream(side)
            with torch.cuda.graph(self.graph):
                self.output = self._body()
        finally:  # capture runs nothing; a failed warm-up or capture leaves the session as it was
            self.session.bind_carried(self.carried_state, self.carried)
            _copy_leaves(self.carried, saved)

    def adopt(self) -> None:
        """Copy the session's current state into the graph's tensors and point the session back at
        them (after a host-side change, e.g. `reset`, replaced some)."""
        _copy_leaves(self.carried, self.session.carried_tensors())
        self.session.bind_carried(self.carried_state, self.carried)

    def _load(self, audio: torch.Tensor, host_values: torch.Tensor) -> None:
        """The chunk's audio and (3, B) host values into the buffers the graph reads."""
        self.audio.copy_(audio, non_blocking=True)
        self._host_values_read.synchronize()
        self._host_values.copy_(host_values)
        self.values.copy_(self._host_values, non_blocking=True)
        self._host_values_read.record()

    def _run(self) -> None:
        self.graph.replay()

    def replay(self, audio: torch.Tensor, host_values: torch.Tensor):
        """One step: the chunk's (B, chunk_samples) audio and the (3, B) host values (samples, frames,
        final) into the buffers, one replay, and the outputs cloned (the next replay overwrites the
        graph's own)."""
        self._load(audio, host_values)
        self._run()
        return cloned(self.output)
