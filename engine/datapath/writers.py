"""Atomic image writers fed row band by row band.

`open_writer` picks the encoder from the file extension. Everything is written to a hidden
temporary file beside the destination (`srtrt.atomic.temp_name`) and renamed over the
destination only on `commit`, so an interrupted run never leaves a half-written image under
the real name.

- PNG streams and compresses on several threads: each band is cut into chunks of rows that
  are filtered and deflated in parallel (zlib-ng), each chunk a raw-deflate piece ended by a
  sync flush, so the pieces concatenate into one valid zlib stream; the Adler-32 checksums of
  the chunks are combined in order. `write_rows` returns when its band is in the file, so an
  error (disk full) is raised by the call whose rows caused it. Memory holds one band.
- TIFF is written by tifffile in deflate-compressed tiles with horizontal prediction, the
  tiles of each row of tiles compressed on several threads; it switches to BigTIFF when the
  file could pass 4 GB. Memory holds a few rows of tiles.
- JPEG, WebP and BMP are encoded by Pillow from the whole image at commit. Their formats cap
  the size anyway (JPEG 65500 px a side, WebP 16383), and the caps are checked at open time.
  They hold 8 bits only, so 16-bit rows are rounded to 8 bits; JPEG and BMP cannot hold alpha
  (Pillow reads 32-bit BMPs back as RGB), so alpha is dropped there. Both are announced by a
  warning at open time rather than refused, as the user asked for that format by name.
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from zlib_ng import zlib_ng

from srtrt.atomic import commit as commit_file
from srtrt.atomic import temp_name
from srtrt.engine.datapath.imageio import XMP_KEYWORD, Description, exif_for_size, to_eight_bit, xmp_for_size
from srtrt.errors import OutputNote, SrtrtError
from srtrt.hardware import usable_cpus
from srtrt.outputs import EXISTS, check_overwrite

OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG",
                  ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
OUTPUT_SUFFIXES = frozenset(OUTPUT_FORMATS)
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "BMP": 2**31 - 1}   # libjpeg, libwebp, BMP header
IN_MEMORY_LIMIT_BYTES = 4 << 30       # JPEG, WebP and BMP are encoded from one array in RAM
JPEG_MAX_EXIF_BYTES = 65533           # one APP1 marker
JPEG_MAX_ICC_BYTES = 255 * (65533 - 14)  # 255 APP2 markers, each with its 14-byte ICC_PROFILE header
JPEG_MAX_XMP_BYTES = 65533 - 29          # one APP1 marker after its namespace, http://ns.adobe.com/xap/1.0/
JPEG_QUALITY = 95
WEBP_QUALITY = 95
FILE_BUFFER_BYTES = 1 << 20
XMP_TAG = 700  # TIFF's XMP packet, bytes
EXIF_PREFIX = b"Exif\x00\x00"


def open_writer(path, width: int, height: int, channels: int, bit_depth: int,
                icc_profile: bytes | None = None, exif: bytes | None = None,
                overwrite: bool = False, png_level: int | None = None,
                threads: int | None = None, description: Description | None = None) -> ImageWriter:
    """Check the destination and the format's limits, then create the temporary file.

    png_level: deflate level 0-9 of a PNG (None: DEFAULT_PNG_LEVEL); threads: how many
    threads compress a PNG or TIFF (None: every CPU this process may use); description: the input's
    dpi, XMP, PNG text and colour chunks, kept where the format has a place for them (a note says
    what is lost where that changes what the file says).
    """
    path = os.fspath(path)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if channels not in (1, 2, 3, 4) or bit_depth not in (8, 16):
        raise ValueError(f"need 1-4 channels and 8 or 16 bits, got {channels}, {bit_depth}")
    if png_level is not None and not 0 <= png_level <= 9:
        raise SrtrtError(f"png level must be 0-9, not {png_level}", path)
    image_format = check_output(path, width, height, channels, overwrite)
    exif = exif_for_size(exif, width, height)
    description = description or Description()
    if description.xmp:
        description = dataclasses.replace(description, xmp=xmp_for_size(description.xmp, width, height))
    if image_format != "PNG":
        _note_what_is_lost(path, image_format, description, icc_profile)
    if image_format == "PNG":
        encoder = PngEncoder(width, height, channels, bit_depth, icc_profile, exif, png_level, threads, description)
    elif image_format == "TIFF":
        if exif:
            warnings.warn(f"{path}: TIFF output keeps the ICC profile but not the EXIF; write .png, .jpg "
                          "or .webp to keep it", OutputNote, stacklevel=2)
        encoder = TiffEncoder(width, height, channels, bit_depth, icc_profile, threads=threads,
                              description=description)
    else:
        try:
            encoder = PillowEncoder(image_format, width, height, channels, bit_depth, icc_profile,
                                    exif, path, description)
        except MemoryError:  # the whole image is held for Pillow's encoder: no smaller tile helps
            raise SrtrtError(f"not enough memory to hold the {width}x{height} image for {image_format}'s "
                             "encoder; write .png or .tif, which stream", path) from None
    return ImageWriter(path, width, height, channels, bit_depth, encoder, overwrite)


# the chunk values that say what an untagged file is taken as anyway (sRGB), so dropping them changes nothing
_SRGB_GAMMA, _SRGB_CHROMATICITIES, _SRGB_CICP = 45455, (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000), \
    bytes((1, 13, 0, 1))


def _colour_chunks_that_matter(chunks: tuple, icc_profile: bytes | None) -> list[str]:
    """The chunks among a PNG's colour chunks whose loss changes how a viewer shows the image."""
    said = dict(chunks)
    lost = []
    if b"cICP" in said and said[b"cICP"] != _SRGB_CICP:  # cICP outranks every other colour statement
        lost.append("cICP")
    if icc_profile or b"sRGB" in said:  # they outrank gAMA and cHRM, and the output keeps the profile
        return lost
    if len(said.get(b"gAMA", b"")) == 4 and abs(struct.unpack(">I", said[b"gAMA"])[0] - _SRGB_GAMMA) > 100:
        lost.append("gAMA")
    if len(said.get(b"cHRM", b"")) == 32 and any(
            abs(a - b) > 100 for a, b in zip(struct.unpack(">8I", said[b"cHRM"]), _SRGB_CHROMATICITIES)):
        lost.append("cHRM")
    return lost


def _note_what_is_lost(path: str, image_format: str, description: Description, icc_profile) -> None:
    """One note for what describes the input and has no place in `image_format`."""
    lost = _colour_chunks_that_matter(description.colour_chunks, icc_profile if image_format != "BMP" else None)
    if lost:
        warnings.warn(f"{path}: {image_format} output cannot keep the input PNG's {'/'.join(lost)} (how its "
                      "colours are shown), so viewers may show it otherwise; write .png to keep it", OutputNote,
                      stacklevel=3)
    keywords = sorted({data.split(b"\0", 1)[0].decode("latin-1") for _, data in description.png_text})
    unkept = ([f"text ({', '.join(keywords)})"] if keywords else []) + (
        ["XMP"] if description.xmp and image_format == "BMP" else [])
    if unkept:
        warnings.warn(f"{path}: {image_format} output does not keep the input's {' and '.join(unkept)}; write .png "
                      "to keep it", OutputNote, stacklevel=3)


def check_output(path, width: int, height: int, channels: int, overwrite: bool = False) -> str:
    """The output format of `path`, once the destination and the format's limits allow an image of
    this size (one line why not): checked before an image is computed, not after."""
    path = os.fspath(path)
    image_format = _format_from_extension(path)
    _check_destination(path, overwrite)
    if image_format in MAX_SIDE and max(width, height) > MAX_SIDE[image_format]:
        raise SrtrtError(f"{width}x{height} is too large for {image_format} (at most "
                         f"{MAX_SIDE[image_format]} pixels a side); write .png or .tif instead", path)
    in_memory_bytes = width * height * channels
    if image_format in MAX_SIDE and in_memory_bytes > IN_MEMORY_LIMIT_BYTES:
        raise SrtrtError(f"{width}x{height} is too large to encode as {image_format} in memory "
                         f"({in_memory_bytes / 2**30:.1f} GiB); write .png or .tif, which stream", path)
    return image_format


def _format_from_extension(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if not extension:
        return "PNG"
    if extension not in OUTPUT_FORMATS:
        raise SrtrtError(f"unsupported output format '{extension}' "
                         f"(use {', '.join(OUTPUT_FORMATS)})", path)
    return OUTPUT_FORMATS[extension]


def _check_destination(path: str, overwrite: bool) -> None:
    if os.path.isdir(path) and not os.path.islink(path):  # a link to a folder is replaced, as a link to a file
        raise SrtrtError("output path is a directory", path)
    check_overwrite(path, overwrite)
    check_output_folder(path)


def check_output_folder(path) -> None:
    """One line when the folder `path` would be written into is missing or not a folder."""
    folder = os.path.dirname(os.fspath(path)) or "."
    if not os.path.isdir(folder):
        raise SrtrtError(f"output folder {folder} {'is not a folder' if os.path.exists(folder) else 'does not exist'}", path)


class ImageWriter:
    """Rows in, top to bottom; the finished file appears under its name only on commit.

    The encoder gets start(file), write(file, rows), finish(file) and abort(); an error in any
    of them (or in one of its threads) aborts the writer and becomes one SrtrtError line.
    """

    def __init__(self, path: str, width: int, height: int, channels: int, bit_depth: int,
                 encoder, overwrite: bool):
        self.path, self.width, self.height = path, width, height
        self.channels, self.bit_depth = channels, bit_depth
        self.rows_written = 0
        self._encoder, self._overwrite = encoder, overwrite
        self._dtype = np.uint8 if bit_depth == 8 else np.uint16
        self._temp_path = temp_name(path)
        self._state = "open"
        try:
            # "x": fail rather than clobber; permissions follow the umask like any new file
            self._file = open(self._temp_path, "xb", buffering=FILE_BUFFER_BYTES)
        except OSError as exc:
            self._state = "aborted"
            raise SrtrtError(f"cannot write to {os.path.dirname(path) or '.'}: {_reason(exc)}", path) from exc
        self._guard(self._encoder.start, self._file)

    def write_rows(self, rows: np.ndarray) -> None:
        """rows: (h, width, channels), or (h, width) for one channel, of the writer's dtype."""
        self._require_open()
        rows = self._validated(rows)
        self._guard(self._encoder.write, self._file, rows)
        self.rows_written += rows.shape[0]

    def commit(self) -> None:
        if self._state == "committed":
            return
        self._require_open()
        if self.rows_written < self.height:
            self.abort()
            raise SrtrtError(f"incomplete output: {self.rows_written} of {self.height} rows "
                             "were written; nothing was saved", self.path)
        self._guard(self._finish_file)
        if not self._overwrite and os.path.lexists(self.path):
            self.abort()  # someone else created it while we were encoding
            raise SrtrtError(EXISTS, self.path)
        self._guard(commit_file, self._temp_path, self.path)
        self._state = "committed"

    def abort(self) -> None:
        """Forget the output: stop the encoder, close and delete the temporary file. Safe to call again."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._encoder.abort()
        finally:
            try:
                self._file.close()
            except OSError:
                pass  # closing flushes the buffer, which fails again on a full disk
            try:
                os.unlink(self._temp_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.commit()
        return False

    def _finish_file(self) -> None:
        self._encoder.finish(self._file)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _guard(self, action, *args) -> None:
        """Run an encoding or I/O step; on failure (disk full, encoder refusal, an encoder
        thread's error) abort and say so in one line. Interrupts abort and pass through."""
        try:
            action(*args)
        except Exception as exc:
            self.abort()
            raise SrtrtError(f"cannot write the output: {_reason(exc)}", self.path) from exc
        except BaseException:
            self.abort()
            raise

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"writer for {self.path} is already {self._state}")

    def _validated(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim == 2 and self.channels == 1:
            rows = rows[:, :, None]
        if rows.ndim != 3 or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(f"rows must be (h, {self.width}, {self.channels}), got {rows.shape}")
        if rows.dtype != self._dtype:
            raise ValueError(f"rows must be {np.dtype(self._dtype).name} for a "
                             f"{self.bit_depth}-bit writer, got {rows.dtype}")
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError(f"more rows than the image height {self.height}")
        return rows


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "not enough memory"
    return getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__


def _thread_count(threads: int | None) -> int:
    return max(1, usable_cpus() if threads is None else threads)


# --------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}   # grey, grey+alpha, RGB, RGBA
# Levels 1-3 code each chunk of Up-filtered rows with Huffman codes alone (no LZ77 matching):
# on the default model's x4 output of ../shared/data/big/ladybird_2048x1536.png that is about
# 2x the speed of LZ77 at level 3 and 5% larger than zlib level 6 (level 3 LZ77: 8% larger),
# because an SR output's residuals are small and rarely repeat. A chunk Huffman shrinks more
# than REDUNDANT_RATIO times is mostly runs (flat areas, graphics), where LZ77 is what pays
# (up to 12x smaller there): it is LZ77-coded at the level as well and the smaller one kept.
# bench/test_encoding.py measures speed and size.
DEFAULT_PNG_LEVEL = 3
ENTROPY_ONLY_MAX_LEVEL = 3
REDUNDANT_RATIO = 5
# From level 7 (zlib-ng's lazy matching) rows get the per-row adaptive filter: 2.5% smaller
# files at level 9 on the same output. Below it Up alone is as small (at level 6: 1% smaller
# than adaptive) and 30x cheaper to compute than Paeth.
ADAPTIVE_FILTER_LEVEL = 7
IDAT_BYTES = 1 << 18                          # compressed bytes gathered per IDAT chunk
CHUNK_BYTES = 1 << 20                         # raw bytes per parallel deflate chunk (size cost < 0.1%)
FILTER_BATCH_BYTES = 1 << 17                  # raw bytes filtered at a time (temporaries stay in cache)
ADLER_BASE = 65521


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def zlib_header(level: int) -> bytes:
    """The two bytes that open a zlib stream: deflate with a 32 KB window, FLEVEL from `level`."""
    method = 0x78
    flevel = 0 if level <= 1 else 1 if level <= 5 else 2 if level == 6 else 3
    flags = flevel << 6
    flags += 31 - (method << 8 | flags) % 31
    return bytes([method, flags])


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of A + B from adler32(A), adler32(B) and len(B).

    Sums per RFC 1950: s1 = 1 + sum of bytes, s2 = sum of the running s1; appending B adds
    s1(B) - 1 to s1 and, to s2, s2(B) plus len(B) times s1(A) - 1.
    """
    s1a, s2a = first & 0xFFFF, first >> 16
    s1b, s2b = second & 0xFFFF, second >> 16
    s1 = (s1a + s1b - 1) % ADLER_BASE
    s2 = (s2a + s2b + second_length * (s1a - 1)) % ADLER_BASE
    return s2 << 16 | s1


class PngEncoder:
    """Non-interlaced PNG, one zlib stream compressed in parallel chunks of rows.

    Each chunk of rows is filtered and raw-deflated on its own (zlib-ng, on a thread pool);
    a chunk ends with a sync flush, which closes on a byte boundary, so the chunks
    concatenate into one deflate stream that a final empty block closes, as pigz does. The
    zlib header is written first and the Adler-32 of the whole stream, combined from the
    chunks' checksums, last. Only the last row is kept between calls.
    """

    def __init__(self, width, height, channels, bit_depth, icc_profile=None, exif=None,
                 level: int | None = None, threads: int | None = None, description: Description | None = None):
        self.width, self.height, self.channels, self.bit_depth = width, height, channels, bit_depth
        self.icc_profile, self.exif, self.description = icc_profile, exif, description or Description()
        self.level = DEFAULT_PNG_LEVEL if level is None else level
        if not 0 <= self.level <= 9:
            raise ValueError(f"png level must be 0-9, got {self.level}")
        self.adaptive = self.level >= ADAPTIVE_FILTER_LEVEL
        self.threads = _thread_count(threads)
        self.pixel_bytes = channels * bit_depth // 8
        self.row_samples = width * channels
        # the row above the next one: zeros above the top row; kept in the sample dtype
        self._previous = np.zeros(self.row_samples, np.uint8 if bit_depth == 8 else np.uint16)
        self._adler = 1
        self._pending = bytearray()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="srtrt-png") if self.threads > 1 else None

    def start(self, file) -> None:
        header = struct.pack(">IIBBBBB", self.width, self.height, self.bit_depth,
                             PNG_COLOUR_TYPE[self.channels], 0, 0, 0)
        file.write(PNG_SIGNATURE + png_chunk(b"IHDR", header))
        said = self.description
        for kind, data in said.colour_chunks:
            file.write(png_chunk(kind, data))
        if said.dpi:  # pHYs: pixels per metre, unit 1
            file.write(png_chunk(b"pHYs", struct.pack(">IIB", *(round(v / 0.0254) for v in said.dpi), 1)))
        for kind, data in said.png_text:
            file.write(png_chunk(kind, data))
        if said.xmp:  # iTXt, uncompressed, no language, as XMP's specification places it in a PNG
            file.write(png_chunk(b"iTXt", XMP_KEYWORD + b"\0\0\0\0\0" + said.xmp))
        if self.icc_profile:
            # name, separator, compression method 0 (deflate), compressed profile
            file.write(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(self.icc_profile)))
        if self.exif:
            body = self.exif[len(EXIF_PREFIX):] if self.exif.startswith(EXIF_PREFIX) else self.exif
            file.write(png_chunk(b"eXIf", body))
        self._pending += zlib_header(self.level)

    def write(self, file, rows: np.ndarray) -> None:
        if rows.shape[0] == 0:
            return
        samples = rows.reshape(rows.shape[0], self.row_samples)
        chunks = self._chunks(samples.shape[0])
        parts = [samples[top:bottom] for top, bottom in chunks]
        aboves = [self._previous if top == 0 else samples[top - 1] for top, _ in chunks]
        run = self._pool.map if self._pool else map
        results = run(self._deflate_chunk, parts, aboves)
        for data, adler, length in results:
            self._adler = adler32_combine(self._adler, adler, length)
            self._pending += data
            if len(self._pending) >= IDAT_BYTES:
                self._flush_idat(file)
        self._previous = samples[-1].copy()

    def finish(self, file) -> None:
        self._pending += zlib_ng.compressobj(self.level, zlib.DEFLATED, -15).flush()  # final empty block
        self._pending += struct.pack(">I", self._adler)
        self._flush_idat(file)
        file.write(png_chunk(b"IEND", b""))
        self.abort()

    def abort(self) -> None:
        """Release the threads: chunks not started are dropped, one already running is waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _chunks(self, rows: int) -> list[tuple[int, int]]:
        """Row ranges of about CHUNK_BYTES each, in a multiple of the thread count so every
        thread gets an equal share of the band."""
        count = -(-rows * self.row_samples * self.bit_depth // 8 // CHUNK_BYTES)
        count = min(rows, -(-max(count, 1) // self.threads) * self.threads)
        edges = [rows * i // count for i in range(count + 1)]
        return [(edges[i], edges[i + 1]) for i in range(count)]

    def _deflate_chunk(self, samples: np.ndarray, above: np.ndarray) -> tuple[bytes, int, int]:
        """One chunk of rows -> (raw deflate ending on a sync flush, Adler-32 of its bytes, their count)."""
        raw, previous = self._as_bytes(samples), self._as_bytes(above[None])[0]
        lines = filter_rows(raw, previous, self.pixel_bytes) if self.adaptive else up_filter_rows(raw, previous)
        if 1 <= self.level <= ENTROPY_ONLY_MAX_LEVEL:
            data = raw_deflate(lines, self.level, zlib.Z_HUFFMAN_ONLY)
            if lines.nbytes > REDUNDANT_RATIO * len(data):  # mostly runs: LZ77 may do far better
                data = min(data, raw_deflate(lines, self.level, zlib.Z_DEFAULT_STRATEGY), key=len)
        else:
            data = raw_deflate(lines, self.level, zlib.Z_DEFAULT_STRATEGY)
        return data, zlib_ng.adler32(lines), lines.nbytes

    def _flush_idat(self, file) -> None:
        if self._pending:
            # written in pieces so the compressed data is not copied again
            file.write(struct.pack(">I", len(self._pending)) + b"IDAT")
            file.write(self._pending)
            file.write(struct.pack(">I", zlib_ng.crc32(self._pending, zlib_ng.crc32(b"IDAT"))))
            self._pending = bytearray()

    def _as_bytes(self, samples: np.ndarray) -> np.ndarray:
        """(h, row samples) -> (h, row bytes) uint8; PNG is big-endian."""
        if self.bit_depth == 16:
            samples = samples.astype(">u2")
        return np.ascontiguousarray(samples).view(np.uint8).reshape(samples.shape[0], -1)


def raw_deflate(data, level: int, strategy: int) -> bytes:
    """Raw deflate (wbits -15: the zlib header and checksum are the encoder's) ending on a sync
    flush, so pieces compressed on their own concatenate into one stream."""
    compressor = zlib_ng.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


FILTER_SUB, FILTER_UP, FILTER_PAETH = 1, 2, 4


def up_filter_rows(raw: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Every row Up-filtered: (h, 1 + row bytes), each line led by its filter type.

    raw: (h, n) uint8; previous: (n,) the unfiltered row above raw[0] (zeros for the first).
    """
    lines = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    lines[:, 0] = FILTER_UP
    np.subtract(raw[0], previous, out=lines[0, 1:])  # uint8: wraps modulo 256 as PNG asks
    np.subtract(raw[1:], raw[:-1], out=lines[1:, 1:])
    return lines


def filter_rows(raw: np.ndarray, previous: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """Adaptive PNG filtering: (h, 1 + row bytes), each line led by its filter type.

    Each row gets the filter (Sub, Up or Paeth) whose output has the smallest sum of absolute
    signed bytes, the heuristic the PNG specification recommends. All arithmetic is uint8
    (wrapping modulo 256, as PNG filters do); rows go through in small batches so the
    temporaries stay in cache. raw: (h, n) uint8; previous: (n,) the unfiltered row above raw[0].
    """
    lines = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    batch = max(1, FILTER_BATCH_BYTES // raw.shape[1])
    for top in range(0, raw.shape[0], batch):
        above_first = previous if top == 0 else raw[top - 1]
        _filter_batch(raw[top:top + batch], above_first, pixel_bytes, lines[top:top + batch])
    return lines


def _filter_batch(raw: np.ndarray, previous: np.ndarray, pixel_bytes: int, lines: np.ndarray) -> None:
    above = np.concatenate([previous[None], raw[:-1]])
    left = np.zeros_like(raw)
    left[:, pixel_bytes:] = raw[:, :-pixel_bytes]
    above_left = np.zeros_like(raw)
    above_left[:, pixel_bytes:] = above[:, :-pixel_bytes]

    candidates = np.stack([raw - left, raw - above, raw - paeth_predictor(left, above, above_left)])
    # cost: sum of |byte read as a signed int8| per row; in uint8 that is min(v, -v)
    costs = np.minimum(candidates, np.negative(candidates)).sum(axis=2, dtype=np.uint32)
    best = np.argmin(costs, axis=0)
    lines[:, 0] = np.array([FILTER_SUB, FILTER_UP, FILTER_PAETH], np.uint8)[best]
    lines[:, 1:] = candidates[best, np.arange(raw.shape[0])]


def paeth_predictor(left: np.ndarray, above: np.ndarray, above_left: np.ndarray) -> np.ndarray:
    """The PNG Paeth predictor on uint8 arrays, with no wider temporaries.

    With p = a + b - c: |p - a| = |b - c|, |p - b| = |a - c| and |p - c| = |(a - c) + (b - c)|,
    which is |a - c| + |b - c| when the two differences have the same sign (then it is never
    the smallest, ties aside) and the difference of the two magnitudes otherwise.
    """
    a, b, c = left, above, above_left
    to_a, to_b = _absolute_difference(b, c), _absolute_difference(a, c)
    same_sign = (b >= c) == (a >= c)
    to_c = _absolute_difference(to_a, to_b)  # |p - c| where the signs differ
    use_a = (to_a <= to_b) & (same_sign | (to_a <= to_c))
    use_b = ~use_a & (same_sign | (to_b <= to_c))
    return np.where(use_a, a, np.where(use_b, b, c))


def _absolute_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(x, y) - np.minimum(x, y)


# --------------------------------------------------------------------------- TIFF

SEGMENT_BYTES = 1 << 18                  # raw bytes per TIFF tile (sides are multiples of 16)
TILE_ROWS = 64                           # rows per TIFF tile: what the encoder holds is a few such rows
TIFF_DEFLATE_LEVEL = 6                   # libdeflate (through tifffile): faster than zlib at 6
CLASSIC_TIFF_LIMIT = 2**32 - (1 << 24)   # leave room for the directory and rounding
HANDOVER_POLL_SECONDS = 0.1


class TiffEncoder:
    """Little-endian TIFF through tifffile: deflate-compressed tiles with horizontal prediction.

    Tiles are wide and short (64 rows), so a row of tiles is a thin band of the image.
    tifffile pulls tiles from an iterator, so it runs on a thread of its own, fed one row of
    tiles at a time; it compresses each row's tiles on `threads` threads. It starts (writes
    its header) at the first rows, through the file the writer holds then. Handing over a row
    of tiles waits until tifffile has taken it, which it does once the row before is in the
    file, so memory stays at two rows of tiles and a write error surfaces at the next rows.
    BigTIFF is used when the file could exceed 4 GB (the worst case: incompressible tiles).
    EXIF is not written: in TIFF it is a directory of its own whose offsets would have to be
    rebuilt; the ICC profile is.
    """

    def __init__(self, width, height, channels, bit_depth, icc_profile=None, bigtiff=None,
                 threads: int | None = None, description: Description | None = None):
        self.width, self.height, self.channels, self.bit_depth = width, height, channels, bit_depth
        self.icc_profile, self.description = icc_profile, description or Description()
        self.threads = _thread_count(threads)
        self.pixel_bytes = channels * bit_depth // 8
        self.tile_rows = max(16, min(TILE_ROWS, SEGMENT_BYTES // (16 * self.pixel_bytes) // 16 * 16))
        self.tile_width = max(16, min(-(-width // 16) * 16,
                                      SEGMENT_BYTES // (self.tile_rows * self.pixel_bytes) // 16 * 16))
        self.tiles_down, self.tiles_across = -(-height // self.tile_rows), -(-width // self.tile_width)
        tiles = self.tiles_down * self.tiles_across
        stored_bytes = tiles * self.tile_rows * self.tile_width * self.pixel_bytes  # edge tiles are padded
        worst_case = stored_bytes * 1.01 + tiles * 64 + len(icc_profile or b"") + (1 << 20)
        self.bigtiff = worst_case > CLASSIC_TIFF_LIMIT if bigtiff is None else bigtiff
        self._dtype = np.uint8 if bit_depth == 8 else np.uint16
        self._band = None              # the row of tiles being filled
        self._band_rows = 0
        self._handover = threading.Condition()
        self._offered = None           # a row of tiles tifffile has not taken yet
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopping = False

    def start(self, file) -> None:
        pass  # tifffile writes its header when the first rows arrive

    def write(self, file, rows: np.ndarray) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_tifffile, args=(file,), daemon=True,
                                            name="srtrt-tiff")
            self._thread.start()
        taken = 0
        while taken < rows.shape[0]:
            if self._band is None:
                self._band = np.empty((self.tile_rows, self.width, self.channels), self._dtype)
            count = min(rows.shape[0] - taken, self.tile_rows - self._band_rows)
            self._band[self._band_rows:self._band_rows + count] = rows[taken:taken + count]
            self._band_rows += count
            taken += count
            if self._band_rows == self.tile_rows:
                self._hand_over(self._band)

    def finish(self, file) -> None:
        if self._band_rows:
            self._hand_over(self._band[:self._band_rows])
        self._thread.join()
        self._raise_thread_error()

    def abort(self) -> None:
        """Stop tifffile's thread (its iterator raises) and wait for it."""
        with self._handover:
            self._stopping = True
            self._handover.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _hand_over(self, band: np.ndarray) -> None:
        """Offer tifffile the next row of tiles and wait until it takes it; its error is raised here."""
        with self._handover:
            self._offered = band
            self._handover.notify_all()
            while self._offered is not None and self._error is None and self._thread.is_alive():
                self._handover.wait(HANDOVER_POLL_SECONDS)
            self._raise_thread_error()
            if self._offered is not None:
                raise RuntimeError("the TIFF writer thread stopped")
        self._band, self._band_rows = None, 0

    def _raise_thread_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run_tifffile(self, file) -> None:
        import tifffile

        tile_bytes = self.tile_rows * self.tile_width * self.pixel_bytes
        try:
            with tifffile.TiffWriter(file, bigtiff=self.bigtiff, byteorder="<") as tiff:
                tiff.write(
                    self._tiles(), shape=(self.height, self.width, self.channels)[:3 if self.channels > 1 else 2],
                    dtype=self._dtype, photometric="rgb" if self.channels >= 3 else "minisblack",
                    planarconfig="contig" if self.channels > 1 else None,
                    extrasamples=("unassalpha",) if self.channels in (2, 4) else None,
                    tile=(self.tile_rows, self.tile_width), compression="zlib",
                    compressionargs={"level": TIFF_DEFLATE_LEVEL}, predictor=True,
                    iccprofile=self.icc_profile or None, metadata=None, software="srtrt",
                    resolution=self.description.dpi, resolutionunit="INCH" if self.description.dpi else None,
                    extratags=[(XMP_TAG, 1, len(xmp), xmp, True)] if (xmp := self.description.xmp) else (),
                    maxworkers=self.threads,
                    # one row of tiles per pass, so tifffile takes rows of tiles one by one
                    buffersize=self.tiles_across * tile_bytes)
        except BaseException as exc:  # handed to the writer's thread
            self._error = exc
        finally:
            with self._handover:
                self._handover.notify_all()

    def _tiles(self):
        """Tiles in file order (rows of tiles, left to right), as the rows arrive."""
        for _ in range(self.tiles_down):
            with self._handover:
                while self._offered is None and not self._stopping:
                    self._handover.wait()
                if self._stopping:
                    raise RuntimeError("TIFF output abandoned")
                band, self._offered = self._offered, None
                self._handover.notify_all()
            if self.channels == 1:
                band = band[:, :, 0]  # one sample per pixel: tifffile wants 2-D tiles
            for left in range(0, self.width, self.tile_width):
                yield band[:, left:left + self.tile_width]


# --------------------------------------------------------------------------- Pillow formats

def _grey_profile(icc_profile: bytes) -> bool:
    """Whether an ICC profile describes grey data: its header's colour space field (bytes 16-20)."""
    return icc_profile[16:20] == b"GRAY"


class PillowEncoder:
    """JPEG, WebP, BMP: gather 8-bit rows, let Pillow encode the whole image at commit."""

    def __init__(self, image_format, width, height, channels, bit_depth, icc_profile, exif, path,
                 description: Description | None = None):
        self.format, self.icc_profile, self.exif = image_format, icc_profile, exif
        self.description = description or Description()
        self.keep_alpha = image_format == "WEBP"
        self.stored_channels = channels if self.keep_alpha or channels in (1, 3) else channels - 1
        if bit_depth == 16:
            warnings.warn(f"{path}: {image_format} holds 8 bits per sample; "
                          "16-bit samples are rounded to 8 bits", OutputNote, stacklevel=3)
        if channels in (2, 4) and not self.keep_alpha:
            warnings.warn(f"{path}: {image_format} cannot store transparency; "
                          "the alpha channel is dropped", OutputNote, stacklevel=3)
        if image_format == "BMP" and (icc_profile or exif):
            warnings.warn(f"{path}: BMP output keeps neither the ICC profile nor the EXIF; write .png, .jpg "
                          "or .webp to keep them", OutputNote, stacklevel=3)
        if image_format == "WEBP" and channels in (1, 2) and icc_profile and _grey_profile(icc_profile):
            warnings.warn(f"{path}: WebP has no grey, so the image is written as RGB, without its grey ICC "
                          "profile (an RGB file cannot carry one); write .png to keep it", OutputNote, stacklevel=3)
            self.icc_profile = None
        if image_format == "JPEG" and exif and len(exif) > JPEG_MAX_EXIF_BYTES:
            warnings.warn(f"{path}: EXIF too long for JPEG ({len(exif)} bytes); not written",
                          OutputNote, stacklevel=3)
            self.exif = None
        if image_format == "JPEG" and self.description.xmp and len(self.description.xmp) > JPEG_MAX_XMP_BYTES:
            warnings.warn(f"{path}: XMP too long for JPEG ({len(self.description.xmp)} bytes); not written: "
                          "write .png to keep it", OutputNote, stacklevel=3)
            self.description = dataclasses.replace(self.description, xmp=None)
        if image_format == "JPEG" and icc_profile and len(icc_profile) > JPEG_MAX_ICC_BYTES:
            # Pillow numbers the markers in one byte: a longer profile is written wrapped round, corrupt
            warnings.warn(f"{path}: ICC profile too long for JPEG ({len(icc_profile)} bytes, at most "
                          f"{JPEG_MAX_ICC_BYTES}); not written: write .png to keep it", OutputNote, stacklevel=3)
            self.icc_profile = None
        # np.empty reserves address space; pages are touched only as rows arrive
        self._image = np.empty((height, width, self.stored_channels), np.uint8)
        self._rows = 0

    def start(self, file) -> None:
        pass

    def write(self, file, rows: np.ndarray) -> None:
        rows = to_eight_bit(rows) if rows.dtype == np.uint16 else rows
        self._image[self._rows:self._rows + rows.shape[0]] = rows[:, :, :self.stored_channels]
        self._rows += rows.shape[0]

    def finish(self, file) -> None:
        from PIL import Image

        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.stored_channels]
        image = Image.fromarray(self._image[:, :, 0] if mode == "L" else self._image)
        if self.format == "WEBP" and mode in ("L", "LA"):
            image = image.convert("RGB" if mode == "L" else "RGBA")  # WebP has no grey modes
        options = {}
        if self.format in ("JPEG", "WEBP"):
            options["quality"] = JPEG_QUALITY if self.format == "JPEG" else WEBP_QUALITY
            if self.icc_profile:
                options["icc_profile"] = self.icc_profile
            if self.exif:
                options["exif"] = self.exif
            if self.description.xmp:
                options["xmp"] = self.description.xmp
        if self.description.dpi and self.format in ("JPEG", "BMP"):  # WebP has no resolution of its own
            options["dpi"] = self.description.dpi
        # encoded in memory, then written: libjpeg writes to the descriptor itself and ignores a short
        # write, so a full disk left a truncated JPEG under the output name and no error
        encoded = io.BytesIO()
        image.save(encoded, format=self.format, **options)
        self._image = None
        file.write(encoded.getbuffer())

    def abort(self) -> None:
        self._image = None
