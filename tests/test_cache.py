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
