"""Tests on a real CUDA GPU (skipped without one; bench/gpu.sh runs them with `-m "gpu or tensorrt"`).

- the fused Triton pixel-shuffle + PReLU kernel against the torch reference, every dtype and
  output layout;
- the torch CUDA backend: fused and unfused agree, reduced precisions stay close to fp32, and
  tiles reproduce a whole-image pass;
- the runtime's streams: batches alternate between two non-default streams from pinned host
  buffers, and the result equals a one-stream run (overlap is possible and harmless; how much
  it gains is measured in bench/, never asserted here);
- the CUDA-graph variant of the torch backend that bench/ measures equals the plain one.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_view, smooth_image, strict_fp32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_TILE_TOLERANCE = 1e-5  # the design's bound for a tiled fp32 run against a whole-image run


# ------------------------------------------------------------------------------ the kernel

@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("r,slopes", [(2, "channel"), (2, "shared"), (3, "channel"), (4, "shared")])
def test_fused_kernel_equals_reference(dtype, channels_last, r, slopes):
    from srtrt.kernels import pixel_shuffle_prelu as k

    g = torch.Generator(device="cuda").manual_seed(r)
    c, n, h, w = 5, 2, 37, 23  # odd sizes; several programs, the last one partly masked
    x = torch.randn(n, c * r * r, h, w, device="cuda", generator=g).to(DTYPES[dtype])
    alpha = (torch.rand(1 if slopes == "shared" else c, device="cuda", generator=g) - 0.3).to(DTYPES[dtype])
    out = k.empty_output(x, r, channels_last=channels_last).fill_(float("nan"))
    k.launch(k.pixel_shuffle_prelu_kernel, x, alpha, r, out)
    torch.cuda.synchronize()
    # The kernel computes in fp32 and rounds once (to nearest even, as .to() does on a GPU).
    expected = k.reference(x.float(), alpha.float(), r).to(DTYPES[dtype])
    assert not torch.isnan(out).any()
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(out, expected)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_torch_op_on_cuda_runs_the_kernel_exactly_in_the_input_order(dtype, channels_last):
    from srtrt.kernels import pixel_shuffle_prelu as k
    from srtrt.kernels import torch_op  # noqa: F401  (registers torch.ops.srtrt)

    order = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 64 * 4, 19, 21, device="cuda").to(DTYPES[dtype]).contiguous(memory_format=order)
    alpha = (torch.rand(64, device="cuda") - 0.5).to(DTYPES[dtype])
    got = torch.ops.srtrt.pixel_shuffle_prelu(x, alpha, 2)
    assert got.is_contiguous(memory_format=order)  # a channels_last network pays no layout copy
    assert torch.equal(got, k.reference(x.float(), alpha.float(), 2).to(DTYPES[dtype]))


@needs_triton
def test_fused_kernel_splits_a_batch_past_int32_indexing():
    from srtrt.kernels import pixel_shuffle_prelu as k

    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs about 20 GiB of GPU memory (a batch past 2**31 elements and its reference)")

    x = torch.randn(3, 4, 23000, 8192, device="cuda", dtype=torch.float16)  # 2.26e9 elements, 4.5 GB
    alpha = torch.full((1,), 0.25, device="cuda", dtype=torch.float16)
    assert x.numel() >= k.INDEX_LIMIT > x[:1].numel()
    got = k.pixel_shuffle_prelu(x, alpha, 2)
    for i in range(3):  # image by image, so the reference stays within int32 too
        assert torch.equal(got[i:i + 1], k.reference(x[i:i + 1].float(), alpha.float(), 2).half())


# --------------------------------------------------------------------- the torch backend

def _backend(view, precision="fp32", **kw):
    from srtrt.engine.backends.torch_backend import TorchBackend

    return TorchBackend(view, "cuda", precision, **kw)


@needs_triton
def test_fused_backend_equals_unfused():
    view = random_view(blocks=2, channels=16)
    x = torch.rand(2, 3, 40, 36, device="cuda")
    with strict_fp32():
        fused = _backend(view, fused_op=True).infer(x)
        plain = _backend(view, fused_op=False).infer(x)
    assert (fused - plain).abs().max().item() <= FP32_TILE_TOLERANCE  # the tail conv may see another layout


def test_cuda_fp32_matches_cpu_reference():
    view = random_view(blocks=2, channels=16)
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        expected = view(x)
    with strict_fp32():
        got = _backend(view).infer(x.cuda()).cpu()
    assert (got - expected).abs().max().item() <= 1e-5


def test_auto_without_an_engine_runs_torch_for_a_model_with_no_file():
    from srtrt.engine.backends import create_backend

    view = random_view(blocks=1, channels=8)  # built in memory: no checkpoint file, no hash of one
    selection = create_backend("auto", view=view, device="cuda")
    assert selection.backend.describe().startswith("torch (") and "TensorRT not used" in selection.reason


@pytest.mark.parametrize("precision,tolerance", [("fp16", 1e-2), ("bf16", 4e-2)])
def test_reduced_precisions_stay_close_to_fp32(precision, tolerance):
    view = random_view(blocks=2, channels=16)
    x = torch.rand(2, 3, 32, 32, device="cuda")
    with strict_fp32():
        reference = _backend(view).infer(x).float()
    got = _backend(view, precision).infer(x).float()
    assert got.dtype == torch.float32 and (got - reference).abs().max().item() <= tolerance


def _upscaler(backend, **kw):
    from srtrt.engine.datapath.runtime import TiledUpscaler

    return TiledUpscaler(backend, **kw)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_triton)], ids=["plain", "fused"])
def test_tiles_equal_whole_image_fp32(fused):
    from srtrt.engine.datapath.runtime import Planes

    view = random_view(blocks=2, channels=8)
    img = smooth_image(70, 90)
    with strict_fp32():
        backend = _backend(view, fused_op=fused)
        whole = backend.infer(torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255).cuda())
        whole = whole[0].permute(1, 2, 0).float().cpu().numpy()
        tiled, _ = _upscaler(backend, core=24, batch=3).run_to_array(Planes(img), np.float32)
    assert np.abs(tiled - whole).max() <= FP32_TILE_TOLERANCE


# ------------------------------------------------------------------------- the streams

class _StreamRecorder:
    """Wraps a backend and notes the stream and memory of every call."""

    def __init__(self, backend):
        self._backend = backend
        self.streams = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def infer(self, x):
        self.streams.append(torch.cuda.current_stream().cuda_stream)
        return self._backend.infer(x)


def test_batches_alternate_between_two_streams_from_pinned_buffers(monkeypatch):
    from srtrt.engine.datapath.runtime import Planes, TiledUpscaler

    view = random_view(blocks=2, channels=8)
    img = smooth_image(96, 128)
    pinned = []
    stage = TiledUpscaler._stage

    def recording_stage(buffer, frames, windows):
        pinned.append(buffer.is_pinned())
        return stage(buffer, frames, windows)

    monkeypatch.setattr(TiledUpscaler, "_stage", staticmethod(recording_stage))
    recorder = _StreamRecorder(_backend(view, "fp16"))
    two, _ = TiledUpscaler(recorder, core=32, batch=2, streams=2).run_to_array(Planes(img), np.uint8)
    one, _ = TiledUpscaler(_backend(view, "fp16"), core=32, batch=2, streams=1).run_to_array(Planes(img), np.uint8)

    default = torch.cuda.default_stream().cuda_stream
    assert len(recorder.streams) >= 4 and default not in recorder.streams
    assert len(set(recorder.streams)) == 2
    assert all(a != b for a, b in zip(recorder.streams, recorder.streams[1:]))  # alternating
    assert pinned and all(pinned)
    assert np.array_equal(two, one)


# ---------------------------------------------------------------- the benchmarked variant

def test_cuda_graph_backend_equals_plain_backend():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from cuda_graphs import GraphedTorchBackend

    from srtrt.engine.datapath.runtime import Planes

    view = random_view(blocks=2, channels=8)
    img = smooth_image(80, 100)
    graphed = GraphedTorchBackend(view, "cuda", "fp16", fused_op=importlib.util.find_spec("triton") is not None)
    plain = _backend(view, "fp16", fused_op=graphed.fused_op)
    a, _ = _upscaler(graphed, core=32, batch=2).run_to_array(Planes(img), np.uint8)
    b, _ = _upscaler(plain, core=32, batch=2).run_to_array(Planes(img), np.uint8)
    assert len(graphed._graphs) >= 1
    assert np.array_equal(a, b)


def test_an_output_that_overflows_fp16_on_the_gpu_fails_its_image_in_one_line(tmp_path, monkeypatch, capsys):
    """On CUDA the output was quantised on the device with no look at its values: a model whose
    activations pass 65504 wrote an all-black image at fp16, exit 0."""
    pytest.importorskip("spandrel")
    from PIL import Image

    from srtrt.cli import main

    from conftest import save_fp16_overflowing_compact

    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    save_fp16_overflowing_compact(tmp_path / "big.safetensors")
    Image.fromarray(smooth_image(16, 20)).save(tmp_path / "in.png")
    code = main(["run", str(tmp_path / "in.png"), "-o", str(tmp_path / "fp16.png"), "--model",
                 str(tmp_path / "big.safetensors"), "--device", "cuda", "--backend", "torch", "--precision", "fp16"])
    err = capsys.readouterr().err
    assert code == 1 and "the network gave NaN or infinite values" in err, err
    assert not (tmp_path / "fp16.png").exists()
