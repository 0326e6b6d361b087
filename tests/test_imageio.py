"""Decoding: every input mode normalised correctly, metadata carried, bad files refused in one line."""
from __future__ import annotations

import contextlib
import functools
import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from srtrt.engine.datapath.imageio import DecodedImage, from_pil, read_image, to_pil
from srtrt.engine.datapath.writers import OutputNote, TiffEncoder, open_writer
from srtrt.errors import SrtrtError

RNG = np.random.default_rng(7)


def random_array(height, width, channels, dtype=np.uint8):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def save(tmp_path, image: Image.Image, name: str, **options) -> str:
    path = str(tmp_path / name)
    image.save(path, **options)
    return path


@functools.cache
def srgb_profile() -> bytes:
    """One sRGB ICC profile per process: LittleCMS stamps a new profile with the current time, so
    two made a second apart differ, and inputs built from them (the fault campaign's) would too."""
    ImageCms = pytest.importorskip("PIL.ImageCms")
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "srtrt test camera"  # Make: proves the other tags survive
    return exif.tobytes()


# --------------------------------------------------------------------------- hand-made PNGs

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def handmade_png(samples: np.ndarray, colour_type: int, interlace: bool = False, bit_depth: int = 16,
                 before: tuple = (), after: tuple = ()) -> bytes:
    """A PNG written independently of the project's encoder (filter None only); `before` and
    `after` are extra (kind, data) chunks around the IDAT."""
    height, width = samples.shape[:2]
    big_endian = samples.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, width, -1)
    passes = [(x0, y0, dx, dy) for x0, y0, dx, dy in ADAM7] if interlace else [(0, 0, 1, 1)]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub_image = big_endian[y0::dy, x0::dx]
        if sub_image.size:
            for row in sub_image:
                raw += b"\x00" + row.tobytes()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + b"".join(png_chunk(*c) for c in before)
            + png_chunk(b"IDAT", zlib.compress(bytes(raw))) + b"".join(png_chunk(*c) for c in after)
            + png_chunk(b"IEND", b""))


def write_bytes(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def through_writer(tmp_path, image: DecodedImage, name: str) -> str:
    """Write a decoded image back out with the project's writer (band by band)."""
    channels = image.pixels.shape[2] + (image.alpha is not None)
    planes = image.pixels if image.alpha is None else np.dstack([image.pixels, image.alpha])
    path = str(tmp_path / name)
    with open_writer(path, image.width, image.height, channels, image.bit_depth,
                     icc_profile=image.icc_profile, exif=image.exif) as writer:
        for top in range(0, image.height, 5):
            writer.write_rows(planes[top:top + 5])
    return path


# --------------------------------------------------------------------------- modes

@pytest.mark.parametrize("mode, channels, has_alpha", [
    ("RGB", 3, False), ("RGBA", 3, True), ("L", 1, False), ("LA", 1, True)])
def test_basic_modes_round_trip_exactly(tmp_path, mode, channels, has_alpha):
    planes = random_array(19, 23, len(mode))
    path = save(tmp_path, Image.fromarray(planes), f"in_{mode}.png")
    image = read_image(path)
    assert (image.pixels.shape, image.bit_depth, image.format) == ((19, 23, channels), 8, "PNG")
    assert image.pixels.dtype == np.uint8 and (image.alpha is not None) == has_alpha
    out = read_image(through_writer(tmp_path, image, "out.png"))
    np.testing.assert_array_equal(out.pixels, image.pixels)
    if has_alpha:
        np.testing.assert_array_equal(out.alpha, planes[..., -1])
        assert out.alpha.shape == (19, 23) and out.alpha.dtype == np.uint8
    planes_back = out.pixels[..., 0] if channels == 1 else out.pixels
    np.testing.assert_array_equal(planes_back, planes if not has_alpha else planes[..., :-1].squeeze())


def test_palette_without_transparency_becomes_rgb(tmp_path):
    source = Image.fromarray(random_array(16, 20, 3)).quantize(17)
    path = save(tmp_path, source, "p.png")
    image = read_image(path)
    assert image.pixels.shape == (16, 20, 3) and image.alpha is None
    np.testing.assert_array_equal(image.pixels, np.asarray(source.convert("RGB")))


def test_palette_with_transparency_becomes_rgba(tmp_path):
    source = Image.fromarray(random_array(16, 20, 3)).quantize(8)
    path = save(tmp_path, source, "pt.png", transparency=3)
    image = read_image(path)
    expected = np.asarray(Image.open(path).convert("RGBA"))
    assert image.pixels.shape == (16, 20, 3) and image.alpha is not None
    np.testing.assert_array_equal(image.alpha, expected[..., 3])
    assert set(np.unique(image.alpha)) == {0, 255}
    out = read_image(through_writer(tmp_path, image, "pt_out.png"))
    np.testing.assert_array_equal(out.alpha, expected[..., 3])


def test_one_bit_becomes_grey(tmp_path):
    path = save(tmp_path, Image.fromarray(random_array(9, 11, 1) > 127).convert("1"), "bw.png")
    image = read_image(path)
    assert image.pixels.shape == (9, 11, 1) and image.bit_depth == 8
    assert set(np.unique(image.pixels)) <= {0, 255}


def test_sixteen_bit_grey_png_stays_sixteen_bit(tmp_path):
    values = random_array(13, 17, 1, np.uint16)
    path = save(tmp_path, Image.fromarray(values), "g16.png")
    image = read_image(path)
    assert image.bit_depth == 16 and image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels[..., 0], values)
    out = read_image(through_writer(tmp_path, image, "g16_out.png"))
    assert out.bit_depth == 16
    np.testing.assert_array_equal(out.pixels, image.pixels)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("colour_type, planes", [(2, 3), (6, 4), (4, 2)])
def test_sixteen_bit_colour_png_keeps_every_bit(tmp_path, colour_type, planes, interlace):
    samples = random_array(11, 13, planes, np.uint16)
    path = write_bytes(tmp_path, "c16.png", handmade_png(samples, colour_type, interlace))
    image = read_image(path)
    assert image.bit_depth == 16 and image.pixels.dtype == np.uint16
    has_alpha = planes in (2, 4)
    np.testing.assert_array_equal(image.pixels, samples[..., :planes - has_alpha])
    if has_alpha:
        np.testing.assert_array_equal(image.alpha, samples[..., -1])
    out = read_image(through_writer(tmp_path, image, "c16_out.png"))
    np.testing.assert_array_equal(out.pixels, image.pixels)
    assert out.bit_depth == 16 and (out.alpha is None) == (not has_alpha)


def test_sixteen_bit_grey_tiff(tmp_path):
    values = random_array(10, 12, 1, np.uint16)
    image = read_image(save(tmp_path, Image.fromarray(values), "g16.tif"))
    assert image.bit_depth == 16 and image.format == "TIFF"
    np.testing.assert_array_equal(image.pixels[..., 0], values)
    out = read_image(through_writer(tmp_path, image, "g16_out.tif"))
    np.testing.assert_array_equal(out.pixels, image.pixels)


@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_tiff_compressed_and_raw(tmp_path, channels):
    samples = random_array(9, 14, channels, np.uint16)
    compressed = str(tmp_path / "c16.tif")
    with open_writer(compressed, 14, 9, channels, 16) as writer:
        writer.write_rows(samples)
    raw = write_bytes(tmp_path, "raw16.tif", uncompressed_tiff(samples))
    for path in (compressed, raw):
        image = read_image(path)
        assert image.bit_depth == 16
        np.testing.assert_array_equal(image.pixels, samples[..., :3])
        if channels == 4:
            np.testing.assert_array_equal(image.alpha, samples[..., 3])


def uncompressed_tiff(samples: np.ndarray) -> bytes:
    """A baseline TIFF in one uncompressed strip, written by tifffile rather than the project's writer."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, samples.astype("<u2"), photometric="rgb", planarconfig="contig",
                     extrasamples=("unassalpha",) if samples.shape[2] == 4 else None,
                     rowsperstrip=samples.shape[0], compression=None, metadata=None)
    return buffer.getvalue()


def test_bigtiff_reads_back(tmp_path):
    samples = random_array(7, 9, 3, np.uint16)
    path = str(tmp_path / "big.tif")
    from srtrt.engine.datapath.writers import ImageWriter
    writer = ImageWriter(path, 9, 7, 3, 16, TiffEncoder(9, 7, 3, 16, bigtiff=True), overwrite=False)
    with writer:
        writer.write_rows(samples)
    assert open(path, "rb").read(4) == b"II+\x00"
    np.testing.assert_array_equal(read_image(path).pixels, samples)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = Image.fromarray(random_array(16, 24, 3))
    path = save(tmp_path, rgb.convert("CMYK"), "cmyk.jpg", quality=95)
    image = read_image(path)
    assert image.pixels.shape == (16, 24, 3) and image.icc_profile is None
    np.testing.assert_array_equal(image.pixels, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("orientation", [1, 6])
def test_sixteen_bit_cmyk_tiff_becomes_sixteen_bit_rgb(tmp_path, orientation):
    tifffile = pytest.importorskip("tifffile")
    ink = random_array(6, 10, 4, np.uint16)
    path = str(tmp_path / "cmyk16.tif")
    tifffile.imwrite(path, ink, photometric="separated", extratags=[(274, "H", 1, orientation, True)])
    image = read_image(path)
    c, m, y, k = (ink[:, :, i].astype(np.float64) / 65535 for i in range(4))
    expected = np.round(np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], -1) * 65535)
    expected = np.rot90(expected, -1) if orientation == 6 else expected
    assert image.bit_depth == 16 and image.pixels.dtype == np.uint16
    assert np.abs(image.pixels.astype(np.int64) - expected).max() <= 1  # float32 arithmetic
    # the same formula Pillow applies at 8 bits
    eight = np.asarray(ImageOps.exif_transpose(Image.open(path).convert("RGB")))
    assert np.abs(image.pixels / 257.0 - eight).max() <= 2


def test_sixteen_bit_cmyk_with_a_profile_says_it_is_converted_at_eight_bits(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = str(tmp_path / "cmyk16icc.tif")
    tifffile.imwrite(path, random_array(4, 5, 4, np.uint16), photometric="separated",
                     iccprofile=b"not a real profile")
    with pytest.warns(OutputNote, match="16-bit CMYK is converted through its ICC profile at 8 bits"):
        image = read_image(path)
    assert image.bit_depth == 8 and image.pixels.shape == (4, 5, 3)


def test_exif_rotated_jpeg_is_upright_and_orientation_reset(tmp_path):
    source = Image.fromarray(random_array(12, 30, 3))
    path = save(tmp_path, source, "rot.jpg", exif=exif_with_orientation(6), quality=95)
    image = read_image(path)
    assert (image.height, image.width) == (30, 12)
    np.testing.assert_array_equal(image.pixels, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    carried = Image.Exif()
    carried.load(image.exif)
    assert carried[0x0112] == 1 and carried[0x010F] == "srtrt test camera"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation):
    source = Image.fromarray(random_array(5, 8, 4))
    path = save(tmp_path, source, "o.png", exif=exif_with_orientation(orientation))
    image = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    np.testing.assert_array_equal(image.pixels, expected[..., :3])
    np.testing.assert_array_equal(image.alpha, expected[..., 3])


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16", "RGB;16"])
def test_a_turned_tiff_is_upright_in_every_mode(tmp_path, mode, orientation):
    """Pillow 13 turns TIFFs itself, and its memory-mapped path scrambled grey and RGBA ones; 16-bit
    colour (tifffile) was refused for a size Pillow reports turned."""
    stored = random_array(6, 10, 3) if mode != "I;16" else random_array(6, 10, 1, np.uint16)
    path = str(tmp_path / "turned.tif")
    if mode == "RGB;16":
        import tifffile

        stored = random_array(6, 10, 3, np.uint16)
        tifffile.imwrite(path, stored, photometric="rgb", extratags=[(0x0112, "H", 1, orientation, True)])
    else:
        source = Image.fromarray(stored).convert(mode) if mode != "I;16" else Image.fromarray(stored)
        source.save(path, exif=exif_with_orientation(orientation))
        stored = np.asarray(source)
    image = read_image(path)
    planes = image.pixels if image.alpha is None else np.dstack([image.pixels, image.alpha])
    turned = {3: lambda a: a[::-1, ::-1], 5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
              7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}[orientation]
    np.testing.assert_array_equal(planes.squeeze(), turned(stored))
    if mode != "RGB;16":  # the API, given the PIL image opened from the path, gets the same pixels
        np.testing.assert_array_equal(from_pil(Image.open(path)).pixels, image.pixels)


def test_a_tiffs_exif_is_carried_without_its_layout_tags(tmp_path):
    path = save(tmp_path, Image.fromarray(random_array(6, 10, 3)), "camera.tif", exif=exif_with_orientation(6))
    carried = Image.Exif()
    carried.load(read_image(path).exif)
    assert carried[0x010F] == "srtrt test camera" and carried.get(0x0112, 1) == 1
    assert not {0x0100, 0x0101, 0x0111, 0x0117} & set(carried)  # sizes and strips stay with the TIFF


def test_a_tiff_stamped_only_by_the_library_that_wrote_it_has_no_exif(tmp_path):
    """tifffile writes its array shape as the description and itself as the software: copied as EXIF,
    the PNG got a stale shape and a TIFF or BMP output noted the loss of EXIF the file never had."""
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, random_array(6, 10, 3), photometric="rgb")
    assert read_image(path).exif is None
    described = tmp_path / "described.tif"
    tifffile.imwrite(described, random_array(6, 10, 3), photometric="rgb", description="a harbour at dusk",
                     metadata=None, extratags=[(0x0132, "s", 20, "2026:12:06 10:00:00", True)])
    assert read_image(described).exif is not None  # a date says something of the photo: carried


def test_icc_and_exif_are_carried_to_every_output_format(tmp_path):
    profile = srgb_profile()
    path = save(tmp_path, Image.fromarray(random_array(8, 8, 3)), "icc.png", icc_profile=profile,
                exif=exif_with_orientation(1))
    image = read_image(path)
    assert image.icc_profile == profile and image.exif.startswith(b"Exif\x00\x00")
    for name in ("out.png", "out.tif", "out.jpg", "out.webp"):
        if name.endswith(".tif"):
            with pytest.warns(OutputNote, match="TIFF output keeps the ICC profile but not the EXIF"):
                written = Image.open(through_writer(tmp_path, image, name))
        else:
            written = Image.open(through_writer(tmp_path, image, name))
        assert written.info.get("icc_profile") == profile, name
        if not name.endswith(".tif"):  # TIFF output carries the ICC profile but not EXIF
            assert written.getexif()[0x010F] == "srtrt test camera", name


def test_bmp_and_webp_inputs(tmp_path):
    rgb = random_array(10, 14, 3)
    bmp = read_image(save(tmp_path, Image.fromarray(rgb), "in.bmp"))
    assert bmp.format == "BMP"
    np.testing.assert_array_equal(bmp.pixels, rgb)
    rgba = random_array(10, 14, 4)
    webp = read_image(save(tmp_path, Image.fromarray(rgba), "in.webp", lossless=True))
    assert webp.format == "WEBP"
    np.testing.assert_array_equal(webp.alpha, rgba[..., 3])
    out = Image.open(through_writer(tmp_path, webp, "out.webp"))
    assert out.mode == "RGBA" and out.size == (14, 10)


def test_wide_integer_and_float_modes(tmp_path):
    ints = Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) * 5000)
    image = from_pil(ints)
    assert image.bit_depth == 16 and int(image.pixels.max()) == 55000
    with pytest.raises(SrtrtError, match="outside 0..65535"):
        from_pil(Image.fromarray(np.full((2, 2), -1, np.int32)))
    floats = from_pil(Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)))
    assert floats.bit_depth == 16 and floats.pixels[..., 0].tolist() == [[0, 32768], [65535, 16384]]
    with pytest.raises(SrtrtError, match=r"\[0, 1\]"):
        from_pil(Image.fromarray(np.full((2, 2), 3.0, np.float32)))
    with pytest.raises(SrtrtError, match="unsupported pixel mode LAB"):
        from_pil(Image.new("LAB", (2, 2)), path="lab-image")


def test_to_pil_modes():
    grey16 = random_array(4, 5, 1, np.uint16)[..., None]
    assert to_pil(grey16, None, 16).mode == "I;16"
    np.testing.assert_array_equal(np.asarray(to_pil(grey16, None, 16)), grey16[..., 0])
    rgb, alpha = random_array(4, 5, 3), random_array(4, 5, 1)
    assert to_pil(rgb, alpha, 8).mode == "RGBA"
    assert to_pil(rgb[..., :1], alpha, 8).mode == "LA"
    with pytest.warns(UserWarning, match="8 bits"):
        eight = to_pil(np.full((2, 2, 3), 65535, np.uint16), None, 16)
    assert eight.mode == "RGB" and np.asarray(eight).max() == 255


# --------------------------------------------------------------------------- errors

def assert_refused(path, match: str, **kwargs):
    with pytest.raises(SrtrtError, match=match) as caught:
        read_image(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def valid_bytes(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def test_missing_directory_empty_and_garbage_files(tmp_path):
    assert_refused(tmp_path / "absent.png", "no such file")
    assert_refused(tmp_path, "is a directory")
    assert_refused(write_bytes(tmp_path, "empty.png", b""), "empty file")
    assert_refused(write_bytes(tmp_path, "junk.png", bytes(range(256)) * 4), "not a PNG, JPEG")
    gif = save(tmp_path, Image.new("P", (4, 4)), "anim.gif")
    assert_refused(gif, "not a PNG, JPEG")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_files_are_refused_at_read_time(tmp_path, image_format):
    data = valid_bytes(Image.fromarray(random_array(64, 64, 3)), image_format)
    path = write_bytes(tmp_path, f"cut.{image_format.lower()}", data[: len(data) * 2 // 3])
    assert_refused(path, "truncated|corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_header_is_refused_before_allocation(tmp_path):
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))
    path = write_bytes(tmp_path, "bomb.png", bomb)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = assert_refused(path, "--max-pixels")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 5_000_000
    assert "100000x100000" in message


def test_pixel_limit_is_ours_not_pillows(tmp_path, monkeypatch):
    path = save(tmp_path, Image.fromarray(random_array(30, 30, 3)), "small.png")
    assert_refused(path, "over the limit of 100", max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would call 900 px a bomb
    assert read_image(path, max_pixels=None).pixels.shape == (30, 30, 3)
    assert read_image(path, max_pixels=0).width == 30
    assert Image.MAX_IMAGE_PIXELS == 100  # the process-wide setting is left as it was


# --------------------------------------------------------------------------- fuzzing

def fuzz_seeds() -> list[bytes]:
    rgb = Image.fromarray(random_array(12, 10, 3))
    return [valid_bytes(rgb, "PNG"), valid_bytes(rgb.convert("RGBA"), "PNG"),
            handmade_png(random_array(6, 5, 3, np.uint16), 2),
            valid_bytes(rgb, "JPEG", quality=80), valid_bytes(rgb, "TIFF", compression="tiff_deflate"),
            valid_bytes(rgb, "TIFF"), valid_bytes(rgb.convert("RGBA"), "WEBP", lossless=True),
            valid_bytes(rgb, "WEBP", quality=50), valid_bytes(rgb, "BMP")]


SEEDS = fuzz_seeds()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt EXIF and tags
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                   max_size=6), cut=st.floats(0.05, 1.0))
def test_mutated_files_decode_or_raise_srtrt_error(tmp_path, seed, edits, cut):
    data = bytearray(seed)
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    path = write_bytes(tmp_path, "fuzz.img", bytes(data[: max(1, int(cut * len(data)))]))
    try:
        image = read_image(path, max_pixels=1_000_000)
    except SrtrtError as error:
        assert "\n" not in str(error)
    else:
        assert image.pixels.ndim == 3 and image.pixels.shape[2] in (1, 3)
        assert image.bit_depth in (8, 16)


# --------------------------------------------------------------------------- 8-bit PNG through libpng

PNG_COLOUR_TYPES = {"L": (0, 1), "LA": (4, 2), "RGB": (2, 3), "RGBA": (6, 4)}


def decoded_both_ways(path, monkeypatch) -> tuple[DecodedImage, int, DecodedImage]:
    """read_image(path), how many times libpng decoded, and read_image through Pillow alone."""
    import imagecodecs

    import srtrt.engine.datapath.imageio as imageio

    calls, real = [], imagecodecs.png_decode
    with monkeypatch.context() as patch:
        patch.setattr(imagecodecs, "png_decode", lambda data: calls.append(1) or real(data))
        fast = read_image(path)
    with monkeypatch.context() as patch:
        patch.setattr(imageio, "_read_plain_png", lambda img, path: None)
        reference = read_image(path)
    return fast, len(calls), reference


def assert_same_image(a: DecodedImage, b: DecodedImage) -> None:
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (a.alpha is None) == (b.alpha is None)
    if a.alpha is not None:
        np.testing.assert_array_equal(a.alpha, b.alpha)
    assert (a.bit_depth, a.icc_profile, a.exif, a.format, a.path) == (b.bit_depth, b.icc_profile, b.exif, b.format, b.path)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("mode", list(PNG_COLOUR_TYPES))
def test_plain_png_decodes_through_libpng_as_pillow_does(tmp_path, monkeypatch, mode, interlace):
    colour_type, channels = PNG_COLOUR_TYPES[mode]
    samples = random_array(13, 17, channels)
    gamma = (b"gAMA", struct.pack(">I", 45455))  # Pillow ignores it: libpng must too
    path = write_bytes(tmp_path, "p.png", handmade_png(samples, colour_type, interlace, 8, before=[gamma]))
    fast, decodes, reference = decoded_both_ways(path, monkeypatch)
    assert decodes == 1
    assert_same_image(fast, reference)
    np.testing.assert_array_equal(fast.pixels, samples.reshape(13, 17, channels)[:, :, :1 + 2 * (mode[0] == "R")])


def test_plain_png_metadata_and_orientation_as_pillow_reads_them(tmp_path, monkeypatch):
    image = Image.fromarray(random_array(10, 14, 3))
    path = save(tmp_path, image, "o.png", exif=exif_with_orientation(6), icc_profile=srgb_profile())
    fast, decodes, reference = decoded_both_ways(path, monkeypatch)
    assert decodes == 1
    assert_same_image(fast, reference)
    assert fast.pixels.shape == (14, 10, 3) and fast.icc_profile == srgb_profile()


@pytest.mark.parametrize("late", [b"eXIf", b"tEXt"])
def test_metadata_after_the_pixels_leaves_the_png_to_pillow(tmp_path, monkeypatch, late):
    exif = Image.Exif()
    exif[0x0112] = 3
    data = exif.tobytes()[6:] if late == b"eXIf" else b"Comment\x00written after the pixels"
    path = write_bytes(tmp_path, "late.png", handmade_png(random_array(6, 9, 3), 2, bit_depth=8, after=[(late, data)]))
    fast, decodes, reference = decoded_both_ways(path, monkeypatch)
    assert decodes == 0
    assert_same_image(fast, reference)


def test_a_plain_png_still_decodes_without_imagecodecs(tmp_path, monkeypatch):
    import sys

    samples = random_array(5, 6, 3)
    path = save(tmp_path, Image.fromarray(samples), "p.png")
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # `import imagecodecs` now raises ImportError
    np.testing.assert_array_equal(read_image(path).pixels, samples)


def test_a_truncated_plain_png_fails_as_pillow_says(tmp_path, monkeypatch):
    import srtrt.engine.datapath.imageio as imageio

    data = handmade_png(random_array(40, 40, 3), 2, bit_depth=8)
    path = write_bytes(tmp_path, "cut.png", data[:len(data) // 2])
    with pytest.raises(SrtrtError) as fast:
        read_image(path)
    monkeypatch.setattr(imageio, "_read_plain_png", lambda img, path: None)
    with pytest.raises(SrtrtError) as reference:
        read_image(path)
    assert str(fast.value) == str(reference.value)


# --------------------------------------------------------------------------- 16-bit colour, one decode

def test_sixteen_bit_png_decoders_say_nothing_on_stderr(tmp_path, capfd):
    samples = random_array(9, 10, 3, np.uint16)
    path = write_bytes(tmp_path, "i16.png", handmade_png(samples, 2, interlace=True))
    np.testing.assert_array_equal(read_image(path).pixels, samples)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # libpng's interlace warning is not passed on


def test_sixteen_bit_rgb_png_colour_key_becomes_alpha(tmp_path):
    samples = random_array(6, 7, 3, np.uint16)
    samples[2, 3] = (1, 2, 3)
    data = handmade_png(samples, 2)
    ihdr_end = 8 + 12 + 13
    keyed = data[:ihdr_end] + png_chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3)) + data[ihdr_end:]
    image = read_image(write_bytes(tmp_path, "key16.png", keyed))
    np.testing.assert_array_equal(image.pixels, samples)
    expected = np.full((6, 7), 65535, np.uint16)
    expected[2, 3] = 0
    np.testing.assert_array_equal(image.alpha, expected)


@pytest.mark.parametrize("layout", ["separate", "lzw-strips", "tiled"])
def test_sixteen_bit_colour_tiff_layouts(tmp_path, layout):
    import tifffile

    samples = random_array(20, 18, 4, np.uint16)
    path = str(tmp_path / f"{layout}.tif")
    options = {"separate": dict(planarconfig="separate", data=np.moveaxis(samples, -1, 0)),
               "lzw-strips": dict(compression="lzw", rowsperstrip=3, planarconfig="contig"),
               "tiled": dict(tile=(16, 16), compression="zlib", predictor=True, planarconfig="contig")}[layout]
    data = options.pop("data", samples)
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=("unassalpha",), metadata=None, **options)
    image = read_image(path)
    assert image.bit_depth == 16 and image.format == "TIFF"
    np.testing.assert_array_equal(image.pixels, samples[..., :3])
    np.testing.assert_array_equal(image.alpha, samples[..., 3])


@pytest.mark.parametrize("name", ["c16.png", "c16.tif"])
def test_damaged_sixteen_bit_colour_is_one_line(tmp_path, name, capfd):
    samples = random_array(40, 40, 3, np.uint16)
    path = str(tmp_path / name)
    with open_writer(path, 40, 40, 3, 16) as writer:
        writer.write_rows(samples)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # compressed pixel data zeroed: the headers still open
    write_bytes(tmp_path, name, bytes(data))
    assert_refused(path, "corrupt|truncated")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "TIFF"])
def test_an_animation_or_page_stack_is_refused_not_cut_to_its_first_image(tmp_path, image_format):
    frames = [Image.fromarray(random_array(16, 16, 3)) for _ in range(3)]
    path = save(tmp_path, frames[0], f"moving.{image_format.lower()}", format=image_format,
                save_all=True, append_images=frames[1:])
    refusal = "animated image \\(3 frames\\)" if image_format != "TIFF" else "multi-page TIFF \\(3 images\\)"
    assert_refused(path, refusal)
    with Image.open(path) as opened, pytest.raises(SrtrtError, match=refusal):
        from_pil(opened)  # the API's door for an image opened by the caller
    with Image.open(path) as opened:
        assert from_pil(opened.copy()).pixels.shape == (16, 16, 3)  # one frame, taken by the caller


def test_a_sixteen_bit_or_float_tiff_storing_0_as_white_is_not_a_negative(tmp_path):
    """MINISWHITE grey: Pillow inverts it at 1 and 8 bits only; at 16 bits and in floats it came out
    as a negative. Every depth gives the same picture."""
    import tifffile

    ramp = np.linspace(0, 1, 32, dtype=np.float64)[None, :].repeat(4, 0)  # 0 = white on the left
    paths = {}
    for name, stored in {"8": np.round(ramp * 255).astype(np.uint8), "16": np.round(ramp * 65535).astype(np.uint16),
                         "float": ramp.astype(np.float32)}.items():
        paths[name] = str(tmp_path / f"white_is_zero_{name}.tif")
        tifffile.imwrite(paths[name], stored, photometric="miniswhite")
    read = {name: read_image(path).pixels[:, :, 0].astype(np.float64) for name, path in paths.items()}
    expected = 1 - ramp
    assert np.abs(read["8"] / 255 - expected).max() < 1 / 255
    assert np.abs(read["16"] / 65535 - expected).max() < 1 / 65535
    assert np.abs(read["float"] / 65535 - expected).max() < 1 / 65535


def test_a_tiff_storing_0_as_white_at_12_bits_or_with_alpha_is_read_the_right_way_round(tmp_path):
    """Pillow opens neither; they were refused as "unsupported TIFF layout (miniswhite, 1 samples of uint16)"."""
    import tifffile

    ramp = np.linspace(0, 1, 32, dtype=np.float64)[None, :].repeat(4, 0)  # 0 = white on the left
    opacity = np.linspace(1, 0.2, 32)[None, :].repeat(4, 0)
    twelve, with_alpha = str(tmp_path / "white12.tif"), str(tmp_path / "white_alpha.tif")
    tifffile.imwrite(twelve, np.round(ramp * 4095).astype(np.uint16), photometric="miniswhite", bitspersample=12)
    tifffile.imwrite(with_alpha, np.round(np.stack([ramp, opacity], -1) * 65535).astype(np.uint16),
                     photometric="miniswhite", extrasamples=["unassalpha"])
    read = read_image(twelve)
    assert read.bit_depth == 16 and np.abs(read.pixels[:, :, 0] / 65535 - (1 - ramp)).max() < 1 / 4095
    read = read_image(with_alpha)
    assert np.abs(read.pixels[:, :, 0] / 65535 - (1 - ramp)).max() < 1 / 65535
    assert np.abs(read.alpha / 65535 - opacity).max() < 1 / 65535  # the alpha as stored, not turned


@pytest.mark.parametrize("layout, dtype", [("rgba", np.uint8), ("rgba", np.uint16), ("la", np.uint16),
                                           ("rgba", np.float32)])
def test_a_tiff_s_premultiplied_alpha_is_divided_out(tmp_path, layout, dtype):
    """Associated (premultiplied) alpha: the colour is divided by it at every depth, as Pillow does at
    8 bits; taken as straight alpha, every part-transparent pixel came out darkened by its alpha."""
    import tifffile

    top = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    colour = np.array([0.8, 0.4, 0.2] if layout == "rgba" else [0.6])
    alpha = np.linspace(0, 1, 16)[None, :, None].repeat(4, 0)
    stored = np.concatenate([np.broadcast_to(colour, (4, 16, colour.size)) * alpha, alpha], axis=2) * top
    stored = stored.astype(dtype) if dtype == np.float32 else np.round(stored).astype(dtype)
    path = str(tmp_path / f"premultiplied_{layout}.tif")
    tifffile.imwrite(path, stored, photometric="rgb" if layout == "rgba" else "minisblack",
                     extrasamples=["assocalpha"])
    decoded = read_image(path)
    scale = np.iinfo(decoded.pixels.dtype).max
    seen = decoded.pixels[:, 4:, :] / scale  # where alpha is 0.27 or more: the rounding of a division stays small
    assert np.abs(seen - colour).max() < 4 / min(scale, 255 if dtype == np.uint8 else scale)
    assert np.abs(decoded.alpha / scale - alpha[:, :, 0]).max() < 1 / 255


def test_a_tiff_thumbnail_page_does_not_make_it_multi_page(tmp_path):
    pixels = random_array(16, 16, 3)
    thumbnail = Image.fromarray(pixels[::4, ::4].copy())
    path = save(tmp_path, Image.fromarray(pixels), "with_thumb.tif", save_all=True, append_images=[thumbnail],
                tiffinfo={254: 0})
    with Image.open(path) as img:  # Pillow writes one tiffinfo for every page: mark the second one
        assert img.n_frames == 2
    data = bytearray(open(path, "rb").read())
    second_ifd = _tiff_ifd_offsets(bytes(data))[1]
    _set_tiff_short(data, second_ifd, 254, 1)
    open(path, "wb").write(bytes(data))
    decoded = read_image(path)
    np.testing.assert_array_equal(decoded.pixels, pixels)


def _tiff_ifd_offsets(data: bytes) -> list[int]:
    offsets, offset = [], struct.unpack_from("<I", data, 4)[0]
    while offset:
        offsets.append(offset)
        (count,) = struct.unpack_from("<H", data, offset)
        offset = struct.unpack_from("<I", data, offset + 2 + 12 * count)[0]
    return offsets


def _set_tiff_short(data: bytearray, ifd: int, tag: int, value: int) -> None:
    (count,) = struct.unpack_from("<H", data, ifd)
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<I", data, entry + 8, value)  # LONG or SHORT inline: low bytes first
            return
    raise AssertionError(f"tag {tag} not in the IFD")


def test_tiff_layouts_pillow_has_no_mode_for_are_read_by_tifffile(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    grey, alpha = random_array(6, 10, 1, np.uint16), random_array(6, 10, 1, np.uint16)
    tifffile.imwrite(tmp_path / "la16.tif", np.dstack([grey, alpha]), photometric="minisblack",
                     extrasamples=["unassalpha"], extratags=[(0x0112, "H", 1, 6, True)])
    image = read_image(tmp_path / "la16.tif")
    assert image.bit_depth == 16
    np.testing.assert_array_equal(image.pixels[..., 0], np.rot90(grey, -1))
    np.testing.assert_array_equal(image.alpha, np.rot90(alpha, -1))
    colour = random_array(6, 10, 3, np.uint16)
    tifffile.imwrite(tmp_path / "float.tif", colour.astype(np.float32) / 65535, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif").pixels, colour)
    planes = RNG.integers(0, 256, (2, 6, 10), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="minisblack", planarconfig="separate",
                     extrasamples=["unassalpha"])
    planar = read_image(tmp_path / "planar.tif")
    np.testing.assert_array_equal(planar.pixels[..., 0], planes[0])
    np.testing.assert_array_equal(planar.alpha, planes[1])
    tifffile.imwrite(tmp_path / "int.tif", colour.astype(np.int32), photometric="rgb")
    assert_refused(tmp_path / "int.tif", "unsupported TIFF layout \\(rgb, 3 samples of int32\\)")
    signed = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)  # Pillow opens these, as unsigned (-1 as 255)
    for stored, bits in ((signed, 8), (signed.astype(np.int16) * 256, 16)):
        tifffile.imwrite(tmp_path / f"signed{bits}.tif", stored, photometric="minisblack")
        assert_refused(tmp_path / f"signed{bits}.tif", f"unsupported TIFF layout \\(signed {bits}-bit integer samples\\)")
    tifffile.imwrite(tmp_path / "over.tif", colour.astype(np.float32), photometric="rgb")
    assert_refused(tmp_path / "over.tif", "floating-point pixels must lie in \\[0, 1\\]")
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([np.dstack([grey, alpha])] * 2), photometric="minisblack",
                     extrasamples=["unassalpha"])
    assert_refused(tmp_path / "pages.tif", "multi-page TIFF \\(2 images\\)")


# ---------------------------------------------------------------------------------------------
# layouts a camera, a phone or a scanner writes that Pillow alone reads wrong


def test_a_jpeg_with_further_mpf_images_is_its_first_image_and_says_what_is_left_out(tmp_path):
    """Cameras list a preview in a JPEG's MPF index, phones a gain map: Pillow opens such a file as an
    'MPO' of several frames, which srtrt took for an animation and refused."""
    photo = random_array(24, 32, 3)
    path = tmp_path / "camera.jpg"
    Image.fromarray(photo).save(path, format="MPO", save_all=True, append_images=[Image.fromarray(photo[::2, ::2])])
    with pytest.warns(OutputNote, match="the JPEG's first image is upscaled; the 1 further image its MPF index lists"):
        decoded = read_image(path)
    with Image.open(path) as img:
        img.seek(0)
        np.testing.assert_array_equal(decoded.pixels, np.asarray(img.convert("RGB")))
    with pytest.warns(OutputNote, match="^image: the JPEG's first image is upscaled"):  # was "None: ..."
        from_pil(Image.open(io.BytesIO(path.read_bytes())))


@pytest.mark.parametrize("channels", [1, 3])
def test_half_float_tiff_is_read_at_its_values(tmp_path, channels):
    """float16 times 65535.0 stays float16 in numpy, where 65535 overflows: a half-float TIFF came out black."""
    tifffile = pytest.importorskip("tifffile")
    values = RNG.random((12, 10) if channels == 1 else (12, 10, 3)).astype(np.float16)
    path = tmp_path / "half.tif"
    tifffile.imwrite(path, values, photometric="minisblack" if channels == 1 else "rgb")
    decoded = read_image(path)
    want = np.round(values.astype(np.float64) * 65535).reshape(12, 10, channels)
    assert decoded.bit_depth == 16 and np.abs(decoded.pixels.astype(float) - want).max() <= 1


def _keyed_grey_png(path, values: np.ndarray, depth: int, key: int) -> None:
    """A grey PNG at 1, 2, 4, 8 or 16 bits with a tRNS colour key, written chunk by chunk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b""
    for row in values:
        if depth == 16:
            rows += b"\0" + row.astype(">u2").tobytes()
        else:
            bits = "".join(format(int(v), f"0{depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            rows += b"\0" + int(bits, 2).to_bytes(len(bits) // 8, "big")
    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", struct.pack(">H", key))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_a_grey_png_colour_key_becomes_alpha_at_every_bit_depth(tmp_path, depth):
    """Pillow drops a grey tRNS key at 1 and 16 bits, and misses it at 2 and 4 bits (it scales the
    pixels to 8 bits, not the key): those images lost their transparency."""
    top = 2 ** depth - 1
    values = RNG.integers(0, top + 1, (9, 13))
    values[0, 0] = top
    path = tmp_path / f"grey{depth}.png"
    _keyed_grey_png(path, values, depth, key=top)
    decoded = read_image(path)
    full = 65535 if depth == 16 else 255
    assert decoded.alpha is not None and decoded.bit_depth == (16 if depth == 16 else 8)
    np.testing.assert_array_equal(decoded.alpha, np.where(values == top, 0, full))
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], values * (full // top))


@pytest.mark.parametrize("depth", [1, 16])
def test_a_loaded_grey_image_keeps_its_colour_key_as_alpha_as_its_file_does(tmp_path, depth):
    """A loaded 1- or 16-bit grey PNG holds its tRNS key in `info` only: srtrt.upscale(image) dropped
    the transparency that srtrt.upscale(path) keeps."""
    top = 2 ** depth - 1
    values = RNG.integers(0, top + 1, (9, 13))
    values[0, 0] = top
    path = tmp_path / f"grey{depth}.png"
    _keyed_grey_png(path, values, depth, key=top)
    with Image.open(path) as img:
        img.load()
        decoded = from_pil(img)
    by_path = read_image(path)
    assert decoded.bit_depth == by_path.bit_depth
    np.testing.assert_array_equal(decoded.alpha, by_path.alpha)
    np.testing.assert_array_equal(decoded.pixels, by_path.pixels)


def test_a_palette_of_rgba_colours_keeps_its_alpha():
    """quantize() of an RGBA image gives a palette of RGBA colours and no `transparency`: its alpha was dropped."""
    rgba = random_array(8, 8, 4)
    rgba[:, :4, 3] = 0
    quantized = Image.fromarray(rgba, "RGBA").quantize(4, method=Image.Quantize.FASTOCTREE)
    decoded = from_pil(quantized)
    np.testing.assert_array_equal(decoded.alpha, np.asarray(quantized.convert("RGBA"))[..., 3])
    assert decoded.alpha[:, :4].max() == 0


@pytest.mark.parametrize("suffix", [".gif", ".ppm"])
def test_an_opened_image_of_a_format_srtrt_does_not_read_from_files_is_taken_as_decoded(tmp_path, suffix):
    """srtrt.upscale(Image.open(f)) of a GIF or PPM: read_image, which opens PNG/JPEG/WebP/TIFF/BMP only,
    was asked to read the file and said "not a PNG, JPEG, ... (or its header is corrupt)"."""
    rgb = random_array(6, 7, 3)
    path = save(tmp_path, Image.fromarray(rgb), f"in{suffix}")
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    with Image.open(path) as img:
        np.testing.assert_array_equal(from_pil(img).pixels, expected)
    frames = [Image.fromarray(random_array(6, 7, 3)) for _ in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "anim.gif") as img, pytest.raises(SrtrtError, match="animat"):
        from_pil(img)


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_a_tiff_of_fewer_than_sixteen_bits_is_scaled_to_sixteen(tmp_path, bits):
    """A 12-bit TIFF's white is 4095: taken as 16-bit samples, an all-white scan came out nearly black."""
    tifffile = pytest.importorskip("tifffile")
    top = 2 ** bits - 1
    for name, shape, photometric in (("grey", (5, 6), "minisblack"), ("rgb", (5, 6, 3), "rgb")):
        stored = RNG.integers(0, top + 1, shape).astype(np.uint16)
        stored.flat[0] = top
        tifffile.imwrite(tmp_path / f"{name}.tif", stored, bitspersample=bits, photometric=photometric)
        decoded = read_image(tmp_path / f"{name}.tif")
        want = np.round(stored.astype(np.float64) * 65535 / top).reshape(5, 6, -1)
        assert decoded.bit_depth == 16 and decoded.pixels.flat[0] == 65535, name
        np.testing.assert_array_equal(decoded.pixels, want.astype(np.uint16), err_msg=name)


def test_an_exif_orientation_written_as_a_long_is_reset_once_applied(tmp_path):
    """Pillow reads an orientation stored as LONG and srtrt turns the pixels, but only a SHORT was
    reset: the output kept orientation 6, and viewers turned it a second time."""
    ifd = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 4, 1, 6) + struct.pack("<I", 0)
    photo = random_array(20, 30, 3)
    path = save(tmp_path, Image.fromarray(photo), "long.png", exif=b"Exif\x00\x00" + ifd)
    decoded = read_image(path)
    assert decoded.pixels.shape[:2] == (30, 20)  # turned upright
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert exif[0x0112] == 1


def _camera_exif(order: str, kind: int, width: int, height: int) -> bytes:
    """A camera's EXIF as cameras write it: IFD0 (Make, the EXIF pointer), then the EXIF directory
    with PixelX/YDimension as `kind` (3 SHORT, 4 LONG) and a maker note the patch must not move."""
    pack = lambda fmt, *v: struct.pack(order + fmt, *v)  # noqa: E731
    value = (lambda v: pack("H2x", v)) if kind == 3 else (lambda v: pack("I", v))
    head = (b"II" if order == "<" else b"MM") + pack("HI", 42, 8)
    ifd0 = pack("H", 2) + pack("HHI", 0x010F, 2, 4) + b"Cam\x00" + pack("HHII", 0x8769, 4, 1, 38) + pack("I", 0)
    note = b"MAKERNOTE-12"
    exif_ifd = (pack("H", 3) + pack("HHI", 0xA002, kind, 1) + value(width) + pack("HHI", 0xA003, kind, 1) + value(height)
                + pack("HHII", 0x927C, 7, len(note), 38 + 2 + 36 + 4) + pack("I", 0) + note)
    assert len(head + ifd0) == 38
    return b"Exif\x00\x00" + head + ifd0 + exif_ifd


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", [3, 4])
def test_the_exif_pixel_dimensions_give_the_outputs_size(tmp_path, order, kind):
    """The input's PixelX/YDimension went out unchanged: an upscaled photo's EXIF said it was the
    input's size. Each format that carries EXIF now states the output's, and nothing else moves."""
    from srtrt.engine.datapath.imageio import exif_for_size

    exif = _camera_exif(order, kind, 30, 20)
    path = save(tmp_path, Image.fromarray(random_array(20, 30, 3)), "camera.png", exif=exif)
    image = read_image(path)
    assert image.exif == exif
    doubled = image.pixels.repeat(2, axis=0).repeat(2, axis=1)  # an output twice the input's size
    for name in ("out.png", "out.jpg", "out.webp"):
        with open_writer(tmp_path / name, 60, 40, 3, 8, exif=image.exif) as writer:
            writer.write_rows(doubled)
        with Image.open(tmp_path / name) as written:
            carried = written.getexif().get_ifd(0x8769)
            assert (carried[0xA002], carried[0xA003]) == (60, 40), name
    bigger = exif_for_size(exif, 120, 80)
    assert len(bigger) == len(exif) and bigger.endswith(b"MAKERNOTE-12")
    loaded = Image.Exif()
    loaded.load(bigger)
    assert (loaded.get_ifd(0x8769)[0xA002], loaded.get_ifd(0x8769)[0xA003], loaded[0x010F]) == (120, 80, "Cam")
    wide = Image.Exif()
    wide.load(exif_for_size(exif, 70_000, 80))  # beyond a SHORT: retyped as a LONG in the same slot
    assert (wide.get_ifd(0x8769)[0xA002], wide.get_ifd(0x8769)[0xA003]) == (70_000, 80)
    assert exif_for_size(b"Exif\x00\x00not tiff", 1, 1) == b"Exif\x00\x00not tiff"  # unreadable: as it was


def _padded_profile(size: int) -> bytes:
    """A valid sRGB profile padded to `size` bytes (its header's size field says so), as print
    profiles with large tables are."""
    profile = srgb_profile()
    return struct.pack(">I", size) + profile[4:] + bytes(size - len(profile))


def test_a_png_with_an_icc_profile_over_pillows_1_mib_is_read_and_carried(tmp_path):
    """Pillow refuses a PNG whose iCCP inflates past 1 MiB (PngImagePlugin.MAX_TEXT_CHUNK): such a
    photo failed as 'corrupt or unreadable'. Its profile now reads and goes to the output, and
    Pillow's own setting is back as it was."""
    from PIL import PngImagePlugin

    before = PngImagePlugin.MAX_TEXT_CHUNK
    profile = _padded_profile(3_000_000)
    pixels = random_array(12, 10, 3)
    path = save(tmp_path, Image.fromarray(pixels), "print.png", icc_profile=profile)
    image = read_image(path)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.icc_profile == profile
    assert read_image(through_writer(tmp_path, image, "out.png")).icc_profile == profile
    assert PngImagePlugin.MAX_TEXT_CHUNK == before


def test_an_icc_profile_jpeg_cannot_hold_is_left_out_with_a_note(tmp_path):
    """JPEG splits a profile over at most 255 markers, numbered in one byte: Pillow wrapped the count
    of a longer one round and wrote a file whose profile no reader assembles. It is left out, said."""
    from srtrt.engine.datapath.writers import JPEG_MAX_ICC_BYTES

    pixels = random_array(8, 8, 3)
    for size, kept in ((JPEG_MAX_ICC_BYTES, True), (JPEG_MAX_ICC_BYTES + 1, False)):
        profile = _padded_profile(size)
        with pytest.warns(OutputNote, match="ICC profile too long for JPEG") if not kept else contextlib.nullcontext():
            with open_writer(tmp_path / f"{size}.jpg", 8, 8, 3, 8, icc_profile=profile) as writer:
                writer.write_rows(pixels)
        with Image.open(tmp_path / f"{size}.jpg") as written:
            assert written.info.get("icc_profile") == (profile if kept else None)


def test_the_exif_of_a_tiff_only_tifffile_reads_is_said_to_be_left_out(tmp_path):
    """A float RGB TIFF is read by tifffile, which srtrt takes no EXIF from: the run says so."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, RNG.random((6, 8, 3)).astype(np.float32), photometric="rgb",
                     extratags=[(65000, 4, 1, 8, True)])  # then made an EXIF directory tag (tifffile writes none)
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<HHI", 65000, 4, 1))
    data[at:at + 2] = struct.pack("<H", 0x8769)
    path.write_bytes(bytes(data))
    with pytest.warns(OutputNote, match="the EXIF of a TIFF in this layout is not carried"):
        assert read_image(path).bit_depth == 16


def test_a_fifo_is_refused_in_one_line_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(SrtrtError, match="not a regular file"):
        read_image(fifo)


@pytest.mark.parametrize("compression", [None, "deflate", "lzw", "packbits"])
@pytest.mark.parametrize("associated", [False, True])
def test_a_planar_grey_alpha_tiff_keeps_its_alpha(tmp_path, compression, associated):
    """Stored plane by plane and compressed, Pillow decoded the grey plane and left alpha zero: the
    whole upscaled image came out transparent, without a word."""
    tifffile = pytest.importorskip("tifffile")
    grey = (np.arange(48 * 64).reshape(48, 64) % 200).astype(np.uint8)
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:, :20] = 128
    stored = (grey.astype(np.uint16) * alpha // 255).astype(np.uint8) if associated else grey
    decoded = {}
    for planar in ("contig", "separate"):
        path = tmp_path / f"{planar}.tif"
        tifffile.imwrite(path, np.stack([stored, alpha], 0 if planar == "separate" else -1), photometric="minisblack",
                         planarconfig=planar, extrasamples=[1 if associated else 2], compression=compression)
        decoded[planar] = read_image(path)
    assert np.array_equal(decoded["separate"].alpha[..., 0] if decoded["separate"].alpha.ndim == 3
                          else decoded["separate"].alpha, alpha)
    assert np.abs(decoded["separate"].pixels.astype(int) - decoded["contig"].pixels).max() <= 1


def test_a_pillow_limit_the_application_sets_during_a_decode_is_kept(tmp_path, monkeypatch):
    """The limits were put back as saved at the start of the decode: a value the application set
    meanwhile (in another thread) was undone."""
    from srtrt.engine.datapath import imageio

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    path = save(tmp_path, Image.fromarray(random_array(8, 8, 3)), "a.png")
    with imageio._pillow_size_check_lifted():
        read_image(path)
        Image.MAX_IMAGE_PIXELS = 5_000  # the application, while srtrt decodes
    assert Image.MAX_IMAGE_PIXELS == 5_000
    with imageio._pillow_size_check_lifted():
        pass
    assert Image.MAX_IMAGE_PIXELS == 5_000
