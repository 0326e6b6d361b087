"""Community models through the whole engine: load, facts, tiles exact or within the measured
bound, backends in agreement with torch fp32, output names, grey models, bad input as one line.

Models are spandrel's own architecture classes with small configs and random weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("spandrel")

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.RCAN import RCAN  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

import srtrt  # noqa: E402
from srtrt import zoo  # noqa: E402
from srtrt.engine.backends.torch_backend import TorchBackend  # noqa: E402
from srtrt.engine.datapath.runtime import Planes, TiledUpscaler  # noqa: E402

from conftest import save_community_models, smooth_image  # noqa: E402
from run_helpers import partials, run_cli  # noqa: E402

MODELS = {
    "compact": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=6, upscale=4),
    "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=12, upscale=4),
    "grey": lambda: Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=3, upscale=2),
    # Real-ESRGAN x2's form: pixel-unshuffle by 2, then an x4 body; sides must be multiples of 4.
    "rrdb_x2": lambda: ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2),
    # a field of 19 LR pixels, beyond the affordable margin the test sets (a 23-block one reaches ~349)
    "rrdb_deep": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2),
    "rcan": lambda: RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4),
    "swinir": lambda: SwinIR(img_size=32, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=8,
                             upscale=2, upsampler="pixelshuffledirect"),
}


pytestmark = pytest.mark.usefixtures("own_srtrt_cache")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return save_community_models(tmp_path_factory.mktemp("zoo"), MODELS)


def lr_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return smooth_image(h, w, channels=channels, seed=seed).astype(np.float32) / 255


def tiled_and_whole(view, image: np.ndarray, core: int, margin: int | None = None):
    backend = TorchBackend(view, "cpu", "fp32")
    planes = Planes(image if image.shape[2] > 1 else image[:, :, 0], None)
    tiled, _ = TiledUpscaler(backend, core=core, margin=margin).run_to_array(planes)
    whole, _ = TiledUpscaler(backend, core=0, margin=0).run_to_array(planes)
    return tiled, whole


def test_facts_come_from_the_network(model_files):
    compact, span = srtrt.load_model(model_files["compact"]), srtrt.load_model(model_files["span"])
    assert (compact.facts.architecture, compact.scale, compact.facts.channels) == ("Compact", 4, 3)
    assert compact.facts.radius == 6 + 2 and compact.facts.exact  # num_conv + 2
    assert span.facts.architecture == "SPAN" and span.facts.exact and span.facts.radius == 21
    grey = srtrt.load_model(model_files["grey"])
    assert (grey.scale, grey.facts.channels) == (2, 1)
    x2 = srtrt.load_model(model_files["rrdb_x2"])
    assert (x2.scale, x2.facts.multiple_of) == (2, 4)


@pytest.mark.parametrize("name", ["compact", "span"])
def test_tiles_are_exact_at_the_measured_radius(model_files, name):
    view = srtrt.load_model(model_files[name])
    tiled, whole = tiled_and_whole(view, lr_image(70, 90), core=24)
    assert np.abs(tiled - whole).max() <= 1e-5


def test_a_grey_model_keeps_a_grey_image_grey_and_tiles_exactly(model_files):
    view = srtrt.load_model(model_files["grey"])
    tiled, whole = tiled_and_whole(view, lr_image(40, 52, channels=1), core=16)
    assert tiled.shape == (80, 104, 1)
    assert np.abs(tiled - whole).max() <= 1e-5


def test_windows_meet_the_multiple_of_without_padding(model_files):
    """An x2 pixel-unshuffle model needs sides that are multiples of 4: an image of 45x62 runs in
    windows of such sides, every pixel covered once."""
    view = srtrt.load_model(model_files["rrdb_x2"])
    seen = []
    backend = TorchBackend(view, "cpu", "fp32")
    infer = backend.infer
    backend.infer = lambda x: seen.append(tuple(x.shape[-2:])) or infer(x)
    out, _ = TiledUpscaler(backend, core=16).run_to_array(Planes(lr_image(45, 62), None))
    assert out.shape == (90, 124, 3) and np.isfinite(out).all()
    assert seen and all(h % 4 == 0 and w % 4 == 0 for h, w in seen)


@pytest.mark.parametrize("name", ["rrdb_deep", "rcan"])
def test_measured_margin_stays_within_one_level(model_files, name, monkeypatch):
    monkeypatch.setattr(zoo, "AFFORDABLE_RADIUS", 8)  # so a small RRDBNet takes the deep ones' path
    view = srtrt.load_model(model_files[name])
    facts = view.facts
    assert not facts.exact and facts.margin_figure is not None
    if name == "rcan":
        assert facts.global_operations and facts.radius is None
    else:
        assert facts.radius is None or facts.radius > zoo.AFFORDABLE_RADIUS
    assert "measured margin" in facts.tiling_note()
    tiled, whole = tiled_and_whole(view, lr_image(96, 120, seed=3), core=32)
    levels = np.abs(np.rint(tiled * 255) - np.rint(whole * 255))
    # the bound was measured on other content; one level on nearly every sample is the promise
    assert np.mean(levels <= 1) >= 0.995


def test_measurements_are_cached_by_sha256(model_files, monkeypatch):
    """A second load measures nothing (the first-use cost of a deep model is paid once)."""
    srtrt.load_model(model_files["compact"])
    monkeypatch.setattr(zoo, "measure_tiling", lambda model: pytest.fail("measured again"))
    assert srtrt.load_model(model_files["compact"]).facts.radius == 8


@pytest.mark.parametrize("name", ["compact", "span"])
def test_openvino_agrees_with_torch_fp32(model_files, name):
    """SPAN crashes torch.export in some torch versions: its child-process export falls back to tracing."""
    pytest.importorskip("openvino")
    from srtrt.engine.backends import create_backend

    view = srtrt.load_model(model_files[name])
    x = torch.from_numpy(lr_image(30, 34)).permute(2, 0, 1)[None].contiguous()
    reference = TorchBackend(view, "cpu", "fp32").infer(x)
    with create_backend("openvino", precision="fp32", view=view).backend as ov:
        assert (ov.infer(x) - reference).abs().max() <= 1e-4


def test_a_graph_that_only_holds_its_traced_size_is_refused_and_auto_runs_torch(model_files):
    """SwinIR's export bakes its window partition for the traced size: the export's check at another
    size refuses it in one line (both exporters), and auto takes torch instead of a wrong graph."""
    pytest.importorskip("openvino")
    from srtrt.engine.backends import create_backend
    from srtrt.errors import SrtrtError

    view = srtrt.load_model(model_files["swinir"])
    with pytest.raises(SrtrtError) as refused:
        create_backend("openvino", precision="fp32", view=view)
    assert "SwinIR does not export to ONNX" in str(refused.value) and "\n" not in str(refused.value)
    selection = create_backend("auto", view=view)
    assert selection.backend.name == "torch" and "does not export" in selection.reason
    selection.backend.close()


def test_run_names_the_output_by_scale_and_says_how_exact(model_files, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(30, 40, seed=1)).save(image)
    code, err = run_cli(capsys, image, "--model", model_files["grey"], "--backend", "torch")
    assert code == 0, err
    out = tmp_path / "photo_x2.png"
    assert Image.open(out).size == (80, 60)
    assert "exact tiles (margin 5 >= receptive-field radius 5)" in err


def test_an_image_below_the_models_minimum_is_one_line(model_files, tmp_path, capsys):
    image = tmp_path / "tiny.png"
    Image.fromarray(smooth_image(3, 40, seed=1)).save(image)
    code, err = run_cli(capsys, image, "--model", model_files["rrdb_x2"], "--backend", "torch")
    lines = [line for line in err.splitlines() if "tiny.png" in line]
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 1 and "smaller than the 4-pixel side this model needs" in lines[0]
    assert not (tmp_path / "tiny_x2.png").exists() and not partials(tmp_path)


def test_a_pickle_that_would_run_code_is_refused_by_srtrt_run(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, bad)
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(16, 16)).save(image)
    code, err = run_cli(capsys, image, "--model", bad)
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("srtrt: ")]) == 1
    assert not marker.exists() and not (tmp_path / "photo_x4.png").exists()
