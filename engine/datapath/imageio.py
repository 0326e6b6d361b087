"""Decoding input images into one normalised form the runtime can tile.

Every input becomes a `DecodedImage`: colour or grey pixels (uint8, or uint16 for 16-bit
sources), an optional alpha plane, and the metadata to carry to the output (ICC profile,
EXIF with its orientation already applied). Every expected failure -- missing file, not an
image, truncated or corrupt data, unsupported pixel mode, an image over the size limit -- is
a one-line `SrtrtError` naming the file.

Pillow truncates 16-bit colour (RGB, RGBA, grey+alpha) to 8 bits because it has no 16-bit
colour modes. Such files are opened by Pillow as usual (header, size check, metadata) and
their pixels decoded once, in full, by tifffile (TIFF: every compression imagecodecs knows,
strips or tiles, planar or interleaved) or by libpng through imagecodecs (PNG: every filter,
interlacing; a tRNS colour key becomes alpha, as it does at 8 bits). libpng also decodes plain
8-bit PNGs, 1.5-2x faster than Pillow with the same result (`_read_plain_png`).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from srtrt.engine.datapath import decoder_messages
from srtrt.errors import OutputNote, SrtrtError

DEFAULT_MAX_PIXELS = 20000 * 20000  # LR pixels; the x4 output is 16 times larger
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
INPUT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
ORIENTATION_TAG = 0x0112
EXIF_PREFIX = b"Exif\x00\x00"


@dataclass(frozen=True)
class Description:
    """What describes an image beside its pixels, ICC and EXIF: carried to the output where its
    format has a place for it, and said where losing it changes what the file says."""
    dpi: tuple | None = None    # (x, y) pixels per inch, as the input states it (kept, like a resample)
    xmp: bytes | None = None    # its orientation reset to 1 where the pixels were turned upright, as the EXIF's
    png_text: tuple = ()        # a PNG's tEXt/zTXt/iTXt chunks, raw (type, data), its XMP aside
    colour_chunks: tuple = ()   # a PNG's (type, data) chunks that say how its values are shown


@dataclass
class DecodedImage:
    pixels: np.ndarray          # H x W x C, C = 1 (grey) or 3 (colour); uint8 or uint16
    alpha: np.ndarray | None    # H x W, same dtype as pixels
    bit_depth: int              # 8 or 16
    icc_profile: bytes | None
    exif: bytes | None          # starts with b"Exif\0\0"; orientation tag already reset to 1
    format: str                 # source format, e.g. "PNG"; "memory" for in-memory images
    path: str | None
    description: Description = Description()

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def file_channels(self) -> int:
        """Channels an output file of this image holds: colour, plus alpha where it has one."""
        return self.pixels.shape[2] + (self.alpha is not None)


# --------------------------------------------------------------------------- reading files

def read_image(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode the file fully (so truncation shows up now, not halfway through a run)."""
    path = os.fspath(path)
    try:
        os.stat(path)
    except OSError as exc:  # missing, a folder that may not be entered, a name too long, a link loop
        raise SrtrtError(_describe_decode_error(exc), path) from None
    if os.path.isdir(path):
        raise SrtrtError("is a directory, not an image", path)
    if not os.path.isfile(path):  # a pipe would be read once (its header), and a FIFO waits for a writer
        raise SrtrtError("not a regular file (a pipe or a device); save the image to a file first", path)
    if os.path.getsize(path) == 0:
        raise SrtrtError("empty file, not an image", path)
    decoded = _decode(path, max_pixels)
    decoded.description = _description(path, decoded.format)
    return decoded


def _description(path: str, source_format: str) -> Description:
    """dpi and XMP as Pillow reads the header; a PNG's own chunks from its chunk list (text may
    follow the pixels, where Pillow reads it only while decoding)."""
    dpi = xmp = None
    text = colour = ()
    if source_format == "PNG":  # one walk over the chunk list
        chunks = png_chunks(path, (b"tEXt", b"zTXt", b"iTXt", *PNG_COLOUR_CHUNKS))
        colour = tuple(chunk for chunk in chunks if chunk[0] in PNG_COLOUR_CHUNKS)
        text = tuple(chunk for chunk in chunks if chunk not in colour)
        xmp_chunks = [data for kind, data in text if kind == b"iTXt" and data.startswith(XMP_KEYWORD + b"\0")]
        text = tuple(chunk for chunk in text if chunk[1][:len(XMP_KEYWORD) + 1] != XMP_KEYWORD + b"\0")
        xmp = _itxt_text(xmp_chunks[0]) if xmp_chunks else None
    with contextlib.suppress(Exception), open_lazily(path) as img:  # a layout only tifffile reads: none
        dpi, xmp = _dpi_and_xmp(img, xmp if source_format == "PNG" else None)
    return Description(dpi, xmp, text, colour)


def _dpi_and_xmp(img: Image.Image, xmp: bytes | None = None) -> tuple:
    """(dpi, XMP) as Pillow holds them for an image (`xmp` where it was read otherwise), each None
    where absent or not usable."""
    dpi = img.info.get("dpi")
    xmp = xmp if xmp is not None else img.info.get("xmp")
    xmp = xmp.encode() if isinstance(xmp, str) else xmp if isinstance(xmp, bytes) and xmp else None
    # as the decoders read it, the pixels were turned upright; asked only where an XMP says how
    # (a PNG's getexif decodes the whole image, looking for a late EXIF)
    if xmp and _orientation_and_exif(img)[0] != 1:
        xmp = _xmp_upright(xmp)
    if not (isinstance(dpi, tuple) and len(dpi) == 2 and all(0 < float(v) < 1e6 for v in dpi)):
        dpi = None
    return dpi, xmp


XMP_KEYWORD = b"XML:com.adobe.xmp"  # the iTXt keyword of a PNG's XMP packet
# what an XMP packet says of the stored pixels' orientation: the output's pixels are upright
_XMP_ORIENTATION = (re.compile(rb'(tiff:Orientation=["\'])[0-9]'), re.compile(rb"(<tiff:Orientation>)\s*[0-9]"))


def _xmp_upright(xmp: bytes) -> bytes:
    for pattern in _XMP_ORIENTATION:
        xmp = pattern.sub(rb"\g<1>1", xmp)
    return xmp


def _itxt_text(data: bytes) -> bytes | None:
    """The text of an iTXt chunk: keyword, 0, compression flag and method, language, 0, keyword translated, 0."""
    try:
        keyword_end = data.index(b"\0")
        compressed = data[keyword_end + 1]
        language_end = data.index(b"\0", keyword_end + 3)
        text = data[data.index(b"\0", language_end + 1) + 1:]
        if not compressed:
            return text
        inflate = zlib.decompressobj()
        text = inflate.decompress(text, PNG_CHUNK_LIMIT)  # bounded: a few hostile bytes inflate to gigabytes
        return None if inflate.unconsumed_tail else text
    except (ValueError, IndexError, zlib.error):
        return None


def _decode(path: str, max_pixels: int | None) -> DecodedImage:
    with _pillow_size_check_lifted(), decoder_messages.kept() as notes:
        try:
            with open_lazily(path) as img:
                check_size(img.size, max_pixels, path)
                _refuse_more_than_one_image(img, path)
                _refuse_signed_tiff(img, path)
                source_format = img.format
                if _sixteen_bit_cmyk(img):
                    return _read_sixteen_bit_cmyk(img, path)
                if _sixteen_bit_colour_rawmode(img) is not None:
                    return _read_sixteen_bit_colour(img, path, source_format)
                if (decoded := _read_plain_png(img, path) or _read_keyed_grey_png(img, path)) is not None:
                    return decoded
                if _planar_grey_alpha_tiff(img):  # compressed, Pillow's libtiff path gives an all-zero alpha plane
                    return _read_tiff_by_tifffile(path, max_pixels, "planar grey+alpha TIFF")
                img.load()
                return _normalise(img, path, source_format)
        except SrtrtError:
            raise
        except Exception as exc:  # a decoder fed hostile bytes may raise anything
            said = decoder_messages.as_suffix(notes)  # damage Pillow saw: the file is refused, not read again
            cause = _describe_decode_error(exc) + said
            no_mode = (isinstance(exc, UnidentifiedImageError) or "raw mode" in str(exc)) and not said
        if no_mode and _is_tiff(path):  # layouts Pillow has no mode for: 16-bit grey+alpha, float RGB, planar LA
            return _read_tiff_by_tifffile(path, max_pixels, cause)
    raise SrtrtError(cause, path)


def read_eight_bit_rgb(path) -> Image.Image:
    """A file as 8-bit RGB, for measuring and training on it: read as `read_image` reads it
    (orientation applied, every mode, 16 bits kept until here), then 16 bits rounded to 8, grey
    spread to RGB, alpha dropped. Pillow's own convert("RGB") clips 16-bit grey to white."""
    decoded = read_image(path)
    pixels = decoded.pixels if decoded.bit_depth == 8 else to_eight_bit(decoded.pixels)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels))


def from_pil(img: Image.Image, path=None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """The same normalisation as `read_image`, for an image already in memory, and the same size limit."""
    filename = getattr(img, "filename", None) or None
    path = path if path is not None else filename
    check_size(img.size, max_pixels, path or "image")
    frame = img.tell() if hasattr(img, "tell") else 0
    # Opened from a file and not decoded yet, at its first image and not drafted smaller: read as
    # `srtrt run` reads the file (all 16 bits, a grey PNG's colour key as alpha, signed TIFF refused).
    # Other formats (GIF, PPM, ...) are not opened by read_image: they are taken as decoded here.
    if (filename and img.tile and frame == 0 and img.format in (*INPUT_FORMATS, "MPO")
            and not getattr(img, "decoderconfig", None) and _still_named(img, filename)):
        return read_image(filename, max_pixels)
    fp = getattr(img, "fp", None)
    if getattr(img, "tile", None) and (fp is None or getattr(fp, "closed", False)):  # Pillow: a bare AssertionError
        raise SrtrtError("the PIL image's file was closed before its pixels were loaded (call load() before "
                         "closing it, or upscale the file)", path)
    try:
        if frame == 0:  # as a file of it is: an opened animation is all its frames
            _refuse_more_than_one_image(img, path)
        # else the caller chose this frame or page: that image is upscaled, and the caller's image stays there
        _refuse_signed_tiff(img, path)
        img.load()
        decoded = _normalise(img, path, img.format or "memory")
    except SrtrtError:
        raise
    except ValueError as exc:
        if "closed image" not in str(exc):
            raise SrtrtError(_describe_decode_error(exc), path) from exc
        raise SrtrtError("the PIL image was closed (Image.close() frees its pixels)", path) from exc
    except Exception as exc:
        raise SrtrtError(_describe_decode_error(exc), path) from exc
    decoded.description = Description(*_dpi_and_xmp(img))
    return decoded


def _still_named(img: Image.Image, filename: str) -> bool:
    """Whether `filename` still names the file the image was opened from: a file replaced under
    that name since, or a relative name read from another working folder, names another."""
    try:
        return os.path.samestat(os.fstat(img.fp.fileno()), os.stat(filename))
    except (AttributeError, OSError, ValueError):  # no file object, or one without a descriptor
        return False


# Pillow's own bomb check is a process-wide setting, read inside Image.open and again when
# a TIFF allocates its pixels in load(). The limit that counts is `max_pixels` (checked from
# the header right after opening), so Pillow's check is lifted while any decode of ours runs:
# the first to start saves the setting, the last to finish puts it back (an application's own
# thread sees Pillow's check off meanwhile; a value it sets then is kept).
# Its cap on one PNG text or ICC chunk (1 MiB) is raised the same way: print and camera profiles
# with large tables run past it, and such a PNG was unreadable; Pillow's 64 MB cap on all of a
# file's text chunks together stays.
PNG_CHUNK_LIMIT = 32 << 20
_LIMIT_LOCK = threading.Lock()
_limit_lifts = 0
_saved_limits = None


@contextlib.contextmanager
def _pillow_size_check_lifted():
    global _limit_lifts, _saved_limits
    with _LIMIT_LOCK:
        if _limit_lifts == 0:
            _saved_limits = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK
            Image.MAX_IMAGE_PIXELS = None
            PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, PNG_CHUNK_LIMIT)
        _limit_lifts += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _limit_lifts -= 1
            if _limit_lifts == 0:  # each put back unless the application set it meanwhile: its value stands
                if Image.MAX_IMAGE_PIXELS is None:
                    Image.MAX_IMAGE_PIXELS = _saved_limits[0]
                if PngImagePlugin.MAX_TEXT_CHUNK == max(_saved_limits[1], PNG_CHUNK_LIMIT):
                    PngImagePlugin.MAX_TEXT_CHUNK = _saved_limits[1]


def why_not_an_input(path) -> str | None:
    """Why `path` cannot be an input, from its first bytes by Pillow's own test of a file's start
    (INPUT_FORMATS), in the words reading it gives; None where it may be one (nothing is decoded,
    so a file that passes may still fail to read)."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(16)
    except OSError as exc:
        return _describe_decode_error(exc)
    Image.init()
    if any(accept is not None and accept(prefix) for accept in (Image.OPEN.get(f, (None, None))[1]
                                                                for f in INPUT_FORMATS)):
        return None
    return _describe_decode_error(UnidentifiedImageError())


def images_in(folder) -> list[Path]:
    """The files of `folder` with a suffix srtrt reads as an image, sorted: the photos a command that
    takes a folder works on (train, eval, calibrate). A folder that is not one, cannot be listed or
    holds no image is one SrtrtError line."""
    folder = Path(folder)
    if not os.path.isdir(folder):
        raise SrtrtError("not a directory", folder)
    try:  # os.path's test, not Path's: on Python 3.11 that raises for a name too long
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and os.path.isfile(p))
    except OSError as exc:
        raise SrtrtError(f"cannot list this folder ({(exc.strerror or type(exc).__name__).lower()})", folder) from None
    if not paths:
        raise SrtrtError(f"no images ({', '.join(sorted(INPUT_SUFFIXES))}) in this directory", folder)
    return paths


@contextlib.contextmanager
def open_lazily(path):
    """The image's header, opened by Pillow from a file object: given a path, Pillow memory-maps
    raw single-strip pixels at the image's displayed size, which Pillow 13 swaps for a TIFF whose
    orientation turns it (5-8), scrambling grey and RGBA pixels."""
    with open(path, "rb") as file, _pillow_size_check_lifted(), Image.open(file, formats=INPUT_FORMATS) as img:
        yield img


def check_size(size: tuple[int, int], max_pixels: int | None, path, frames: bool = False) -> None:
    """An empty size, or one over `max_pixels` (the decompression-bomb guard), refused in one line;
    `frames`: the size is a video's frames'."""
    width, height = size
    if width <= 0 or height <= 0:
        raise SrtrtError(f"{'frames have' if frames else 'image has'} an empty size {width}x{height}", path)
    if max_pixels and width * height > max_pixels:
        raise SrtrtError(
            f"{'frames are' if frames else 'image is'} {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a decompression-bomb guard); raise it with --max-pixels (max_pixels= in Python)", path)


# NewSubfileType (TIFF tag 254) bits of pages that belong to the first image: a reduced-
# resolution copy (thumbnail, pyramid level) or a transparency mask.
_AUXILIARY_PAGE_BITS = 0b101
_SAMPLE_FORMAT_TAG, _SIGNED_INTEGER = 339, 2  # TIFF SampleFormat: 1 unsigned, 2 signed, 3 float


def _refuse_signed_tiff(img: Image.Image, path) -> None:
    """Pillow reads signed 8-bit TIFF samples as unsigned (-1 becomes 255) and signed 16-bit ones
    as plain numbers; neither has one meaning as a picture, so both are refused like tifffile's
    signed layouts."""
    formats = img.tag_v2.get(_SAMPLE_FORMAT_TAG, ()) if img.format == "TIFF" else ()
    if _SIGNED_INTEGER in (formats if isinstance(formats, tuple) else (formats,)):
        raise SrtrtError(f"unsupported TIFF layout (signed {max(_tiff_bits_per_sample(img), default=1)}-bit integer samples); "
                         "srtrt reads unsigned 8 or 16 bits or floats", path)


def _refuse_more_than_one_image(img: Image.Image, path) -> None:
    """An animation or a multi-page TIFF is refused: upscaling its first image alone would drop
    the rest without a word. Thumbnails and masks stored as further TIFF pages do not count, nor
    the images a JPEG lists in its MPF index (MPO): the first is the photo (_note_mpf_images)."""
    if img.format == "TIFF":
        if pages := _tiff_images_after_first(img):
            raise _multi_page(1 + pages, path)
        return
    frames = getattr(img, "n_frames", 1)
    if frames <= 1:
        return
    if img.format == "MPO":
        _note_mpf_images(img, path)
        return
    raise SrtrtError(f"an animated image ({frames} frames); srtrt upscales still images and "
                     "videos: convert it to a video (e.g. .mkv) or to single frames", path)


def _tiff_images_after_first(img: Image.Image) -> int:
    """A TIFF's pages after its first that are images of their own (not thumbnails or masks), read
    through a second view of its file: counting or seeking the caller's image would reload its
    first page from the file when it came back, losing what the caller changed in memory."""
    # Once pixels are loaded, Pillow keeps a many-page TIFF's file only as `_fp`, for seeking; a
    # one-page TIFF's file it closes, and a closed image has none (its use fails, and says so, later)
    file = getattr(img, "fp", None) or getattr(img, "_fp", None)
    if not hasattr(file, "seek") or getattr(file, "closed", False):
        return 0
    position = file.tell()
    try:
        with _pillow_size_check_lifted(), Image.open(file, formats=["TIFF"]) as view:
            return sum(not _auxiliary_page(view, index) for index in range(1, view.n_frames))
    finally:
        file.seek(position)


def _note_mpf_images(img: Image.Image, path) -> None:
    """A camera JPEG lists a preview in its MPF index, a phone's a gain map or a depth map, a 3-D
    camera's a second view: the first image is the photo, and the only one upscaled. Previews go
    without a word; anything else is said to be left out."""
    try:
        kinds = [entry["Attribute"]["MPType"] for entry in img.mpinfo[0xB002][1:]]
    except (AttributeError, KeyError, IndexError, TypeError):
        kinds = ["Undefined"] * (img.n_frames - 1)
    others = [kind for kind in kinds if "Thumbnail" not in kind]
    if others:
        warnings.warn(f"{path or 'image'}: the JPEG's first image is upscaled; the {len(others)} further image"
                      f"{'s' if len(others) > 1 else ''} its MPF index lists (MPType {', '.join(sorted(set(others)))}: "
                      "a gain map, a depth map or another view) left out", OutputNote, stacklevel=4)


def _multi_page(images: int, path) -> SrtrtError:
    return SrtrtError(f"a multi-page TIFF ({images} images); srtrt upscales one image per file: "
                      "split the pages first", path)


def _auxiliary_page(img: Image.Image, index: int) -> bool:
    img.seek(index)
    return bool(int(img.tag_v2.get(254, 0)) & _AUXILIARY_PAGE_BITS)


def _describe_decode_error(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG, WebP, TIFF or BMP image (or its header is corrupt)"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        return exc.strerror.lower()
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in detail.lower():
        return f"truncated image file ({detail})"
    return f"corrupt or unreadable image ({type(exc).__name__}: {detail})"


# --------------------------------------------------------------------------- normalisation

def _normalise(img: Image.Image, path, source_format: str) -> DecodedImage:
    orientation, exif = _orientation_and_exif(img)
    icc = img.info.get("icc_profile") or None
    if img.mode == "CMYK":
        img, icc = _cmyk_to_rgb(img, icc)
    white_is_zero = _white_is_zero(img) and img.mode not in ("1", "L")  # Pillow inverts those itself
    keyed = _grey_key_opaque(img)
    img = _to_basic_mode(img, path)
    if img.mode in ("I", "F"):
        pixels, alpha = _wide_grey_to_uint16(img, path, white_is_zero), None
    else:
        array = np.asarray(img)
        if array.dtype.byteorder not in ("=", "|"):     # I;16B: make it native uint16
            array = array.astype(np.uint16)
        if img.mode.startswith("I;16") and (bits := max(_tiff_bits_per_sample(img), default=16)) < 16:
            array = full_range(array, bits)  # a 10-, 12- or 14-bit TIFF: its white is 2**bits - 1
        if white_is_zero and img.mode.startswith("I;16"):
            array = 65535 - array
        pixels, alpha = _split_alpha(array, img.mode)
    if keyed is not None and alpha is None:
        alpha = keyed.astype(pixels.dtype) * np.iinfo(pixels.dtype).max
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    pixels, alpha = _apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation)
    return DecodedImage(pixels, alpha, bit_depth, icc, exif, source_format, path)


def _grey_key_opaque(img: Image.Image) -> np.ndarray | None:
    """Where a 1-bit or 16/32-bit grey image is opaque under its colour key (a PNG's tRNS), which
    Pillow keeps in `info` only and drops on conversion; None without a key. (8-bit grey converts.)"""
    key = img.info.get("transparency")
    if img.mode not in ("1", "I") and not img.mode.startswith("I;16") or not isinstance(key, int):
        return None
    values = np.asarray(img)
    return values != (bool(key) if img.mode == "1" else key)


def full_range(samples: np.ndarray, bits: int) -> np.ndarray:
    """Samples of `bits` bits stored in a wider integer, scaled so that 2**bits - 1 is its maximum."""
    top, wide = 2 ** bits - 1, np.iinfo(samples.dtype).max
    return ((samples.astype(np.uint32) * wide + top // 2) // top).astype(samples.dtype)


def _to_basic_mode(img: Image.Image, path) -> Image.Image:
    """Reduce Pillow's many modes to L, LA, RGB, RGBA, I;16*, I or F."""
    mode = img.mode
    has_transparency = "transparency" in img.info
    if mode == "1":
        return img.convert("L")
    if mode == "P":  # a palette of RGBA colours (what quantize() of an RGBA image gives) holds alpha itself
        return img.convert("RGBA" if has_transparency or img.palette.mode == "RGBA" else "RGB")
    if mode == "PA":
        return img.convert("RGBA")
    if mode in ("L", "RGB") and has_transparency:     # a tRNS colour key becomes real alpha
        return img.convert("LA" if mode == "L" else "RGBA")
    if mode == "La":
        return img.convert("LA")
    if mode == "RGBa":
        return img.convert("RGBA")
    if mode in ("RGBX", "YCbCr", "HSV"):
        return img.convert("RGB")
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return img
    raise SrtrtError(f"unsupported pixel mode {mode}", path)


def _split_alpha(array: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 2:
        return array[:, :, None], None
    if mode in ("LA", "RGBA"):
        return np.ascontiguousarray(array[:, :, :-1]), np.ascontiguousarray(array[:, :, -1])
    return array, None


def _wide_grey_to_uint16(img: Image.Image, path, white_is_zero: bool = False) -> np.ndarray:
    """32-bit integer and float grey: kept at 16 bits when the values allow it, else refused.
    `white_is_zero`: stored inverted (a MINISWHITE TIFF), turned the right way round first."""
    values = np.asarray(img)
    if img.mode == "I":
        if white_is_zero:
            values = (2 ** max(_tiff_bits_per_sample(img) or {32}) - 1) - values.astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise SrtrtError("32-bit integer pixels outside 0..65535 are not supported", path)
        return values.astype(np.uint16)[:, :, None]
    if white_is_zero:
        values = 1.0 - values
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise SrtrtError("floating-point pixels must lie in [0, 1]", path)
    return np.round(values * 65535.0).astype(np.uint16)[:, :, None]


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, None]:
    """Use the embedded CMYK profile when there is one; the output is then plain sRGB."""
    if icc:
        try:
            import io

            from PIL import ImageCms
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB"), None
        except Exception:
            pass  # a broken or missing colour engine falls back to Pillow's plain conversion
    return img.convert("RGB"), None


# --------------------------------------------------------------------------- orientation

def _apply_orientation(array: np.ndarray | None, orientation: int) -> np.ndarray | None:
    """EXIF orientation 1..8 applied to an H x W (x C) array, as ImageOps.exif_transpose does."""
    if array is None or orientation == 1:
        return array
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(transforms[orientation](array))


def _orientation_and_exif(img: Image.Image) -> tuple[int, bytes | None]:
    try:
        orientation = int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:
        orientation = 1  # unreadable EXIF must not make the image unreadable
    if orientation not in range(1, 9):
        orientation = 1
    raw = img.info.get("exif") if img.format != "TIFF" else _tiff_exif(img)
    exif = _exif_with_orientation_reset(raw) if isinstance(raw, bytes) and raw else None
    return orientation, exif


# The first directory of a TIFF holds the file's layout (strips, sizes, compression) beside
# what describes the photo: only the latter, with the EXIF and GPS directories, is EXIF to carry.
_TIFF_PHOTO_TAGS = (0x010E, 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B, 0x8298)  # description .. copyright
_EXIF_DIRECTORIES = (0x8769, 0x8825)  # EXIF, GPS


def _tiff_exif(img: Image.Image) -> bytes | None:
    """A TIFF's EXIF as the b"Exif\\0\\0" block other formats carry (Pillow gives TIFFs none)."""
    try:
        source, exif = img.getexif(), Image.Exif()
        for tag in _TIFF_PHOTO_TAGS:
            if tag in source:
                exif[tag] = source[tag]
        for directory in _EXIF_DIRECTORIES:
            if entries := dict(source.get_ifd(directory)):
                exif.get_ifd(directory).update(entries)
        # a library's own stamp (tifffile writes its array shape as the description and itself as the
        # software) says nothing of the photo: such a file has no EXIF to carry, or to note the loss of
        about_the_photo = set(exif) - {0x010E, 0x0131} or any(exif.get_ifd(d) for d in _EXIF_DIRECTORIES)
        return exif.tobytes() if about_the_photo else None
    except Exception:
        return None  # unreadable EXIF must not make the image unreadable


# EXIF field types an orientation may be written in (SHORT by the standard; LONG, SSHORT and SLONG
# by some writers, and Pillow reads them all): their struct formats.
_INLINE_INTEGERS = {3: "H", 4: "I", 8: "h", 9: "i"}


def _exif_with_orientation_reset(raw: bytes) -> bytes | None:
    """Patch the orientation in place (lossless: everything else stays byte for byte).

    Returns the EXIF with the b"Exif\\0\\0" prefix, or None when it cannot be parsed.
    """
    body = bytearray(raw[len(EXIF_PREFIX):] if raw.startswith(EXIF_PREFIX) else raw)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(body[:2])]
        ifd0 = struct.unpack_from(order + "I", body, 4)[0]
        (count,) = struct.unpack_from(order + "H", body, ifd0)
        for index in range(count):
            entry = ifd0 + 2 + 12 * index
            tag, kind, values = struct.unpack_from(order + "HHI", body, entry)
            if tag != ORIENTATION_TAG:
                continue
            if values != 1 or kind not in _INLINE_INTEGERS:
                return None  # the pixels are turned already: a tag left as it is would turn them again
            struct.pack_into(order + _INLINE_INTEGERS[kind], body, entry + 8, 1)
    except (KeyError, struct.error):
        return None
    return EXIF_PREFIX + bytes(body)


EXIF_IFD_POINTER = 0x8769
PIXEL_DIMENSION_TAGS = (0xA002, 0xA003)  # PixelXDimension, PixelYDimension: the image's width and height


_XMP_SIZES = tuple((re.compile(rb'(%s=["\'])[0-9]+' % name), re.compile(rb"(<%s>)\s*[0-9]+" % name), axis)
                   for name, axis in ((rb"exif:PixelXDimension", 0), (rb"tiff:ImageWidth", 0),
                                      (rb"exif:PixelYDimension", 1), (rb"tiff:ImageLength", 1)))


def xmp_for_size(xmp: bytes | None, width: int, height: int) -> bytes | None:
    """`xmp` with the pixel sizes it states (EXIF's and TIFF's) giving `width` x `height`, as exif_for_size does."""
    if not xmp:
        return xmp
    for attribute, element, axis in _XMP_SIZES:
        figure = b"%d" % (width, height)[axis]
        xmp = element.sub(rb"\g<1>" + figure, attribute.sub(rb"\g<1>" + figure, xmp))
    return xmp


def exif_for_size(exif: bytes | None, width: int, height: int) -> bytes | None:
    """`exif` with its PixelX/YDimension giving `width` x `height` (the output's, which the input's
    figures would misstate), patched in place like the orientation: everything else stays byte for
    byte. A SHORT entry too small for the new figure becomes a LONG, which fits the same 4-byte slot.
    An EXIF this cannot walk is returned as it is."""
    if not exif:
        return exif
    body = bytearray(exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(body[:2])]

        def entries(ifd: int):
            (count,) = struct.unpack_from(order + "H", body, ifd)
            for index in range(count):
                entry = ifd + 2 + 12 * index
                yield (entry, *struct.unpack_from(order + "HHI", body, entry))

        ifd0 = struct.unpack_from(order + "I", body, 4)[0]
        pointer = [struct.unpack_from(order + "I", body, entry + 8)[0]
                   for entry, tag, _, values in entries(ifd0) if tag == EXIF_IFD_POINTER and values == 1]
        for entry, tag, kind, values in entries(pointer[0]) if pointer else ():
            if tag in PIXEL_DIMENSION_TAGS and values == 1 and kind in (3, 4):
                figure = width if tag == PIXEL_DIMENSION_TAGS[0] else height
                struct.pack_into(order + "HI", body, entry + 2, 3 if kind == 3 and figure < 1 << 16 else 4, 1)
                body[entry + 8:entry + 12] = struct.pack(order + ("H2x" if kind == 3 and figure < 1 << 16 else "I"), figure)
    except (KeyError, struct.error):
        return exif
    return EXIF_PREFIX + bytes(body)


# --------------------------------------------------------------------------- 8-bit PNG

_PLAIN_PNG_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_PNG_METADATA_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")


def _read_plain_png(img: Image.Image, path) -> DecodedImage | None:
    """An 8-bit grey/RGB PNG (with or without alpha, no colour key) decoded by libpng, about
    twice as fast as Pillow (whose pixels it equals); None where Pillow must decode it: other
    modes, orientation from XMP or a raw-profile text chunk, metadata after the pixels (Pillow
    reads those while decoding), or data libpng refuses (Pillow then says what is wrong)."""
    channels = _PLAIN_PNG_CHANNELS.get(img.mode)
    rawmodes = {_tile_rawmode(tile) for tile in img.tile}
    if (img.format != "PNG" or channels is None or rawmodes != {img.mode} or "transparency" in img.info
            or ("exif" not in img.info and ("XML:com.adobe.xmp" in img.info or "Raw profile type exif" in img.info))):
        return None
    try:
        import imagecodecs
    except ImportError:  # a declared dependency, but Pillow reads these files too
        return None
    with open(path, "rb") as file:
        data = file.read()
    if _png_metadata_after_pixels(data):
        return None
    try:
        with _library_messages_dropped():
            samples = imagecodecs.png_decode(data)
    except Exception:
        return None
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.shape != (img.height, img.width, channels) or samples.dtype != np.uint8:
        return None
    pixels, alpha = _split_alpha(samples, img.mode)
    # getexif() would decode the whole image to look for a late eXIf chunk: there is none (checked above)
    orientation, exif = _orientation_and_exif(img) if "exif" in img.info else (1, None)
    icc = img.info.get("icc_profile") or None
    return DecodedImage(_apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation),
                        8, icc, exif, "PNG", path)


_GREY_MODES = ("1", "L", "I", "I;16", "I;16B")


def _read_keyed_grey_png(img: Image.Image, path) -> DecodedImage | None:
    """A grey PNG with a tRNS colour key, decoded by libpng, which makes the key alpha at every bit
    depth; Pillow drops it at 1 and 16 bits and misses it at 2 and 4 (it scales the pixels to
    8 bits, not the key). None for any other image, or where libpng refuses the data."""
    if img.format != "PNG" or img.mode not in _GREY_MODES or "transparency" not in img.info:
        return None
    try:
        with _library_messages_dropped():
            samples = _png_samples(path)
    except Exception:  # Pillow then decodes it and says what is wrong
        return None
    if samples.ndim != 3 or samples.shape != (img.height, img.width, 2):
        return None
    pixels, alpha = _split_alpha(samples, "LA")
    orientation, exif = _orientation_and_exif(img)
    return DecodedImage(_apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation),
                        16 if samples.dtype == np.uint16 else 8, img.info.get("icc_profile") or None, exif, "PNG", path)


# How a PNG's values are to be shown, beside an ICC profile: copied into a PNG output as they are
PNG_COLOUR_CHUNKS = (b"sRGB", b"gAMA", b"cHRM", b"cICP", b"mDCv", b"cLLI")


def png_chunks(path, kinds: tuple) -> tuple:
    """A PNG's chunks of these types, (type, data) in file order, at most PNG_CHUNK_LIMIT bytes in all."""
    found, held = [], 0
    with open(path, "rb") as file:
        file.seek(8)
        while len(head := file.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            if kind in kinds and held + length <= PNG_CHUNK_LIMIT:
                data = file.read(length)
                if len(data) < length:
                    break
                found.append((kind, data))
                held += length
                file.seek(4, os.SEEK_CUR)
            else:
                file.seek(length + 4, os.SEEK_CUR)
    return tuple(found)


def _png_metadata_after_pixels(data: bytes) -> bool:
    """Whether a PNG has an EXIF or text chunk after its first IDAT (or a chunk list that breaks off)."""
    position, seen_pixels = 8, False
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IEND":
            return False
        seen_pixels = seen_pixels or kind == b"IDAT"
        if seen_pixels and kind in _PNG_METADATA_CHUNKS:
            return True
        position += 12 + length
    return True


# --------------------------------------------------------------------------- 16-bit colour

_SIXTEEN_BIT_COLOUR = {f"{m};16{e}" for m in ("RGB", "RGBX", "RGBA", "LA") for e in "BLN"}


def _tile_rawmode(tile) -> str | None:
    args = tile.args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _sixteen_bit_colour_rawmode(img: Image.Image) -> str | None:
    """The raw mode when Pillow would truncate this file's 16-bit colour samples, else None."""
    rawmodes = {_tile_rawmode(tile) for tile in img.tile}
    if len(rawmodes) == 1 and (rawmode := rawmodes.pop()) in _SIXTEEN_BIT_COLOUR:
        return rawmode
    if img.format == "TIFF" and img.mode in ("RGB", "RGBA", "LA") and _tiff_bits_per_sample(img) == {16}:
        return f"{img.mode};16N"  # e.g. uncompressed planar TIFF, which Pillow reads plane by plane
    return None


def _tiff_bits_per_sample(img: Image.Image) -> set[int]:
    bits = getattr(img, "tag_v2", {}).get(258, ())
    return set(bits) if isinstance(bits, tuple) else {bits}


_PHOTOMETRIC, _EXTRA_SAMPLES = 262, 338  # TIFF tags
_MINISWHITE, _MINISBLACK, _RGB = 0, 1, 2  # photometric interpretations (grey with 0 as white or black; RGB)
_ASSOCIATED_ALPHA = 1                     # an extra sample that is alpha premultiplied into the colour


def _white_is_zero(img: Image.Image) -> bool:
    """A grey TIFF storing 0 as white, which Pillow turns the right way round only at 1 and 8 bits."""
    return img.format == "TIFF" and getattr(img, "tag_v2", {}).get(_PHOTOMETRIC) == _MINISWHITE


def _extra_samples(img: Image.Image) -> tuple:
    extra = getattr(img, "tag_v2", {}).get(_EXTRA_SAMPLES, ())
    return tuple(extra) if isinstance(extra, tuple) else (extra,)


def _straight_colour(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour premultiplied by `alpha` (a TIFF's associated alpha) divided back out, as Pillow does
    for 8-bit RGBa: srtrt's alpha is straight (unassociated) everywhere."""
    top = np.iinfo(pixels.dtype).max
    weight = alpha.astype(np.float64)[:, :, None]
    straight = np.where(weight > 0, pixels * (top / np.maximum(weight, 1)), 0)
    return np.clip(np.round(straight), 0, top).astype(pixels.dtype)


def _read_sixteen_bit_colour(first: Image.Image, path, source_format: str) -> DecodedImage:
    """Pixels from tifffile or imagecodecs, metadata and orientation from Pillow's header."""
    layout = _sixteen_bit_colour_rawmode(first).split(";16")[0]
    colour_channels = 1 if layout == "LA" else 3
    with _library_messages_dropped():
        samples = _tiff_samples(path) if source_format == "TIFF" else _png_samples(path)
    if samples.ndim == 2:
        samples = samples[:, :, None]
    # TIFF RGBX: the extra sample is not alpha; PNG RGB with a tRNS key: libpng made it alpha
    has_alpha = layout in ("LA", "RGBA") or (source_format == "PNG" and samples.shape[2] > colour_channels)
    _check_sixteen_bit_samples(samples, first, colour_channels + has_alpha, layout, path)
    pixels = np.ascontiguousarray(samples[:, :, :colour_channels])
    alpha = np.ascontiguousarray(samples[:, :, colour_channels]) if has_alpha else None
    if alpha is not None and source_format == "TIFF" and _extra_samples(first)[:1] == (_ASSOCIATED_ALPHA,):
        pixels = _straight_colour(pixels, alpha)
    orientation, exif = _orientation_and_exif(first)
    icc = first.info.get("icc_profile") or None
    return DecodedImage(_apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation),
                        16, icc, exif, source_format, path)


def _check_sixteen_bit_samples(samples: np.ndarray, first: Image.Image, channels: int, layout: str, path) -> None:
    """One line when the decoded samples are not the 16-bit H x W x `channels` the header announced."""
    if (samples.ndim != 3 or samples.shape[:2] not in _stored_shapes(first) or samples.dtype != np.uint16
            or samples.shape[2] < channels):
        raise SrtrtError(f"corrupt or unreadable image (decoded {samples.dtype} samples of shape "
                         f"{samples.shape} for a {first.width}x{first.height} {layout} image)", path)


def _sixteen_bit_cmyk(img: Image.Image) -> bool:
    return img.format == "TIFF" and img.mode == "CMYK" and _tiff_bits_per_sample(img) == {16}


def _read_sixteen_bit_cmyk(first: Image.Image, path) -> DecodedImage:
    """16-bit CMYK, which Pillow reads at 8 bits. Without a profile it becomes 16-bit RGB by
    Pillow's own formula, R = (1 - C)(1 - K), at full precision. Pillow's colour engine converts
    CMYK through a profile only at 8 bits, so a file with one keeps that path and says so."""
    if first.info.get("icc_profile"):
        warnings.warn(f"{path}: 16-bit CMYK is converted through its ICC profile at 8 bits per "
                      "sample", OutputNote, stacklevel=3)
        first.load()
        return _normalise(first, path, "TIFF")
    with _library_messages_dropped():
        samples = _tiff_samples(path)
    _check_sixteen_bit_samples(samples, first, 4, "16-bit CMYK", path)
    ink = samples[:, :, :4].astype(np.float32) / 65535.0
    rgb = (1.0 - ink[:, :, :3]) * (1.0 - ink[:, :, 3:])
    pixels = np.round(rgb * 65535.0).astype(np.uint16)
    orientation, exif = _orientation_and_exif(first)
    return DecodedImage(_apply_orientation(pixels, orientation), None, 16, None, exif, "TIFF", path)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def _is_tiff(path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) in _TIFF_MAGIC


_PLANAR_CONFIGURATION_TAG, _SEPARATE_PLANES = 284, 2


def _planar_grey_alpha_tiff(img: Image.Image) -> bool:
    """A grey+alpha TIFF stored plane by plane: uncompressed, Pillow has no raw mode for it; compressed,
    it decodes the grey plane and leaves the alpha plane zero (every pixel transparent)."""
    return (img.format == "TIFF" and img.mode in ("LA", "La")  # La: associated (premultiplied) alpha
            and img.tag_v2.get(_PLANAR_CONFIGURATION_TAG) == _SEPARATE_PLANES)


def _read_tiff_by_tifffile(path, max_pixels: int | None, pillow_cause: str) -> DecodedImage:
    """A TIFF whose layout Pillow has no mode for, read by tifffile: grey or RGB, with or without
    alpha, 8 or 16 bits or floats in [0, 1] (kept as 16 bits), any planar configuration. Anything
    else is refused naming its layout; a file tifffile cannot read either keeps Pillow's cause."""
    import tifffile

    try:
        with _library_messages_dropped(), tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            check_size((page.imagewidth, page.imagelength), max_pixels, path)
            images = 1 + sum(not other.subfiletype & _AUXILIARY_PAGE_BITS for other in tiff.pages[1:])
            if images > 1:
                raise _multi_page(images, path)
            layout = (int(page.photometric), page.samplesperpixel, np.dtype(page.dtype))
            premultiplied = tuple(int(e) for e in (page.extrasamples or ()))[:1] == (_ASSOCIATED_ALPHA,)
            colour = {_MINISBLACK: 1, _MINISWHITE: 1, _RGB: 3}.get(layout[0])
            if colour is None or layout[1] not in (colour, colour + 1) or layout[2].kind not in "uf":
                raise SrtrtError(f"unsupported TIFF layout ({page.photometric.name.lower()}, {layout[1]} samples of "
                                 f"{layout[2]}); srtrt reads grey or RGB, with or without alpha, in 8 or 16 bits or floats", path)
            samples = _page_samples(page)
            bits = int(page.bitspersample)
            tags = {tag.code: tag.value for tag in page.tags.values() if tag.code in (ORIENTATION_TAG, 34675, *_EXIF_DIRECTORIES)}
            shape = (page.imagelength, page.imagewidth)
    except SrtrtError:
        raise
    except Exception:
        raise SrtrtError(pillow_cause, path) from None
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3 or samples.shape[:2] != shape or samples.shape[2] not in (colour, colour + 1):
        raise SrtrtError(pillow_cause, path)  # a damaged file tifffile read as something else
    samples = _as_uint(samples, path)
    stored_bits = bits if 1 < bits < samples.dtype.itemsize * 8 else samples.dtype.itemsize * 8  # 12 in uint16
    if layout[0] == _MINISWHITE:  # grey stored with 0 as white, turned the right way round (not its alpha)
        top = 2 ** stored_bits - 1
        samples = np.concatenate([top - np.minimum(samples[:, :, :1], top), samples[:, :, 1:]], axis=2)
    if stored_bits < samples.dtype.itemsize * 8:
        samples = full_range(samples, bits)
    pixels, alpha = np.ascontiguousarray(samples[:, :, :colour]), None
    if samples.shape[2] > colour:
        alpha = np.ascontiguousarray(samples[:, :, colour])
        if premultiplied:
            pixels = _straight_colour(pixels, alpha)
    orientation = int(tags.get(ORIENTATION_TAG, 1))
    orientation = orientation if orientation in range(1, 9) else 1
    if any(directory in tags for directory in _EXIF_DIRECTORIES):
        warnings.warn(f"{path}: the EXIF of a TIFF in this layout is not carried to the output (its ICC profile "
                      "is)", OutputNote, stacklevel=4)
    icc = tags.get(34675)
    return DecodedImage(_apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation),
                        16 if pixels.dtype == np.uint16 else 8, bytes(icc) if icc else None, None, "TIFF",
                        path)


def _as_uint(samples: np.ndarray, path) -> np.ndarray:
    """uint8 and uint16 as they are; floats in [0, 1] to 16 bits (as 32-bit float grey is)."""
    if samples.dtype in (np.uint8, np.uint16):
        return samples
    if samples.dtype.kind == "f":
        if samples.size and not (np.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1):
            raise SrtrtError("floating-point pixels must lie in [0, 1]", path)
        # in float64: a float16 array times 65535.0 stays float16, where 65535 is out of range
        return np.round(samples.astype(np.float64) * 65535.0).astype(np.uint16)
    raise SrtrtError(f"unsupported TIFF sample type {samples.dtype}; srtrt reads 8 or 16 bits or floats", path)


def _stored_shapes(first: Image.Image) -> tuple[tuple[int, int], ...]:
    """(rows, columns) the file's pixels may be stored at: Pillow 13 reports a TIFF turned by its
    orientation (5-8) at its displayed size, older Pillow at its stored one."""
    return (first.height, first.width), (first.width, first.height)


def _tiff_samples(path) -> np.ndarray:
    """The first image of a TIFF as (height, width, samples), interleaved whatever the file's layout."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        return _page_samples(tiff.pages[0])


def _page_samples(page) -> np.ndarray:
    """A tifffile page's pixels as (height, width, samples)."""
    samples, axes = page.asarray(), page.axes
    if "S" in axes:
        samples = np.moveaxis(samples, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    extra = tuple(i for i, axis in enumerate(axes) if axis not in "YXS")
    return samples.squeeze(axis=extra) if extra else samples


def _png_samples(path) -> np.ndarray:
    """A 16-bit PNG decoded by libpng: (height, width[, samples]) native uint16."""
    import imagecodecs

    with open(path, "rb") as file:
        return imagecodecs.png_decode(file.read())


class _DroppedForDecodingThreads:
    """Stands in for sys.stderr while some thread decodes: that thread's writes are dropped."""

    def __init__(self, stream):
        self.stream = stream
        self.threads: set[int] = set()

    def write(self, text):
        return len(text) if threading.get_ident() in self.threads else self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class _DropForDecodingThreads(logging.Filter):
    def __init__(self, threads: set[int]):
        super().__init__()
        self.threads = threads

    def filter(self, record) -> bool:
        return record.thread not in self.threads


_MESSAGES_LOCK = threading.Lock()
_decoding_threads: set[int] = set()
_stderr_stand_in: _DroppedForDecodingThreads | None = None
logging.getLogger("tifffile").addFilter(_DropForDecodingThreads(_decoding_threads))


@contextlib.contextmanager
def _library_messages_dropped():
    """libpng (inside imagecodecs) prints its warnings on sys.stderr ("Interlace handling should
    be turned on"), tifffile logs them; while this thread decodes, both are dropped for it (a
    failure is one line of its own), and other threads' output passes through unchanged."""
    global _stderr_stand_in
    me = threading.get_ident()
    with _MESSAGES_LOCK:
        if not _decoding_threads:
            _stderr_stand_in = _DroppedForDecodingThreads(sys.stderr)
            sys.stderr = _stderr_stand_in
        _decoding_threads.add(me)
        _stderr_stand_in.threads.add(me)
    try:
        yield
    finally:
        with _MESSAGES_LOCK:
            _decoding_threads.discard(me)
            _stderr_stand_in.threads.discard(me)
            if not _decoding_threads:
                if sys.stderr is _stderr_stand_in:  # unless someone replaced it meanwhile
                    sys.stderr = _stderr_stand_in.stream
                _stderr_stand_in = None


# --------------------------------------------------------------------------- back to Pillow

def to_pil(pixels: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> Image.Image:
    """A result as a PIL image. Pillow has no 16-bit colour or grey+alpha modes, so those come
    back as 8-bit (with a warning); write to a file to keep all 16 bits."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must have 1 or 3 channels, got {pixels.shape[2]}")
    if bit_depth == 16 and pixels.shape[2] == 1 and alpha is None:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0], dtype=np.uint16))
    if bit_depth == 16:
        warnings.warn("16-bit colour or grey+alpha cannot be held by a PIL image; "
                      "returning 8 bits per sample", OutputNote, stacklevel=2)
        pixels = to_eight_bit(pixels)
        alpha = None if alpha is None else to_eight_bit(alpha)
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[:, :, None]], axis=2)
    planes = np.ascontiguousarray(planes, dtype=np.uint8)
    return Image.fromarray(planes[:, :, 0] if planes.shape[2] == 1 else planes)  # L, LA, RGB, RGBA


def to_eight_bit(values: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (65535 -> 255, 32768 -> 128)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
