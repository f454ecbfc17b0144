"""CUDA graphs of the encoder's and the decoder's blocks in training: each step replays a captured
forward and backward graph per stack instead of launching every kernel of every block from Python.

The base model's training step on an H200 is host-bound: two thirds of it no kernel runs while the
host dispatches ~3,000 operators a forward, nearly all of them inside the blocks (docs/benchmarks.md).
A graph replays the same kernels on the same buffers, so what changes from step to step must arrive
in tensors: the frames, the per-sequence chunk sizes and which frames are padding. What would need
the host inside the stacks is settled before a replay, on the host: the stacks take a graph only for
a batch without padding or whose padding no real query sees (every length a multiple of its chunk:
data.crop_multiple_frames), where attention runs unpacked (s2s.models.packing.AlignedLayout).
Anything else runs eagerly, as it would without graphs.

One graph pair is captured per batch shape (torch.cuda.make_graphed_callables: warm-up on a side
stream, then capture) and replayed whenever that shape returns; data.static_shapes gives a run a
single shape. Autocast's weight cache is off while capturing: a cast cached in warm-up would freeze
the weights of that moment into the graph.

Measured on an H200 (docs/benchmarks.md): the graphs took the host out of the step, which left it
bound by elementwise kernels; with `compiled` (module.compile_blocks) each capture compiles its
blocks first, and the graph replays Inductor's fused kernels: 114 ms (eager, packed) -> 81 ms.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from s2s.attention.spec import ChunkSpec, SequenceChunks
from s2s.models.attention_context import OfflineAttention
from s2s.models.config import DuplexConfig
from s2s.models.layers import Rotation
from s2s.models.packing import AlignedLayout, PackedLayout, PackedRows, runs_unpacked
from s2s.models.row_packing import RowPacking, cute_runs_packed_rows


class EncoderBlocks(nn.Module):
    """The encoder's blocks as one callable of tensors (what a graph captures): over a padded batch
    (B, T) whose `frames` input is the (B, T) valid mask, or, with `max_seqlen`, over packed rows
    (1, N) whose `frames` input is the (B + 2,) offsets of s2s.models.row_packing."""

    def __init__(
        self,
        blocks: nn.ModuleList,
        config: DuplexConfig,
        max_seqlen: int | None = None,
        dynamic_rows: bool = False,
    ):
        super().__init__()
        self.blocks = blocks
        self.config = config
        self.max_seqlen = max_seqlen
        self.dynamic_rows = dynamic_rows  # blocks compiled for any row count (compiled_for_packed_rows)

    @property
    def left_chunks(self) -> int | None:
        return self.config.left_chunks

    def forward(self, x, positions, chunks: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        rotation, attention = self.block_inputs(positions, chunks, frames)
        self.mark_rows_dynamic(rotation.cos, rotation.sin)
        for block in self.blocks:
            self.mark_rows_dynamic(x)
            x = block(x, rotation, attention)
        return x

    def mark_rows_dynamic(self, *frames: torch.Tensor) -> None:
        """With `dynamic_rows`, mark dimension 1 (the packed row count N) of every frame tensor a
        compiled block takes dynamic (the stack's inputs once, each block's output as it comes),
        so that one compile serves every row bucket; `maybe_`: where a trace needs N as a
        constant after all, the block compiles static instead of failing."""
        if self.dynamic_rows:
            for tensor in frames:
                torch._dynamo.maybe_mark_dynamic(tensor, 1)

    def block_inputs(
        self, positions: torch.Tensor, chunks: torch.Tensor, frames: torch.Tensor
    ) -> tuple[Rotation, OfflineAttention]:
        """The rotation of the positions, and the attention context (spec and layout) of the
        (4, B) chunk table and the frames (valid mask or packed offsets), reading none of them on
        the host."""
        rotation = Rotation.at(positions, self.config.head_dim, self.config.rope_base)
        spec = ChunkSpec.from_resolved(SequenceChunks(*chunks.unbind(0), left_chunks=self.left_chunks))
        layout = AlignedLayout(frames) if self.max_seqlen is None else PackedRows(frames, self.max_seqlen)
        return rotation, OfflineAttention(spec, layout, self.config.attention_backend)


class DecoderBlocks(EncoderBlocks):
    """The decoder's blocks as one callable of tensors; self- and cross-attention share the spec."""

    def forward(self, x, positions, encoded, chunks: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        rotation, attention = self.block_inputs(positions, chunks, frames)
        self.mark_rows_dynamic(rotation.cos, rotation.sin, encoded)
        for block in self.blocks:
            self.mark_rows_dynamic(x)
            x = block(x, rotation, encoded, attention, attention)
        return x


@dataclass(frozen=True)
class GraphKey:
    """What a captured graph is fixed to: shapes, dtypes, autocast and the history limit."""

    input_shapes: tuple[tuple[int, ...], ...]  # every input's: packed rows of one N hold any B
    dtype: torch.dtype
    encoded: tuple[torch.dtype, bool] | None  # the encoder output's dtype and requires_grad
    autocast: torch.dtype | None
    left_chunks: int | None
    max_seqlen: int | None  # packed rows: the bound on a sequence's length (None: a padded batch)

    @property
    def shape(self) -> tuple[int, ...]:
        """The frames' shape: (B, T, D) padded, (1, N, D) packed rows."""
        return self.input_shapes[0]


def chunk_table(chunks: SequenceChunks) -> torch.Tensor:
    """(4, B) int64 on the device: chunk_q, chunk_k, q_offset, k_offset of each sequence."""
    return torch.stack([chunks.chunk_q, chunks.chunk_k, chunks.q_offset, chunks.k_offset])


def training_call(x: torch.Tensor, blocks: EncoderBlocks) -> bool:
    """A training step's call: gradients on a CUDA device, the blocks in training mode."""
    return x.is_cuda and blocks.blocks.training and torch.is_grad_enabled() and x.requires_grad


def graphable(x: torch.Tensor, blocks: EncoderBlocks, spec: ChunkSpec, layout, packs_rows: bool) -> bool:
    """Whether this call can replay a graph: a training call, with rows packed or unpacked."""
    return training_call(x, blocks) and (packs_rows or runs_unpacked(spec, layout))


class GraphedBlocks:
    """Replays `blocks` (an EncoderBlocks or DecoderBlocks) as CUDA graphs, one pair per batch shape,
    at most `max_shapes` of them (a run with more shapes runs the rest eagerly, with a warning).

    `row_bucket` (frames): a padded batch's valid frames run packed into one row of a multiple of
    that many frames (s2s.models.row_packing), where attention runs on the CuTe kernels; None, or
    another backend: the padded batch as it is."""

    def __init__(
        self,
        blocks: EncoderBlocks,
        max_shapes: int = 4,
        warmup_steps: int = 3,
        compiled: bool = False,
        row_bucket: int | None = None,
    ):
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be at least 1, got {max_shapes}")
        if row_bucket is not None and row_bucket < 1:
            raise ValueError(f"row_bucket must be a positive number of frames or None, got {row_bucket}")
        self.blocks = blocks
        self.compiled = compiled
        self.row_bucket = row_bucket
        self.max_shapes = max_shapes
        self.warmup_steps = warmup_steps
        self.graphs: dict[GraphKey, nn.Module] = {}
        self._row_blocks: nn.ModuleList | None = None  # compiled once for every row bucket
        self._pool = None  # one CUDA graph memory pool for every shape of this stack (_capture)
        self.replays = 0
        self._warned = False
        self.failure: str | None = None  # why capturing failed: the run goes on eagerly

    def __reduce__(self):
        """A copy of the model (the free-running validation streams a deep copy) or a pickled one has
        no graphs and runs eagerly: the graphs replay on this model's own buffers."""
        return (_no_graphs, ())

    def __call__(self, x, positions, spec: ChunkSpec, layout, encoded=None) -> torch.Tensor | None:
        """The stack's output through a graph, or None where this call must run eagerly."""
        if self.failure is not None or spec.left_chunks != self.blocks.left_chunks:
            return None
        packing = self._row_packing(x, layout)
        if not graphable(x, self.blocks, spec, layout, packing is not None):
            return None
        batch, frames = x.shape[:2]
        table = chunk_table(spec.resolve(batch, x.device))
        if packing is not None:
            x, positions, table = packing.gather(x), packing.gather(positions), packing.chunk_table(table)
            encoded = None if encoded is None else packing.gather(encoded)
            rows = packing.rows.cu_seqlens
        elif layout is None:
            rows = torch.ones(batch, frames, dtype=torch.bool, device=x.device)
        else:
            rows = layout.valid
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        inputs = (x, positions, table, rows) if encoded is None else (x, positions, encoded, table, rows)
        key = GraphKey(
            tuple(tuple(t.shape) for t in inputs), x.dtype,
            None if encoded is None else (encoded.dtype, encoded.requires_grad),
            autocast, spec.left_chunks, None if packing is None else packing.rows.max_seqlen,
        )  # fmt: skip
        graphed = self.graphs.get(key)
        if graphed is None:
            if len(self.graphs) >= self.max_shapes:
                if not self._warned:
                    warnings.warn(
                        f"CUDA graphs: {self.max_shapes} batch shapes captured already; batches of "
                        f"other shapes (this one {tuple(x.shape)}) run eagerly (data.static_shapes "
                        "gives a run one shape)",
                        stacklevel=2,
                    )
                    self._warned = True
                return None
            try:
                graphed = self._capture(inputs, autocast, key.max_seqlen)
            except Exception as error:  # any failure to capture leaves the run on the eager path
                first_line = str(error).splitlines()[0] if str(error) else ""
                self.failure = f"{type(error).__name__}: {first_line}"
                stack = type(self.blocks).__name__
                warnings.warn(
                    f"CUDA graphs are off for the rest of this run: capturing the {stack} for "
                    f"{tuple(x.shape)} failed ({self.failure}); the steps run eagerly",
                    stacklevel=2,
                )
                return None
            self.graphs[key] = graphed
        self.replays += 1
        out = graphed(*inputs)
        return out if packing is None else packing.scatter(out, batch)

    def _row_packing(self, x: torch.Tensor, layout) -> RowPacking | None:
        """How this call's frames pack into rows, or None where the padded batch runs as it is:
        no row bucket, no padding, no host lengths (PackedLayout), or attention not on the CuTe
        kernels (the operator's other backward is the dense formula: memory grows with N^2); and
        None for a call that takes no graph anyway (evaluation), before anything is gathered."""
        if self.row_bucket is None or not isinstance(layout, PackedLayout) or not layout.has_padding:
            return None
        if not training_call(x, self.blocks):
            return None
        if not cute_runs_packed_rows(self.blocks.config.attention_backend, x.device):
            return None
        return RowPacking.of(layout, self.row_bucket)

    def _capture(
        self, inputs: tuple[torch.Tensor, ...], autocast: torch.dtype | None, max_seqlen: int | None
    ) -> nn.Module:
        """Warm up and capture a fresh wrapper of the same blocks (make_graphed_callables patches the
        module it is given, so each shape gets its own) on copies of this call's inputs.

        Every shape of this stack captures into one memory pool: a step replays one shape's forward
        and then its backward, and nothing a graph writes outlives its own step, so the activations
        one shape saves for its backward may sit where another shape's do (a freed block is reused
        only on the stream that freed it: every capture runs on one stream, capture_settings).
        Each capture in a pool and on a stream of its own held every shape's activations at once:
        experiment=base_gpu with packed rows, whose batches span several row buckets, ran out of an
        H100's 80 GB (65 GB in graph pools, stop 56). The encoder and decoder keep separate pools:
        the decoder's graphs run while the encoder's activations wait for its backward."""
        samples = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        if self.compiled and max_seqlen is not None:
            if self._row_blocks is None:
                self._row_blocks = compiled_for_packed_rows(self.blocks.blocks)
            wrapper = type(self.blocks)(self._row_blocks, self.blocks.config, max_seqlen, dynamic_rows=True)
        else:
            wrapper = stack_for_capture(self.blocks, self.compiled, max_seqlen)
        dtype = autocast or torch.bfloat16
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with (
            torch.autocast("cuda", dtype=dtype, enabled=autocast is not None, cache_enabled=False),
            rng_restored_on_failure(samples[0].device),
            capture_settings() as capture_mode,
        ):
            return torch.cuda.make_graphed_callables(
                wrapper, samples, num_warmup_iters=self.warmup_steps, pool=self._pool, **capture_mode
            )


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}  # device index -> the stream every capture runs on


def capture_stream() -> torch.cuda.Stream:
    """The process's one capture stream on the current device (capture_settings)."""
    index = torch.cuda.current_device()
    if index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[index] = torch.cuda.Stream(index)
    return _CAPTURE_STREAMS[index]


@contextlib.contextmanager
def capture_settings():
    """While open, every capture `torch.cuda.graph` makes (make_graphed_callables builds its
    captures with it) runs in thread-local mode and on one stream a device; yields the keyword
    arguments for make_graphed_callables.

    Thread-local mode: in the default global mode any CUDA call another thread makes while a
    capture runs (the DataLoader's pin-memory thread pinning the next batch) invalidates the
    capture. Whether it hit depended on timing: a run whose kernels and Inductor code came from the
    disk caches reached its first capture while the loader was still pinning, and failed (H200,
    torch 2.11, 2026-12-05). Inductor's own CUDA graphs (torch/_inductor/cudagraph_trees.py) capture
    in this mode too. make_graphed_callables takes the mode since pytorch PR 188832 (July 2026; torch
    2.11 lacks it); without it, the mode is the patched class's default. An explicit mode wins.

    One stream: make_graphed_callables captures on a stream it makes for each call, and the caching
    allocator reuses a block freed in a graph memory pool only on the stream that freed it, so the
    shapes of a stack (a call each) never reused each other's memory in the pool they share
    (GraphedBlocks._capture): packed rows ran out of an H100's 80 GB with 65 GB in graph pools (stop
    56). Every capture here runs on `capture_stream()` instead, whatever stream it is handed, as
    torch.cuda.graph's own default stream did before. One capture runs at a time in a process."""
    keywords = {}
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
        keywords["capture_error_mode"] = "thread_local"
    torch_graph, module_graph = torch.cuda.graph, torch.cuda.graphs.graph

    class OneStreamThreadLocalGraph(torch_graph):
        def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="thread_local", **rest):
            super().__init__(
                cuda_graph, pool=pool, stream=capture_stream(), capture_error_mode=capture_error_mode, **rest
            )

    torch.cuda.graph = torch.cuda.graphs.graph = OneStreamThreadLocalGraph
    try:
        yield keywords
    finally:
        torch.cuda.graph, torch.cuda.graphs.graph = torch_graph, module_graph


@contextlib.contextmanager
def rng_restored_on_failure(device: torch.device):
    """If a capture fails, put back the CUDA generator's state from before it: a failed capture leaves
    the default generator marked as capturing, and every later dropout on the eager path then fails
    ("Offset increment outside graph capture encountered unexpectedly")."""
    if device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    saved = torch.Generator(device=generator.device)
    saved.set_state(generator.get_state())
    try:
        yield
    except BaseException:
        generator.graphsafe_set_state(saved.graphsafe_get_state())
        raise


def _no_graphs() -> None:
    return None


def stack_for_capture(stack: EncoderBlocks, compiled: bool, max_seqlen: int | None = None) -> EncoderBlocks:
    """A fresh wrapper of the same blocks for one capture. `compiled`: each block torch.compile'd
    whole for this shape (fullgraph, static: attention inside as the s2s::chunk_attention operator,
    s2s.attention.custom_op), in the wrapper only, so the model's own blocks stay eager for every
    call that takes no graph (packed batches, validation, streaming) and nothing else recompiles.
    Compiled stacks on packed rows share one compile instead (`compiled_for_packed_rows`)."""
    blocks = stack.blocks
    if compiled:
        blocks = nn.ModuleList([torch.compile(block, fullgraph=True, dynamic=False) for block in blocks])
    return type(stack)(blocks, stack.config, max_seqlen)


def compiled_for_packed_rows(blocks: nn.ModuleList) -> nn.ModuleList:
    """The blocks compiled once for packed rows of any bucket: the stacks that call them mark the
    row count dynamic (EncoderBlocks.dynamic_rows), so a new bucket is a capture (warm-up and record, a
    second or two) and not another compile of every block (~10-17 s each on an H200, stop 55), which
    is what kept packed rows out of a training run whose batches span several buckets."""
    return nn.ModuleList([torch.compile(block, fullgraph=True, dynamic=None) for block in blocks])


def use_cuda_graphs(
    model: nn.Module, max_shapes: int = 4, compiled: bool = False, row_bucket: int | None = None
) -> nn.Module:
    """Give `model`'s encoder and decoder graphed block stacks (their `forward` then tries a graph
    first), with `compiled` blocks inside the graphs and padded batches packed into rows of a
    multiple of `row_bucket` frames (None: run padded); returns `model`. Parameters and state_dict
    are unchanged."""
    config = model.config
    options = {"compiled": compiled, "row_bucket": row_bucket}
    model.encoder.graphs = GraphedBlocks(EncoderBlocks(model.encoder.blocks, config), max_shapes, **options)
    model.decoder.graphs = GraphedBlocks(DecoderBlocks(model.decoder.blocks, config), max_shapes, **options)
    return model
