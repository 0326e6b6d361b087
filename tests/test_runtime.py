"""The streaming runtime end to end on the CPU: backends agree, image modes round-trip, memory stays bounded."""
from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from srtrt.engine.backends.torch_backend import TorchBackend
from srtrt.engine.datapath.imageio import PNG_COLOUR_CHUNKS, png_chunks, read_image
from srtrt.engine.datapath.pipeline import bicubic_rows, upscale_file
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler
from srtrt.errors import OutputNote

from conftest import random_view, smooth_image


def _reference(view, img: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return view(x)[0].permute(1, 2, 0).numpy()


def test_torch_and_onnxruntime_agree_with_whole_image(tmp_path):
    pytest.importorskip("onnxruntime")
    from srtrt.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from srtrt.engine.toolchain.export import export_onnx

    view = random_view(blocks=2, channels=8)
    img = smooth_image(50, 70, seed=3)
    ref = _reference(view, img)
    onnx_path = export_onnx(view, tmp_path / "m.onnx")
    outputs = {}
    for backend in (TorchBackend(view), OnnxRuntimeBackend(onnx_path, view.scale, view.radius)):
        out, _ = TiledUpscaler(backend, core=16, batch=2).run_to_array(Planes(img), np.float32)
        outputs[backend.name] = out
        assert np.abs(out - ref).max() <= 1e-4, backend.name
    assert np.abs(outputs["torch"] - outputs["onnxruntime"]).max() <= 1e-4


def test_torch_cpu_runs_the_polyphase_tail_with_the_same_image():
    view = random_view(blocks=2, channels=8)
    x = torch.rand(1, 3, 19, 26)
    polyphase, plain = TorchBackend(view), TorchBackend(view, polyphase=False)
    assert polyphase.polyphase and not plain.polyphase and "polyphase tail" in polyphase.describe()
    last_shuffle = [m for m in polyphase.model.modules() if isinstance(m, torch.nn.PixelShuffle)][-1]
    assert last_shuffle.upscale_factor == 2 and polyphase.model.generator.tail.out_channels == 12
    assert (polyphase.infer(x) - plain.infer(x)).abs().max() <= 1e-5
    img = smooth_image(45, 61, seed=8)  # tiles of the rewritten network still equal the whole image
    tiled, _ = TiledUpscaler(polyphase, core=16, margin=view.radius).run_to_array(Planes(img), np.float32)
    assert np.abs(tiled - _reference(view, img)).max() <= 1e-5


def test_fused_op_fuses_the_steps_the_polyphase_tail_left():
    from srtrt.kernels.torch_op import FusedUpsampleBlock

    view = random_view(blocks=1, channels=8)
    both = TorchBackend(view, fused_op=True, polyphase=True)  # the op's reference runs on the CPU
    assert sum(isinstance(m, FusedUpsampleBlock) for m in both.model.modules()) == 1  # the x4 net's first step
    x = torch.rand(1, 3, 13, 17)
    assert (both.infer(x) - TorchBackend(view, polyphase=False).infer(x)).abs().max() <= 1e-5


def test_bicubic_alpha_bands_equal_whole_resize():
    alpha = smooth_image(37, 53, channels=1, seed=5)[..., 0]
    whole = np.asarray(Image.fromarray(alpha).resize((53 * 4, 37 * 4), Image.Resampling.BICUBIC))
    bands = np.concatenate([bicubic_rows(alpha, y, min(y + 7, 37), 4) for y in range(0, 37, 7)])
    assert np.array_equal(bands, whole)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


MODES = {
    "RGB": lambda: Image.fromarray(smooth_image(21, 30)),
    "RGBA": lambda: Image.fromarray(np.dstack([smooth_image(21, 30), smooth_image(21, 30, 1, seed=9)]), "RGBA"),
    "L": lambda: Image.fromarray(smooth_image(21, 30, 1)[..., 0]),
    "LA": lambda: Image.fromarray(np.dstack([smooth_image(21, 30, 1), smooth_image(21, 30, 1, seed=4)]), "LA"),
    "P": lambda: Image.fromarray(smooth_image(21, 30)).convert("P"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_modes_round_trip(tmp_path, mode):
    src = _save(MODES[mode](), tmp_path / f"in_{mode}.png")
    up = TiledUpscaler(TorchBackend(random_view()), core=8, batch=2)
    out = upscale_file(up, src, tmp_path / "out.png")
    with Image.open(out) as im:
        expected_mode = {"P": "RGB"}.get(mode, mode)
        assert im.mode == expected_mode and im.size == (120, 84)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_alpha_through_the_model(tmp_path):
    rgba = MODES["RGBA"]()
    src = _save(rgba, tmp_path / "a.png")
    view = random_view()
    up = TiledUpscaler(TorchBackend(view), core=8)
    bicubic = np.asarray(Image.open(upscale_file(up, src, tmp_path / "b.png")))[..., 3]
    model = np.asarray(Image.open(upscale_file(up, src, tmp_path / "m.png", alpha_mode="model")))[..., 3]
    alpha = np.asarray(rgba)[..., 3]
    grey = np.repeat(alpha[..., None], 3, -1)
    expected = np.round(_reference(view, grey).mean(-1) * 255).clip(0, 255).astype(np.uint8)
    assert np.abs(model.astype(int) - expected).max() <= 1
    assert np.array_equal(bicubic, np.asarray(Image.fromarray(alpha).resize((120, 84), Image.Resampling.BICUBIC)))


def test_the_colour_under_transparent_pixels_is_filled_from_the_visible_ones():
    """Only alpha-0 pixels change; each takes colour from the visible pixels nearest it."""
    from srtrt.engine.datapath.transparency import fill_hidden_colour

    pixels = np.zeros((33, 47, 3), np.uint8)
    alpha = np.zeros((33, 47), np.uint8)
    pixels[:, :20], alpha[:, :20] = (200, 40, 10), 255  # visible red on the left
    pixels[:, 30:], alpha[:, 30:] = (10, 40, 200), 128  # half-visible blue on the right
    filled = fill_hidden_colour(pixels, alpha)
    assert np.array_equal(filled[alpha > 0], pixels[alpha > 0])
    assert (filled[:, 20, 0] > 150).all() and (filled[:, 29, 2] > 150).all()  # each edge takes its own side
    for nothing_to_fill in (np.full_like(alpha, 255), np.zeros_like(alpha), None):
        assert fill_hidden_colour(pixels, nothing_to_fill) is pixels


@pytest.mark.parametrize("tile", [0, 8])
def test_a_logo_on_transparent_black_keeps_no_dark_fringe(tmp_path, tile):
    """A white square on transparent black: the black under alpha 0 went through the network into the
    edge the bicubic alpha makes half transparent, a dark fringe (mean edge colour 121 with the default
    model). Tiled or whole, the edge is now the square's white."""
    import srtrt

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = 255
    out = np.asarray(srtrt.upscale(Image.fromarray(rgba, "RGBA"), backend="torch", precision="fp32", tile=tile))
    edge = (out[..., 3] > 20) & (out[..., 3] < 235)
    assert edge.sum() > 100 and out[edge][:, :3].mean() > 240


def test_sixteen_bit_grey_stays_sixteen_bit(tmp_path):
    grey16 = smooth_image(20, 24, 1, dtype=np.uint16)[..., 0]
    src = _save(Image.fromarray(grey16), tmp_path / "g16.png")
    up = TiledUpscaler(TorchBackend(random_view()), core=8)
    out = read_image(upscale_file(up, src, tmp_path / "o.png"))
    assert out.bit_depth == 16 and out.pixels.dtype == np.uint16 and out.pixels.shape == (80, 96, 1)
    # Precision beyond 8 bits survives: values are not multiples of 257 (what an 8-bit detour would give).
    assert np.mean(out.pixels % 257 != 0) > 0.5


def test_icc_profile_is_carried(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _save(MODES["RGB"](), tmp_path / "icc.png", icc_profile=icc)
    up = TiledUpscaler(TorchBackend(random_view()), core=16)
    with Image.open(upscale_file(up, src, tmp_path / "o.png")) as im:
        assert im.info.get("icc_profile") == icc


def _with_chunks(path, chunks) -> None:
    """Put raw chunks right after a PNG's IHDR, where its colour chunks belong (Pillow writes none)."""
    data = path.read_bytes()
    ihdr_end = 8 + 12 + struct.unpack_from(">I", data, 8)[0]
    made = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                    for kind, body in chunks)
    path.write_bytes(data[:ihdr_end] + made + data[ihdr_end:])


def test_png_colour_chunks_are_carried_or_said_to_be_lost(tmp_path):
    """gAMA, cHRM and cICP tell a viewer how to show the values; a PNG output keeps them as they were,
    for every decoder path (libpng's for plain 8-bit RGB, Pillow's for a palette, 16 bits), and
    another format says which of them it loses, where losing them changes what is shown."""
    linear = [(b"gAMA", struct.pack(">I", 100000)),
              (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 21000, 71000, 15000, 6000))]
    up = TiledUpscaler(TorchBackend(random_view()), core=16)
    for name, image in (("rgb", MODES["RGB"]()), ("palette", MODES["RGB"]().quantize(16)),
                        ("wide", Image.fromarray(smooth_image(12, 16, 1, dtype=np.uint16)[..., 0]))):
        src = _save(image, tmp_path / f"{name}.png")
        _with_chunks(src, linear)
        assert read_image(src).description.colour_chunks == tuple(linear), name
        out = upscale_file(up, src, tmp_path / f"{name}_x4.png")
        assert png_chunks(out, PNG_COLOUR_CHUNKS) == tuple(linear), name
        with Image.open(out) as shown:
            assert shown.info["gamma"] == 1.0, name
    with pytest.warns(OutputNote, match="JPEG output cannot keep the input PNG's gAMA/cHRM"):
        upscale_file(up, tmp_path / "rgb.png", tmp_path / "rgb_x4.jpg")
    # sRGB's own values, or an sRGB chunk beside them, say what an untagged file is taken as: no note
    src = _save(MODES["RGB"](), tmp_path / "srgb.png")
    _with_chunks(src, [(b"sRGB", b"\x00"), (b"gAMA", struct.pack(">I", 45455)), (b"cICP", bytes((1, 13, 0, 1)))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutputNote)
        upscale_file(up, src, tmp_path / "srgb_x4.jpg")
    assert png_chunks(upscale_file(up, src, tmp_path / "srgb_x4.png"), PNG_COLOUR_CHUNKS)[0] == (b"sRGB", b"\x00")
    # an HDR PNG (BT.2100 PQ) loses what it is in a JPEG, ICC profile or not: said
    src = _save(MODES["RGB"](), tmp_path / "pq.png", icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes())
    _with_chunks(src, [(b"cICP", bytes((9, 16, 0, 1)))])
    with pytest.warns(OutputNote, match="cannot keep the input PNG's cICP"):
        upscale_file(up, src, tmp_path / "pq_x4.webp")


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'tiff:Orientation="6" exif:PixelXDimension="30"><dc:rights xmlns:dc="http://purl.org/dc/elements/1.1/">'
       b'(c) someone</dc:rights></rdf:Description></rdf:RDF></x:xmpmeta>')


def test_resolution_xmp_and_png_text_are_carried_or_said_to_be_lost(tmp_path):
    """dpi, a PNG's text chunks (Copyright) and XMP were dropped without a word. dpi is kept as it was
    (as an image editor's resample keeps it); XMP says the pixels are upright and gives their new
    sizes; text and XMP a format has no place for are noted."""
    from PIL import PngImagePlugin

    up = TiledUpscaler(TorchBackend(random_view()), core=16)
    text = PngImagePlugin.PngInfo()
    text.add_text("Copyright", "(c) someone")
    text.add_itxt("XML:com.adobe.xmp", XMP.decode())
    photo = MODES["RGB"]()  # 30 x 21; the XMP's orientation 6 turns it to 21 x 30
    sources = {"png": _save(photo, tmp_path / "in.png", dpi=(300, 300), pnginfo=text),
               "jpg": _save(photo, tmp_path / "in.jpg", dpi=(300, 300), xmp=XMP),
               "tif": _save(photo, tmp_path / "in.tif", dpi=(300, 300), tiffinfo={700: XMP})}
    for kind, source in sources.items():
        for suffix in ("png", "jpg", "tif", "webp"):
            out = tmp_path / f"{kind}_x4.{suffix}"
            with warnings.catch_warnings(record=True) as notes:
                warnings.simplefilter("always", OutputNote)
                upscale_file(up, source, out)
            said = " ".join(str(n.message) for n in notes)
            with Image.open(out) as shown:
                assert shown.size == (84, 120), (kind, suffix)  # upright
                if suffix != "webp":  # WebP has no resolution
                    assert np.allclose(shown.info["dpi"], 300, atol=0.01), (kind, suffix)
                xmp = shown.info["xmp"]
                xmp = xmp.encode() if isinstance(xmp, str) else xmp
                assert b'tiff:Orientation="1"' in xmp and b'exif:PixelXDimension="84"' in xmp, (kind, suffix)
                assert b"(c) someone" in xmp
                if kind == "png" and suffix == "png":
                    assert shown.info["Copyright"] == "(c) someone"
            assert ("does not keep the input's text (Copyright)" in said) == (kind == "png" and suffix != "png"), said


def test_memory_is_bounded_by_a_band_not_the_image():
    """A long image: numpy memory at peak stays a small fraction of the full output."""
    view = random_view(blocks=1, channels=4)
    img = smooth_image(160, 1200, seed=2)
    up = TiledUpscaler(TorchBackend(view), core=16, margin=view.radius, batch=2)
    full_output_bytes = 160 * 4 * 1200 * 4 * 3
    band_bytes = 16 * 4 * 1200 * 4 * 3
    rows_seen = []
    tracemalloc.start()
    up.run(Planes(img), lambda band: rows_seen.append(band.colour.shape[0]), np.uint8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(rows_seen) <= 16 * 4 and sum(rows_seen) == 160 * 4
    assert peak < full_output_bytes / 4 and peak < 3 * band_bytes + 2_000_000


# --------------------------------------------------------------------------- integer transfers, staging, threads

def _float_planes(planes: Planes) -> Planes:
    """The same image as float32 in [0, 1], divided as the device conversion divides."""
    top = float(np.iinfo(planes.colour.dtype).max)
    alpha = None if planes.alpha is None else planes.alpha.astype(np.float32) / np.float32(top)
    return Planes(planes.colour.astype(np.float32) / np.float32(top), alpha)


@pytest.mark.parametrize("case", ["rgb8", "grey8", "rgb16", "rgba8-model-alpha", "la16-model-alpha"])
def test_integer_windows_give_the_bytes_of_float_windows(case):
    """Windows travel as uint8/uint16 and become float where the network runs (here the CPU,
    the same functions as on CUDA): the output bytes equal those of float input."""
    dtype = np.uint16 if "16" in case else np.uint8
    channels = 1 if case.startswith(("grey", "la")) else 3
    colour = smooth_image(37, 45, channels, seed=6, dtype=dtype)
    alpha = smooth_image(37, 45, 1, seed=8, dtype=dtype)[..., 0] if "alpha" in case else None
    planes = Planes(colour, alpha)
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16, batch=3)
    integer_colour, integer_alpha = up.run_to_array(planes, dtype)
    float_colour, float_alpha = up.run_to_array(_float_planes(planes), dtype)
    assert integer_colour.dtype == dtype and integer_colour.tobytes() == float_colour.tobytes()
    assert (integer_alpha is None) == (alpha is None)
    if alpha is not None:
        assert integer_alpha.tobytes() == float_alpha.tobytes()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["planar", "interleaved"])
@pytest.mark.parametrize("out_dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_slice_quantiser_gives_the_whole_batch_quantisers_bytes(out_dtype, in_dtype, layout):
    """The CPU path (slices of rows through a small buffer, numpy's interleaving cast; for a
    channels_last output the same in its own layout) and the device path (the whole batch in
    torch) give the same values, out-of-range and half-way values included, with a slice height
    that does not divide the rows."""
    from srtrt.engine.datapath.runtime import _quantise, _staging_dtype

    gen = torch.Generator().manual_seed(3)
    y = (torch.rand(3, 4, 23, 17, generator=gen) * 1.4 - 0.2)
    y[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, float(np.float32(0.5 / 65535))])
    y = y.to(in_dtype).contiguous(memory_format=layout)
    whole = torch.empty(3, 23, 17, 4, dtype=_staging_dtype(out_dtype))
    sliced = torch.zeros_like(whole)
    _quantise(y, out_dtype, whole)
    _quantise(y, out_dtype, sliced, torch.empty(3, 4, 5, 17))
    assert torch.equal(whole, sliced)


@pytest.fixture
def staging_made(monkeypatch) -> list:
    """(shape, dtype, pinned) of every StagingBuffers the test's runtime makes."""
    from srtrt.engine.datapath import runtime

    made = []
    real = runtime.StagingBuffers.__init__

    def counting(self, shape, dtype, count, pinned):
        made.append((shape, dtype, pinned))
        real(self, shape, dtype, count, pinned)

    monkeypatch.setattr(runtime.StagingBuffers, "__init__", counting)
    return made


def test_staging_buffers_are_made_once_per_window_shape_and_batch(staging_made):
    made = staging_made
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16, batch=2)
    image = smooth_image(50, 60, seed=1)
    for _ in range(2):  # many batches per image, two images: one staging allocation
        up.run(Planes(image), lambda band: None, np.uint8)
    h, w = up.plan(50, 60).window_shape
    assert made == [((2, h, w, 3), torch.uint8, False), ((2, 4 * h, 4 * w, 3), torch.uint8, False)]  # in, out
    up.run(Planes(smooth_image(50, 60, seed=1, dtype=np.uint16)), lambda band: None, np.uint16)
    assert len(made) == 4 and made[2][1] == made[3][1] == torch.int16  # uint16 travels as int16 bits


def test_images_of_other_sizes_reuse_the_staging_buffers_while_their_windows_fit(staging_made):
    """A folder of many sizes: each image is one window of its own shape. A smaller one runs in the
    buffers the larger made (no new allocation: pinning host memory costs a driver call on CUDA), a
    larger one makes new ones; every output equals a fresh runtime's."""
    backend = TorchBackend(random_view(blocks=1, channels=4))
    up, mine = TiledUpscaler(backend, core=0), []
    for size in ((40, 56), (24, 30), (33, 17), (48, 60)):
        image = smooth_image(*size, seed=sum(size))
        before = len(staging_made)
        got, _ = up.run_to_array(Planes(image), np.uint8)
        mine += [shape for shape, *_ in staging_made[before:]]
        fresh, _ = TiledUpscaler(backend, core=0).run_to_array(Planes(image), np.uint8)
        assert got.shape == (4 * size[0], 4 * size[1], 3) and np.array_equal(got, fresh)
    # windows in, outputs back: made for the first image, then for the larger last one only
    assert mine == [(1, 40, 56, 3), (1, 160, 224, 3), (1, 48, 60, 3), (1, 192, 240, 3)]


def test_staging_buffers_refit_only_smaller_shapes_of_the_same_kind_and_only_when_all_are_home():
    from srtrt.engine.datapath.runtime import StagingBuffers

    buffers = StagingBuffers((2, 8, 8, 3), torch.uint8, 2, pinned=False)
    held = buffers.take()
    assert held.shape == (2, 8, 8, 3) and held.is_contiguous()
    assert not buffers.refit((1, 4, 4, 3), torch.uint8, 2, False)  # one is still in use
    buffers.give(held)
    assert not buffers.refit((2, 9, 8, 3), torch.uint8, 2, False)  # more elements than each holds
    assert not buffers.refit((1, 4, 4, 3), torch.int16, 2, False) and not buffers.refit((1, 4, 4, 3), torch.uint8, 3, False)
    assert buffers.refit((1, 5, 7, 3), torch.uint8, 2, False)
    a, b = buffers.take(), buffers.take()
    assert a.shape == b.shape == (1, 5, 7, 3) and a.data_ptr() != b.data_ptr()
    buffers.give(a), buffers.give(b)
    assert buffers.refit((2, 8, 8, 3), torch.uint8, 2, False)  # back to the size they were made for


def test_a_shorter_group_of_frames_runs_in_a_slice_of_the_staging_buffers_there_are(staging_made):
    """Video frames cut short at a segment (4, 2, then 4 frames of one window each at batch 4):
    the staging buffers are made once, and each frame still equals its own run."""
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=64, batch=4)
    frames = [smooth_image(20, 24, seed=i) for i in range(4)]
    for group in (frames, frames[:2], frames):
        outs = [np.zeros((80, 96, 3), np.uint8) for _ in group]

        def keep(index, band, outs=outs):
            outs[index][band.y0:band.y0 + band.colour.shape[0]] = band.colour

        up.run_many([Planes(f) for f in group], keep, np.uint8)
    assert [shape[0] for shape, *_ in staging_made] == [4, 4]  # windows in, outputs back: at batch 4, once
    alone, _ = TiledUpscaler(up.backend, core=64).run_to_array(Planes(frames[3]), np.uint8)
    assert np.array_equal(outs[3], alone)


def test_bands_reach_the_sink_on_the_encoder_thread_in_order():
    import threading

    seen = []
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16)
    up.run(Planes(smooth_image(70, 40, seed=3)), lambda band: seen.append((threading.current_thread().name, band.y0)),
           np.uint8)
    assert {name for name, _ in seen} == {"srtrt-encoder"}
    assert [y0 for _, y0 in seen] == sorted(y0 for _, y0 in seen) and seen[0][1] == 0
    assert up.times.encode >= 0 and up.times.batches == len(up.plan(70, 40))


def test_a_sink_error_is_the_runs_error_and_every_thread_ends():
    import threading

    calls = []

    def failing_sink(band):
        calls.append(band.y0)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16)
    with pytest.raises(OSError, match="No space left"):
        up.run(Planes(smooth_image(120, 40, seed=2)), failing_sink, np.uint8)
    assert len(calls) == 2  # the bands after the failure were dropped, not encoded
    names = {"srtrt-reader", "srtrt-assembler", "srtrt-encoder"}
    assert not [t for t in threading.enumerate() if t.name in names]


def test_stage_times_add_up_across_threads():
    import threading

    from srtrt.engine.datapath.runtime import StageTimes

    times = StageTimes()

    def hammer():
        for _ in range(20000):
            times.add(read=1.0, batches=1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert times.read == 80000.0 and times.batches == 80000
    from dataclasses import asdict
    assert set(asdict(times)) == {"read", "infer", "assemble", "encode", "wall", "tiles", "batches"}


# --------------------------------------------------------------------------- several images, one run

@pytest.fixture
def batch_invariant_torch(monkeypatch):
    """torch's CPU convolutions without oneDNN, which runs a batch of one through other kernels
    than a larger batch (values up to 1e-7 apart, now and then a uint8 value one apart); the
    native convolution computes every sample of a batch alike, so bytes can be compared."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


def _run_many_to_arrays(up: TiledUpscaler, frames: list[Planes], out_dtype=np.uint8):
    """run_many's outputs per image, and the (image, y0) order its bands came in."""
    s = up.backend.scale
    colours = [np.zeros((p.height * s, p.width * s, p.channels), out_dtype) for p in frames]
    alphas = [np.zeros((p.height * s, p.width * s), out_dtype) if p.alpha is not None else None for p in frames]
    order = []

    def keep(index, band):
        order.append((index, band.y0))
        colours[index][band.y0:band.y0 + band.colour.shape[0]] = band.colour
        if band.alpha is not None:
            alphas[index][band.y0:band.y0 + band.alpha.shape[0]] = band.alpha

    up.run_many(frames, keep, out_dtype)
    return colours, alphas, order


def test_small_frames_share_a_batch_and_each_equals_its_own_run(batch_invariant_torch):
    """Three different frames of one window each at batch 4: one backend call for all three,
    and every frame's bytes equal running it alone."""
    rng = np.random.default_rng(11)
    frames = [Planes(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)) for _ in range(3)]
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), batch=4)
    assert len(up.plan(20, 28)) == 1
    together, _, order = _run_many_to_arrays(up, frames)
    assert up.times.batches == 1 < len(frames) and up.times.tiles == 3
    assert order == [(0, 0), (1, 0), (2, 0)]
    alone = [up.run_to_array(planes, np.uint8)[0] for planes in frames]
    assert [out.tobytes() for out in together] == [out.tobytes() for out in alone]

    # with oneDNN (the default) batch 1 and batch 3 may differ by a rounding, never by more
    torch.backends.mkldnn.enabled = True
    together, _, _ = _run_many_to_arrays(up, frames)
    for planes, out in zip(frames, together):
        assert np.abs(out.astype(int) - up.run_to_array(planes, np.uint8)[0]).max() <= 1


@pytest.mark.parametrize("case", ["rgb8", "rgba8-model-alpha", "grey16", "rgb-float-out"])
def test_frames_of_several_tiles_share_batches_across_frames(case, batch_invariant_torch):
    """12 tiles a frame at batch 8: batches hold the end of one frame and the start of the next;
    each frame (alpha and grey planes, 16 bits and float output included) still equals its own
    run, and bands come frame by frame, top to bottom."""
    dtype = np.uint16 if "16" in case else np.uint8
    channels = 1 if "grey" in case else 3
    out_dtype = np.float32 if "float" in case else dtype
    frames = [Planes(smooth_image(40, 50, channels, seed=i, dtype=dtype),
                     smooth_image(40, 50, 1, seed=10 + i, dtype=dtype)[..., 0] if "alpha" in case else None)
              for i in range(3)]
    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16, batch=8)
    plan = up.plan(40, 50)
    assert len(plan) == 12 and len(plan) % up.batch
    colours, alphas, order = _run_many_to_arrays(up, frames, out_dtype)
    assert up.times.batches == 36 // 8 + 1 and up.times.tiles == 36  # 5 calls where one frame at a time takes 6
    assert order == [(i, span.c0 * 4) for i in range(3) for span in plan.rows]
    for planes, colour, alpha in zip(frames, colours, alphas):
        alone_colour, alone_alpha = up.run_to_array(planes, out_dtype)
        assert colour.tobytes() == alone_colour.tobytes()
        assert (alpha is None) == (alone_alpha is None)
        if alpha is not None:
            assert alpha.tobytes() == alone_alpha.tobytes()


def test_run_many_refuses_mixed_shapes_and_raises_a_sinks_error():
    import threading

    up = TiledUpscaler(TorchBackend(random_view(blocks=1, channels=4)), core=16, batch=5)
    with pytest.raises(ValueError, match="one shape"):
        up.run_many([Planes(smooth_image(40, 50)), Planes(smooth_image(40, 52))], lambda i, band: None)
    seen = []

    def failing_sink(index, band):
        seen.append(index)
        if index == 1:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        up.run_many([Planes(smooth_image(40, 50, seed=i)) for i in range(3)], failing_sink)
    assert seen == [0, 0, 0, 1]  # frame 0's three bands, then the failure; frame 2 never reached the sink
    names = {"srtrt-reader", "srtrt-assembler", "srtrt-encoder"}
    assert not [t for t in threading.enumerate() if t.name in names]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cuda_integer_transfers_match_float_input_and_reuse_pinned_buffers(dtype, staging_made):
    backend = TorchBackend(random_view(blocks=1, channels=4), "cuda", "fp32")
    up = TiledUpscaler(backend, core=16, batch=2)
    planes = Planes(smooth_image(64, 80, seed=4, dtype=dtype), smooth_image(64, 80, 1, seed=5, dtype=dtype)[..., 0])
    integer, integer_alpha = up.run_to_array(planes, dtype)
    again, _ = up.run_to_array(planes, dtype)
    assert [pinned for *_, pinned in staging_made] == [True, True]  # in and out, pinned, once for both runs
    as_float, float_alpha = up.run_to_array(_float_planes(planes), dtype)
    assert integer.tobytes() == again.tobytes() == as_float.tobytes()
    assert integer_alpha.tobytes() == float_alpha.tobytes()


class _OneWindowTorch(TorchBackend):
    """torch taking one 40x40 window only, as a TensorRT plan of SwinIR does (such a plan needs a GPU)."""

    balanced_tiles = False

    def __init__(self, view):
        super().__init__(view)
        self.windows = []

    def accepts(self, batch, height, width):
        return (height, width) == (40, 40)

    def infer(self, x):
        self.windows.append(tuple(x.shape[2:]))
        return super().infer(x)


def test_images_an_engine_cannot_take_run_on_the_fallback_auto_named(tmp_path):
    """`auto` on CUDA names torch as the fallback of a TensorRT plan: an image too small for the
    plan's one window runs there (said once), a larger one through the plan's windows, both exact."""
    from srtrt.engine.batch.files import FileRunner
    from srtrt.engine.batch.options import RunOptions

    view = random_view()
    fixed = _OneWindowTorch(view)
    fixed.fallback = lambda: TorchBackend(view)
    margin = fixed.radius
    lines = []
    runner = FileRunner(fixed, RunOptions(tile=40 - 2 * margin, margin=margin), log=lines.append)
    reference = FileRunner(TorchBackend(view), RunOptions(tile=0))
    for name, (h, w) in {"small": (30, 24), "again": (20, 36), "large": (70, 100)}.items():
        Image.fromarray(smooth_image(h, w, seed=h)).save(tmp_path / f"{name}.png")
        image = read_image(tmp_path / f"{name}.png")
        got, _ = runner.upscale_arrays(image)
        want, _ = reference.upscale_arrays(image)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999, name  # fp32 tiles: equal up to rounding ties
    assert set(fixed.windows) == {(40, 40)}  # the large image only, in the plan's windows
    assert len(lines) == 1 and "windows are outside what this engine takes" in lines[0]
    assert "; such images run on torch (fp32, cpu" in lines[0], lines[0]


def test_an_abandoned_runs_output_buffers_go_back_only_after_their_device_copy():
    """A stopped or failed run handed its pinned output buffers back without waiting for the
    device-to-host copy queued into them, and the next run's tiles could then be overwritten by
    that late copy. The assembler now waits on each buffer's copy event, also when it skips it.
    (The event is a stand-in: a CUDA event needs a GPU; tests/test_gpu.py runs the real streams.)"""
    import queue
    import threading

    from srtrt.engine.datapath.runtime import _DONE

    up = TiledUpscaler(TorchBackend(random_view()), core=16)
    order = []

    class CopyEvent:
        def synchronize(self):
            order.append("copy done")

    class Pool:
        def give(self, buffer):
            order.append(f"{buffer} back")

    up._outputs = Pool()
    planes = Planes(smooth_image(20, 20), None)
    plan = up.plan(20, 20)
    q_out, bands, abandon = queue.Queue(), queue.Queue(), threading.Event()
    abandon.set()
    for name in ("a", "b"):
        q_out.put(([(0, tile) for tile in plan], None, name, CopyEvent(), None))
    q_out.put(_DONE)
    up._assemble(planes, plan, q_out, bands, np.uint8, None, [], abandon)
    assert order == ["copy done", "a back", "copy done", "b back"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_finds_nan_and_either_infinity_wherever_they_are(dtype):
    """The runtime's check before quantising (one min/max reduction instead of a bool per value)
    says what torch.isfinite(t).all() says, on contiguous and permuted outputs alike."""
    from srtrt.engine.datapath.runtime import all_finite

    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 17, 23, generator=generator).to(dtype)
    assert bool(all_finite(clean)) and bool(all_finite(clean.permute(0, 2, 3, 1)))
    assert bool(all_finite(torch.empty(0, 3, 4, 4, dtype=dtype)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in ((0, 0, 0, 0), (1, 2, 16, 22), (1, 1, 8, 5)):
            y = clean.clone()
            y[index] = bad
            assert not bool(all_finite(y))
            below_first_row = y.permute(0, 2, 3, 1)[:, 1:]  # a strided view: bad only if the value is in it
            assert bool(all_finite(below_first_row)) == (index[2] == 0)
