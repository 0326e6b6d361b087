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
