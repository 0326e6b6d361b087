"""Where srtrt keeps its caches: SRTRT_CACHE first, then the XDG cache folder, then ~/.cache."""
from pathlib import Path

from srtrt.cache import cache_dir, cache_root


def test_srtrt_cache_wins_over_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"
    assert cache_dir("openvino") == tmp_path / "mine" / "openvino"


def test_xdg_cache_home_is_followed(monkeypatch, tmp_path):
    monkeypatch.delenv("SRTRT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "srtrt"


def test_unset_empty_or_relative_xdg_falls_back_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SRTRT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for value in (None, "", "relative/cache"):
        if value is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert cache_root() == Path(tmp_path) / ".cache" / "srtrt"


def test_a_cache_that_cannot_be_written_is_a_temporary_one_said_once(monkeypatch, tmp_path, recwarn):
    from srtrt import cache
    from srtrt.errors import OutputNote

    monkeypatch.setattr(cache, "_checked", {})
    where = tmp_path / "a_file"
    where.write_text("not a folder")
    monkeypatch.setenv("SRTRT_CACHE", str(where))
    first, again = cache_root(), cache_root()
    assert first == again and first.is_dir() and first != where and where.read_text() == "not a folder"
    (note,) = [w for w in recwarn if issubclass(w.category, OutputNote)]
    assert f"{where}: cannot keep srtrt's cache there (not a folder)" in str(note.message)


def test_srtrt_run_with_an_unusable_cache_runs_uncached_with_one_line(monkeypatch, tmp_path, capsys):
    """A file where the cache folder should be: a community model's run (its receptive field is
    measured and cached) ended in a traceback."""
    import numpy as np
    import pytest
    import torch
    from PIL import Image

    from srtrt import cache
    from srtrt.cli import main

    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    monkeypatch.setattr(cache, "_checked", {})
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "a_file"))
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "compact.safetensors"))
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(tmp_path / "in.png")
    code = main(["run", str(tmp_path / "in.png"), "--model", str(tmp_path / "compact.safetensors"),
                 "--backend", "torch", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "in_x2.png").is_file(), err
    assert err.count("cannot keep srtrt's cache there") == 1 and "Traceback" not in err


def test_a_read_only_cache_is_read_not_measured_again(tmp_path):
    """A cache baked into a read-only image (a real read-only bind mount, in a private mount namespace:
    root only): the second run reads its measured timings and exported graphs, and writes nothing there."""
    import subprocess
    import sys

    import numpy as np
    import pytest
    import torch
    from PIL import Image

    pytest.importorskip("spandrel")
    pytest.importorskip("openvino")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    from run_helpers import cli_env, skip_without_private_mounts

    cache = tmp_path / "cache"
    cache.mkdir()
    skip_without_private_mounts(f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache}")
    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "compact.safetensors"))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)).save(tmp_path / "in.png")
    run = [sys.executable, "-m", "srtrt.cli", "run", str(tmp_path / "in.png"), "--model", str(tmp_path / "compact.safetensors"),
           "--overwrite"]
    env = dict(cli_env(), SRTRT_CACHE=str(cache))
    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0 and "measured now" in first.stderr, first.stderr
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    script = f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} && exec {' '.join(run)}"
    again = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert f"{cache}: cannot keep srtrt's cache there (Read-only file system)" in again.stderr
    assert "measured earlier" in again.stderr and "measured now" not in again.stderr, again.stderr
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_a_cache_disk_too_full_for_a_graph_keeps_it_for_the_run(tmp_path):
    """A cache on a disk with room for the start-up check but not for the model's graph (a real 3 MB
    tmpfs, in a private mount namespace: root only): `--backend openvino|onnxruntime` refused the whole
    run ("cannot write (No space left on device)", exit 2). The graph is now kept in a temporary
    folder for the run, said in one line, and the image is written."""
    import subprocess
    import sys

    import numpy as np
    import pytest
    from PIL import Image

    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from run_helpers import cli_env, skip_without_private_mounts

    cache = tmp_path / "cache"
    cache.mkdir()
    skip_without_private_mounts(f"mount -t tmpfs -o size=3m tmpfs {cache}")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)).save(tmp_path / "in.png")
    runs = [" ".join([sys.executable, "-m", "srtrt.cli", "run", str(tmp_path / "in.png"), "-o",
                      str(tmp_path / f"{backend}.png"), "--backend", backend]) for backend in ("openvino", "onnxruntime")]
    script = f"mount -t tmpfs -o size=3m tmpfs {cache} && {runs[0]} && {runs[1]}"
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                          env=dict(cli_env(), SRTRT_CACHE=str(cache)), timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    said = f"{cache}: cannot keep srtrt's cache there (No space left on device); this run keeps"
    assert done.stderr.count(said) == 2, done.stderr  # once per run
    for backend in ("openvino", "onnxruntime"):
        assert Image.open(tmp_path / f"{backend}.png").size == (128, 96)
