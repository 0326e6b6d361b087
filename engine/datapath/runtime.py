"""The streaming tiled runtime: reader -> device worker -> assembler -> encoder, joined by bounded queues.

    reader thread     copies LR windows (one static shape), in the image's own dtype (uint8,
                      uint16), straight into a reused staging buffer (pinned on CUDA); with
                      several images of one shape (video frames) one batch may hold windows of
                      several of them, so small images still fill the backend's batch
    device worker     uploads the batch as integers, makes it float on the device, runs the
                      backend, quantises there and copies the integers back into a reused pinned
                      buffer; on CUDA it alternates streams so one batch's copies overlap the next
                      one's compute
    assembler thread  writes each tile's core into the current row band (of the current image)
                      and hands finished bands over
    encoder thread    hands each band to the sink (a streaming encoder), then forgets it

Queues hold at most a few batches and one band, so memory is bounded by the tile and band sizes,
never by the image: an HxW input needs the LR image (`run_many`: its LR images), O(batch)
windows and two bands of output rows (the assembler starts a band only once the encoder has
taken the one before). On the CPU the same functions run (the "device" is the CPU), so a CPU
run checks the bytes a GPU run produces.
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from srtrt.engine.backends.base import Backend
from srtrt.engine.datapath import tiles as tiling
from srtrt.errors import SrtrtError

QUEUE_DEPTH = 2
QUANTISE_SLICE_BYTES = 1 << 21  # float rows quantised at a time on the CPU (about half a core's L2)
BAND_QUEUE_DEPTH = 1  # a finished band waits for the encoder to take it: one encoded, one filled
_DONE = object()


class NotFinite(SrtrtError):
    """The network's output holds NaN or infinity: quantised, it would be a blank image said done."""

    def __init__(self):
        super().__init__("the network gave NaN or infinite values, an overflow of its precision (fp16 holds at "
                         "most 65504): --precision fp32 runs it in full range")


class WindowsOutsideEngine(SrtrtError):
    """An image needs windows the backend's engine cannot take (its profile is fixed at one window)."""


class _Stopped(Exception):
    """The reader was told to stop while it waited for a staging buffer."""


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

    @property
    def channels(self) -> int:
        return self.colour.shape[2] if self.colour.ndim == 3 else 1


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
    Stages run on different threads, so every update goes through `add` (one lock).
    """

    read: float = 0.0      # window extraction into the staging buffer (and, on the CPU, float conversion)
    infer: float = 0.0     # backend calls, including host<->device copies and conversions
    assemble: float = 0.0  # placing cores into bands
    encode: float = 0.0    # the sink: encoding and writing the bands
    wall: float = 0.0
    tiles: int = 0
    batches: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()  # not a field: asdict() and comparisons ignore it

    def add(self, **amounts) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    @property
    def slowest(self) -> float:
        return max(self.read, self.infer, self.assemble, self.encode)


def _max_value(dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


# uint16 travels as int16 (same bits): torch's uint16 support is partial on some devices
_STAGING_DTYPE = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.int16}


def _staging_dtype(dtype) -> torch.dtype:
    return _STAGING_DTYPE.get(np.dtype(dtype), torch.float32)


def to_network_input(x: torch.Tensor, colour_channels: int, max_value: float, network_channels: int = 3) -> torch.Tensor:
    """Staged windows (N, h, w, C [+ 1 alpha]) of uint8, int16-held uint16 or float ->
    (N * planes, network_channels, h, w) float32 in [0, 1], wherever `x` lives (on the device for CUDA).

    An RGB network gets each tile's colour plane, then its alpha plane; one-channel planes are
    repeated to RGB. A grey (one-channel) network gets every channel as a plane of its own, so
    a grey image stays grey and an RGB one is upscaled channel by channel.
    """
    if x.dtype == torch.int16:
        x = x.to(torch.int32).bitwise_and_(0xFFFF)
    x = x.to(torch.float32)
    if max_value != 1.0:
        x = x.div_(max_value)
    x = x.permute(0, 3, 1, 2)
    if network_channels == 1:  # a copy: float windows needing no scaling would still be the reader's buffer
        return x.reshape(-1, 1, *x.shape[2:]).clone()
    colour = x[:, :colour_channels]
    planes = [colour.expand(-1, 3, -1, -1) if colour_channels == 1 else colour]
    if x.shape[1] > colour_channels:
        planes.append(x[:, colour_channels:colour_channels + 1].expand(-1, 3, -1, -1))
    return torch.stack(planes, 1).reshape(-1, 3, *x.shape[2:])


def planes_per_tile(colour_channels: int, has_alpha: bool, network_channels: int = 3) -> int:
    """How many network inputs one tile makes (to_network_input's planes)."""
    return (colour_channels if network_channels == 1 else 1) + has_alpha


def all_finite(values: torch.Tensor) -> torch.Tensor:
    """Whether no value is NaN or infinite, as a bool scalar on values' device: one min/max
    reduction, which NaN and infinity reach. torch's isfinite(t).all() writes a bool per value
    first: 13.6 ms against 0.7 ms for a 1080p output on the 2-core Zen 5 EPYC, half of the
    runtime's own cost around a video frame."""
    if values.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=values.device)
    low, high = torch.aminmax(values)
    return torch.isfinite(low) & torch.isfinite(high)


def _quantise(y: torch.Tensor, out_dtype, out: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1] -> `out` (N, H, W, C) of the output dtype (rounded, clamped),
    on y's device; uint16 is held as int16 with the same bits; float output stays float32.

    The clamp makes the one copy, rounding works in place and the cast writes the interleaved
    layout the bands and encoders want. With `work` (the CPU) that goes slice by slice of rows
    through one small reused buffer, which stays in cache; on a GPU the whole batch at once.
    """
    if work is None:
        return _quantise_rows(out_dtype, out, y.float().clamp(0, 1))
    if not all_finite(y):  # the cast makes NaN 0 and the clamp infinity 1: a blank image, said done
        raise NotFinite()
    integer, target, rows = np.issubdtype(out_dtype, np.integer), _host_array(out), work.shape[2]
    nhwc = y.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        return _quantise_interleaved(nhwc, integer, _max_value(out_dtype), target, work, out)
    # CPU: numpy's casting copy into each channel's strided view is several times faster than
    # torch's permuting copy (NCHW float -> NHWC integers), which is the bulk of the cost here.
    for top in range(0, y.shape[2], rows):
        part = y[:, :, top:top + rows]
        slot = work[:part.shape[0], :, :part.shape[2]]
        if part.dtype == torch.float32:  # the clamp makes the one copy
            torch.clamp(part, 0, 1, out=slot)
        else:  # any other float dtype in
            slot.copy_(part).clamp_(0, 1)
        if integer:
            slot.mul_(_max_value(out_dtype)).round_()
        values = slot.numpy()
        for c in range(values.shape[1]):
            np.copyto(target[:, top:top + part.shape[2], :, c], values[:, c], casting="unsafe")
    return out


def _quantise_interleaved(nhwc: torch.Tensor, integer: bool, max_value: float, target: np.ndarray,
                          work: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`_quantise` of an output already interleaved (a channels_last network's): the same steps
    in its own layout, with no transposition, through `work`'s memory viewed as NHWC rows (about
    3x faster than the planar path for a 1080p frame)."""
    rows = work.shape[2]
    for top in range(0, nhwc.shape[1], rows):
        part = nhwc[:, top:top + rows]
        slot = work.view(-1)[:part.numel()].view(part.shape)
        if part.dtype == torch.float32:  # the clamp makes the one copy
            torch.clamp(part, 0, 1, out=slot)
        else:
            slot.copy_(part).clamp_(0, 1)
        if integer:
            slot.mul_(max_value).round_()
        np.copyto(target[:, top:top + part.shape[1]], slot.numpy(), casting="unsafe")
    return out


def _quantise_rows(out_dtype, out: torch.Tensor, clamped: torch.Tensor) -> torch.Tensor:
    q = clamped
    if np.issubdtype(out_dtype, np.integer):
        q = q.mul_(_max_value(out_dtype)).round_()
        if out_dtype == np.uint16:
            q = q.to(torch.int32)  # a float beyond int16 must not be cast to it directly
    out.permute(0, 3, 1, 2).copy_(q)
    return out


def _host_array(host: torch.Tensor) -> np.ndarray:
    out = host.numpy()
    return out.view(np.uint16) if out.dtype == np.int16 else out


class StagingBuffers:
    """A few reusable host buffers of one dtype (pinned for CUDA copies), viewed in the current shape.

    `take` hands out a free one, first waiting for the CUDA event its last user recorded (the
    copy that reads or fills it); `give` returns it. Taking blocks while all are in use, which
    is the back-pressure between the stage that fills them and the one that empties them.
    Each buffer is flat storage viewed in `shape`, so a later image whose windows need no more
    elements reuses it (`refit`): pinning host memory is a slow driver call, and a folder of
    images of many sizes brings a new window shape with nearly every image.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, count: int, pinned: bool):
        self.shape, self.dtype, self.count, self.pinned = shape, dtype, count, pinned
        self.capacity = math.prod(shape)
        self._free: queue.Queue = queue.Queue()
        self._flat: dict[int, torch.Tensor] = {}  # data pointer -> the flat buffer a view was taken of
        for _ in range(count):
            flat = torch.empty(self.capacity, dtype=dtype, pin_memory=pinned)
            self._flat[flat.data_ptr()] = flat
            self._free.put((flat, None))

    def take(self, timeout: float | None = None) -> torch.Tensor:
        flat, event = self._free.get(timeout=timeout)
        if event is not None:
            event.synchronize()
        return flat[:math.prod(self.shape)].view(self.shape)

    def give(self, buffer: torch.Tensor, event=None) -> None:
        self._free.put((self._flat[buffer.data_ptr()], event))

    def refit(self, shape: tuple[int, ...], dtype: torch.dtype, count: int, pinned: bool) -> bool:
        """Serve `shape` from now on if these buffers hold enough elements of the same dtype (and
        count and pinning) and none is in use; returns whether they do."""
        if (dtype, count, pinned) != (self.dtype, self.count, self.pinned) or math.prod(shape) > self.capacity:
            return False
        if self._free.qsize() != self.count:  # a run that failed may not have given every one back
            return False
        self.shape = shape
        return True


class TiledUpscaler:
    """Runs one backend over tiles of images; reusable across images. `run` takes one image,
    `run_many` several of one shape whose windows share the backend's batches.

    `core`/`margin`/`batch` default to the backend's defaults and its receptive-field radius.
    With margin >= backend.radius the output equals a whole-image pass.
    """

    def __init__(self, backend: Backend, core: int | None = None, margin: int | None = None,
                 batch: int | None = None, streams: int = 2):
        self.backend = backend
        self.auto_core = core is None
        self.core = backend.defaults.core if core is None else core
        self.margin = margin if margin is not None else (backend.margin if backend.margin is not None
                                                         else backend.radius)
        self.batch = max(1, backend.defaults.batch if batch is None else batch)
        self.cuda = backend.device.type == "cuda"
        self.streams = [torch.cuda.Stream(backend.device) for _ in range(streams)] if self.cuda else []
        self.times = StageTimes()
        # kept across images: allocated again only when the window shape, batch or dtype changes
        self._inputs: StagingBuffers | None = None
        self._outputs: StagingBuffers | None = None
        self._work: torch.Tensor | None = None

    def plan(self, height: int, width: int, frames: bool = False) -> tiling.TilePlan:
        """Tiles for an image (or a video's frames: `frames` words a refusal for them) of this size."""
        size = f"{'frames are' if frames else 'image is'} {width}x{height}"
        smallest = tiling.allowed_side(1, self.backend.multiple_of, self.backend.minimum)
        if min(height, width) < smallest:
            raise SrtrtError(f"{size}, smaller than the {smallest}-pixel side this model needs")
        core = self.core
        whole = self.backend.defaults.whole_image_pixels
        if self.auto_core and height * width <= whole and self.backend.accepts(1, height, width):
            core = 0  # the image fits one window: no overlap to recompute
        try:
            plan = tiling.plan(height, width, core, self.margin, self.backend.balanced_tiles,
                               self.backend.multiple_of, self.backend.minimum, grid=self.backend.grid)
        except tiling.WindowTooShort as e:
            raise WindowsOutsideEngine(f"{size}: {e}") from None
        if core and self.auto_core and whole and self.backend.balanced_tiles:  # windows bounded by the budget's pixels
            cheaper = tiling.least_computed(height, width, self.margin, whole, self.backend.multiple_of,
                                            self.backend.minimum, self.backend.grid)
            if cheaper is not None and cheaper.computed_pixels < plan.computed_pixels:
                plan = cheaper
        # an engine fixed at one window larger than the image; a static graph that cannot be made for these windows
        if (why := self.backend.refusal(1, *plan.window_shape)) is not None:
            h, w = plan.window_shape
            raise WindowsOutsideEngine(f"image is {width}x{height}: its {h}x{w} windows are {why}")
        return plan

    def _buffers(self, current: StagingBuffers | None, shape, dtype, count: int) -> StagingBuffers:
        # a smaller window or batch (an image of another size, a video's frames cut short at a segment)
        # runs in the ones there are
        if current is not None and current.refit(shape, dtype, count, self.cuda):
            return current
        return StagingBuffers(shape, dtype, count, pinned=self.cuda)

    # -- the four stages -------------------------------------------------------------------
    def _read(self, frames: Sequence[Planes], plan: tiling.TilePlan, q_in: queue.Queue, stop: threading.Event):
        """Reader: batches of (windows, staged windows, staging buffer or None), a window being
        (image index, tile), in (image, plan) order; a batch runs on into the next image.

        On CUDA the staged integers go to the device worker, which returns the buffer after its
        upload; on the CPU they become the float batch here and the buffer is free at once.
        """
        try:
            max_value = _max_value(frames[0].colour.dtype)
            pending = []
            for f in range(len(frames)):
                for tile in plan:
                    pending.append((f, tile))
                    if len(pending) == self.batch:
                        q_in.put(self._staged_batch(frames, pending, max_value, stop))
                        pending = []
                    if stop.is_set():
                        return
            if pending:
                q_in.put(self._staged_batch(frames, pending, max_value, stop))
        except _Stopped:
            pass
        except BaseException as e:  # handed to the caller's thread
            q_in.put(e)
        finally:
            q_in.put(_DONE)

    def _staged_batch(self, frames: Sequence[Planes], windows, max_value: float, stop: threading.Event):
        while True:  # all buffers in flight: wait for the device worker, unless the run is over
            try:
                buffer = self._inputs.take(timeout=0.05)
                break
            except queue.Empty:
                if stop.is_set():
                    raise _Stopped from None
        t0 = time.perf_counter()
        staged = self._stage(buffer, frames, windows)
        if not self.cuda:
            staged = to_network_input(staged, frames[0].channels, max_value, self.backend.channels)
            self._inputs.give(buffer)
            buffer = None
        self.times.add(read=time.perf_counter() - t0)
        return windows, staged, buffer

    @staticmethod
    def _stage(buffer: torch.Tensor, frames: Sequence[Planes], windows) -> torch.Tensor:
        """Copy each (image, tile)'s window of every plane of that image into buffer[k]
        (h, w, C [+ 1]) in the source dtype."""
        staged = buffer.numpy()
        if staged.dtype == np.int16:
            staged = staged.view(np.uint16)
        channels = frames[0].channels
        for k, (f, tile) in enumerate(windows):
            planes = frames[f]
            top, left, h, w = tile.window
            window = planes.colour[top:top + h, left:left + w]
            staged[k, :, :, :channels] = window if window.ndim == 3 else window[:, :, None]
            if planes.alpha is not None:
                staged[k, :, :, channels] = planes.alpha[top:top + h, left:left + w]
        return buffer[:len(windows)]

    def _infer(self, staged: torch.Tensor, buffer, planes: Planes, out_dtype, i: int):
        """Device worker step: returns (host tensor, its output buffer, event or None, finite or None) of
        quantised outputs; on CUDA `finite` is a pinned flag (whether every output value was finite),
        read once the event has passed: asked at once, it would wait for the device each batch.
        `planes` is any image of the run: only its channels, alpha and dtype (shared by all) matter."""
        b = self.backend
        n_planes = planes_per_tile(planes.channels, planes.alpha is not None, b.channels)
        if not self.cuda:
            host_buffer = self._outputs.take()
            y = b.infer(staged)
            host = self._postprocess(y, n_planes, planes.channels, out_dtype, host_buffer[:y.shape[0] // n_planes],
                                     self._work)
            return host, host_buffer, None, None
        stream = self.streams[i % len(self.streams)]
        with torch.cuda.stream(stream):
            on_device = staged.to(b.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(stream)
            self._inputs.give(buffer, uploaded)  # the reader refills it once the upload is done
            x = to_network_input(on_device, planes.channels, _max_value(planes.colour.dtype), b.channels)
            y = b.infer(x)
            host_buffer = self._outputs.take()
            host = host_buffer[:y.shape[0] // n_planes]
            quantised = torch.empty(host.shape, dtype=host.dtype, device=b.device)
            host.copy_(self._postprocess(y, n_planes, planes.channels, out_dtype, quantised), non_blocking=True)
            finite = torch.empty((), dtype=torch.bool, pin_memory=True)
            finite.copy_(all_finite(y), non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return host, host_buffer, event, finite

    @staticmethod
    def _postprocess(y: torch.Tensor, n_planes: int, channels: int, out_dtype, out: torch.Tensor,
                     work: torch.Tensor | None = None) -> torch.Tensor:
        """Network output (N*P, 3 or 1, H, W) -> `out` (N, H, W, C' [+ alpha]) quantised; an RGB
        network's grey planes become channel means, a grey network's planes are the channels."""
        if y.shape[1] == 1:
            return _quantise(y.reshape(-1, n_planes, *y.shape[-2:]), out_dtype, out, work)
        y = y.reshape(-1, n_planes, 3, *y.shape[-2:])
        colour = y[:, 0] if channels == 3 else y[:, 0].float().mean(1, keepdim=True)
        parts = [colour] + [y[:, p].float().mean(1, keepdim=True) for p in range(1, n_planes)]
        return _quantise(parts[0] if len(parts) == 1 else torch.cat([p.float() for p in parts], 1), out_dtype,
                         out, work)

    def _assemble(self, planes: Planes, plan: tiling.TilePlan, q_out: queue.Queue, bands: queue.Queue,
                  out_dtype, on_tile: Callable[[int], None] | None, errors: list, abandon: threading.Event):
        """Assembler: (image index, Band) onto `bands` per finished row band, image by image.
        `planes` is any image of the run (they share shape and dtype)."""
        s, width = self.backend.scale, planes.width * self.backend.scale
        channels = planes.channels
        has_alpha = planes.alpha is not None
        band_dtype = np.float32 if not np.issubdtype(out_dtype, np.integer) else out_dtype
        # the band in progress belongs to one (image, row); windows come in (image, plan) order,
        # so an image's last band is complete before the next image's first window arrives
        tiles_per_row, band, band_key, placed = len(plan.cols), None, None, 0
        try:
            while (item := q_out.get()) is not _DONE:
                windows, host, host_buffer, event, finite = item
                try:
                    if abandon.is_set():
                        continue
                    if event is not None:
                        t0 = time.perf_counter()
                        event.synchronize()  # device time, not assembly: counted under infer
                        self.times.add(infer=time.perf_counter() - t0)
                    if finite is not None and not finite.item():
                        raise NotFinite()
                    t0 = time.perf_counter()
                    out = _host_array(host)
                    for k, (f, tile) in enumerate(windows):
                        if (f, tile.row) != band_key:
                            band_key, placed = (f, tile.row), 0
                            band = np.empty((tile.y.clen * s, width, channels + has_alpha), band_dtype)
                        cy, cx, ch, cw = tile.core_in_window
                        core = out[k, cy * s:(cy + ch) * s, cx * s:(cx + cw) * s]
                        band[:, tile.x.c0 * s:(tile.x.c0 + cw) * s] = core
                        placed += 1
                        if placed == tiles_per_row:
                            colour = band[..., :channels]
                            self.times.add(assemble=time.perf_counter() - t0)
                            bands.put((f, Band(tile.y.c0 * s, colour, band[..., channels] if has_alpha else None)))
                            bands.join()  # taken: only then start the next band, so two bands at most
                            t0 = time.perf_counter()
                            band = None
                    self.times.add(assemble=time.perf_counter() - t0)
                finally:
                    self._give_output(host_buffer, event)  # its cores are copied into bands by now
                if on_tile:
                    on_tile(len(windows))
        except BaseException as e:
            errors.append(e)
            while (item := q_out.get()) is not _DONE:  # drain so the worker never blocks on a full queue
                self._give_output(item[2], item[3])
        finally:
            bands.put(_DONE)

    def _give_output(self, host_buffer, event) -> None:
        """Return an output buffer to its pool once the device's copy into it is done: one handed
        back with its copy still queued (an abandoned or failed run skips the wait) would be
        written over by that copy while the next run holds it."""
        if host_buffer is None:
            return
        if event is not None:
            with contextlib.suppress(Exception):  # a device that failed copies nothing more
                event.synchronize()
        self._outputs.give(host_buffer)

    def _encode(self, bands: queue.Queue, sink, errors: list, abandon: threading.Event):
        """Encoder: the sink gets each finished (image index, band); after an error the rest are dropped."""
        try:
            while (item := bands.get()) is not _DONE:
                bands.task_done()
                if errors or abandon.is_set():
                    continue
                t0 = time.perf_counter()
                sink(*item)
                self.times.add(encode=time.perf_counter() - t0)
        except BaseException as e:
            errors.append(e)
            while bands.get() is not _DONE:
                bands.task_done()

    # -- driver ----------------------------------------------------------------------------
    def run(self, planes: Planes, sink: Callable[[Band], None], out_dtype=np.uint8,
            on_tile: Callable[[int], None] | None = None) -> None:
        """Upscale `planes`, calling `sink` with each finished row band, top to bottom, on the
        runtime's encoder thread; an exception in any stage (the sink's included) is raised here."""
        self.run_many([planes], lambda _, band: sink(band), out_dtype, on_tile)

    def run_many(self, frames: Sequence[Planes], sink: Callable[[int, Band], None], out_dtype=np.uint8,
                 on_tile: Callable[[int], None] | None = None) -> None:
        """Upscale images of one shape, channel count, alpha and dtype (video frames) with one tile
        plan, their windows filling the batches in (image, tile) order; `sink(index, band)` gets
        every band of image 0 top to bottom, then image 1's, ... on the encoder thread.

        Each image's output equals its own `run` where the backend computes every sample of a
        batch alike whatever the batch size (oneDNN, for one, takes other kernels for a batch of
        one: a value may then round one step apart). An exception in any stage is raised here.
        """
        if not frames:
            return
        planes = frames[0]  # the one shape, channels, alpha and dtype of them all
        for other in frames[1:]:
            if (other.colour.shape != planes.colour.shape or other.colour.dtype != planes.colour.dtype
                    or (other.alpha is None) != (planes.alpha is None)):
                raise ValueError("run_many takes images of one shape, alpha and dtype")
        plan = self.plan(planes.height, planes.width)
        n_planes = planes_per_tile(planes.channels, planes.alpha is not None, self.backend.channels)
        batch = min(self.batch, len(plan) * len(frames))
        window = plan.window_shape
        # on each stream the batches will run on: a CUDA backend keeps per-stream state (TensorRT's
        # execution contexts and captured graphs)
        for stream in self.streams if self.cuda else [None]:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                self.backend.prepare(batch * n_planes, *window)
        self.times = StageTimes(tiles=len(plan) * len(frames))
        self._allocate_staging(planes, batch, window, out_dtype)
        start = time.perf_counter()

        q_in: queue.Queue = queue.Queue(QUEUE_DEPTH)
        q_out: queue.Queue = queue.Queue(QUEUE_DEPTH)
        bands: queue.Queue = queue.Queue(BAND_QUEUE_DEPTH)
        stop, abandon, errors = threading.Event(), threading.Event(), []
        reader = threading.Thread(target=self._read, args=(frames, plan, q_in, stop), daemon=True,
                                  name="srtrt-reader")
        assembler = threading.Thread(target=self._assemble, daemon=True, name="srtrt-assembler",
                                     args=(planes, plan, q_out, bands, out_dtype, on_tile, errors, abandon))
        encoder = threading.Thread(target=self._encode, args=(bands, sink, errors, abandon), daemon=True,
                                   name="srtrt-encoder")
        reader.start()
        assembler.start()
        encoder.start()
        i = 0
        finished = False
        try:
            while (item := q_in.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                windows, staged, buffer = item
                t0 = time.perf_counter()
                host, host_buffer, event, finite = self._infer(staged, buffer, planes, out_dtype, i)
                self.times.add(infer=time.perf_counter() - t0, batches=1)
                q_out.put((windows, host, host_buffer, event, finite))
                i += 1
                if errors:
                    break
            finished = True
        finally:
            stop.set()
            if not finished or errors:
                abandon.set()  # the output is lost anyway: drop queued work instead of finishing it
            while reader.is_alive():  # unblock the reader if it waits on a full queue
                try:
                    q_in.get(timeout=0.05)
                except queue.Empty:
                    pass
            q_out.put(_DONE)
            assembler.join()
            encoder.join()
            self.times.wall = time.perf_counter() - start
        if errors:
            raise errors[0]

    def _allocate_staging(self, planes: Planes, batch: int, window: tuple[int, int], out_dtype) -> None:
        """Staging buffers for this window shape and batch, reused from the last image when they fit."""
        staged_channels = planes.channels + (planes.alpha is not None)
        self._inputs = self._buffers(self._inputs, (batch, *window, staged_channels),
                                     _staging_dtype(planes.colour.dtype), QUEUE_DEPTH + 2 if self.cuda else 1)
        s = self.backend.scale
        out_channels = planes.channels + (planes.alpha is not None)
        out_shape = (batch, window[0] * s, window[1] * s, out_channels)
        # CPU: one being filled, the queue's, one being assembled; CUDA: one per stream in flight too
        count = QUEUE_DEPTH + 1 + (len(self.streams) + 1 if self.cuda else 0)
        self._outputs = self._buffers(self._outputs, out_shape, _staging_dtype(out_dtype), count)
        if not self.cuda:  # the clamp's copy, a slice of rows at a time
            rows = max(1, QUANTISE_SLICE_BYTES // (batch * out_channels * window[1] * s * 4))
            work_shape = (batch, out_channels, rows, window[1] * s)
            work = self._work
            if work is None or work.shape[0] < batch or (work.shape[1], work.shape[3]) != (work_shape[1], work_shape[3]):
                self._work = torch.empty(work_shape, dtype=torch.float32)

    def run_to_array(self, planes: Planes, out_dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole output in memory (for small images, tests and the Python API)."""
        s = self.backend.scale
        colour = np.empty((planes.height * s, planes.width * s, planes.channels), out_dtype)
        alpha = np.empty((planes.height * s, planes.width * s), out_dtype) if planes.alpha is not None else None

        def keep(band: Band):
            colour[band.y0:band.y0 + band.colour.shape[0]] = band.colour
            if alpha is not None:
                alpha[band.y0:band.y0 + band.alpha.shape[0]] = band.alpha

        self.run(planes, keep, out_dtype)
        return colour, alpha
