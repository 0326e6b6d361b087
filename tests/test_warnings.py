"""What decoding libraries say about damaged files (Python warnings, Pillow's log records,
libtiff's own stderr) never reaches the terminal: a file that fails gets one `srtrt:` line
ending with what the decoder said, a file that decodes gets nothing extra."""
from __future__ import annotations

import io
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from srtrt.engine.datapath import decoder_messages
from srtrt.engine.datapath.imageio import read_image
from srtrt.errors import SrtrtError

from run_helpers import is_complete_image, partials, save_tiny_model, srtrt_process

RGB = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8))


def tiff_entries(data: bytes) -> tuple[str, dict[int, int]]:
    """Byte order and {tag: offset of its 12-byte entry} of the first IFD."""
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    return order, {struct.unpack_from(order + "H", data, ifd + 2 + 12 * i)[0]: ifd + 2 + 12 * i for i in range(count)}


def tiff_with(entry_edit, **save_options) -> bytes:
    """A valid TIFF of RGB with one IFD entry rewritten: entry_edit(data, order, entries)."""
    buffer = io.BytesIO()
    RGB.save(buffer, "TIFF", **save_options)
    data = bytearray(buffer.getvalue())
    order, entries = tiff_entries(bytes(data))
    entry_edit(data, order, entries)
    return bytes(data)


def description_count_past_the_end(data, order, entries):
    """Tag data larger than the file: Pillow skips the tag (a warning) and decodes the image."""
    struct.pack_into(order + "I", data, entries[270] + 4, 10**6)


def description_offset_near_the_end(data, order, entries):
    """The tag's data runs off the end: Pillow warns "Truncated File Read" and cannot identify it."""
    struct.pack_into(order + "I", data, entries[270] + 8, len(data) - 10)


def strip_cut_in_half(data, order, entries):
    """An LZW strip shorter than its rows: libtiff prints "LZWDecode: ..." on stderr itself."""
    (count,) = struct.unpack_from(order + "I", data, entries[279] + 8)
    struct.pack_into(order + "I", data, entries[279] + 8, count // 2)


def absurd_samples_per_pixel(data, order, entries):
    """Pillow logs "More samples per pixel than can be decoded" (logging, not a warning)."""
    struct.pack_into(order + "HHII", data, entries[277], 277, 4, 1, 22243)


def damaged_exif() -> bytes:
    """EXIF whose Make tag points 100,000 bytes past its end, with an orientation that still counts."""
    make, orientation = struct.pack("<HHII", 0x010F, 2, 100, 100000), struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    ifd = struct.pack("<H", 2) + make + orientation
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def description() -> TiffImagePlugin.ImageFileDirectory_v2:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = "a description long enough to be stored outside its entry"
    return tags


FAILING = {  # name -> (bytes, what the one line must say)
    "offset_near_the_end.tif": (tiff_with(description_offset_near_the_end, tiffinfo=description()),
                                "decoder said: Truncated File Read"),
    "lzw_strip_cut.tif": (tiff_with(strip_cut_in_half, compression="tiff_lzw"), "decoder said: LZWDecode: "),
    "samples_per_pixel.tif": (tiff_with(absurd_samples_per_pixel), "More samples per pixel than can be decoded"),
}
DECODING = {  # name -> (bytes, output size)
    "count_past_the_end.tif": (tiff_with(description_count_past_the_end, tiffinfo=description()), (96, 80)),
    "damaged_exif_in.png": (encoded(RGB, "PNG", exif=damaged_exif()), (80, 96)),   # orientation 6: turned
    "damaged_exif_in_jpeg.jpg": (encoded(RGB, "JPEG", exif=damaged_exif()), (80, 96)),
}


def test_library_messages_never_reach_the_terminal(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name, (data, _) in {**FAILING, **DECODING}.items():
        (folder / name).write_bytes(data)
    process = srtrt_process("run", folder, "-o", out, "--model", save_tiny_model(tmp_path), "--backend", "torch",
                            "--precision", "fp32", "--device", "cpu")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stdout == ""
    for text in ("Warning", "warn", "Traceback", "site-packages", ".py:", "LZWDecode: Not", "TIFFFetch"):
        assert text not in stderr, stderr
    lines = stderr.splitlines()
    assert all(line.startswith("srtrt: ") for line in lines), stderr
    for name, (_, cause) in FAILING.items():
        (line,) = [line for line in lines if name in line]
        assert line.startswith(f"srtrt: {folder / name}: ") and cause in line, line
    for name, (_, size) in DECODING.items():
        output = out / f"{Path(name).stem}_x4.png"
        assert [line for line in lines if name in line] == [f"srtrt: {folder / name} -> {output}"]
        assert is_complete_image(output, size), name
    assert partials(tmp_path) == []


@pytest.fixture
def quiet():
    """The CLI's process-wide setting, in this test's process (pytest puts the warning filters and
    `showwarning` back after each test; the log handler and libtiff's handlers stay, as in the CLI)."""
    decoder_messages.quiet_decoding_libraries()


def failure_of(path: Path) -> str:
    with pytest.raises(SrtrtError) as caught:
        read_image(path)
    return str(caught.value)


def test_notes_belong_to_the_thread_that_decodes(tmp_path, quiet):
    truncated, lzw = tmp_path / "truncated.tif", tmp_path / "lzw.tif"
    truncated.write_bytes(FAILING["offset_near_the_end.tif"][0])
    lzw.write_bytes(FAILING["lzw_strip_cut.tif"][0])
    messages = {truncated: [], lzw: []}

    def decode_again_and_again(path: Path):
        for _ in range(20):
            messages[path].append(failure_of(path))

    with decoder_messages.kept() as main_thread_notes:
        threads = [threading.Thread(target=decode_again_and_again, args=(path,)) for path in messages]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert main_thread_notes == []  # the workers' decodes kept their notes to themselves
    assert all("Truncated File Read" in m and "LZWDecode" not in m for m in messages[truncated])
    assert all("LZWDecode" in m and "Truncated File Read" not in m for m in messages[lzw])


# recwarn before quiet: the hook then wraps the recorder, as it wraps the terminal in the CLI
def test_a_decode_that_succeeds_says_nothing_and_other_warnings_still_show(tmp_path, recwarn, quiet):
    path = tmp_path / "count_past_the_end.tif"
    path.write_bytes(DECODING["count_past_the_end.tif"][0])
    assert read_image(path).width == 24
    with Image.open(path) as img:  # Pillow warns outside any decode of srtrt's: said nowhere
        img.load()
    warnings.warn("a warning of srtrt's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["a warning of srtrt's own"]


def test_pillows_own_pixel_limit_neither_warns_nor_refuses_a_tiff_within_ours(tmp_path, monkeypatch, recwarn):
    """A TIFF checks Pillow's limit again when it allocates its pixels, after the open."""
    path = tmp_path / "thirty.tif"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # 900 px: twice over, an error for Pillow
    assert read_image(path, max_pixels=None).width == 30
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)   # over: a DecompressionBombWarning for Pillow
    assert read_image(path, max_pixels=None).width == 30
    assert Image.MAX_IMAGE_PIXELS == 500 and list(recwarn) == []
