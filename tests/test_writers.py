"""Writers: exact streaming PNG/TIFF, bounded memory, atomic commit, clean failure."""
from __future__ import annotations

import errno
import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from srtrt.engine.datapath import writers
from srtrt.engine.datapath.writers import ImageWriter, TiffEncoder, filter_rows, open_writer
from srtrt.errors import SrtrtError

RNG = np.random.default_rng(11)


def random_rows(height, width, channels, bit_depth):
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return RNG.integers(0, 2**bit_depth, (height, width, channels), dtype=dtype)


def write_image(path, pixels, band_rows, **options):
    height, width, channels = pixels.shape
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    with open_writer(path, width, height, channels, bit_depth, **options) as writer:
        for top in range(0, height, band_rows):
            writer.write_rows(pixels[top:top + band_rows])
    return path


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if ".partial" in name]


# --------------------------------------------------------------------------- a reference decoder

def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, body) pairs, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        (crc,) = struct.unpack_from(">I", data, position + 8 + length)
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        position += 12 + length
    return chunks


def reference_decode(data: bytes) -> tuple[np.ndarray, list[int]]:
    """Undo PNG filtering byte by byte as the specification states it (slow, tiny images only)."""
    chunks = png_chunks(data)
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour_type]
    pixel_bytes, row_bytes = channels * depth // 8, width * channels * depth // 8
    stream = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    previous, rows, filters = bytearray(row_bytes), [], []
    for y in range(height):
        line = stream[y * (row_bytes + 1):(y + 1) * (row_bytes + 1)]
        kind, row = line[0], bytearray(line[1:])
        filters.append(kind)
        for i in range(row_bytes):
            a = row[i - pixel_bytes] if i >= pixel_bytes else 0
            b, c = previous[i], previous[i - pixel_bytes] if i >= pixel_bytes else 0
            if kind == 1:
                row[i] = (row[i] + a) & 255
            elif kind == 2:
                row[i] = (row[i] + b) & 255
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(row))
        previous = row
    dtype = ">u2" if depth == 16 else np.uint8
    pixels = np.frombuffer(b"".join(rows), dtype).reshape(height, width, channels).astype(
        np.uint16 if depth == 16 else np.uint8)
    return pixels, filters


# --------------------------------------------------------------------------- PNG

@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("band_rows", [1, 3, 8, 50])
def test_streamed_png_decodes_to_the_rows_written(tmp_path, bit_depth, channels, band_rows):
    pixels = random_rows(21, 9, channels, bit_depth)
    path = write_image(str(tmp_path / "out.png"), pixels, band_rows)
    decoded, _ = reference_decode(open(path, "rb").read())
    np.testing.assert_array_equal(decoded, pixels)
    if bit_depth == 8 or channels == 1:  # the modes Pillow holds without truncation
        pillow = np.asarray(Image.open(path))
        np.testing.assert_array_equal(pillow.reshape(pixels.shape), pixels)


def test_png_uses_every_filter_and_pillow_agrees(tmp_path, monkeypatch):
    """Rows built so that Sub, Up and Paeth each win somewhere; the data spans many IDAT chunks.

    The adaptive filter is what the high levels use (writers.ADAPTIVE_FILTER_LEVEL)."""
    monkeypatch.setattr(writers, "IDAT_BYTES", 4096)
    height, width = 300, 400
    y, x = np.mgrid[0:height, 0:width]
    gradient = ((x * 3) % 256).astype(np.uint8)                       # Sub wins
    stripes = np.broadcast_to(RNG.integers(0, 256, width, dtype=np.uint8), (height, width))  # Up
    diagonal = ((x * 5 + y * 7) % 256).astype(np.uint8)               # Paeth
    noise = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    band = np.where(y < 75, gradient, np.where(y < 150, stripes, np.where(y < 225, diagonal, noise)))
    pixels = np.repeat(band[..., None], 3, axis=2)
    path = write_image(str(tmp_path / "filters.png"), pixels, band_rows=64, png_level=9)
    data = open(path, "rb").read()
    assert sum(kind == b"IDAT" for kind, _ in png_chunks(data)) > 1
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    stream = zlib.decompress(b"".join(body for kind, body in png_chunks(data) if kind == b"IDAT"))
    filters = {stream[row * (width * 3 + 1)] for row in range(height)}
    assert {1, 2, 4} <= filters


def test_filter_rows_matches_the_reference_for_each_batch_split():
    raw = RNG.integers(0, 256, (12, 30), dtype=np.uint8)
    whole = filter_rows(raw, np.zeros(30, np.uint8), 3)
    split = np.vstack([filter_rows(raw[:5], np.zeros(30, np.uint8), 3), filter_rows(raw[5:], raw[4], 3)])
    np.testing.assert_array_equal(whole, split)


def test_png_header_and_metadata_chunks(tmp_path):
    icc, exif = b"not really an ICC profile" * 10, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"
    path = write_image(str(tmp_path / "meta.png"), random_rows(4, 5, 4, 16), 4,
                       icc_profile=icc, exif=exif)
    chunks = dict(png_chunks(open(path, "rb").read()))
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (5, 4, 16, 6, 0, 0, 0)
    name, _, rest = chunks[b"iCCP"].partition(b"\x00")
    assert name == b"ICC Profile" and rest[0] == 0 and zlib.decompress(rest[1:]) == icc
    assert chunks[b"eXIf"] == exif[6:]
    assert Image.open(path).info["icc_profile"] == icc


@pytest.mark.parametrize("extension", [".png", ".tif"])
def test_memory_while_streaming_does_not_grow_with_height(tmp_path, extension):
    width, band_rows = 512, 16
    band_bytes = width * band_rows * 3

    def peak_for(height):
        band = RNG.integers(0, 256, (band_rows, width, 3), dtype=np.uint8)
        tracemalloc.start()
        try:
            with open_writer(str(tmp_path / f"h{height}{extension}"), width, height, 3, 8) as writer:
                for _ in range(height // band_rows):
                    writer.write_rows(band)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, tall = peak_for(1024), peak_for(4096)  # both past one TIFF strip
    assert tall < short * 1.3 + 64 * 1024, (short, tall)
    # the file buffer, a few TIFF tiles' worth, temporaries of a few bands
    assert tall < writers.FILE_BUFFER_BYTES + 4 * writers.SEGMENT_BYTES + 40 * band_bytes, tall


# --------------------------------------------------------------------------- TIFF

@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiff_strips_decode_to_the_rows_written(tmp_path, monkeypatch, bit_depth, channels):
    monkeypatch.setattr(writers, "SEGMENT_BYTES", 200)  # many tiles (16x16), the last row and column short
    pixels = random_rows(23, 10, channels, bit_depth)
    path = write_image(str(tmp_path / "out.tiff"), pixels, 7, icc_profile=b"icc" * 20)
    from srtrt.engine.datapath.imageio import read_image
    image = read_image(path)
    planes = image.pixels if image.alpha is None else np.dstack([image.pixels, image.alpha])
    np.testing.assert_array_equal(planes, pixels)
    assert image.icc_profile == b"icc" * 20 and image.bit_depth == bit_depth


def test_bigtiff_is_chosen_only_past_four_gigabytes():
    assert not TiffEncoder(30000, 30000, 4, 8).bigtiff          # 3.6 GB
    assert TiffEncoder(40000, 40000, 3, 8).bigtiff               # 4.8 GB
    assert TiffEncoder(30000, 30000, 3, 16).bigtiff              # 5.4 GB


# --------------------------------------------------------------------------- Pillow formats

def test_jpeg_webp_bmp_outputs(tmp_path):
    rgb = random_rows(20, 30, 3, 8)
    for name, mode in (("o.jpg", "RGB"), ("o.webp", "RGB"), ("o.bmp", "RGB")):
        written = Image.open(write_image(str(tmp_path / name), rgb, 6))
        assert (written.mode, written.size) == (mode, (30, 20)), name
    bmp = np.asarray(Image.open(str(tmp_path / "o.bmp")))
    np.testing.assert_array_equal(bmp, rgb)  # lossless
    grey = Image.open(write_image(str(tmp_path / "g.jpg"), random_rows(8, 8, 1, 8), 8))
    assert grey.mode == "L"


def test_alpha_and_sixteen_bits_are_reduced_with_warnings(tmp_path):
    rgba16 = random_rows(10, 12, 4, 16)
    with pytest.warns(UserWarning) as caught:
        path = write_image(str(tmp_path / "a.jpg"), rgba16, 5)
    messages = " ".join(str(w.message) for w in caught)
    assert "alpha channel is dropped" in messages and "rounded to 8 bits" in messages
    assert Image.open(path).mode == "RGB"
    with pytest.warns(UserWarning, match="rounded to 8 bits"):
        path = write_image(str(tmp_path / "a.webp"), rgba16, 5)
    webp = Image.open(path)
    assert webp.mode == "RGBA"
    expected_alpha = ((rgba16[..., 3].astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.abs(np.asarray(webp)[..., 3].astype(int) - expected_alpha).max() <= 8


@pytest.mark.parametrize("name, width, height, match", [
    ("huge.jpg", 65501, 10, "too large for JPEG"), ("huge.webp", 16384, 10, "too large for WEBP"),
    ("huge.bmp", 40000, 40000, "too large to encode as BMP in memory")])
def test_format_size_caps_refused_at_open(tmp_path, name, width, height, match):
    with pytest.raises(SrtrtError, match=match):
        open_writer(str(tmp_path / name), width, height, 3, 8)
    assert os.listdir(tmp_path) == []


def test_extension_decides_the_format(tmp_path):
    with pytest.raises(SrtrtError, match="unsupported output format '.gif'"):
        open_writer(str(tmp_path / "x.gif"), 4, 4, 3, 8)
    path = write_image(str(tmp_path / "no_extension"), random_rows(4, 4, 3, 8), 4)
    assert Image.open(path).format == "PNG"


# --------------------------------------------------------------------------- atomicity

def test_commit_renames_and_leaves_nothing_else(tmp_path):
    path = write_image(str(tmp_path / "done.png"), random_rows(6, 4, 3, 8), 2)
    assert os.listdir(tmp_path) == ["done.png"] and os.path.getsize(path) > 0


def test_exception_inside_the_block_aborts(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with open_writer(str(tmp_path / "x.png"), 4, 6, 3, 8) as writer:
            writer.write_rows(random_rows(3, 4, 3, 8))
            assert len(leftovers(tmp_path)) == 1
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    writer.abort()  # idempotent


def test_commit_with_too_few_rows_refuses(tmp_path):
    writer = open_writer(str(tmp_path / "short.png"), 4, 6, 3, 8)
    writer.write_rows(random_rows(5, 4, 3, 8))
    with pytest.raises(SrtrtError, match="5 of 6 rows"):
        writer.commit()
    assert os.listdir(tmp_path) == []


def test_wrong_rows_are_programming_errors(tmp_path):
    with open_writer(str(tmp_path / "v.png"), 4, 2, 3, 8) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write_rows(np.zeros((1, 4, 3), np.uint16))
        with pytest.raises(ValueError, match=r"\(h, 4, 3\)"):
            writer.write_rows(np.zeros((1, 5, 3), np.uint8))
        writer.write_rows(np.zeros((2, 4, 3), np.uint8))
        with pytest.raises(ValueError, match="more rows"):
            writer.write_rows(np.zeros((1, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == ["v.png"]


class FullDisk:
    """Wraps the writer's file: every write fails as on a full disk."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        # without a descriptor Pillow's encoders write through write() as well
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.mark.parametrize("name, height, fail_at", [
    ("big.png", 400, "write"), ("small.png", 4, "commit"), ("x.tif", 400, "write"), ("x.jpg", 4, "commit")])
def test_full_disk_aborts_with_one_line(tmp_path, name, height, fail_at):
    path = str(tmp_path / name)
    writer = open_writer(path, 512, height, 3, 8)
    writer._file = FullDisk(writer._file)
    noise = random_rows(height, 512, 3, 8)  # incompressible: forces output while writing
    with pytest.raises(SrtrtError, match="No space left on device") as caught:
        writer.write_rows(noise)
        assert fail_at == "commit"
        writer.commit()
    assert path in str(caught.value) and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_existing_output_kept_unless_overwrite(tmp_path):
    path = tmp_path / "keep.png"
    path.write_bytes(b"old")
    with pytest.raises(SrtrtError, match="already exists"):
        open_writer(str(path), 4, 4, 3, 8)
    assert path.read_bytes() == b"old"
    write_image(str(path), random_rows(4, 4, 3, 8), 4, overwrite=True)
    assert Image.open(path).size == (4, 4) and leftovers(tmp_path) == []


def test_unwritable_destinations(tmp_path, monkeypatch):
    with pytest.raises(SrtrtError, match="does not exist"):
        open_writer(str(tmp_path / "missing" / "x.png"), 4, 4, 3, 8)
    with pytest.raises(SrtrtError, match="is a directory"):
        open_writer(str(tmp_path), 4, 4, 3, 8)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(writers, "open", refuse, raising=False)  # root ignores chmod, so simulate
    with pytest.raises(SrtrtError, match="cannot write to .*Permission denied"):
        open_writer(str(tmp_path / "x.png"), 4, 4, 3, 8)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SrtrtError, match="cannot write to"):
            open_writer(str(folder / "x.png"), 4, 4, 3, 8)
    finally:
        folder.chmod(0o700)


def test_bigtiff_forced_reads_back(tmp_path):
    pixels = random_rows(7, 9, 3, 8)
    path = str(tmp_path / "big.tif")
    with ImageWriter(path, 9, 7, 3, 8, TiffEncoder(9, 7, 3, 8, bigtiff=True), overwrite=False) as writer:
        writer.write_rows(pixels)
    assert open(path, "rb").read(4) == b"II+\x00"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
