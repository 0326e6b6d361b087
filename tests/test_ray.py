"""`srtrt run --ray` on a local Ray (2 CPUs): same bytes as a local run, bad files fail alone,
a re-run resumes (writes nothing new). Skipped without the `ray` extra."""
from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from srtrt.cli import main, parser  # noqa: E402

from run_helpers import (  # noqa: E402
    is_complete_image,
    partials,
    same_up_to_rounding,
    save_tiny_model,
    signal_when,
    srtrt_process,
    write_images,
    write_many_sizes,
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)  # as srtrt starts it
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A folder of 5 images and one corrupt file, with the local single-process result beside it."""
    root = tmp_path_factory.mktemp("ray")
    model = save_tiny_model(root)
    write_images(root / "in", 5, height=40, width=56)
    data = (root / "in" / "img2.png").read_bytes()
    (root / "in" / "broken.png").write_bytes(data[: len(data) // 3])
    assert main(["run", str(root / "in"), "-o", str(root / "local"), "--model", str(model), "-q"]) == 1
    return root, model


def test_ray_matches_a_local_run_and_reports_the_corrupt_file(local_ray, batch, capsys):
    root, model = batch
    code = main(["run", str(root / "in"), "-o", str(root / "ray"), "--model", str(model), "--ray"])
    err = capsys.readouterr().err
    assert code == 1
    names = sorted(p.name for p in (root / "ray").iterdir())
    assert names == sorted(p.name for p in (root / "local").iterdir()) == [f"img{i}_x4.png" for i in range(5)]
    for name in names:
        assert (root / "ray" / name).read_bytes() == (root / "local" / name).read_bytes()
        assert is_complete_image(root / "ray" / name, (224, 160))
    (bad,) = [line for line in err.splitlines() if "broken.png" in line]
    assert bad.startswith("srtrt: ") and "truncated" in bad
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("srtrt: 5 done, 0 skipped, 1 failed in ")
    assert "images/s" in summary and "output MP/s" in summary
    assert partials(root) == []


def test_a_rerun_writes_nothing_new(local_ray, batch, capsys):
    root, model = batch
    out = root / "rerun"
    assert main(["run", str(root / "in"), "-o", str(out), "--model", str(model), "--ray", "-q"]) == 1
    (out / "img3_x4.png").unlink()  # as if the first run had been preempted before this one
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()

    code = main(["run", str(root / "in"), "-o", str(out), "--model", str(model), "--ray"])
    err = capsys.readouterr().err
    assert code == 1  # the corrupt file is still corrupt
    assert "srtrt: 1 done, 4 skipped, 1 failed" in err
    assert err.count("_x4.png: exists, skipped (--overwrite to replace)") == 4  # a line per file, as a local run
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != "img3_x4.png"} == before
    assert (out / "img3_x4.png").read_bytes() == (root / "local" / "img3_x4.png").read_bytes()

    # with the corrupt file gone, everything is skipped and no Ray work is scheduled at all
    code = main(["run", *map(str, sorted((root / "in").glob("img*.png"))), "-o", str(out),
                 "--model", str(model), "--ray"])
    err = capsys.readouterr().err
    assert code == 0 and "srtrt: 0 done, 5 skipped, 0 failed" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == after


def test_actor_rows_are_small_status_dicts(batch, tmp_path):
    """The actor class outside Ray: one row per path, no pixels in the rows."""
    from srtrt.engine.batch.options import RunOptions
    from srtrt.engine.batch.ray_runner import ImageActor

    root, model = batch
    actor = ImageActor(RunOptions.from_args(parser().parse_args(["run", "x", "--model", str(model)])))
    rows = actor({"source": [str(root / "in" / "img0.png"), str(root / "in" / "broken.png"), str(tmp_path)],
                  "destination": [str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "c.png")]})
    assert rows["status"] == ["done", "failed", "failed"]
    assert set(rows) == {"path", "output", "status", "message", "seconds", "pixels", "notes", "losses", "setup"}
    assert rows["setup"] == ["", "", ""]  # the driver says them for actors on this machine
    assert rows["notes"] == rows["losses"] == ["", "", ""]
    assert rows["pixels"][0] == 224 * 160 and all(isinstance(s, float) for s in rows["seconds"])
    assert "is a directory" in rows["message"][2]
    assert (tmp_path / "a.png").read_bytes() == (root / "local" / "img0_x4.png").read_bytes()


def _many_sizes_and_a_broken_file(root: Path, count: int) -> list[Path]:
    write_many_sizes(root, count)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return sorted(root.iterdir())


def _as_alone(sources: list[Path], got: Path, run: list[str], capsys) -> None:
    """Each output in `got` is its image's own local pass, up to OpenVINO's rounding on another window."""
    from srtrt.engine.datapath.imageio import read_image

    (got.parent / "alone").mkdir()
    for source in sources:
        if source.name == "broken.png":
            continue
        alone = got.parent / "alone" / f"{source.stem}_x4.png"
        assert main(["run", str(source), "-o", str(alone), *run, "-q"]) == 0
        assert same_up_to_rounding(read_image(got / alone.name).pixels, read_image(alone).pixels), source.name
    capsys.readouterr()


def test_an_actor_puts_its_small_images_of_many_sizes_on_sheets(tmp_path, monkeypatch, own_srtrt_cache, capsys):
    """The actor outside Ray, given a batch of a many-sizes run: its images go on a sheet as in a
    local run (each as its own pass), the broken file fails alone, a row per file."""
    pytest.importorskip("openvino")
    from srtrt.engine.backends.measured import MANY_SIZES
    from srtrt.engine.batch.options import RunOptions
    from srtrt.engine.batch.ray_runner import ImageActor
    from srtrt.engine.datapath import sheets

    cut, real_cut = [], sheets.cut
    monkeypatch.setattr(sheets, "cut", lambda *a: cut.append(1) or real_cut(*a))  # counts the images on sheets
    model = save_tiny_model(tmp_path)
    sources = _many_sizes_and_a_broken_file(tmp_path / "in", 6)
    run = ["--model", str(model), "--backend", "openvino", "--precision", "fp32"]
    options = RunOptions.from_args(parser().parse_args(["run", "x", *run])).replace(shape_class=MANY_SIZES)
    (tmp_path / "out").mkdir()  # the driver makes it
    rows = ImageActor(options)({"source": [str(s) for s in sources],
                                "destination": [str(tmp_path / "out" / f"{s.stem}_x4.png") for s in sources]})
    status = dict(zip(rows["path"], rows["status"]))
    assert status == {str(s): "failed" if s.name == "broken.png" else "done" for s in sources}
    assert len(cut) == 6
    _as_alone(sources, tmp_path / "out", run, capsys)


def test_a_ray_run_of_many_small_sizes_uses_sheets(tmp_path, ray_tmpdir, monkeypatch, capsys):
    """`--ray` on a folder of small images of many sizes: the local run's sheets line, outputs as
    each image's own pass, the broken file alone (a Ray of its own, with this test's cache)."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("SRTRT_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path)
    sources = _many_sizes_and_a_broken_file(tmp_path / "in", 12)
    run = ["--model", str(model), "--backend", "openvino", "--precision", "fp32"]
    process = srtrt_process("run", tmp_path / "in", "-o", tmp_path / "ray", *run, "--ray")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    assert "share 512x512 windows (sheets)" in err and "srtrt: 12 done, 0 skipped, 1 failed" in err, err
    assert err.count("broken.png") == 1 and "Traceback" not in err
    _as_alone(sources, tmp_path / "ray", run, capsys)


def test_without_ray_installed_it_is_one_line(monkeypatch, capsys, batch):
    import builtins

    root, model = batch
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["run", str(root / "in"), "-o", str(root / "none"), "--model", str(model), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == 'srtrt: srtrt --ray needs Ray: pip install "srtrt[ray]"'
    assert not (root / "none").exists()


# --------------------------------------------------------------------------- the driver's lines


@pytest.fixture(scope="module")
def two_images(batch):
    root, model = batch
    write_images(root / "two", 2, height=24, width=32)
    return root / "two", model


def test_what_a_format_loses_is_said_under_ray_as_in_a_local_run(local_ray, batch, tmp_path, capfd):
    """RGBA into a JPEG: the actor's OutputNote reached only its own stderr, which a local Ray drops."""
    from PIL import Image

    root, model = batch
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (32, 24), (200, 100, 50, 128)).save(rgba)

    def said(out, *more):
        assert main(["run", str(rgba), "-o", str(out), "--model", str(model), "--backend", "torch", *more]) == 0
        return [line for line in capfd.readouterr().err.splitlines() if "JPEG" in line]

    local, with_ray = said(tmp_path / "local.jpg"), said(tmp_path / "ray.jpg", "--ray")
    assert local == [f"srtrt: {tmp_path / 'local.jpg'}: JPEG cannot store transparency; the alpha channel is dropped"]
    assert [line.replace("ray.jpg", "local.jpg") for line in with_ray] == local
    # -q hid it in a local run only: the actor's losses came back with its always-said notes
    assert said(tmp_path / "local_q.jpg", "-q") == said(tmp_path / "ray_q.jpg", "--ray", "-q") == []


def _fp16_on_the_cpu(folder, out, model, *more):
    return ["run", str(folder), "-o", str(out), "--model", str(model), "--device", "cpu", "--backend", "torch",
            "--precision", "fp16", *more]


def test_a_bad_backend_option_is_the_local_runs_line_before_ray_starts(two_images, tmp_path, capsys, monkeypatch):
    from srtrt.engine.batch import ray_runner

    folder, model = two_images
    assert main(_fp16_on_the_cpu(folder, tmp_path / "local", model)) == 2
    local = capsys.readouterr().err
    monkeypatch.setattr(ray_runner, "_start_ray", lambda *a: pytest.fail("Ray started for a run that cannot run"))
    assert main(_fp16_on_the_cpu(folder, tmp_path / "ray", model, "--ray")) == 2
    err = capsys.readouterr().err
    assert err == local and err.startswith("srtrt: the torch backend: fp16 on the CPU") and len(err.splitlines()) == 1


def test_a_bad_output_file_is_the_local_runs_line_before_ray_starts(two_images, tmp_path, capsys, monkeypatch):
    from srtrt.engine.batch import ray_runner

    folder, model = two_images
    image = next(folder.iterdir())
    monkeypatch.setattr(ray_runner, "_start_ray", lambda *a: pytest.fail("Ray started for a run that cannot run"))
    for ray_flag in ([], ["--ray"]):
        assert main(["run", str(image), "-o", str(tmp_path / "x.gif"), "--model", str(model), *ray_flag]) == 2
        err = capsys.readouterr().err
        assert "unknown output format '.gif'" in err and len(err.splitlines()) == 1, err


def test_an_actors_setup_error_on_a_cluster_is_one_line(local_ray, two_images, tmp_path, capfd, monkeypatch):
    """On a cluster the driver cannot check the backend for the nodes: the actor's SrtrtError comes
    back as the local run's line and exit code, not as Ray's tracebacks."""
    from srtrt.engine.batch import ray_runner

    folder, model = two_images
    monkeypatch.setattr(ray_runner, "_actors_run_here", lambda address: False)
    assert main(_fp16_on_the_cpu(folder, tmp_path / "ray", model, "--ray", "-q")) == 2
    err = capfd.readouterr().err
    assert err == "srtrt: the torch backend: fp16 on the CPU is emulated and slow; use bf16 or fp32\n"


def test_the_lines_are_the_local_runs(local_ray, two_images, tmp_path, capfd):
    """The backend and tiles lines, one line per image, no summary for one input, nothing with -q
    (Ray Data's notices and Ray's own error lines, written to the file descriptor, included)."""
    folder, model = two_images

    def lines(out, *more):
        assert main(["run", str(folder / "img0.png"), "-o", f"{out}/", "--model", str(model), *more]) == 0
        return capfd.readouterr().err.replace(str(out), "OUT").splitlines()

    lines(tmp_path / "first")  # `auto` times this model's fp32 paths once: both runs below read that timing
    local, with_ray = lines(tmp_path / "local"), lines(tmp_path / "ray", "--ray")
    assert [line for line in with_ray if " Ray actor" not in line] == local
    assert local[0].startswith("srtrt: backend ") and "tiles" in local[1] and len(local) == 3
    assert main(["run", str(folder), "-o", str(tmp_path / "quiet"), "--model", str(model), "--ray", "-q"]) == 0
    assert capfd.readouterr().err == ""
    assert sorted(p.name for p in (tmp_path / "quiet").iterdir()) == ["img0_x4.png", "img1_x4.png"]


def test_on_a_cluster_the_nodes_say_the_backend_and_tiles_lines_once(local_ray, two_images, tmp_path, capfd,
                                                                      monkeypatch):
    """The driver opens no backend for a cluster (its nodes may differ from this machine): the
    actors' backend and tiles lines come back with their rows, each said once, none with -q."""
    from srtrt.engine.batch import ray_runner

    folder, model = two_images
    assert main(["run", str(folder), "-o", str(tmp_path / "local"), "--model", str(model)]) == 0
    local = capfd.readouterr().err.splitlines()[:2]
    monkeypatch.setattr(ray_runner, "_actors_run_here", lambda address: False)
    assert main(["run", str(folder), "-o", str(tmp_path / "ray"), "--model", str(model), "--ray"]) == 0
    with_ray = capfd.readouterr().err.splitlines()
    # a node times its own paths (its cores, its thread count): its backend line is its own, said once. Each of
    # the two actors may time them (its figures, or a busy host said, make its line its own)
    assert local[0].startswith("srtrt: backend ")
    backend_lines = [line for line in with_ray if line.startswith("srtrt: backend ")]
    assert 1 <= len(backend_lines) <= 2 and len(set(backend_lines)) == len(backend_lines), backend_lines
    assert with_ray.count(local[1]) == 1  # the tiles line
    assert main(["run", str(folder), "-o", str(tmp_path / "quiet"), "--model", str(model), "--ray", "-q"]) == 0
    assert capfd.readouterr().err == ""


def test_an_actors_notes_are_printed_unless_quiet(capsys):
    """As a local run's: -q says only what failed (a 16-bit input run apart in fp32 was said under -q)."""
    from srtrt.engine.batch.files import BatchReport
    from srtrt.engine.batch.ray_runner import _report_row

    said = []
    row = {"path": "a.png", "output": "a_x4.png", "status": "done", "message": "a.png -> a_x4.png", "seconds": 0.5,
           "pixels": 16, "notes": "srtrt: a.png: out of device memory with batch 4\nsrtrt: second note"}
    _report_row(row, BatchReport(), lambda message, always=False: said.append((message, always)))
    assert said == [("srtrt: a.png: out of device memory with batch 4", False), ("srtrt: second note", False),
                    ("srtrt: a.png -> a_x4.png", False)]


# --------------------------------------------------------------------------- a Ray of its own (a fresh process)


def _live_processes_naming(marker: str) -> list[int]:
    """Processes (not zombies) whose command line names `marker`: those of the Ray under RAY_TMPDIR."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """RAY_TMPDIR for the srtrt processes this test starts; short: Ray's sockets live under it."""
    folder = tempfile.mkdtemp(prefix="srtrt-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_quiet_is_quiet_with_a_ray_of_its_own(two_images, tmp_path, ray_tmpdir):
    folder, model = two_images
    process = srtrt_process("run", folder, "-o", tmp_path / "out", "--model", model, "--ray", "-q")
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (0, "")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x4.png", "img1_x4.png"]


def test_the_actors_temporary_caches_are_removed(two_images, tmp_path, ray_tmpdir):
    """With a cache that cannot be used, each actor keeps one in a temporary folder, removed at its
    exit; Ray kills its actors, so such runs left their folders behind. The driver removes those of
    dead processes once its Ray is down (here one left by a process that has ended)."""
    import subprocess
    import sys

    from srtrt import atomic

    folder, model = two_images
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = Path(tempfile.gettempdir()) / f"srtrt-cache-{atomic.HOST}-{int(ended.stdout)}-test"
    (left / "onnx").mkdir(parents=True)
    process = srtrt_process("run", folder, "-o", tmp_path / "out", "--model", model, "--ray")
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    assert not left.exists()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, last_line", [(signal.SIGINT, "srtrt: interrupted"),
                                              (signal.SIGTERM, "srtrt: stopped by SIGTERM")])
def test_a_signal_while_ray_starts_shuts_it_down(two_images, tmp_path, ray_tmpdir, signum, last_line):
    """A SIGINT or SIGTERM inside ray.init (which installs a SIGTERM handler of its own that exits
    15): one line, exit 128 + the signal, and none of the Ray processes left running."""
    folder, model = two_images
    process = srtrt_process("run", folder, "-o", tmp_path / "out", "--model", model, "--ray")
    sent, err = signal_when(process, lambda: bool(_live_processes_naming(ray_tmpdir)), signum, 120)
    assert sent and process.returncode == 128 + signum, err
    assert err.splitlines()[-1] == last_line and "Traceback" not in err
    assert "Ray actors" not in err  # it was stopped during start-up, before any work
    deadline = time.monotonic() + 10  # the agents notice the raylet's end within a few seconds
    while _live_processes_naming(ray_tmpdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_processes_naming(ray_tmpdir) == []


def test_rays_own_notices_stay_off_the_drivers_stdout(capsys):
    """Ray's driver thread printed a raylet notice (a worker that died, coloured) on stdout, into a
    pipe too, whatever log_to_driver says; srtrt says the failure in its own line."""
    import sys
    import threading

    from srtrt.engine.batch.ray_runner import RAY_NOTICES_THREAD, _without_ray_notices

    with _without_ray_notices():
        notice = threading.Thread(target=lambda: print("(raylet) A worker died"), name=RAY_NOTICES_THREAD)
        notice.start()
        notice.join()
        print("the command's own output")
        sys.stdout.flush()
    assert capsys.readouterr().out == "the command's own output\n"


def test_every_row_an_actor_returns_is_said_as_a_local_run_says_it():
    """An output another run wrote meanwhile comes back from the actor as skipped: it gets its line
    (it was counted but not printed); -q keeps only failures."""
    from srtrt.engine.batch.files import BatchReport
    from srtrt.engine.batch.ray_runner import _report_row

    rows = [{"path": f"in{i}.png", "output": f"out{i}.png", "status": status, "message": message,
             "seconds": 0.1, "pixels": 16, "notes": ""}
            for i, (status, message) in enumerate([("done", "in0.png -> out0.png"),
                                                    ("skipped", "out1.png: written meanwhile by another run, skipped"),
                                                    ("failed", "in2.png: truncated image file")])]
    for quiet, expected in [(False, [row["message"] for row in rows]), (True, [rows[2]["message"]])]:
        said, report = [], BatchReport()

        def say(message, always=False, said=said, quiet=quiet):
            if always or not quiet:
                said.append(message)

        for row in rows:
            _report_row(row, report, say)
        assert said == [f"srtrt: {message}" for message in expected]
        assert (len(report.done), len(report.skipped), len(report.failed)) == (1, 1, 1)


def test_actors_on_this_machine_run_what_the_driver_picked(two_images):
    """Each local actor opened its backend with `auto` again, and with one CPU its own measurement
    picked another path than the printed line named (other bytes than a local run's). The driver's
    pick travels to them; a GPU pick is left to the actors, each with its own GPU and engines."""
    from types import SimpleNamespace

    import torch

    from srtrt.engine.batch.options import RunOptions
    from srtrt.engine.batch.ray_runner import LOCAL, _as_picked, _checked_scale

    folder, model = two_images
    args = parser().parse_args(["run", str(folder), "--model", str(model), "--ray", "-q"])
    assert args.ray == LOCAL
    scale, options = _checked_scale(args, RunOptions.from_args(args))
    # auto's pick for this model, which the guard has not measured: the faster fp32 path, named for the actors
    assert scale == 4 and options.backend in ("openvino", "torch") and options.precision == "fp32"
    asked = RunOptions(backend="auto")
    openvino = SimpleNamespace(name="openvino", precision="int8", device=torch.device("cpu"))
    assert (_as_picked(asked, openvino).backend, _as_picked(asked, openvino).precision) == ("openvino", "int8")
    on_a_gpu = SimpleNamespace(name="torch", precision="fp16", device=torch.device("cuda", 0))
    assert _as_picked(asked, on_a_gpu) == asked


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_signal_stops_a_ray_run_without_waiting_for_its_video_and_a_local_run_resumes_it(tmp_path, ray_tmpdir):
    """The first SIGTERM was only recorded while the driver waited on the actors' rows: the run ended
    when the video in progress was done (and written). It stops now, keeps the closed segments,
    and a run without --ray resumes them (the resume key held the actor's device, "cpu")."""
    pytest.importorskip("av")
    from test_video import _closed_segments, make_clip

    from srtrt.engine.batch.files import DONE, FileRunner
    from srtrt.engine.batch.options import RunOptions, open_backend

    model = save_tiny_model(tmp_path)
    source = tmp_path / "in" / "long.mp4"
    source.parent.mkdir()
    make_clip(source, frames=1200, size=(64, 48), audio=None, gop=12)  # 50 s of video: 25 segments
    out = tmp_path / "out"
    work = out / ".long_x4.mp4.srtrt-video"
    # one backend named for both runs: `auto` times this unmeasured model's fp32 paths in each process, and
    # on a close call two processes may pick apart (then starting over is right: another path computes)
    process = srtrt_process("run", source.parent, "-o", out, "--model", model, "--backend", "torch", "--ray", "-q")
    sent, err = signal_when(process, lambda: len(_closed_segments(work)) >= 1, signal.SIGTERM, 300)
    if not sent:
        pytest.skip("the run ended before a segment was closed")
    assert process.returncode == 143 and err.splitlines()[-1].startswith("srtrt: stopped by SIGTERM"), err
    kept = sum(d["frames"] for d in _closed_segments(work))
    assert not (out / "long_x4.mp4").exists() and 0 < kept < 1200
    options = RunOptions(model=str(model), backend="torch", resume=True)  # no device named, as the actor did
    runner = FileRunner(open_backend(options).backend, options)
    starts, deadline = [], time.monotonic() + 20
    while True:  # the actor's process may outlive the driver by a moment, holding the folder's lock
        outcome = runner.run(source, out / "long_x4.mp4", on_frames=lambda total, done: starts.append(done))
        if "another srtrt run is writing" not in outcome.message or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert outcome.status == DONE, outcome.message
    assert starts == [kept] and partials(tmp_path) == []


def test_a_deep_input_runs_in_fp32_on_the_actors_as_in_a_local_run(local_ray, tmp_path, capsys, own_srtrt_cache):
    """The actors got `auto`'s pick by name (int8 or bf16), so a 16-bit PNG ran in it: 1124 16-bit
    levels off the local run's fp32, with no line. The pick now travels saying it was auto's."""
    import numpy as np

    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.batch.files import FileRunner
    from srtrt.engine.batch.options import RunOptions
    from srtrt.engine.batch.ray_runner import _as_picked
    from srtrt.engine.datapath.writers import open_writer

    from conftest import random_view, smooth_image

    bf16 = TorchBackend(random_view(blocks=1, channels=4), "cpu", "bf16")
    picked = _as_picked(RunOptions(), bf16)
    assert (picked.backend, picked.precision, picked.picked_by_auto) == ("torch", "bf16", True)
    assert FileRunner(bf16, picked).computes_apart(16) and not FileRunner(bf16, picked).computes_apart(8)
    named = _as_picked(RunOptions(precision="bf16"), bf16)
    assert not FileRunner(bf16, named).computes_apart(16)  # asked for by name: used as asked
    (tmp_path / "in").mkdir()
    with open_writer(tmp_path / "in" / "deep.png", 24, 20, 3, 16) as writer:
        writer.write_rows(smooth_image(20, 24, seed=2, dtype=np.uint16))
    assert main(["run", str(tmp_path / "in"), "-o", str(tmp_path / "local")]) == 0  # the default model, auto
    local_err = capsys.readouterr().err
    assert main(["run", str(tmp_path / "in"), "-o", str(tmp_path / "ray"), "--ray"]) == 0
    assert (tmp_path / "ray" / "deep_x4.png").read_bytes() == (tmp_path / "local" / "deep_x4.png").read_bytes()
    if "inputs of 16 bits a sample run on" in local_err:  # auto picked bf16 or int8 on this CPU
        assert main(["run", str(tmp_path / "in"), "-o", str(tmp_path / "fp32"), "--precision", "fp32", "-q"]) == 0
        assert (tmp_path / "fp32" / "deep_x4.png").read_bytes() == (tmp_path / "local" / "deep_x4.png").read_bytes()
