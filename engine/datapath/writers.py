"""Atomic image writers fed row band by row band.

`open_writer` picks the encoder from the file extension. Everything is written to a hidden
temporary file beside the destination (`.NAME.partial-<pid>-<token>`) and renamed over the
destination only on `commit`, so an interrupted run never leaves a half-written image under
the real name.

- PNG and TIFF stream: memory holds only the rows being encoded, whatever the image height.
  Both encoders are small and written here (numpy for the filters, zlib for deflate), so big
  outputs need no extra dependency; TIFF switches to BigTIFF when the file could pass 4 GB.
- JPEG, WebP and BMP are encoded by Pillow from the whole image at commit. Their formats cap
  the size anyway (JPEG 65500 px a side, WebP 16383), and the caps are checked at open time.
  They hold 8 bits only, so 16-bit rows are rounded to 8 bits; JPEG and BMP cannot hold alpha
  (Pillow reads 32-bit BMPs back as RGB), so alpha is dropped there. Both are announced by a
  warning at open time rather than refused, as the user asked for that format by name.
"""
from __future__ import annotations

import os
import secrets
import struct
import warnings
import zlib

import numpy as np

from srtrt.errors import SrtrtError

from srtrt.engine.datapath.imageio import to_eight_bit

OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG",
                  ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
OUTPUT_SUFFIXES = frozenset(OUTPUT_FORMATS)
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "BMP": 2**31 - 1}   # libjpeg, libwebp, BMP header
IN_MEMORY_LIMIT_BYTES = 4 << 30       # JPEG, WebP and BMP are encoded from one array in RAM
JPEG_MAX_EXIF_BYTES = 65533           # one APP1 marker
JPEG_QUALITY = 95
WEBP_QUALITY = 95
ZLIB_LEVEL = 6
FILE_BUFFER_BYTES = 1 << 20
EXIF_PREFIX = b"Exif\x00\x00"


def open_writer(path, width: int, height: int, channels: int, bit_depth: int,
                icc_profile: bytes | None = None, exif: bytes | None = None,
                overwrite: bool = False) -> "ImageWriter":
    """Check the destination and the format's limits, then create the temporary file."""
    path = os.fspath(path)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if channels not in (1, 2, 3, 4) or bit_depth not in (8, 16):
        raise ValueError(f"need 1-4 channels and 8 or 16 bits, got {channels}, {bit_depth}")
    image_format = _format_from_extension(path)
    _check_destination(path, overwrite)
    if image_format in MAX_SIDE and max(width, height) > MAX_SIDE[image_format]:
        raise SrtrtError(f"{width}x{height} is too large for {image_format} (at most "
                         f"{MAX_SIDE[image_format]} pixels a side); write .png or .tif instead", path)
    in_memory_bytes = width * height * channels
    if image_format in MAX_SIDE and in_memory_bytes > IN_MEMORY_LIMIT_BYTES:
        raise SrtrtError(f"{width}x{height} is too large to encode as {image_format} in memory "
                         f"({in_memory_bytes / 2**30:.1f} GiB); write .png or .tif, which stream", path)
    if image_format == "PNG":
        encoder = PngEncoder(width, height, channels, bit_depth, icc_profile, exif)
    elif image_format == "TIFF":
        encoder = TiffEncoder(width, height, channels, bit_depth, icc_profile)
    else:
        encoder = PillowEncoder(image_format, width, height, channels, bit_depth, icc_profile,
                                exif, path)
    return ImageWriter(path, width, height, channels, bit_depth, encoder, overwrite)


def _format_from_extension(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if not extension:
        return "PNG"
    if extension not in OUTPUT_FORMATS:
        raise SrtrtError(f"unsupported output format '{extension}' "
                         f"(use {', '.join(OUTPUT_FORMATS)})", path)
    return OUTPUT_FORMATS[extension]


def _check_destination(path: str, overwrite: bool) -> None:
    if os.path.isdir(path):
        raise SrtrtError("output path is a directory", path)
    if os.path.lexists(path) and not overwrite:
        raise SrtrtError("output already exists (use --overwrite to replace it)", path)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise SrtrtError(f"output folder {folder} does not exist", path)


class ImageWriter:
    """Rows in, top to bottom; the finished file appears under its name only on commit."""

    def __init__(self, path: str, width: int, height: int, channels: int, bit_depth: int,
                 encoder, overwrite: bool):
        self.path, self.width, self.height = path, width, height
        self.channels, self.bit_depth = channels, bit_depth
        self.rows_written = 0
        self._encoder, self._overwrite = encoder, overwrite
        self._dtype = np.uint8 if bit_depth == 8 else np.uint16
        folder, name = os.path.split(path)
        self._temp_path = os.path.join(folder, f".{name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
        self._state = "open"
        try:
            # "x": fail rather than clobber; permissions follow the umask like any new file
            self._file = open(self._temp_path, "xb", buffering=FILE_BUFFER_BYTES)
        except OSError as exc:
            self._state = "aborted"
            raise SrtrtError(f"cannot write to {folder or '.'}: {_reason(exc)}", path) from exc
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
            raise SrtrtError("output already exists (use --overwrite to replace it)", self.path)
        self._guard(os.replace, self._temp_path, self.path)
        self._state = "committed"
        _fsync_folder(os.path.dirname(self.path) or ".")

    def abort(self) -> None:
        """Forget the output: close and delete the temporary file. Safe to call again."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._file.close()
        except OSError:
            pass  # closing flushes the buffer, which fails again on a full disk
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ImageWriter":
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
        """Run an I/O step; on failure (disk full, encoder refusal) abort and say so in one line."""
        try:
            action(*args)
        except (OSError, ValueError) as exc:
            self.abort()
            raise SrtrtError(f"cannot write the output: {_reason(exc)}", self.path) from exc

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
    return getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable; not every platform can open a folder, so best effort."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}   # grey, grey+alpha, RGB, RGBA
IDAT_BYTES = 1 << 18                          # compressed bytes gathered per IDAT chunk
FILTER_BATCH_BYTES = 1 << 20                  # raw bytes filtered at a time (bounds temporaries)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


class PngEncoder:
    """Non-interlaced PNG, one deflate stream fed as rows arrive.

    Each row gets the PNG filter (Sub, Up or Paeth) whose output has the smallest sum of
    absolute signed bytes, the heuristic the PNG specification recommends; all three are
    computed for a batch of rows at once in numpy. Only the last row is kept between calls.
    """

    def __init__(self, width, height, channels, bit_depth, icc_profile=None, exif=None):
        self.width, self.height, self.channels, self.bit_depth = width, height, channels, bit_depth
        self.icc_profile, self.exif = icc_profile, exif
        self.pixel_bytes = channels * bit_depth // 8
        self._previous = np.zeros(width * self.pixel_bytes, np.uint8)  # row above: zeros at top
        self._deflate = zlib.compressobj(ZLIB_LEVEL)
        self._pending = bytearray()

    def start(self, file) -> None:
        header = struct.pack(">IIBBBBB", self.width, self.height, self.bit_depth,
                             PNG_COLOUR_TYPE[self.channels], 0, 0, 0)
        file.write(PNG_SIGNATURE + png_chunk(b"IHDR", header))
        if self.icc_profile:
            # name, separator, compression method 0 (deflate), compressed profile
            file.write(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(self.icc_profile)))
        if self.exif:
            body = self.exif[len(EXIF_PREFIX):] if self.exif.startswith(EXIF_PREFIX) else self.exif
            file.write(png_chunk(b"eXIf", body))

    def write(self, file, rows: np.ndarray) -> None:
        raw = self._as_bytes(rows)
        batch = max(1, FILTER_BATCH_BYTES // raw.shape[1])
        for top in range(0, raw.shape[0], batch):
            part = raw[top:top + batch]
            filtered = filter_rows(part, self._previous, self.pixel_bytes)
            self._previous = part[-1].copy()
            self._pending += self._deflate.compress(filtered.tobytes())
            if len(self._pending) >= IDAT_BYTES:
                self._flush_idat(file)

    def finish(self, file) -> None:
        self._pending += self._deflate.flush()
        self._flush_idat(file)
        file.write(png_chunk(b"IEND", b""))

    def _flush_idat(self, file) -> None:
        if self._pending:
            # written in pieces so the compressed data is not copied again
            file.write(struct.pack(">I", len(self._pending)) + b"IDAT")
            file.write(self._pending)
            file.write(struct.pack(">I", zlib.crc32(self._pending, zlib.crc32(b"IDAT"))))
            self._pending = bytearray()

    def _as_bytes(self, rows: np.ndarray) -> np.ndarray:
        """(h, width, channels) samples -> (h, width * pixel_bytes) bytes; PNG is big-endian."""
        samples = rows.astype(">u2", copy=False) if self.bit_depth == 16 else rows
        return np.ascontiguousarray(samples).view(np.uint8).reshape(rows.shape[0], -1)


FILTER_SUB, FILTER_UP, FILTER_PAETH = 1, 2, 4


def filter_rows(raw: np.ndarray, previous: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """PNG-filter rows of bytes: returns (h, 1 + row bytes), each line led by its filter type.

    raw: (h, n) uint8; previous: (n,) the unfiltered row above raw[0] (zeros for the first).
    """
    above = np.concatenate([previous[None], raw[:-1]])
    left = np.zeros_like(raw)
    left[:, pixel_bytes:] = raw[:, :-pixel_bytes]
    above_left = np.zeros_like(raw)
    above_left[:, pixel_bytes:] = above[:, :-pixel_bytes]

    candidates = np.stack([raw - left, raw - above, raw - paeth_predictor(left, above, above_left)])
    # cost: sum of |byte as signed int8| per row
    costs = np.abs(candidates.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int64)
    best = np.argmin(costs, axis=0)
    lines = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
    lines[:, 0] = np.array([FILTER_SUB, FILTER_UP, FILTER_PAETH], np.uint8)[best]
    lines[:, 1:] = candidates[best, np.arange(raw.shape[0])]
    return lines


def paeth_predictor(left: np.ndarray, above: np.ndarray, above_left: np.ndarray) -> np.ndarray:
    a, b, c = (x.astype(np.int16) for x in (left, above, above_left))
    distance_a, distance_b, distance_c = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    use_a = (distance_a <= distance_b) & (distance_a <= distance_c)
    use_b = ~use_a & (distance_b <= distance_c)
    return np.where(use_a, left, np.where(use_b, above, above_left))


# --------------------------------------------------------------------------- TIFF

STRIP_BYTES = 1 << 19                    # raw bytes per strip (the only rows held in memory)
TIFF_SHORT, TIFF_LONG, TIFF_UNDEFINED, TIFF_LONG8 = 3, 4, 7, 16
CLASSIC_TIFF_LIMIT = 2**32 - (1 << 24)   # leave room for the directory and rounding


class TiffEncoder:
    """Little-endian TIFF in deflate-compressed strips with horizontal prediction.

    Strips go out as they fill; the image directory (strip offsets and sizes, ICC profile)
    is written after the last strip and the header is patched to point at it. BigTIFF is
    used when the file could exceed 4 GB. EXIF is not written: in TIFF it is a directory of
    its own whose offsets would have to be rebuilt.
    """

    def __init__(self, width, height, channels, bit_depth, icc_profile=None, bigtiff=None):
        self.width, self.height, self.channels, self.bit_depth = width, height, channels, bit_depth
        self.icc_profile = icc_profile
        row_bytes = width * channels * bit_depth // 8
        self.rows_per_strip = max(1, min(height, STRIP_BYTES // row_bytes))
        strips = -(-height // self.rows_per_strip)
        worst_case = row_bytes * height * 1.01 + strips * 64 + len(icc_profile or b"") + (1 << 20)
        self.bigtiff = worst_case > CLASSIC_TIFF_LIMIT if bigtiff is None else bigtiff
        self._strip = np.empty((self.rows_per_strip, width, channels),
                               np.uint8 if bit_depth == 8 else np.uint16)
        self._strip_rows = 0
        self._offsets: list[int] = []
        self._byte_counts: list[int] = []
        self._position = 0

    def start(self, file) -> None:
        # the directory offset (last field) is patched in finish()
        header = (b"II+\x00" + struct.pack("<HHQ", 8, 0, 0)) if self.bigtiff \
            else (b"II*\x00" + struct.pack("<I", 0))
        self._emit(file, header)

    def write(self, file, rows: np.ndarray) -> None:
        taken = 0
        while taken < rows.shape[0]:
            count = min(rows.shape[0] - taken, self.rows_per_strip - self._strip_rows)
            self._strip[self._strip_rows:self._strip_rows + count] = rows[taken:taken + count]
            self._strip_rows += count
            taken += count
            if self._strip_rows == self.rows_per_strip:
                self._write_strip(file)

    def finish(self, file) -> None:
        if self._strip_rows:
            self._write_strip(file)
        if self._position % 2:
            self._emit(file, b"\x00")  # directories start on a word boundary
        directory_offset = self._position
        self._emit(file, self._directory(directory_offset))
        file.seek(8 if self.bigtiff else 4)
        file.write(struct.pack("<Q" if self.bigtiff else "<I", directory_offset))
        file.seek(0, os.SEEK_END)

    def _write_strip(self, file) -> None:
        strip = self._strip[:self._strip_rows]
        predicted = strip.copy()
        predicted[:, 1:] -= strip[:, :-1]  # horizontal differencing (Predictor 2), wraps mod 2**bits
        data = zlib.compress(predicted.astype("<u2" if self.bit_depth == 16 else np.uint8,
                                              copy=False).tobytes(), ZLIB_LEVEL)
        self._offsets.append(self._position)
        self._byte_counts.append(len(data))
        self._emit(file, data)
        self._strip_rows = 0

    def _emit(self, file, data: bytes) -> None:
        file.write(data)
        self._position += len(data)

    def _directory(self, offset: int) -> bytes:
        offset_type = TIFF_LONG8 if self.bigtiff else TIFF_LONG
        entries = [
            (256, TIFF_LONG, [self.width]),
            (257, TIFF_LONG, [self.height]),
            (258, TIFF_SHORT, [self.bit_depth] * self.channels),
            (259, TIFF_SHORT, [8]),                                  # deflate
            (262, TIFF_SHORT, [2 if self.channels >= 3 else 1]),     # RGB, or min-is-black grey
            (273, offset_type, self._offsets),
            (277, TIFF_SHORT, [self.channels]),
            (278, TIFF_LONG, [self.rows_per_strip]),
            (279, offset_type, self._byte_counts),
            (284, TIFF_SHORT, [1]),                                  # interleaved samples
            (317, TIFF_SHORT, [2]),                                  # horizontal predictor
        ]
        if self.channels in (2, 4):
            entries.append((338, TIFF_SHORT, [2]))                   # unassociated alpha
        if self.icc_profile:
            entries.append((34675, TIFF_UNDEFINED, self.icc_profile))
        return tiff_directory(entries, offset, self.bigtiff)


def tiff_directory(entries, offset: int, bigtiff: bool) -> bytes:
    """One image file directory at `offset`, its out-of-line values right after it."""
    formats = {TIFF_SHORT: "H", TIFF_LONG: "I", TIFF_LONG8: "Q"}
    count_format, entry_head, inline_bytes = ("<Q", "<HHQ", 8) if bigtiff else ("<H", "<HHI", 4)
    next_format = "<Q" if bigtiff else "<I"
    table_bytes = (struct.calcsize(count_format) + len(entries) * (4 + 2 * inline_bytes)
                   + struct.calcsize(next_format))
    table = bytearray(struct.pack(count_format, len(entries)))
    extra = bytearray()
    for tag, kind, values in sorted(entries, key=lambda entry: entry[0]):
        payload = bytes(values) if kind == TIFF_UNDEFINED \
            else struct.pack(f"<{len(values)}{formats[kind]}", *values)
        table += struct.pack(entry_head, tag, kind, len(values))
        if len(payload) <= inline_bytes:
            table += payload.ljust(inline_bytes, b"\x00")
        else:
            table += struct.pack(next_format, offset + table_bytes + len(extra))
            extra += payload + b"\x00" * (len(payload) % 2)
    table += struct.pack(next_format, 0)  # no further directories
    return bytes(table + extra)


# --------------------------------------------------------------------------- Pillow formats

class PillowEncoder:
    """JPEG, WebP, BMP: gather 8-bit rows, let Pillow encode the whole image at commit."""

    def __init__(self, image_format, width, height, channels, bit_depth, icc_profile, exif, path):
        self.format, self.icc_profile, self.exif = image_format, icc_profile, exif
        self.keep_alpha = image_format == "WEBP"
        self.stored_channels = channels if self.keep_alpha or channels in (1, 3) else channels - 1
        if bit_depth == 16:
            warnings.warn(f"{path}: {image_format} holds 8 bits per sample; "
                          "16-bit samples are rounded to 8 bits", stacklevel=3)
        if channels in (2, 4) and not self.keep_alpha:
            warnings.warn(f"{path}: {image_format} cannot store transparency; "
                          "the alpha channel is dropped", stacklevel=3)
        if image_format == "JPEG" and exif and len(exif) > JPEG_MAX_EXIF_BYTES:
            warnings.warn(f"{path}: EXIF too long for JPEG ({len(exif)} bytes); not written",
                          stacklevel=3)
            self.exif = None
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
        image.save(file, format=self.format, **options)
        self._image = None
