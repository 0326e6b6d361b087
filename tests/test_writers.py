"""Writers: exact streaming PNG/TIFF, bounded memory, atomic commit, clean failure."""
from __future__ import annotations

import errno
import io
import os
import struct
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from srtrt.engine.datapath import writers
from srtrt.engine.datapath.writers import ImageWriter, TiffEncoder, filter_rows, open_writer
from srtrt.errors import SrtrtError

from conftest import DiskFillsAfter, smooth_image

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


# --------------------------------------------------------------------------- parallel PNG

def idat_stream(path) -> bytes:
    return b"".join(body for kind, body in png_chunks(open(path, "rb").read()) if kind == b"IDAT")


@pytest.mark.parametrize("cut", [0, 1, 7, 1000, 4095, 4096])
def test_adler32_combine_matches_zlib(cut):
    data = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    first, second = data[:cut], data[cut:]
    assert writers.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(data)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_parallel_chunks_make_one_zlib_stream_whatever_the_thread_count(tmp_path, monkeypatch, bit_depth):
    """Many chunks per band, spread over 1, 2 or 3 threads: the same filtered bytes, a valid
    zlib stream (zlib.decompress checks the combined Adler-32), the same pixels."""
    monkeypatch.setattr(writers, "CHUNK_BYTES", 700)  # a few rows per chunk
    pixels = random_rows(61, 37, 3, bit_depth)
    streams = []
    for threads in (1, 2, 3):
        path = write_image(str(tmp_path / f"t{threads}.png"), pixels, 20, threads=threads)
        streams.append(zlib.decompress(idat_stream(path)))
        decoded, _ = reference_decode(open(path, "rb").read())
        np.testing.assert_array_equal(decoded, pixels)
    assert streams[0] == streams[1] == streams[2]
    header = idat_stream(str(tmp_path / "t1.png"))[:2]
    assert header == writers.zlib_header(writers.DEFAULT_PNG_LEVEL) and int.from_bytes(header, "big") % 31 == 0


def test_default_level_up_filters_every_row_and_high_levels_adapt(tmp_path):
    pixels = random_rows(40, 30, 3, 8)
    filters = {}
    for level in (writers.DEFAULT_PNG_LEVEL, writers.ADAPTIVE_FILTER_LEVEL - 1, 9):
        stream = zlib.decompress(idat_stream(write_image(str(tmp_path / f"l{level}.png"), pixels, 16,
                                                         png_level=level)))
        filters[level] = {stream[row * (30 * 3 + 1)] for row in range(40)}
    assert filters[writers.DEFAULT_PNG_LEVEL] == filters[writers.ADAPTIVE_FILTER_LEVEL - 1] == {writers.FILTER_UP}
    assert filters[9] - {writers.FILTER_UP}  # random rows: Sub or Paeth win some


def test_png_level_changes_the_size_never_the_pixels(tmp_path):
    y, x = np.mgrid[0:64, 0:96]
    smooth = np.dstack([(x * 2 + y) % 256, (y * 3) % 256, (x + y * 5) % 256]).astype(np.uint8)
    sizes = {}
    for level in (0, 1, 3, 6, 9):
        path = write_image(str(tmp_path / f"l{level}.png"), smooth, 16, png_level=level)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), smooth)
        sizes[level] = os.path.getsize(path)
    assert sizes[0] > sizes[1] >= sizes[6] and sizes[0] > smooth.nbytes  # level 0: stored blocks
    with pytest.raises(SrtrtError, match="png level must be 0-9"):
        open_writer(str(tmp_path / "bad.png"), 4, 4, 3, 8, png_level=10)
    assert not (tmp_path / "bad.png").exists()


def test_paeth_predictor_matches_the_specification_for_every_byte_triple():
    a, b, c = (v.ravel() for v in np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing="ij"))
    ia, ib, ic = (v.astype(np.int32) for v in (a, b, c))
    p = ia + ib - ic
    pa, pb, pc = np.abs(p - ia), np.abs(p - ib), np.abs(p - ic)
    expected = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    np.testing.assert_array_equal(writers.paeth_predictor(a, b, c), expected)


def test_filters_compute_in_bytes(monkeypatch):
    """No wider temporaries: every array the filters make is uint8 (or the bool masks and the per-row costs)."""
    made = []
    real_empty, real_zeros_like = np.empty, np.zeros_like
    def empty(shape, dtype=float, **kwargs):
        made.append(np.dtype(dtype))
        return real_empty(shape, dtype, **kwargs)

    monkeypatch.setattr(np, "empty", empty)
    monkeypatch.setattr(np, "zeros_like", lambda x, *a, **k: made.append(x.dtype) or real_zeros_like(x, *a, **k))
    raw = RNG.integers(0, 256, (9, 24), dtype=np.uint8)
    filter_rows(raw, np.zeros(24, np.uint8), 3)
    writers.up_filter_rows(raw, np.zeros(24, np.uint8))
    assert made and set(made) == {np.dtype(np.uint8)}
    candidates = writers.paeth_predictor(raw, raw[::-1], raw[:, ::-1])
    assert candidates.dtype == np.uint8


def test_an_exception_in_an_encoder_thread_aborts_the_file(tmp_path, monkeypatch):
    real = writers.PngEncoder._deflate_chunk
    calls = []

    def fails_on_the_third_chunk(self, samples, above):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise RuntimeError("injected encoder failure\nsecond line")
        return real(self, samples, above)

    monkeypatch.setattr(writers, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(writers.PngEncoder, "_deflate_chunk", fails_on_the_third_chunk)
    writer = open_writer(str(tmp_path / "x.png"), 64, 200, 3, 8, threads=2)
    with pytest.raises(SrtrtError, match="cannot write the output: injected encoder failure second line") as caught:
        with writer:
            for _ in range(4):
                writer.write_rows(random_rows(50, 64, 3, 8))
    assert "\n" not in str(caught.value)
    assert any(name.startswith("srtrt-png") for name in calls)
    assert os.listdir(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("srtrt-png")]


@pytest.mark.parametrize("name", ["mid.png", "mid.tif"])
def test_disk_full_in_the_middle_of_a_parallel_encode(tmp_path, name):
    path = str(tmp_path / name)
    writer = open_writer(path, 256, 600, 3, 8, threads=2)
    writer._file = DiskFillsAfter(writer._file, 150_000)  # incompressible rows: full after a few bands
    with pytest.raises(SrtrtError, match="No space left on device") as caught:
        with writer:
            for _ in range(600 // 40):
                writer.write_rows(random_rows(40, 256, 3, 8))
    assert path in str(caught.value) and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith(("srtrt-png", "srtrt-tiff"))]


# --------------------------------------------------------------------------- TIFF through tifffile

def test_tiff_tiles_tags_and_threads(tmp_path):
    import tifffile

    pixels = random_rows(150, 333, 4, 16)
    path = write_image(str(tmp_path / "t.tif"), pixels, 33, icc_profile=b"icc" * 20, threads=2)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        assert not tiff.is_bigtiff and page.is_tiled and page.compression == 8 and page.predictor == 2
        assert page.tilelength == writers.TILE_ROWS and page.tilewidth % 16 == 0
        assert page.extrasamples == (2,) and page.photometric == 2  # unassociated alpha, RGB
        assert page.tags["InterColorProfile"].value == b"icc" * 20
        np.testing.assert_array_equal(page.asarray(), pixels)
    assert not [t for t in threading.enumerate() if t.name.startswith("srtrt-tiff")]


def test_interrupted_tiff_leaves_nothing_and_stops_its_thread(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with open_writer(str(tmp_path / "x.tif"), 100, 300, 3, 8) as writer:
            writer.write_rows(random_rows(150, 100, 3, 8))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("srtrt-tiff")]


@pytest.mark.parametrize("name", ["e.png", "e.tif"])
def test_an_empty_band_writes_nothing(tmp_path, name):
    pixels = random_rows(5, 7, 3, 8)
    with open_writer(str(tmp_path / name), 7, 5, 3, 8) as writer:
        writer.write_rows(pixels[:0])
        writer.write_rows(pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name)), pixels)


def _graphic(height, width) -> np.ndarray:
    """Flat rectangles on a flat ground: what LZ77 compresses far better than Huffman codes alone."""
    rng = np.random.default_rng(5)
    pixels = np.full((height, width, 3), 240, np.uint8)
    for _ in range(400):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        pixels[y:y + rng.integers(4, 80), x:x + rng.integers(4, 240)] = rng.integers(0, 256, 3)
    return pixels


def _zlib6_of_up_filtered(pixels: np.ndarray) -> int:
    rows = pixels.reshape(pixels.shape[0], -1)
    return len(zlib.compress(writers.up_filter_rows(rows, np.zeros(rows.shape[1], np.uint8)).tobytes(), 6))


@pytest.mark.parametrize("content", ["graphic", "photo-like"])
def test_default_level_stays_close_to_zlib6_on_runs_and_on_texture(tmp_path, content):
    """Levels 1-3 Huffman-code each chunk and fall back to LZ77 where the chunk is mostly runs:
    flat graphics stay within 1.1x of zlib level 6 (Huffman alone: several times larger), and
    so does smooth photo-like content, where Huffman codes alone are the whole gain."""
    shape = (768, 1536)  # chunks of a realistic size: ~1 MB
    pixels = _graphic(*shape) if content == "graphic" else smooth_image(*shape, seed=2)
    path = write_image(str(tmp_path / "out.png"), pixels, 384)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    size = len(idat_stream(path))
    assert size <= 1.1 * _zlib6_of_up_filtered(pixels)
    if content == "graphic":  # the fallback is what keeps it there
        rows = pixels.reshape(pixels.shape[0], -1)
        lines = writers.up_filter_rows(rows, np.zeros(rows.shape[1], np.uint8))
        assert len(writers.raw_deflate(lines, 3, zlib.Z_HUFFMAN_ONLY)) > 2 * size


def _grey_profile() -> bytes:
    ImageCms = pytest.importorskip("PIL.ImageCms")
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # a valid header to edit
    return profile[:16] + b"GRAY" + profile[20:]


def test_a_grey_image_written_as_webp_leaves_its_grey_profile_out_and_says_so(tmp_path):
    """WebP has no grey: the image is written as RGB, and a grey ICC profile on an RGB file made
    colour-managed readers fail (LittleCMS: cannot build transform)."""
    grey = random_rows(6, 8, 1, 8)
    with pytest.warns(UserWarning, match="written as RGB, without its grey ICC profile"):
        path = write_image(str(tmp_path / "g.webp"), grey, 6, icc_profile=_grey_profile())
    with Image.open(path) as webp:
        assert webp.mode == "RGB" and "icc_profile" not in webp.info


def test_bmp_output_says_it_keeps_no_profile_and_no_exif(tmp_path):
    with pytest.warns(UserWarning, match="BMP output keeps neither the ICC profile nor the EXIF"):
        write_image(str(tmp_path / "a.bmp"), random_rows(6, 8, 3, 8), 6, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00")
