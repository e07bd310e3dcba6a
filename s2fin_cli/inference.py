"""Whole-scene inference: every valid pixel gets the class of the patch centred on it.

The scene is streamed block by block (``block_size`` squared), so memory follows the block and the
batch, never the scene:

1. a **reader thread** reads each block plus a halo of ``patch_size // 2`` pixels (plus the
   context of derived inputs, :mod:`s2fin_cli.preprocessing`) from both modalities on the HSI
   grid (:meth:`Scene.read`: reflect padding at scene borders, NaN where invalid) and computes
   which centres are valid, a bounded queue ahead of the computation;
2. the **main thread** moves the block to the device, applies the model's stored normalisation and
   PCA (nothing is fitted per scene), and hands the block's batches of ``batch_size`` centres to
   the **batch workers** (:func:`s2fin_cli.acceleration.map_in_batch_workers`; on the CPU
   several batches at once, each on its own torch threads,
   :func:`s2fin_cli.acceleration.batch_workers`), which cut the
   patches (:func:`s2fin_cli.patches.cut_inputs`: one gather per batch, no Python loop per
   pixel) and run the network under ``torch.inference_mode`` (and autocast on CUDA); the main
   thread maps each batch's argmax output index to the class id, in order;
3. a **writer thread** writes finished blocks (:class:`s2fin_cli.io.classmap.ClassMapWriter`),
   behind a bounded queue.

Centres that are nodata in either modality are not classified and come out as 0 (nodata).
The caller says which blocks to classify (:func:`scene_blocks`: all of them; a shard of a
sharded prediction takes every N-th, see :mod:`s2fin_cli.sharding`): every block is classified
exactly as in a whole-scene run, so N shards together give the same map.
An exception in any thread (or Ctrl-C) stops the other two and propagates to the caller.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor

from s2fin_cli import console
from s2fin_cli.acceleration import BatchWorkers, batch_workers, map_in_batch_workers
from s2fin_cli.device import autocast, autocast_dtype, precision_name
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import Scene, SceneBlock
from s2fin_cli.io.windows import iter_blocks
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.patches import cut_inputs

DEFAULT_BATCH_SIZE = 512  # on CUDA
# On the CPU, batches beyond ~128 patches are no faster (the activations fall out of cache) and
# cost much more memory (Houston-like network: ~0.5 GB peak at 128, ~1.1 GB at 512).
DEFAULT_CPU_BATCH_SIZE = 128
# Side of the blocks read, classified and written at a time: memory follows it.
PREDICT_BLOCK_SIZE = 256
DEFAULT_PREFETCH = 2  # blocks read ahead of the computation (and queued for writing)
_POLL_S = 0.1  # how often a blocked queue operation checks whether the pipeline stopped


@dataclass
class BlockResult:
    """The prediction of one block (core window, no halo), on the CPU."""

    window: Window
    classes: np.ndarray  # (rows, cols) class ids, 0 = nodata
    valid: np.ndarray  # (rows, cols) bool: the centre was classified
    probabilities: np.ndarray | None = None  # (classes, rows, cols) float32, NaN where nodata
    confidence: np.ndarray | None = None  # (rows, cols) float32, NaN where nodata


class BlockSink(Protocol):
    def write_block(self, window: Window, class_ids: np.ndarray,
                    probabilities: np.ndarray | None = None,
                    confidence: np.ndarray | None = None) -> None: ...


@dataclass
class PredictionSummary:
    """What a prediction did: pixel counts, a class histogram, time."""

    pixels: int = 0
    classified: int = 0
    histogram: dict[int, int] = field(default_factory=dict)  # class id -> pixels
    seconds: float = 0.0
    blocks: int = 0
    device: str = "cpu"

    @property
    def nodata(self) -> int:
        return self.pixels - self.classified

    @property
    def pixels_per_second(self) -> float:
        return self.pixels / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: BlockResult, lut: np.ndarray) -> None:
        self.blocks += 1
        self.pixels += int(result.classes.size)
        self.classified += int(result.valid.sum())
        counts = np.bincount(result.classes.ravel(), minlength=lut.size)
        for class_id in lut:
            n = int(counts[class_id]) if class_id < counts.size else 0
            self.histogram[int(class_id)] = self.histogram.get(int(class_id), 0) + n

    def to_json(self, names: dict[int, str] | None = None) -> dict[str, Any]:
        names = names or {}
        return {
            "pixels": self.pixels,
            "classified": self.classified,
            "nodata": self.nodata,
            "seconds": round(self.seconds, 3),
            "pixels_per_second": round(self.pixels_per_second, 1),
            "blocks": self.blocks,
            "device": self.device,
            "classes": [{"id": cid, "name": names.get(cid, f"class {cid}"), "pixels": n}
                        for cid, n in sorted(self.histogram.items())],
        }


def default_batch_size(device: torch.device | str) -> int:
    """:data:`DEFAULT_BATCH_SIZE` on CUDA, :data:`DEFAULT_CPU_BATCH_SIZE` elsewhere."""
    return DEFAULT_BATCH_SIZE if torch.device(device).type == "cuda" else DEFAULT_CPU_BATCH_SIZE


_Batch = TypeVar("_Batch")
_Result = TypeVar("_Result")


class BlockPredictor:
    """Classifies the centres of a :class:`SceneBlock` on ``device`` with a model bundle."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "cpu", *,
                 batch_size: int | None = None, probabilities: bool = False,
                 confidence: bool = False, amp: bool = True,
                 model: torch.nn.Module | None = None, cpu_bf16: bool = False,
                 workers: BatchWorkers | None = None) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.batch_size = default_batch_size(self.device) if batch_size is None else batch_size
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        # Batches classified side by side (default: from the torch threads the command set).
        self.workers = (batch_workers(self.device.type, torch.get_num_threads())
                        if workers is None else workers)
        self.want_probabilities = probabilities
        self.want_confidence = confidence
        self.amp = amp
        self.cpu_bf16 = cpu_bf16  # bfloat16 autocast on the CPU (acceleration.resolve_cpu_bf16)
        self.geometry = bundle.geometry
        self.halo = self.geometry.halo
        # Read around a block: the patch halo plus the context of derived inputs (the
        # preprocessing crops the context off, leaving the halo).
        self.read_halo = self.halo + bundle.preprocessor.context
        self.model = model if model is not None else bundle.build_model(self.device)
        self.preprocess = bundle.preprocessor.device_tensors(self.device)
        self.lut = np.asarray(bundle.classes.ids, dtype=np.int64)
        self._lut = torch.as_tensor(self.lut, device=self.device)

    def stage(self, array: np.ndarray) -> Tensor:
        """A host tensor ready for the device: page-locked on CUDA so the copy is asynchronous.
        Called in the reader thread, off the critical path."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    def to_device(self, array: np.ndarray | Tensor) -> Tensor:
        tensor = array if isinstance(array, Tensor) else self.stage(array)
        return tensor.to(self.device, non_blocking=True)

    @property
    def precision(self) -> str:
        """The precision the network computes in (float32, bfloat16, float16): a bfloat16 map
        differs from the float32 one on a few pixels, so reports name it."""
        return precision_name(autocast_dtype(self.device, self.amp, self.cpu_bf16))

    @torch.inference_mode()
    def logits(self, spectral: Tensor, spatial: Tensor, active: Tensor) -> Tensor:
        """Float32 logits of a batch of patches (autocast on CUDA; bfloat16 on a CPU with
        ``cpu_bf16``)."""
        with autocast(self.device, self.amp, cpu_bf16=self.cpu_bf16):
            out: Tensor = self.model(spectral, spatial, active)
        return out.float()

    @torch.inference_mode()
    def __call__(self, block: SceneBlock, core_valid: np.ndarray | None = None,
                 staged: tuple[Tensor, Tensor] | None = None) -> BlockResult:
        """Classify the valid centres of ``block`` (``core_valid`` and the ``staged`` host
        tensors of its optical and aux arrays may be precomputed by the reader thread)."""
        rows_n, cols_n = int(block.window.height), int(block.window.width)
        valid = block.core_valid if core_valid is None else core_valid
        centres = np.flatnonzero(valid)
        classes = torch.zeros(rows_n * cols_n, dtype=torch.int64, device=self.device)
        n_classes = len(self.lut)
        want_p = self.want_probabilities or self.want_confidence
        probs = (torch.full((n_classes, rows_n * cols_n), float("nan"), device=self.device)
                 if want_p else None)
        if centres.size:
            host_optical, host_aux = staged if staged is not None else (block.optical,
                                                                         block.aux)
            optical, reduced, aux = self.preprocess(self.to_device(host_optical),
                                                    self.to_device(host_aux))
            flat = torch.from_numpy(centres).to(self.device)
            batches = [flat[start:start + self.batch_size]
                       for start in range(0, flat.numel(), self.batch_size)]

            def batch_logits(idx: Tensor) -> Tensor:
                rows = idx // cols_n + self.halo
                cols = idx % cols_n + self.halo
                with torch.inference_mode():  # thread-local: also in a worker thread
                    return self.logits(*cut_inputs(optical, reduced, aux, rows, cols,
                                                   self.geometry))

            for idx, logits in zip(batches, self.map_batches(batch_logits, batches),
                                   strict=True):
                classes[idx] = self._lut[logits.argmax(dim=1)]
                if probs is not None:
                    probs[:, idx] = torch.softmax(logits, dim=1).T
        out = BlockResult(block.window, classes.view(rows_n, cols_n).cpu().numpy(), valid)
        if probs is not None:
            probs = probs.view(n_classes, rows_n, cols_n)
            if self.want_probabilities:
                out.probabilities = probs.cpu().numpy()
            if self.want_confidence:  # NaN (nodata) columns stay NaN
                out.confidence = probs.amax(dim=0).cpu().numpy()
        return out

    def map_batches(self, fn: Callable[[_Batch], _Result], batches: Sequence[_Batch]
                    ) -> Iterator[_Result]:
        """``fn`` over ``batches`` in order, in this predictor's :attr:`workers`
        (:func:`map_in_batch_workers`)."""
        return map_in_batch_workers(fn, batches, self.workers)


# What the reader thread hands over: the block, its valid centres, host tensors for the device.
_Staged = tuple[SceneBlock, np.ndarray, tuple[Tensor, Tensor]]


class _Stop(Exception):
    """Raised inside a worker when the pipeline was stopped by another thread."""


class _Pipeline:
    """Reader thread → caller → writer thread, with bounded queues and error propagation."""

    _DONE = object()

    def __init__(self, read: Callable[[Window], _Staged],
                 windows: list[Window], write: Callable[[BlockResult], None], depth: int) -> None:
        self._read = read
        self._windows = windows
        self._write = write
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._in: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._out: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._reader = threading.Thread(target=self._reader_main, name="s2fin-read", daemon=True)
        self._writer = threading.Thread(target=self._writer_main, name="s2fin-write",
                                        daemon=True)

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[Any]) -> Any:
        while True:
            if self._stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._stop.set()

    def _reader_main(self) -> None:
        try:
            for window in self._windows:
                self._put(self._in, self._read(window))
            self._put(self._in, self._DONE)
        except _Stop:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _writer_main(self) -> None:
        try:
            while True:
                item = self._get(self._out)
                if item is self._DONE:
                    return
                self._write(item)
        except _Stop:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _raise_worker_error(self) -> None:
        if self._errors:
            raise self._errors[0]

    def blocks(self) -> Iterator[_Staged]:
        """Blocks as the reader delivers them; re-raises a worker's exception."""
        self._reader.start()
        self._writer.start()
        try:
            while True:
                try:
                    item = self._get(self._in)
                except _Stop:
                    self._raise_worker_error()
                    raise
                if item is self._DONE:
                    return
                yield item
        except BaseException:
            self.abort()
            raise

    def emit(self, result: BlockResult) -> None:
        try:
            self._put(self._out, result)
        except _Stop:
            self._raise_worker_error()
            raise

    def finish(self) -> None:
        """Wait until every block has been written; re-raises a writer error."""
        try:
            self._put(self._out, self._DONE)
            while self._writer.is_alive():
                self._writer.join(timeout=_POLL_S)
        except _Stop:
            self.abort()
            self._raise_worker_error()
            raise
        except BaseException:
            self.abort()
            raise
        self._reader.join()
        self._raise_worker_error()

    def abort(self) -> None:
        """Stop both threads and wait for them (idempotent)."""
        self._stop.set()
        for thread in (self._reader, self._writer):
            if thread.ident is not None and thread.is_alive():
                thread.join()


def _as_writer(sink: BlockSink | Callable[[BlockResult], None]) -> Callable[[BlockResult], None]:
    write_block = getattr(sink, "write_block", None)
    if write_block is None:
        return sink  # type: ignore[return-value]

    def write(result: BlockResult) -> None:
        write_block(result.window, result.classes, result.probabilities, result.confidence)

    return write


def eager_pixels_per_second(predictor: BlockPredictor, batch_size: int, *,
                            repeats: int = 2) -> float:
    """The predictor's network speed (centre pixels per second) on zero inputs, one batch per
    batch worker side by side as predict runs them: a quick estimate for deciding whether
    compiling pays (the first call warms up, the best of ``repeats`` timed rounds counts)."""
    device = predictor.device
    inputs = zero_batch(predictor, batch_size)
    predictor.logits(*inputs)
    side_by_side = [inputs] * predictor.workers.count  # as predict runs its batches

    def run(batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return predictor.logits(*batch)

    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _logits in predictor.map_batches(run, side_by_side):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return batch_size * len(side_by_side) / max(best, 1e-9)


def zero_batch(predictor: BlockPredictor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """A batch of all-zero network inputs (spectral, spatial, active) on the predictor's
    device: for timing, or to compile the network before the batch workers call it."""
    cfg = predictor.bundle.config
    s, p = cfg.spectral_window, cfg.patch_size
    device = predictor.device
    return (torch.zeros(batch_size, cfg.bands, s, s, device=device),
            torch.zeros(batch_size, cfg.reduced_bands, p, p, device=device),
            torch.zeros(batch_size, cfg.active_bands, p, p, device=device))


def scene_blocks(grid: Grid, block_size: int = PREDICT_BLOCK_SIZE) -> list[Window]:
    """Every block of ``grid`` in row-major order (the windows a whole-scene prediction
    classifies; block ``k`` of this list is block ``k`` of a sharded prediction)."""
    if block_size < 1:
        raise ValueError("block_size must be positive")
    return list(iter_blocks(grid.height, grid.width, block_size))


def predict_scene(
    scene: Scene,
    predictor: BlockPredictor,
    sink: BlockSink | Callable[[BlockResult], None],
    windows: Sequence[Window],
    *,
    prefetch: int = DEFAULT_PREFETCH,
    progress: bool = True,
    json_progress: bool = False,
    description: str = "predict",
) -> PredictionSummary:
    """Classify every pixel of ``windows`` of ``scene`` and hand each finished block to ``sink``.

    ``sink`` is a :class:`ClassMapWriter` (anything with ``write_block``) or a callable taking a
    :class:`BlockResult`; it is called from the writer thread, one block at a time, in order.
    What is computed (model, device, batch size, probabilities, confidence) is the
    ``predictor``'s; the model/scene compatibility is the caller's to check first
    (``bundle.check_scene``).
    """
    halo = predictor.read_halo

    def read(window: Window) -> _Staged:
        block = scene.read(window, halo)
        return block, block.core_valid, (predictor.stage(block.optical),
                                         predictor.stage(block.aux))

    write = _as_writer(sink)
    total = len(windows)
    summary = PredictionSummary(device=str(predictor.device))
    pipeline = _Pipeline(read, list(windows), write, prefetch)
    start = time.perf_counter()
    reporter_cm: contextlib.AbstractContextManager[Any] = (
        console.progress(description, total, json_lines=json_progress) if progress
        else contextlib.nullcontext())
    with reporter_cm as reporter:
        try:
            for block, core_valid, staged in pipeline.blocks():
                result = predictor(block, core_valid, staged)
                summary.add(result, predictor.lut)
                pipeline.emit(result)
                if reporter is not None:
                    elapsed = time.perf_counter() - start
                    reporter.advance(1, **{"px/s": round(summary.pixels / max(elapsed, 1e-9))})
            pipeline.finish()
        except BaseException:
            pipeline.abort()
            raise
    summary.seconds = time.perf_counter() - start
    return summary


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CPU_BATCH_SIZE",
    "DEFAULT_PREFETCH",
    "PREDICT_BLOCK_SIZE",
    "BlockPredictor",
    "BlockResult",
    "BlockSink",
    "PredictionSummary",
    "default_batch_size",
    "eager_pixels_per_second",
    "predict_scene",
    "scene_blocks",
    "zero_batch",
]
