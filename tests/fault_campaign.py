"""Mutated input files for the fault campaign: seeded, reproducible, small.

`mutations(seed)` yields (file name, bytes) without end. Each file is one small valid image
(16-64 px: PNG, JPEG, WebP, TIFF, BMP in colour, grey, palette, 1-bit, 16-bit, 32-bit and
float grey, CMYK, Lab, YCbCr, with alpha or a colour key, EXIF (a rotation too), ICC, several
frames, several compressions) changed in one way, its kind the second part of its name:

- bitflip   1-8 bits flipped anywhere (PNG: chunk CRCs then fixed half the time, so the damage
            reaches the decoder instead of the checksum test);
- truncate  cut anywhere, often inside the header or close to the end;
- byterun   a run of 1-64 equal or random bytes written over the file or inserted into it;
- header    width, height, bit depth, colour type or another layout field rewritten with a lie
            (PNG IHDR with its CRC fixed, JPEG SOF, WebP VP8/VP8L/VP8X, TIFF IFD entries
            including counts past the file end, BMP info header);
- splice    the head of one file joined to the tail of another.

The same seed gives the same bytes (Pillow's encoders are deterministic), so a file the
campaign flags can be made again from its name's index.
"""
from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image
from test_imageio import exif_with_orientation, handmade_png, srgb_profile, uncompressed_tiff

from conftest import smooth_image

KINDS = ("bitflip", "truncate", "byterun", "header", "splice")
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- valid files

def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def base_files(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(label, format, bytes) of every valid file the campaign starts from."""
    rng = random.Random(seed)

    def size() -> tuple[int, int]:
        return rng.randint(16, 64), rng.randint(16, 64)

    def rgb(channels: int = 3, dtype=np.uint8) -> np.ndarray:
        height, width = size()
        return smooth_image(height, width, channels, seed=rng.randrange(1 << 30), dtype=dtype)

    colour, grey = Image.fromarray(rgb()), Image.fromarray(rgb(1)[..., 0])
    rgba = Image.fromarray(rgb(4))
    palette = colour.quantize(32)
    palette_alpha = palette.copy()
    palette_alpha.info["transparency"] = bytes(range(0, 256, 8))
    bilevel = grey.convert("1")
    exif = exif_with_orientation(1)
    flipped = colour.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    unit_floats = Image.fromarray(rgb(1)[..., 0].astype(np.float32) / 255, "F")
    wide_integers = Image.fromarray(rgb(1, np.uint16)[..., 0].astype(np.int32), "I")
    return [
        ("png-rgb", "PNG", _encoded(colour, "PNG")),
        ("png-rgba", "PNG", _encoded(rgba, "PNG")),
        ("png-grey", "PNG", _encoded(grey, "PNG")),
        ("png-greyalpha", "PNG", _encoded(Image.fromarray(rgb(4)).convert("LA"), "PNG")),
        ("png-palette", "PNG", _encoded(palette, "PNG")),
        ("png-palettealpha", "PNG", _encoded(palette_alpha, "PNG")),
        ("png-1bit", "PNG", _encoded(bilevel, "PNG")),
        ("png-exif", "PNG", _encoded(colour, "PNG", exif=exif)),
        ("png-grey16", "PNG", _encoded(Image.fromarray(rgb(1, np.uint16)[..., 0]), "PNG")),
        ("png-rgb16", "PNG", handmade_png(rgb(3, np.uint16), 2)),
        ("png-rgba16", "PNG", handmade_png(rgb(4, np.uint16), 6)),
        ("png-greyalpha16", "PNG", handmade_png(rgb(2, np.uint16), 4)),
        ("png-rgb16interlaced", "PNG", handmade_png(rgb(3, np.uint16), 2, interlace=True)),
        ("png-colourkey", "PNG", _encoded(colour, "PNG", transparency=(10, 20, 30))),
        ("png-greykey", "PNG", _encoded(grey, "PNG", transparency=7)),
        ("png-icc", "PNG", _encoded(colour, "PNG", icc_profile=srgb_profile())),
        ("png-animated", "PNG", _encoded(colour, "PNG", save_all=True, append_images=[flipped])),
        ("jpeg-rgb", "JPEG", _encoded(colour, "JPEG", quality=85)),
        ("jpeg-progressive", "JPEG", _encoded(colour, "JPEG", quality=85, progressive=True)),
        ("jpeg-grey", "JPEG", _encoded(grey, "JPEG")),
        ("jpeg-cmyk", "JPEG", _encoded(colour.convert("CMYK"), "JPEG")),
        ("jpeg-exif", "JPEG", _encoded(colour, "JPEG", exif=exif)),
        ("jpeg-rotated", "JPEG", _encoded(colour, "JPEG", exif=exif_with_orientation(6))),
        ("webp-lossy", "WEBP", _encoded(colour, "WEBP", quality=60)),
        ("webp-lossless", "WEBP", _encoded(rgba, "WEBP", lossless=True)),
        ("webp-lossyalpha", "WEBP", _encoded(rgba, "WEBP", quality=60)),
        ("webp-exif", "WEBP", _encoded(colour, "WEBP", exif=exif)),
        ("webp-animated", "WEBP", _encoded(colour, "WEBP", save_all=True, append_images=[flipped])),
        ("tiff-rgb", "TIFF", _encoded(colour, "TIFF")),
        ("tiff-deflate", "TIFF", _encoded(colour, "TIFF", compression="tiff_adobe_deflate")),
        ("tiff-lzw", "TIFF", _encoded(rgba, "TIFF", compression="tiff_lzw")),
        ("tiff-packbits", "TIFF", _encoded(grey, "TIFF", compression="packbits")),
        ("tiff-jpeg", "TIFF", _encoded(colour, "TIFF", compression="jpeg")),
        ("tiff-palette", "TIFF", _encoded(palette, "TIFF")),
        ("tiff-group4", "TIFF", _encoded(bilevel, "TIFF", compression="group4")),
        ("tiff-grey16", "TIFF", _encoded(Image.fromarray(rgb(1, np.uint16)[..., 0]), "TIFF")),
        ("tiff-rgb16", "TIFF", uncompressed_tiff(rgb(3, np.uint16))),
        ("tiff-rgba16", "TIFF", uncompressed_tiff(rgb(4, np.uint16))),
        ("tiff-grey16big", "TIFF", _encoded(Image.fromarray(rgb(1, np.uint16)[..., 0]).convert("I;16B"), "TIFF")),
        ("tiff-greyalpha", "TIFF", _encoded(rgba.convert("LA"), "TIFF")),
        ("tiff-cmyk", "TIFF", _encoded(colour.convert("CMYK"), "TIFF")),
        ("tiff-ycbcr", "TIFF", _encoded(colour.convert("YCbCr"), "TIFF")),
        ("tiff-lab", "TIFF", _encoded(colour.convert("LAB"), "TIFF")),
        ("tiff-float", "TIFF", _encoded(unit_floats, "TIFF")),
        ("tiff-int32", "TIFF", _encoded(wide_integers, "TIFF")),
        ("tiff-pages", "TIFF", _encoded(colour, "TIFF", save_all=True, append_images=[flipped])),
        ("bmp-rgb", "BMP", _encoded(colour, "BMP")),
        ("bmp-palette", "BMP", _encoded(palette, "BMP")),
        ("bmp-grey", "BMP", _encoded(grey, "BMP")),
        ("bmp-1bit", "BMP", _encoded(bilevel, "BMP")),
        ("bmp-rgba", "BMP", _encoded(rgba, "BMP")),
    ]


# --------------------------------------------------------------------------- helpers

def _png_with_fixed_crcs(data: bytes) -> bytes:
    """Every complete chunk's CRC recomputed, so only the damage itself is left to find."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, at = bytearray(data), len(PNG_SIGNATURE)
    while at + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, at)
        end = at + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(out[at + 4:end]))
        at = end + 4
    return bytes(out)


def _size_lie(rng: random.Random, original: int, bits: int) -> int:
    """A plausible or absurd value for a size field `bits` wide."""
    modest = [0, 1, 2, original - 1, original + 1, original * 2, original * 4, original // 2,
              rng.randint(1, 256)]
    absurd = [(1 << (bits - 1)) - 1, (1 << bits) - 1, 1 << (bits - 2), rng.randrange(1 << bits)]
    return rng.choice(modest if rng.random() < 0.6 else absurd) % (1 << bits)


def _pack(data: bytearray, fmt: str, at: int, value: int) -> None:
    if at + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, at, value % (1 << (8 * struct.calcsize(fmt))))


# --------------------------------------------------------------------------- header lies

def _png_lie(rng: random.Random, data: bytearray) -> None:
    # IHDR data at 16: width, height (4 bytes each), bit depth, colour type, compression, filter, interlace
    width, height = struct.unpack_from(">II", data, 16)
    field = rng.choice(["width", "height", "depth", "colour", "interlace", "filter"])
    if field in ("width", "height"):
        _pack(data, ">I", 16 if field == "width" else 20, _size_lie(rng, width if field == "width" else height, 32))
    else:
        at = {"depth": 24, "colour": 25, "filter": 27, "interlace": 28}[field]
        values = {"depth": [0, 1, 2, 3, 4, 8, 16, 255], "colour": [0, 1, 2, 3, 4, 5, 6, 7, 255],
                  "filter": [1, 255], "interlace": [0, 1, 2]}[field]
        data[at] = rng.choice(values)
    if rng.random() < 0.9:  # else the CRC check catches the lie
        struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))


def _jpeg_lie(rng: random.Random, data: bytearray) -> None:
    at = next((i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in _JPEG_SOF), None)
    if at is None:
        return _bitflip(rng, data)
    # SOF: marker, length (2), precision, height (2), width (2), components, then 3 bytes each
    field = rng.choice(["height", "width", "precision", "components", "sampling"])
    if field in ("height", "width"):
        offset = at + 5 if field == "height" else at + 7
        _pack(data, ">H", offset, _size_lie(rng, struct.unpack_from(">H", data, offset)[0], 16))
    elif field == "precision":
        data[at + 4] = rng.choice([0, 1, 8, 12, 16, 255])
    elif field == "components":
        data[at + 9] = rng.choice([0, 1, 2, 3, 4, 5, 255])
    elif at + 11 < len(data):
        data[at + 11] = rng.choice([0x00, 0x11, 0x22, 0x44, 0x41, 0xFF])


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _webp_lie(rng: random.Random, data: bytearray) -> None:
    choices = []
    if (at := data.find(b"VP8X")) >= 0:   # canvas width-1, height-1: 24 bits each
        choices += [("<I", at + 12, 24), ("<I", at + 15, 24)]
    if (at := data.find(b"VP8L")) >= 0:   # 0x2f, then width-1 (14 bits), height-1 (14 bits), ...
        choices += [("vp8l", at + 9, 14)]
    if (at := data.find(b"\x9d\x01\x2a")) >= 0:  # VP8 key frame: width, height (14 bits + 2 scale bits)
        choices += [("<H", at + 3, 16), ("<H", at + 5, 16)]
    choices.append(("<I", 4, 32))  # the RIFF size
    fmt, offset, bits = rng.choice(choices)
    if fmt == "vp8l":
        if offset + 4 <= len(data):
            (packed,) = struct.unpack_from("<I", data, offset)
            shift = rng.choice([0, 14])
            lie = _size_lie(rng, (packed >> shift) & 0x3FFF, 14)
            struct.pack_into("<I", data, offset, packed & ~(0x3FFF << shift) | lie << shift)
    elif bits == 24:
        if offset + 3 <= len(data):
            data[offset:offset + 3] = _size_lie(rng, int.from_bytes(data[offset:offset + 3], "little"), 24).to_bytes(
                3, "little")
    else:
        _pack(data, fmt, offset, _size_lie(rng, 0, bits))


_TIFF_LAYOUT_TAGS = (256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 284, 317, 320, 338, 339)


def _tiff_lie(rng: random.Random, data: bytearray) -> None:
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or len(data) < 8:
        return _bitflip(rng, data)
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return _bitflip(rng, data)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
    layout = [e for e in entries if struct.unpack_from(order + "H", data, e)[0] in _TIFF_LAYOUT_TAGS]
    if not layout:
        return _bitflip(rng, data)
    entry = rng.choice(layout)
    kind = struct.unpack_from(order + "H", data, entry + 2)[0]
    field = rng.choice(["value", "value", "count", "type"])
    if field == "count":  # a count whose data would lie past the end of the file, or none
        _pack(data, order + "I", entry + 4, rng.choice([0, 2, 3, 1000, 1 << 20, (1 << 32) - 1]))
    elif field == "type":
        _pack(data, order + "H", entry + 2, rng.choice([0, 1, 2, 3, 4, 5, 12, 16, 99]))
    elif kind == 3:
        _pack(data, order + "H", entry + 8, _size_lie(rng, struct.unpack_from(order + "H", data, entry + 8)[0], 16))
    else:
        _pack(data, order + "I", entry + 8, _size_lie(rng, struct.unpack_from(order + "I", data, entry + 8)[0], 32))


def _bmp_lie(rng: random.Random, data: bytearray) -> None:
    field = rng.choice(["width", "height", "height", "bits", "compression", "offset", "colours"])
    if field in ("width", "height"):
        at = 18 if field == "width" else 22
        lie = _size_lie(rng, struct.unpack_from("<i", data, at)[0], 32)
        _pack(data, "<I", at, -lie if rng.random() < 0.2 else lie)  # a negative height is top-down
    elif field == "bits":
        _pack(data, "<H", 28, rng.choice([0, 1, 2, 4, 7, 8, 16, 24, 32, 64]))
    elif field == "compression":
        _pack(data, "<I", 30, rng.choice([0, 1, 2, 3, 4, 5, 6, 99]))
    elif field == "offset":
        _pack(data, "<I", 10, rng.choice([0, 14, 54, len(data), 1 << 31]))
    else:
        _pack(data, "<I", 46, rng.choice([0, 1, 256, 257, 1 << 30]))


_HEADER_LIES: dict[str, Callable[[random.Random, bytearray], None]] = {
    "PNG": _png_lie, "JPEG": _jpeg_lie, "WEBP": _webp_lie, "TIFF": _tiff_lie, "BMP": _bmp_lie}


# --------------------------------------------------------------------------- mutations

def _bitflip(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)


def _byterun(rng: random.Random, data: bytearray) -> bytearray:
    length = rng.randint(1, 64)
    run = (bytes(rng.randrange(256) for _ in range(length)) if rng.random() < 0.3
           else bytes([rng.choice([0x00, 0xFF, rng.randrange(256)])]) * length)
    at = rng.randrange(len(data))
    if rng.random() < 0.3:
        return data[:at] + run + data[at:]
    data[at:at + length] = run[:len(data) - at]
    return data


def _cut(rng: random.Random, length: int) -> int:
    where = rng.random()
    if where < 0.3:
        return rng.randint(1, min(64, length - 1))                 # inside the header
    if where < 0.6:
        return rng.randint(max(1, length - length // 10 - 1), length - 1)  # close to the end
    return rng.randint(1, length - 1)


def mutate(rng: random.Random, kind: str, image_format: str, data: bytes,
           bases: list[tuple[str, str, bytes]]) -> bytes:
    """One mutation of `kind` applied to `data` (a valid file of `image_format`)."""
    out = bytearray(data)
    if kind == "bitflip":
        _bitflip(rng, out)
    elif kind == "truncate":
        out = out[:_cut(rng, len(out))]
    elif kind == "byterun":
        out = _byterun(rng, out)
    elif kind == "header":
        _HEADER_LIES[image_format](rng, out)
    elif kind == "splice":
        _, other_format, other = rng.choice([b for b in bases if b[1] == image_format] if rng.random() < 0.5
                                            else bases)
        out = out[:rng.randint(1, len(out) - 1)] + other[rng.randint(1, len(other) - 1):]
    else:
        raise ValueError(kind)
    if image_format == "PNG" and kind in ("bitflip", "byterun") and rng.random() < 0.5:
        return _png_with_fixed_crcs(bytes(out))
    return bytes(out)


def mutations(seed: int) -> Iterator[tuple[str, bytes]]:
    """("NNNNN-KIND-BASE.EXT", bytes) for ever; the kinds take turns, the base files are drawn at random."""
    bases = base_files(seed)
    rng = random.Random(seed)
    index = 0
    while True:
        kind = KINDS[index % len(KINDS)]
        label, image_format, data = rng.choice(bases)
        yield f"{index:05d}-{kind}-{label}{SUFFIXES[image_format]}", mutate(rng, kind, image_format, data, bases)
        index += 1


def kind_of(name: str) -> str:
    return name.split("-")[1]
