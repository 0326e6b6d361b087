"""The streaming tiled runtime: reader -> device worker -> assembler/writer, joined by bounded queues.

    reader thread     cuts LR windows (static shape) into batches of float tiles
    device worker     runs the backend; on CUDA, alternates streams with pinned buffers so the
                      copies of one batch overlap the compute of the next; quantises on device
    assembler thread  writes each tile's core into the current row band and hands finished
                      bands to the sink (a streaming encoder), then forgets them

Queues hold at most a few batches, so memory is bounded by the tile and band sizes, never by
the image: an HxW input needs the LR image, O(batch) windows and one band of output rows.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from srtrt.engine.datapath import tiles as tiling
from srtrt.engine.backends.base import Backend

QUEUE_DEPTH = 2
_DONE = object()


@dataclass
class Planes:
    """What goes through the network for one image: a colour plane and, optionally, alpha.

    `colour` is HxWxC (C = 1 grey or 3 RGB), `alpha` HxW or None; both uint8/uint16 or float in [0,1].
    Grey and alpha planes run as RGB with the channel replicated and come back as the channel mean.
    """

    colour: np.ndarray
    alpha: np.ndarray | None = None

    @property
    def height(self) -> int:
        return self.colour.shape[0]

    @property
    def width(self) -> int:
        return self.colour.shape[1]


@dataclass
class Band:
    """Finished output rows [y0, y0 + rows.shape[0]): colour HxWxC and alpha HxW (or None)."""

    y0: int
    colour: np.ndarray
    alpha: np.ndarray | None


@dataclass
class StageTimes:
    """Busy seconds per stage of the last run (waits on queues excluded), for the pipeline benchmark.

    With the stages overlapping, `wall` approaches the slowest stage rather than their sum.
    """

    read: float = 0.0      # window extraction and float conversion
    infer: float = 0.0     # backend calls, including host<->device copies
    assemble: float = 0.0  # placing cores into bands and the sink (encoding, writing)
    wall: float = 0.0
    tiles: int = 0
    batches: int = 0

    @property
    def slowest(self) -> float:
        return max(self.read, self.infer, self.assemble)


def _max_value(dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _to_float_tile(plane: np.ndarray, window) -> torch.Tensor:
    """A window of an HxW[xC] plane as a float32 3xhxw tensor in [0, 1]."""
    top, left, h, w = window
    a = np.array(plane[top:top + h, left:left + w])  # a copy: decoded planes may be read-only
    t = torch.from_numpy(a).to(torch.float32)
    if np.issubdtype(plane.dtype, np.integer):
        t = t.div_(_max_value(plane.dtype))
    t = t.unsqueeze(-1) if t.ndim == 2 else t
    t = t.permute(2, 0, 1)
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def _quantise(y: torch.Tensor, out_dtype) -> torch.Tensor:
    """[0, 1] floats -> the output dtype (rounded, clamped); float output stays float32."""
    y = y.float()
    if not np.issubdtype(out_dtype, np.integer):
        return y
    top = _max_value(out_dtype)
    q = y.mul_(top).round_().clamp_(0, top)
    return q.to(torch.uint8) if out_dtype == np.uint8 else q.to(torch.int32)


class TiledUpscaler:
    """Runs one backend over tiles of images; reusable across images.

    `core`/`margin`/`batch` default to the backend's defaults and its receptive-field radius.
    With margin >= backend.radius the output equals a whole-image pass.
    """

    def __init__(self, backend: Backend, core: int | None = None, margin: int | None = None,
                 batch: int | None = None, streams: int = 2):
        self.backend = backend
        self.auto_core = core is None
        self.core = backend.defaults.core if core is None else core
        self.margin = backend.radius if margin is None else margin
        self.batch = max(1, backend.defaults.batch if batch is None else batch)
        self.cuda = backend.device.type == "cuda"
        self.streams = [torch.cuda.Stream(backend.device) for _ in range(streams)] if self.cuda else []
        self.times = StageTimes()

    def plan(self, height: int, width: int) -> tiling.TilePlan:
        core = self.core
        whole = self.backend.defaults.whole_image_pixels
        if self.auto_core and height * width <= whole and self.backend.accepts(1, height, width):
            core = 0  # the image fits one window: no overlap to recompute
        return tiling.plan(height, width, core, self.margin, self.backend.balanced_tiles)

    # -- the three stages ------------------------------------------------------------------
    def _read(self, planes: Planes, plan: tiling.TilePlan, q_in: queue.Queue, stop: threading.Event):
        """Reader: batches of (tiles, float tensor) where each tile contributes one entry per plane."""
        try:
            sources = [planes.colour] + ([planes.alpha] if planes.alpha is not None else [])
            pending = []
            for tile in plan:
                pending.append(tile)
                if len(pending) == self.batch:
                    q_in.put((pending, self._timed_stack(sources, pending)))
                    pending = []
                if stop.is_set():
                    return
            if pending:
                q_in.put((pending, self._timed_stack(sources, pending)))
        except BaseException as e:  # handed to the caller's thread
            q_in.put(e)
        finally:
            q_in.put(_DONE)

    def _timed_stack(self, sources, batch_tiles) -> torch.Tensor:
        t0 = time.perf_counter()
        x = self._stack(sources, batch_tiles)
        self.times.read += time.perf_counter() - t0
        return x

    def _stack(self, sources, batch_tiles) -> torch.Tensor:
        x = torch.stack([_to_float_tile(src, t.window) for t in batch_tiles for src in sources])
        return x.pin_memory() if self.cuda else x

    def _infer(self, x: torch.Tensor, n_planes: int, channels: int, out_dtype, i: int):
        """Device worker step: returns (host tensor, event or None) of quantised outputs."""
        b = self.backend
        if not self.cuda:
            return self._postprocess(b.infer(x), n_planes, channels, out_dtype), None
        stream = self.streams[i % len(self.streams)]
        with torch.cuda.stream(stream):
            y = self._postprocess(b.infer(x.to(b.device, non_blocking=True)), n_planes, channels, out_dtype)
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return host, event

    @staticmethod
    def _postprocess(y: torch.Tensor, n_planes: int, channels: int, out_dtype) -> torch.Tensor:
        """Network output (N*P, 3, H, W) -> (N, P, C', H, W) quantised; grey planes become channel means."""
        y = y.reshape(-1, n_planes, 3, *y.shape[-2:])
        colour = y[:, 0] if channels == 3 else y[:, 0].float().mean(1, keepdim=True)
        parts = [colour.float()] + [y[:, p].float().mean(1, keepdim=True) for p in range(1, n_planes)]
        return _quantise(torch.cat(parts, 1), out_dtype)

    def _assemble(self, planes: Planes, plan: tiling.TilePlan, q_out: queue.Queue, sink, out_dtype,
                  on_tile: Callable[[int], None] | None, errors: list):
        s, width = self.backend.scale, planes.width * self.backend.scale
        channels = planes.colour.shape[2] if planes.colour.ndim == 3 else 1
        has_alpha = planes.alpha is not None
        band_dtype = np.float32 if not np.issubdtype(out_dtype, np.integer) else out_dtype
        tiles_per_row, band, band_row, placed = len(plan.cols), None, -1, 0
        try:
            while (item := q_out.get()) is not _DONE:
                batch_tiles, host, event = item
                if event is not None:
                    t0 = time.perf_counter()
                    event.synchronize()  # device time, not assembly: counted under infer
                    self.times.infer += time.perf_counter() - t0
                t0 = time.perf_counter()
                out = host.numpy()
                for k, tile in enumerate(batch_tiles):
                    if tile.row != band_row:
                        band_row, placed = tile.row, 0
                        band = np.empty((tile.y.clen * s, width, channels + has_alpha), band_dtype)
                    cy, cx, ch, cw = tile.core_in_window
                    core = out[k, :, cy * s:(cy + ch) * s, cx * s:(cx + cw) * s]
                    band[:, tile.x.c0 * s:(tile.x.c0 + cw) * s] = np.moveaxis(core, 0, -1)
                    placed += 1
                    if placed == tiles_per_row:
                        colour = band[..., :channels]
                        sink(Band(tile.y.c0 * s, colour, band[..., channels] if has_alpha else None))
                        band = None
                self.times.assemble += time.perf_counter() - t0
                if on_tile:
                    on_tile(len(batch_tiles))
        except BaseException as e:
            errors.append(e)
            while q_out.get() is not _DONE:  # drain so the worker never blocks on a full queue
                pass

    # -- driver ----------------------------------------------------------------------------
    def run(self, planes: Planes, sink: Callable[[Band], None], out_dtype=np.uint8,
            on_tile: Callable[[int], None] | None = None) -> None:
        """Upscale `planes`, calling `sink` with each finished row band, top to bottom."""
        plan = self.plan(planes.height, planes.width)
        n_planes = 1 + (planes.alpha is not None)
        channels = planes.colour.shape[2] if planes.colour.ndim == 3 else 1
        window = plan.window_shape
        self.backend.prepare(min(self.batch, len(plan)) * n_planes, *window)
        self.times = StageTimes(tiles=len(plan))
        start = time.perf_counter()

        q_in: queue.Queue = queue.Queue(QUEUE_DEPTH)
        q_out: queue.Queue = queue.Queue(QUEUE_DEPTH)
        stop, errors = threading.Event(), []
        reader = threading.Thread(target=self._read, args=(planes, plan, q_in, stop), daemon=True)
        assembler = threading.Thread(target=self._assemble,
                                     args=(planes, plan, q_out, sink, out_dtype, on_tile, errors), daemon=True)
        reader.start()
        assembler.start()
        i = 0
        try:
            while (item := q_in.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                batch_tiles, x = item
                t0 = time.perf_counter()
                host, event = self._infer(x, n_planes, channels, out_dtype, i)
                self.times.infer += time.perf_counter() - t0
                self.times.batches += 1
                q_out.put((batch_tiles, host, event))
                i += 1
                if errors:
                    break
        finally:
            stop.set()
            while reader.is_alive():  # unblock the reader if it waits on a full queue
                try:
                    q_in.get(timeout=0.05)
                except queue.Empty:
                    pass
            q_out.put(_DONE)
            assembler.join()
            self.times.wall = time.perf_counter() - start
        if errors:
            raise errors[0]

    def run_to_array(self, planes: Planes, out_dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole output in memory (for small images, tests and the Python API)."""
        s = self.backend.scale
        channels = planes.colour.shape[2] if planes.colour.ndim == 3 else 1
        colour = np.empty((planes.height * s, planes.width * s, channels), out_dtype)
        alpha = np.empty((planes.height * s, planes.width * s), out_dtype) if planes.alpha is not None else None

        def keep(band: Band):
            colour[band.y0:band.y0 + band.colour.shape[0]] = band.colour
            if alpha is not None:
                alpha[band.y0:band.y0 + band.alpha.shape[0]] = band.alpha

        self.run(planes, keep, out_dtype)
        return colour, alpha
