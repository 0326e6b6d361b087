"""Community models (spandrel architectures, bench/zoo_models.py) on the 2K-output workload.

Per model, in one run so the ratios are honest:
- eager-fp32-nchw: the spandrel module as srtrt loads it (CommunityView: the module, then a
  clamp), eval mode, NCHW fp32, under inference_mode. RRDBNet runs on 128x128 LR tiles that
  cover the image exactly once (no overlap): the network's compute alone, with bounded memory
  (on the 2K-input image a whole-image pass would need an estimated 40 GB); Compact runs the whole image in one call.
- auto: what `srtrt run IMAGE --model FILE` picks (`create_backend("auto")`) behind the tiled
  runtime (TiledUpscaler over the image's Planes, uint8 out, kept in memory, no encoding).
- torch-bf16, openvino-bf16: those paths by name, on CPUs with fast bf16; openvino-int8 on any
  CPU, after `srtrt calibrate`'s measurement on centre crops of four sample photos
  (../shared/data/samples, or generated photo-like content), kept by sha256 as the CLI keeps it.
  `auto` then also weighs int8, if its agreement with fp32 passes the guard.

The first use of each weights file measures its tile margin and (auto) its bf16 agreement with
fp32; both are cached by sha256 and happen while the model is loaded or the backend built,
outside the timed rounds, and every case has one untimed warm-up round (OpenVINO compiles there).

test_first_use_tiling: the one-time cost of a weights file's tile facts (zoo.measure_tiling).

test_peak_rss: `srtrt run` in a subprocess with the RRDBNet file, its peak RSS as it reads it (peak_memory.py).
By default on a 512x384 crop of the big image (a minute or two); with SRTRT_BENCH_ZOO_RSS=1 on
the whole 2048x1536 image (tens of minutes on 2 cores), the case the 3 GB target is about.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import run_mode
import torch
import workloads
import zoo_models
from cases import Case, Runner, missing
from peak_memory import run_srtrt
from PIL import Image

pytest.importorskip("spandrel", reason="the community models are spandrel's architectures (pip install spandrel)")
pytest.importorskip("safetensors")

from srtrt.engine.datapath.runtime import Band, Planes, TiledUpscaler  # noqa: E402

CUDA = torch.cuda.is_available()
MODE = run_mode.current(CUDA)
WORKLOAD = "2k-output"
RSS_ENV = "SRTRT_BENCH_ZOO_RSS"
RSS_MODEL = "rrdbnet-x4plus"
RSS_TARGET_GB = 3.0
RSS_CROP = {"full": (512, 384), "quick": (512, 384), "smoke": (64, 48)}  # (width, height) LR

CASES = [
    Case("eager-fp32-nchw", "zoo-baseline", "eager", "fp32", channels_last=False),
    Case("auto", "zoo-srtrt", "auto", "auto"),
    Case("torch-bf16", "zoo-srtrt", "torch", "bf16", needs=("fast-bf16",)),
    Case("openvino-bf16", "zoo-srtrt", "openvino", "bf16", needs=("openvino", "fast-bf16")),
    Case("openvino-int8", "zoo-srtrt", "openvino", "int8", needs=("openvino",)),
]
CALIBRATION_PHOTOS, CALIBRATION_SIDE = 4, 96  # int8 ranges from centre crops of ../shared/data/samples (LR)
PAIRS = [(m, c) for m in zoo_models.MODELS for c in CASES]  # each model's cases together, eager first


@dataclass
class Loaded:
    """One model as srtrt loads it, and what every case of it records."""

    view: object                   # srtrt's CommunityView
    path: Path
    info: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def zoo():
    """zoo(ZooModel) -> Loaded; the weights file written and the model loaded once per session."""
    import srtrt

    loaded: dict[str, Loaded] = {}

    def get(model: zoo_models.ZooModel) -> Loaded:
        if model.name not in loaded:
            path = zoo_models.weights_file(model)
            t0 = time.perf_counter()
            view = srtrt.load_model(str(path))  # first use of a file: measures its margin (cached by sha256)
            calibrate_int8(view)
            facts = view.facts
            loaded[model.name] = Loaded(view, path, {
                "model": model.name, "label": model.label, "architecture": facts.architecture,
                "params": zoo_models.parameters(view.generator), "weights": f"random, seed {zoo_models.SEED}",
                "weights_file": f"{zoo_models.CACHE_KIND}/{path.name}",  # in srtrt's cache folder
                "load_s": round(time.perf_counter() - t0, 2),
                "radius": facts.radius, "facts_margin": facts.margin, "feature_channels": facts.feature_channels,
                "flop_per_lr_pixel": zoo_models.conv_flop_per_lr_pixel(view.generator, facts.channels),
                **zoo_models.output_check(view.generator)})
        return loaded[model.name]

    return get


def calibrate_int8(view) -> None:
    """What `srtrt calibrate SAMPLES --model FILE` does, on small centre crops (a 23-block RRDBNet
    runs eagerly here): the ranges kept by sha256, so `auto` and the int8 case find them. Done once
    per weights file and data: the float-conv selection takes a 23-block RRDBNet minutes."""
    from srtrt import zoo as srtrt_zoo
    from srtrt.engine.backends.agreement import AGREEMENT_DB
    from srtrt.engine.toolchain.mixed_int8 import selection_target
    from srtrt.engine.toolchain.quantize import calibrate, lr_photos

    samples, side = workloads.shared_data("samples"), CALIBRATION_SIDE
    source = samples.name if samples.is_dir() else "photo-like"
    stored = srtrt_zoo.stored_calibration(view.checkpoint_sha256)
    smoke = MODE.name == "smoke"  # checks code paths only: any ranges do, and the minutes-long selection is skipped
    if stored and (smoke or stored.get("source") == source and stored.get("target_db") == selection_target(AGREEMENT_DB)):
        view.int8_calibration = stored
        return

    def centre(lr: torch.Tensor) -> torch.Tensor:
        top, left = max((lr.shape[-2] - side) // 2, 0), max((lr.shape[-1] - side) // 2, 0)
        return lr[..., top:top + side, left:left + side]

    if samples.is_dir():
        photos = [centre(lr) for lr in lr_photos(samples, view.scale, CALIBRATION_PHOTOS)]
    else:
        photos = [torch.from_numpy(workloads.photo_like(side, side, seed)).permute(2, 0, 1)[None].float() / 255
                  for seed in range(CALIBRATION_PHOTOS)]
    record = calibrate(view, photos, source=source, agreement_db=None if smoke else AGREEMENT_DB)
    srtrt_zoo.store_calibration(view.checkpoint_sha256, record)
    view.int8_calibration = record


# ---------------------------------------------------------------------------------- runners

def eager_runner(loaded: Loaded, lr: np.ndarray, tile: int, device: torch.device) -> Runner:
    view = loaded.view.to(device).eval()
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div_(255).contiguous().to(device)
    boxes = zoo_models.no_overlap_tiles(lr.shape[0], lr.shape[1], tile)

    def run():
        with torch.inference_mode():
            for top, left, h, w in boxes:
                view(x[:, :, top:top + h, left:left + w])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    how = (f"{len(boxes)} LR tiles of {tile}x{tile}, no overlap: the network's compute alone, no margins "
           "recomputed") if len(boxes) > 1 else "whole image, one call"
    pixels = lr.shape[0] * lr.shape[1]
    info = {"device": device.type, "describe": "eager torch fp32 NCHW", "eager_tiling": how, "windows": len(boxes),
            "computed_gflop": loaded.info["flop_per_lr_pixel"] * pixels / 1e9}
    return Runner(run, info, close=lambda: loaded.view.to("cpu"))


def srtrt_runner(case: Case, loaded: Loaded, lr: np.ndarray, device: torch.device) -> Runner:
    """`create_backend` as `srtrt run --backend B --precision P` calls it, behind the tiled runtime
    as bench/cases.py `_srtrt` drives it: uint8 Planes in, uint8 bands into memory, no encoding."""
    from srtrt.engine.backends import create_backend

    selection = create_backend(case.backend, view=loaded.view, precision=case.precision, device=device.type)
    upscaler = TiledUpscaler(selection.backend)
    s = loaded.view.scale
    out = np.empty((lr.shape[0] * s, lr.shape[1] * s, 3), np.uint8)
    planes = Planes(lr)

    def keep(band: Band):
        out[band.y0:band.y0 + band.colour.shape[0]] = band.colour

    plan = upscaler.plan(lr.shape[0], lr.shape[1])
    wh, ww = plan.window_shape
    info = {"device": device.type, "reason": selection.reason, "describe": selection.backend.describe(),
            "margin": upscaler.margin, "tiling_note": selection.facts.tiling_note(upscaler.margin),
            "core": 0 if len(plan) == 1 else plan.core, "default_core": upscaler.core, "batch": upscaler.batch,
            "windows": len(plan), "window": [wh, ww],
            "computed_gflop": loaded.info["flop_per_lr_pixel"] * len(plan) * wh * ww / 1e9}

    def run():
        upscaler.run(planes, keep, np.uint8)
        # busy milliseconds per runtime stage, last round: where a small network's time goes besides itself
        info["stage_ms"] = {name: round(1e3 * getattr(upscaler.times, name), 3)
                            for name in ("read", "infer", "assemble", "encode", "wall")}

    return Runner(run, info, close=selection.backend.close)


def skip_reason(case: Case, device: torch.device) -> str | None:
    if CUDA and case.backend in ("torch", "openvino"):
        return "the named bf16 cases are CPU paths; on a GPU only eager and auto run"
    return missing(case, device)


def median_seconds(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    return stats.stats.median if stats is not None else None


@pytest.mark.parametrize(("model", "case"), PAIRS, ids=[f"{m.name}-{c.id}" for m, c in PAIRS])
def test_zoo(benchmark, model, case, zoo, workload, device):
    reason = skip_reason(case, device)
    if reason:
        pytest.skip(reason)
    loaded, work = zoo(model), workload(WORKLOAD)
    if case.backend == "eager":
        runner = eager_runner(loaded, work.lr, model.eager_tile, device)
    else:
        runner = srtrt_runner(case, loaded, work.lr, device)
    try:
        benchmark.group = f"zoo {model.name}: {work.name}"
        benchmark.extra_info.update(kind="zoo", case=case.id, group=case.group, backend=case.backend,
                                    precision=case.precision, **loaded.info, **work.info(), **runner.info)
        benchmark.pedantic(runner.run, rounds=MODE.rounds, iterations=1, warmup_rounds=1)
    finally:
        runner.close()
    if "stage_ms" in runner.info:
        benchmark.extra_info["stage_ms"] = runner.info["stage_ms"]
    seconds = median_seconds(benchmark)
    if seconds:
        benchmark.extra_info["output_mp_per_s"] = round(work.output_megapixels / seconds, 4)
        benchmark.extra_info["gflop_per_s"] = round(runner.info["computed_gflop"] / seconds, 2)


# --------------------------------------------------------------------------------- peak RSS

def full_rss() -> bool:
    return os.environ.get(RSS_ENV, "") not in ("", "0")


def rss_input(folder: Path) -> tuple[Path, str]:
    """The image `srtrt run` gets: the whole big image (opt-in) or a centre crop of it."""
    big = workloads.shared_data("big", workloads.SOURCE_NAME)
    if full_rss():
        if not big.is_file():
            pytest.skip(f"{big} is absent")
        return big, f"{workloads.SOURCE_NAME}, whole (2048x1536 LR)"
    width, height = RSS_CROP[MODE.name]
    if big.is_file():
        with Image.open(big) as im:
            pixels, label = zoo_models.crop_centre(np.asarray(im.convert("RGB")), width, height), "centre crop"
    else:
        pixels, label = workloads.photo_like(width, height), "generated photo-like image (big image absent)"
    path = folder / f"rss-input-{width}x{height}.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    return path, f"{label}, {width}x{height} LR"


def warm_caches(loaded: Loaded) -> str:
    """What auto picks, built once here so the child finds the ONNX export and the agreement
    measurement cached: its RSS is then `srtrt run`'s own, not an exporter's."""
    from srtrt.engine.backends import create_backend

    selection = create_backend("auto", view=loaded.view)
    selection.backend.close()
    return selection.reason


@pytest.mark.parametrize("model", zoo_models.MODELS, ids=[m.name for m in zoo_models.MODELS])
def test_first_use_tiling(benchmark, model):
    """What a model file's first use costs to know its tiles (srtrt.zoo.measure_tiling, cached by
    sha256 afterwards): the receptive-field probe, then the float64 confirmation of exact tiles or
    the margin measured on reference content. One round: it is a one-time cost per file."""
    from srtrt import community, zoo

    model_file = community.load(zoo_models.weights_file(model))
    result = {}
    benchmark.group = "zoo: first use, tiling facts"
    benchmark.pedantic(lambda: result.update(zoo.measure_tiling(model_file)), rounds=1, iterations=1, warmup_rounds=0)
    assert result["margin"] >= 0
    benchmark.extra_info.update(kind="zoo-first-use", model=model.name, radius=result["radius"], margin=result["margin"],
                                exact=result["figure"] is None)


def test_peak_rss(benchmark, zoo, tmp_path):
    if CUDA:
        pytest.skip("peak host RSS of the CPU path; on a GPU the activations live on the device")
    loaded = zoo(zoo_models.BY_NAME[RSS_MODEL])
    image, label = rss_input(tmp_path)
    reason = warm_caches(loaded)
    args = ["run", str(image), "--model", str(loaded.path), "-o", str(tmp_path / "out.png"), "--overwrite"]
    result = {}

    def run():
        result["code"], result["wall"], result["rss"] = run_srtrt(args, tmp_path / "srtrt-run.log")

    benchmark.group = "zoo: peak RSS of srtrt run"
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    log = (tmp_path / "srtrt-run.log").read_text(errors="replace")
    assert result["code"] == 0, f"srtrt run failed ({result['code']}):\n{log[-2000:]}"
    rss_gb = result["rss"] / 1e9
    def portable(text: str) -> str:  # the report names no folder of this machine
        return (text.replace(str(tmp_path), "OUT").replace(str(loaded.path.parent), zoo_models.CACHE_KIND)
                .replace(str(workloads.SHARED_BIG), "../shared/data/big"))

    benchmark.extra_info.update(
        kind="zoo-rss", **loaded.info, input=label, full_image=full_rss(), command=portable(" ".join(args)),
        reason=reason, peak_rss_gb=round(rss_gb, 3), rss_target_gb=RSS_TARGET_GB, within_target=rss_gb < RSS_TARGET_GB,
        wall_s=round(result["wall"], 2), log_head=[portable(line) for line in log.strip().splitlines()[:3]])
