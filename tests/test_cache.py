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


def test_a_cache_under_a_folder_that_may_not_be_entered_is_a_temporary_one(tmp_path):
    """Another user's 0700 home (`sudo -u` keeping HOME): Python 3.11's pathlib raised while the cause
    was worked out, and every run ended there with "permission denied", no image written."""
    import os
    import subprocess
    import sys

    import pytest

    locked = tmp_path / "home"
    locked.mkdir()
    locked.chmod(0)
    command = [sys.executable, "-c", "from srtrt.cache import cache_root; print(cache_root().is_dir())"]
    from run_helpers import without_dac_override

    command = without_dac_override(command)  # root enters any folder
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SRTRT_CACHE": str(locked / ".cache" / "srtrt")})
    finally:
        locked.chmod(0o700)
    if done.returncode != 0 and done.stderr.startswith("setpriv"):
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert "cannot keep srtrt's cache there (Permission denied)" in done.stderr and "Traceback" not in done.stderr


def test_a_cache_whose_name_is_not_utf8_is_a_temporary_one(monkeypatch, tmp_path, recwarn):
    """OpenVINO and onnxruntime take file names as UTF-8: a byte the locale could not decode made
    onnxruntime's session a TypeError traceback and OpenVINO "cannot compile this ONNX file"."""
    from srtrt import cache

    monkeypatch.setattr(cache, "_checked", {})
    monkeypatch.setenv("SRTRT_CACHE", f"{tmp_path}/cache_\udcff")
    root = cache_root()
    assert root.is_dir() and "\udcff" not in str(root)
    assert any("its name is not UTF-8" in str(w.message) for w in recwarn)


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
    if "measured again next run" not in first.stderr:  # a host busy during the first run is measured again
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


def _dead_pid() -> int:
    """The id of a process of this machine that has ended."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_killed_writes_left_in_the_cache_is_deleted_by_the_next_process(monkeypatch, tmp_path):
    """A run SIGKILLed mid-export left its 6 MB temporary graph (`.NAME.onnx.partial-HOST-PID-TOKEN`)
    in the cache for good: only output folders were swept. The first use of the cache in a process
    now deletes those of dead processes of this machine; a live writer's stay."""
    from srtrt import atomic, cache

    root = tmp_path / "cache"
    dead, alive = _dead_pid(), __import__("os").getpid()
    left = []
    for folder in ("onnx", "receptive_field", "engines"):
        (root / folder).mkdir(parents=True)
        left.append(root / folder / f".graph.onnx.partial-{atomic.HOST}-{dead}-abcdef")
        left[-1].write_bytes(b"half a graph")
    writing = root / "onnx" / f".other.onnx.partial-{atomic.HOST}-{alive}-abcdef"
    writing.write_bytes(b"being written")
    foreign = root / "onnx" / f".third.onnx.partial-ffffff-{dead}-abcdef"  # another machine's, on a shared disk
    foreign.write_bytes(b"not ours")
    monkeypatch.setattr(cache, "_checked", {})
    monkeypatch.setenv("SRTRT_CACHE", str(root))
    assert cache_root() == root
    assert not any(p.exists() for p in left) and writing.exists() and foreign.exists()


def test_a_stand_in_cache_a_killed_process_left_is_removed_by_the_next_one(monkeypatch, tmp_path):
    """A run with an unwritable cache keeps its entries in a temporary folder removed at exit, which
    a SIGKILL skips: the folder (6 MB with a graph) stayed in /tmp for good."""
    import tempfile

    from srtrt import atomic, cache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"srtrt-cache-{atomic.HOST}-{_dead_pid()}-x1y2z3"
    live = tmp_path / f"srtrt-cache-{atomic.HOST}-{__import__('os').getpid()}-a1b2c3"
    for folder in (dead, live):
        (folder / "onnx").mkdir(parents=True)
        (folder / "onnx" / "graph.onnx").write_bytes(b"graph")
    made = cache._temporary_folder()
    assert made.parent == tmp_path and made.name.startswith(f"srtrt-cache-{atomic.HOST}-")
    assert not dead.exists() and live.exists()


def test_an_entry_the_cache_cannot_take_is_kept_for_the_process_and_said_once(monkeypatch, tmp_path, recwarn):
    """A file where the cache's receptive_field folder should be: every run measured again (8-10 s
    for `auto`) without a word. The process now keeps the entry aside and says once why."""
    from srtrt import cache, receptive_field
    from srtrt.errors import OutputNote

    monkeypatch.setattr(cache, "_checked", {})
    monkeypatch.setattr(cache, "_spill", {})
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "receptive_field").write_text("not a folder")
    computed = []

    def compute():
        computed.append(1)
        return {"radius": 40}

    sha = "ab" * 32
    assert receptive_field.cached("facts", sha, compute) == {"radius": 40}
    assert receptive_field.cached("facts", sha, compute) == {"radius": 40}
    assert len(computed) == 1  # the second read found it aside
    notes = [str(w.message) for w in recwarn if issubclass(w.category, OutputNote)]
    assert len(notes) == 1 and "cannot keep srtrt's cache there" in notes[0], notes


def test_an_entry_spilled_under_one_root_is_not_found_under_another(monkeypatch, tmp_path, recwarn):
    """The spill folder was one per process: after SRTRT_CACHE named another root (a server, a
    notebook), an entry spilled under the first root was read as the second root's."""
    from srtrt import cache, receptive_field

    monkeypatch.setattr(cache, "_checked", {})
    monkeypatch.setattr(cache, "_spill", {})
    computed = []
    sha = "cd" * 32
    for root in ("first", "second"):
        monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / root))
        (tmp_path / root).mkdir()
        (tmp_path / root / "receptive_field").write_text("not a folder")
        assert receptive_field.cached("facts", sha, lambda root=root: computed.append(root) or {"root": root}) == \
            {"root": root}
    assert computed == ["first", "second"]


def test_a_folder_where_a_cached_graph_should_be_is_exported_around(monkeypatch, tmp_path):
    """A folder at a cached graph's path (a copy gone wrong): every OpenVINO run failed with exit 2
    ("Model can't be parsed") and `auto` recorded the path as failed for good. It is removed and the
    graph exported again."""
    import pytest

    pytest.importorskip("openvino")
    import srtrt
    from srtrt import cache
    from srtrt.engine.backends import _onnx_path, create_backend

    monkeypatch.setattr(cache, "_checked", {})
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    view = srtrt.load_model()
    graph = _onnx_path(view, "fp32", polyphase=True)
    (graph / "inside").mkdir(parents=True)
    selection = create_backend("openvino", view=view, device="cpu", precision="fp32")
    selection.backend.close()
    assert graph.is_file() and graph.stat().st_size > 1_000_000


def test_openvino_blobs_are_found_by_the_graphs_bytes_not_its_path(tmp_path):
    """The compile key hashed the graph's path: a cache copied elsewhere, or read through a read-only
    root's stand-in (a new temporary path each run), compiled every window shape again."""
    import pytest

    pytest.importorskip("openvino")
    from srtrt.engine.backends.openvino_backend import _compile_key

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "g.onnx").write_bytes(b"graph bytes")
    (tmp_path / "b" / "g.onnx").write_bytes(b"graph bytes")
    (tmp_path / "b" / "h.onnx").write_bytes(b"other bytes")
    key = _compile_key(tmp_path / "a" / "g.onnx", [1, 3, 64, 64])
    assert _compile_key(tmp_path / "b" / "g.onnx", [1, 3, 64, 64]) == key
    assert _compile_key(tmp_path / "b" / "h.onnx", [1, 3, 64, 64]) != key
    assert _compile_key(tmp_path / "a" / "g.onnx", [1, 3, 64, 72]) != key


def test_the_openvino_cache_limit_takes_fractions_and_says_what_it_cannot_read(monkeypatch, recwarn):
    """SRTRT_OPENVINO_CACHE_MB=0.5 (or 10MB) meant 512 MB without a word: the largest limit for a
    user asking for a small one."""
    import pytest

    pytest.importorskip("openvino")
    from srtrt.engine.backends import openvino_backend
    from srtrt.errors import OutputNote

    monkeypatch.setattr(openvino_backend, "_SAID_BAD_BUDGET", set())
    monkeypatch.setenv("SRTRT_OPENVINO_CACHE_MB", "0.5")
    assert openvino_backend.cache_budget_bytes() == 1 << 19
    for bad in ("10MB", "-3", "nan"):
        monkeypatch.setenv("SRTRT_OPENVINO_CACHE_MB", bad)
        assert openvino_backend.cache_budget_bytes() == openvino_backend.CACHE_BUDGET_MB << 20
        assert openvino_backend.cache_budget_bytes() == openvino_backend.CACHE_BUDGET_MB << 20  # said once
    notes = [str(w.message) for w in recwarn if issubclass(w.category, OutputNote)]
    assert len(notes) == 3 and "SRTRT_OPENVINO_CACHE_MB='10MB' is not a number of megabytes" in notes[0], notes
