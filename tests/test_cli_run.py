"""`srtrt run` on batches: bad files, skip/overwrite, output naming, interruption by signals."""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import srtrt

from run_helpers import (
    is_complete_image,
    partials,
    pixels,
    save_tiny_model,
    signal_when,
    srtrt_process,
    without_dac_override,
    write_images,
)
from run_helpers import run_cli as run


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_batch_over_a_folder_with_a_corrupt_file(tmp_path, capsys, model):
    sources = write_images(tmp_path / "in", 3)
    data = sources[1].read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "text.jpg").write_text("not an image\n")
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model)

    assert code == 1
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["img0_x4.png", "img1_x4.png", "img2_x4.png"]
    for name in written:
        assert is_complete_image(tmp_path / "out" / name, (128, 96))
    bad_lines = [line for line in err.splitlines() if "cut.png" in line or "text.jpg" in line]
    assert len(bad_lines) == 2 and all(line.startswith("srtrt: ") for line in bad_lines)
    assert "Traceback" not in err
    assert "3 done, 0 skipped, 2 failed" in err
    assert partials(tmp_path) == []


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, capsys, model):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert run(capsys, tmp_path / "in", "-o", out, "--model", model)[0] == 0
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()}

    code, err = run(capsys, tmp_path / "in", "-o", out, "--model", model)
    assert code == 0 and err.count("exists, skipped") == 2 and "0 done, 2 skipped" in err
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()} == first

    code, err = run(capsys, tmp_path / "in", "-o", out, "--model", model, "--overwrite")
    assert code == 0 and "2 done, 0 skipped" in err
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.iterdir()}
    assert after.keys() == first.keys()
    assert all(after[n][1] != first[n][1] for n in first)  # replaced by rename, not rewritten in place
    assert partials(tmp_path) == []


def test_an_empty_output_is_refused_not_taken_as_the_current_folder(tmp_path, capsys, model, monkeypatch):
    """`-o "$OUT"` with OUT unset: it wrote into the working folder."""
    (source,) = write_images(tmp_path / "in", 1)
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, source, "-o", "", "--model", model)
    assert code == 2 and err.splitlines() == ["srtrt: -o is empty (an unset variable?): name a file or a folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"] and len(list((tmp_path / "in").iterdir())) == 1
    with pytest.raises(srtrt.SrtrtError, match="-o is empty"):
        srtrt.upscale(source, "", model=str(model))


def test_output_file_or_directory(tmp_path, capsys, model):
    (source,) = write_images(tmp_path / "in", 1)
    # one input: -o is a file, its extension picks the format
    assert run(capsys, source, "-o", tmp_path / "one.tif", "--model", model)[0] == 0
    with Image.open(tmp_path / "one.tif") as img:
        assert img.format == "TIFF" and img.size == (128, 96)
    # a trailing separator makes it a folder, created if missing
    assert run(capsys, source, "-o", f"{tmp_path / 'new'}{os.sep}", "--model", model)[0] == 0
    assert is_complete_image(tmp_path / "new" / "img0_x4.png", (128, 96))
    # an existing folder is a folder
    (tmp_path / "there").mkdir()
    assert run(capsys, source, "-o", tmp_path / "there", "--model", model)[0] == 0
    assert [p.name for p in (tmp_path / "there").iterdir()] == ["img0_x4.png"]
    # a folder given is a folder of outputs, however many images it holds (one made -o a file name)
    assert run(capsys, tmp_path / "in", "-o", tmp_path / "from_folder", "--model", model)[0] == 0
    assert [p.name for p in (tmp_path / "from_folder").iterdir()] == ["img0_x4.png"]
    assert run(capsys, str(tmp_path / "in" / "*.png"), "-o", tmp_path / "from_glob.png", "--model", model)[0] == 0
    assert [p.name for p in (tmp_path / "from_glob.png").iterdir()] == ["img0_x4.png"]
    # several inputs need a folder, not an existing file
    write_images(tmp_path / "in", 2)
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "one.tif", "--model", model)
    assert code == 2 and "several inputs need an output directory" in err and len(err.strip().splitlines()) == 1
    # an unknown extension, a missing folder or a file as the folder of a single output file: one line,
    # exit 2, before the backend is opened (its line never printed)
    for bad, why in (("x.gif", "unknown output format '.gif'"), ("fresh", "end the name with / for a new folder"),
                     ("no/x.png", f"output folder {tmp_path / 'no'} does "
                     "not exist"), ("one.tif/x.png", f"output folder {tmp_path / 'one.tif'} is not a folder")):
        code, err = run(capsys, source, "-o", tmp_path / bad, "--model", model)
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "no").exists() and not (tmp_path / "fresh").exists()


def test_default_name_beside_the_input_and_no_second_generation(tmp_path, capsys, model):
    folder = tmp_path / "photos"
    write_images(folder, 2, prefix="shot")
    code, err = run(capsys, folder, "--model", model)
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["shot0.png", "shot0_x4.png", "shot1.png", "shot1_x4.png"]
    assert pixels(folder / "shot1_x4.png").shape == (96, 128, 3)
    # the folder now holds its own results; a re-run neither upscales them again nor rewrites them
    code, err = run(capsys, folder, "--model", model)
    assert code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["shot0.png", "shot0_x4.png", "shot1.png", "shot1_x4.png"]
    assert err.count("not upscaled again") == 2 and err.count("exists, skipped") == 2
    # nor into another folder: the results beside their photos are still not photos of their own
    code, err = run(capsys, folder, "-o", tmp_path / "elsewhere", "--model", model)
    assert code == 0 and err.count("not upscaled again") == 2, err
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["shot0_x4.png", "shot1_x4.png"]
    # named alone, a result is an image like any other
    assert run(capsys, folder / "shot0_x4.png", "-o", tmp_path / "x16.png", "--model", model)[0] == 0


def test_two_inputs_with_one_output_name_are_not_merged(tmp_path, capsys, model):
    write_images(tmp_path / "in", 1, prefix="a")
    Image.open(tmp_path / "in" / "a0.png").convert("RGB").save(tmp_path / "in" / "a0.jpg")
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model)
    assert code == 1
    # inputs are taken in sorted order: a0.jpg owns the name, a0.png is refused, nothing is replaced
    (refusal,) = [line for line in err.splitlines() if "same output name" in line]
    assert refusal.startswith(f"srtrt: {tmp_path / 'in' / 'a0.png'}: same output name a0_x4.png as ")
    assert refusal.endswith("a0.jpg; rename one of them")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a0_x4.png"]
    reference = tmp_path / "ref.png"
    assert run(capsys, tmp_path / "in" / "a0.jpg", "-o", reference, "--model", model)[0] == 0
    assert (tmp_path / "out" / "a0_x4.png").read_bytes() == reference.read_bytes()


def test_an_empty_glob_beside_other_inputs_and_a_symlink_alias_each_get_their_line(tmp_path, capsys, model):
    """Neither is dropped without a word: the glob matching nothing is reported missing, and a symlink
    given beside its target gets the output its own name asks for."""
    (source,) = write_images(tmp_path / "in", 1)
    (tmp_path / "alias").mkdir()
    (tmp_path / "alias" / "b.png").symlink_to(source)
    code, err = run(capsys, source, tmp_path / "alias" / "b.png", str(tmp_path / "in" / "*.gif"), "-o", tmp_path / "out",
                    "--model", model)
    assert code == 1 and f"{tmp_path / 'in' / '*.gif'}: no such file" in err, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_x4.png", "img0_x4.png"]


def test_a_link_at_an_output_name_is_replaced_not_taken_for_the_file_it_names(tmp_path, capsys, model):
    """`o/a_x4.png` a link to the input `p/b.png`: the plan followed it and skipped b.png as a.png's
    earlier output, every run, --overwrite or not (the write replaces the link; it never follows it)."""
    write_images(tmp_path / "p", 2)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "img0_x4.png").symlink_to(tmp_path / "p" / "img1.png")
    before = (tmp_path / "p" / "img1.png").read_bytes()
    code, err = run(capsys, tmp_path / "p", "-o", tmp_path / "o", "--model", model, "--overwrite")
    assert code == 0 and "from an earlier run" not in err, err
    assert is_complete_image(tmp_path / "o" / "img1_x4.png", (128, 96))
    assert not (tmp_path / "o" / "img0_x4.png").is_symlink() and (tmp_path / "p" / "img1.png").read_bytes() == before
    # an earlier output kept elsewhere and linked under its name beside its input is still an earlier output
    (tmp_path / "o" / "img0_x4.png").replace(tmp_path / "kept.png")
    (tmp_path / "p" / "img0_x4.png").symlink_to(tmp_path / "kept.png")
    code, err = run(capsys, tmp_path / "p", "--model", model)
    assert "img0_x4.png: is the output of" in err and not (tmp_path / "p" / "img0_x4_x4.png").exists(), err


def test_one_file_through_a_linked_folder_is_upscaled_once(tmp_path, capsys, model):
    """`p/a.png` and `alias/a.png` (alias -> p): computed twice into one output, the second said to be
    another run's; with --overwrite written twice and counted "2 done"."""
    write_images(tmp_path / "p", 1)
    (tmp_path / "alias").symlink_to(tmp_path / "p")
    for given in ((tmp_path / "p" / "img0.png", tmp_path / "alias" / "img0.png", "-o", tmp_path / "out"),
                  (tmp_path / "p", tmp_path / "alias", "--overwrite")):
        code, err = run(capsys, *given, "--model", model)
        assert code == 0 and "the same file as" in err and "1 done, 1 skipped" in err, err
        assert "another run" not in err


def test_an_input_that_will_not_write_takes_no_name_from_one_that_will(tmp_path, capsys, model):
    """An empty `photo.jpg` (a failed download) took `photo_x4.png`, and the good `photo.png` was
    refused as a collision; a skipped earlier output held its `_x4_x4` name the same way."""
    (source,) = write_images(tmp_path, 1)
    source.rename(tmp_path / "photo.png")
    (tmp_path / "photo.jpg").write_bytes(b"")
    code, err = run(capsys, tmp_path, "--model", model)
    assert code == 1 and "photo.jpg: empty file, not an image" in err and "same output name" not in err, err
    assert is_complete_image(tmp_path / "photo_x4.png", (128, 96))
    Image.open(tmp_path / "photo.png").save(tmp_path / "photo_x4.webp", lossless=True)  # a photo of its own
    code, err = run(capsys, tmp_path, "--model", model)
    assert "same output name" not in err and is_complete_image(tmp_path / "photo_x4_x4.png", (128, 96)), err
    # a file srtrt cannot read, named first (a GIF), took the name from the PNG after it, which was refused
    (tmp_path / "gif").mkdir()
    Image.open(tmp_path / "photo.png").save(tmp_path / "gif" / "x.gif")
    (tmp_path / "photo.png").rename(tmp_path / "gif" / "x.png")
    code, err = run(capsys, tmp_path / "gif" / "x.gif", tmp_path / "gif" / "x.png", "-o", tmp_path / "out", "--model",
                    model)
    assert code == 1 and "x.gif: not a PNG, JPEG, WebP, TIFF or BMP image" in err and "same output name" not in err, err
    assert is_complete_image(tmp_path / "out" / "x_x4.png", (128, 96))
    # named after the PNG (an image between them, so the PNG's output is written first), the GIF met
    # that output and was "exists, skipped", exit 0
    Image.open(tmp_path / "gif" / "x.png").save(tmp_path / "gif" / "y.png")
    code, err = run(capsys, tmp_path / "gif" / "x.png", tmp_path / "gif" / "y.png", tmp_path / "gif" / "x.gif",
                    "-o", tmp_path / "out2", "--model", model)
    assert code == 1 and "x.gif: not a PNG, JPEG, WebP, TIFF or BMP image" in err and "exists" not in err, err
    assert "2 done, 0 skipped, 1 failed" in err and is_complete_image(tmp_path / "out2" / "x_x4.png", (128, 96))


def test_a_folders_broken_links_and_a_folder_at_an_output_name_each_get_their_line(tmp_path, capsys, model):
    """A broken link or a link loop inside a folder was left out without a word (named alone, each
    got its line); a folder at an output name was "exists, skipped (--overwrite to replace)", and
    --overwrite then failed on it."""
    write_images(tmp_path / "p", 1)
    (tmp_path / "p" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "p" / "loop.png").symlink_to(tmp_path / "p" / "loop.png")
    code, err = run(capsys, tmp_path / "p", "-o", tmp_path / "o", "--model", model)
    assert code == 1 and "gone.png: no such file" in err and "loop.png: too many levels of symbolic links" in err
    (tmp_path / "o" / "img0_x4.png").unlink()
    (tmp_path / "o" / "img0_x4.png").mkdir()
    for more in ((), ("--overwrite",)):
        code, err = run(capsys, tmp_path / "p" / "img0.png", "-o", f"{tmp_path / 'o'}/", "--model", model, *more)
        assert code == 1 and "img0_x4.png: output path is a directory" in err and "skipped" not in err, err
    (tmp_path / "o" / "img0_x4.png").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "o" / "img0_x4.png").symlink_to(tmp_path / "elsewhere")  # a link to a folder: replaced, as one to a file
    code, err = run(capsys, tmp_path / "p" / "img0.png", "-o", f"{tmp_path / 'o'}/", "--model", model, "--overwrite")
    assert code == 0 and is_complete_image(tmp_path / "o" / "img0_x4.png", (128, 96)), err


def test_missing_input_and_empty_glob(tmp_path, capsys, model):
    code, err = run(capsys, tmp_path / "nope.png", "--model", model)
    assert code == 1 and "nope.png: no such file" in err
    code, err = run(capsys, str(tmp_path / "*.webp"), "--model", model)
    assert code == 2 and "no input images match" in err
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)  # Path.resolve raises on it; the batch reports it like any unreadable name
    code, err = run(capsys, loop, "--model", model)
    assert code == 1 and "loop.png: too many levels of symbolic links" in err and "Traceback" not in err


def test_a_device_name_torch_does_not_know_is_one_line(tmp_path, capsys, model):
    (source,) = write_images(tmp_path, 1)
    for device in ("gpu", "cuda:x", "meta"):
        code, err = run(capsys, source, "--model", model, "--device", device)
        assert code == 2 and err.startswith(f"srtrt: --device {device}: ") and len(err.splitlines()) == 1, err
        with pytest.raises(srtrt.SrtrtError, match=f"--device {device}: "):
            srtrt.upscale(source, model=str(model), device=device)
    assert [p.name for p in tmp_path.iterdir()] == [source.name]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_batch_keeps_finished_outputs_and_no_partial_file(tmp_path, signum):
    """Send the signal while the second image's temporary file exists, i.e. inside a write."""
    model = save_tiny_model(tmp_path, channels=16, blocks=2)
    write_images(tmp_path / "in", 6, height=128, width=192)  # ~0.4 s an image: time to catch one mid-write
    out = tmp_path / "out"
    process = srtrt_process("run", tmp_path / "in", "-o", out, "--model", model, "--tile", "16", "--margin", "4")
    sent, err = signal_when(process, lambda: out.is_dir() and any(out.glob("*_x4.png")) and partials(out), signum, 60)
    assert sent, f"the run ended before a second image was in progress: {err}"
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1].startswith(f"srtrt: stopped by {signal.Signals(signum).name}")
    assert "Traceback" not in err
    assert partials(tmp_path) == []
    kept = sorted(out.glob("*_x4.png"))
    assert 1 <= len(kept) < 6
    for path in kept:
        assert is_complete_image(path, (768, 512))
        assert f"-> {path}" in err  # each kept output has its line, the one written behind at the stop too


def test_the_next_run_deletes_what_a_killed_run_left_and_nothing_else(tmp_path, capsys):
    """SIGKILL (the out-of-memory killer) allows no clean-up: the hidden temporary output stays. The
    next run into that folder deletes it; another host's, a live process's and a foreign file stay."""
    from srtrt import atomic

    model = save_tiny_model(tmp_path, channels=16, blocks=2)
    write_images(tmp_path / "in", 6, height=128, width=192)
    out = tmp_path / "out"
    process = srtrt_process("run", tmp_path / "in", "-o", out, "--model", model, "--tile", "16", "--margin", "4")
    sent, err = signal_when(process, lambda: out.is_dir() and partials(out), signal.SIGKILL, 60)
    assert sent and process.returncode == -signal.SIGKILL, err
    abandoned = partials(out)  # one, or two where an output was still being written behind the next
    assert abandoned
    other_host = out / f".a_x4.png.partial-{'0' if atomic.HOST[0] != '0' else '1'}{atomic.HOST[1:]}-{process.pid}-abcdef"
    live = out / f".b_x4.png.partial-{atomic.HOST}-{os.getpid()}-abcdef"
    foreign = out / f".c_x4.png.partial-{process.pid}-abcdef"  # not a name srtrt writes
    for kept in (other_host, live, foreign):
        kept.write_bytes(b"x")

    code, err = run(capsys, tmp_path / "in", "-o", out, "--model", model)
    assert code == 0, err
    n = len(abandoned)
    said = f"srtrt: deleted {n} unfinished output file{'s' * (n > 1)} of an earlier run that was killed"
    assert said in err.splitlines(), err
    assert not any(p.exists() for p in abandoned) and all(kept.exists() for kept in (other_host, live, foreign))
    assert len(list(out.glob("*_x4.png"))) == 6


def test_a_signal_the_parent_ignores_stays_ignored(tmp_path):
    """`trap '' INT` (or a shell's background job): a Ctrl-C meant for the foreground does not stop the batch."""
    model = save_tiny_model(tmp_path)
    write_images(tmp_path / "in", 6, height=64, width=96)
    out = tmp_path / "out"
    process = srtrt_process("run", tmp_path / "in", "-o", out, "--model", model, "--tile", "16", "--margin", "4",
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    sent, err = signal_when(process, lambda: out.is_dir() and any(out.glob("*_x4.png")), signal.SIGINT, 60)
    assert sent and process.returncode == 0, err
    assert len(list(out.glob("*_x4.png"))) == 6


def test_a_reader_that_goes_costs_the_log_not_the_batch(tmp_path):
    """`srtrt run DIR 2>&1 | head -1`: the pipe closes after the first line; every image is still
    upscaled and the exit code is the batch's (a BrokenPipeError ended it after a few images)."""
    model = save_tiny_model(tmp_path)
    write_images(tmp_path / "in", 8)
    process = srtrt_process("run", tmp_path / "in", "-o", tmp_path / "out", "--model", model)
    assert process.stderr.readline().startswith("srtrt: ")
    process.stderr.close()
    assert process.wait(timeout=120) == 0
    assert len(list((tmp_path / "out").glob("*_x4.png"))) == 8


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_log_that_cannot_be_written_or_no_stderr_costs_the_log_not_the_batch(tmp_path):
    """`2>/dev/full` (a log on a full disk) ended the batch before its first image, with no word;
    a process started with stderr closed (`2>&-`, as from cron) failed on `sys.stderr.isatty()`, and
    then wrote its log to stdout (print(file=None) is stdout); `srtrt eval >&-` was a traceback."""
    import subprocess
    import sys

    from run_helpers import cli_env

    model = save_tiny_model(tmp_path)
    write_images(tmp_path / "in", 3)
    for name in ("full", "closed"):
        command = [sys.executable, "-m", "srtrt.cli", "run", str(tmp_path / "in"), "-o", str(tmp_path / name),
                   "--model", str(model)]
        with open("/dev/full", "w") if name == "full" else contextlib.nullcontext() as full:
            done = subprocess.run(command, env=cli_env(), timeout=120, stdout=subprocess.PIPE,
                                  stderr=full if name == "full" else None,
                                  preexec_fn=(lambda: os.close(2)) if name == "closed" else None)
        assert done.returncode == 0, name
        assert len(list((tmp_path / name).glob("*_x4.png"))) == 3, name
        assert done.stdout == b"", name
    command = [sys.executable, "-m", "srtrt.cli", "eval", str(tmp_path / "in"), "--model", str(model)]
    done = subprocess.run(command, env=cli_env(), timeout=120, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr


def test_srtrt_notes_stay_lines_under_warnings_as_errors(tmp_path, capsys):
    """`python -W error` / PYTHONWARNINGS=error made a note (alpha lost to a JPEG) a traceback, exit 1,
    and no output."""
    import warnings

    model = save_tiny_model(tmp_path)
    Image.new("RGBA", (12, 8), (10, 200, 30, 128)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "a.jpg", "--model", model)
    assert code == 0 and "a.jpg: JPEG cannot store transparency" in err and (tmp_path / "a.jpg").is_file(), err


def test_names_printed_by_eval_export_and_compare_are_escaped(tmp_path):
    """eval's table, export's "wrote" line and compare's output name printed a name as it was: an
    escape sequence reached the terminal, a newline split a row, and a name stdout's encoding
    lacks (PYTHONIOENCODING=ascii) was a UnicodeEncodeError traceback, exit 1, after the file was written."""
    import subprocess
    import sys

    from run_helpers import cli_env

    model = save_tiny_model(tmp_path)
    folder = tmp_path / "s\u00e9t"
    write_images(folder, 1)
    (folder / "img0.png").rename(folder / "two\nlines\x1b[31m.png")
    env = {**cli_env(), "PYTHONIOENCODING": "ascii"}
    for command in (["eval", str(folder)], ["export", "-o", str(tmp_path / "m\x1b[2J\u00e9.onnx")],
                    ["compare", str(folder / "two\nlines\x1b[31m.png"), "-o", str(tmp_path / "c\u00e9.png")]):
        done = subprocess.run([sys.executable, "-m", "srtrt.cli", *command, "--model", str(model)], env=env,
                              capture_output=True, text=True, encoding="ascii", errors="strict", timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stderr)
        assert "\x1b" not in done.stdout and "two\nlines" not in done.stdout, done.stdout
        assert "\\xe9" in done.stdout or "\\x1b" in done.stdout, done.stdout


def test_a_memory_limit_too_low_to_load_the_libraries_is_one_line(tmp_path):
    """Under `ulimit -v` below what torch maps, `import torch` raised ImportError ("failed to map
    segment") and, a little above, MemoryError: each was a traceback."""
    import resource
    import subprocess
    import sys

    from run_helpers import cli_env

    Image.new("RGB", (16, 12), (9, 80, 200)).save(tmp_path / "a.png")
    limit = 1 << 30

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "srtrt.cli", "run", str(tmp_path / "a.png"), "--backend", "torch"],
                          env=cli_env(), capture_output=True, text=True, timeout=300, preexec_fn=limited)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("srtrt: "), done.stderr


def test_the_next_image_decodes_while_this_one_computes(tmp_path, capsys, monkeypatch):
    """DecodeAhead: the second image's decode starts before the first image's network work ends."""
    import threading

    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.batch.files import FileRunner

    model = save_tiny_model(tmp_path)
    sources = write_images(tmp_path / "in", 2)
    second_started = threading.Event()
    real_decode, real_infer = FileRunner.decode, TorchBackend.infer
    seen_ahead = []

    def decode(self, source):
        if source == sources[1]:
            second_started.set()
        return real_decode(self, source)

    def infer(self, x):
        if not seen_ahead:  # the first image's first batch: wait (bounded) for the decode ahead
            seen_ahead.append(second_started.wait(timeout=20))
        return real_infer(self, x)

    monkeypatch.setattr(FileRunner, "decode", decode)
    monkeypatch.setattr(TorchBackend, "infer", infer)
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model, "--backend", "torch")
    assert code == 0, err
    assert seen_ahead == [True]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x4.png", "img1_x4.png"]


def test_a_small_output_is_written_while_the_next_image_computes(tmp_path, capsys, monkeypatch):
    """FileRunner.submit: the first image's write starts before the second image's network work
    ends; every output equals the streamed one (FileRunner.run) and the outcomes come in order."""
    import threading

    import srtrt.engine.datapath.pipeline as pipeline
    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.batch.files import FileRunner
    from srtrt.engine.batch.options import RunOptions

    model = save_tiny_model(tmp_path)
    sources = write_images(tmp_path / "in", 3)
    writing, calls = threading.Event(), []
    real_write, real_infer = pipeline.write_upscaled, TorchBackend.infer

    def write_upscaled(image, colour, *args, **kwargs):
        writing.set()
        return real_write(image, colour, *args, **kwargs)

    def infer(self, x):
        calls.append(writing.wait(timeout=20) if len(calls) == 1 else None)  # the second image's batch
        return real_infer(self, x)

    monkeypatch.setattr(pipeline, "write_upscaled", write_upscaled)
    monkeypatch.setattr(TorchBackend, "infer", infer)
    code, err = run(capsys, tmp_path / "in", "-o", tmp_path / "out", "--model", model, "--backend", "torch")
    assert code == 0, err
    assert calls[1] is True
    done = [line for line in err.splitlines() if " -> " in line]
    assert [line.split(" -> ")[0].rsplit("/", 1)[-1] for line in done] == ["img0.png", "img1.png", "img2.png"]
    monkeypatch.undo()
    streamed = FileRunner(TorchBackend(srtrt.load_model(str(model))), RunOptions())
    for source in sources:
        outcome = streamed.run(source, tmp_path / f"{source.stem}_streamed.png")
        assert outcome.status == "done", outcome.message
        assert np.array_equal(pixels(outcome.destination), pixels(tmp_path / "out" / f"{source.stem}_x4.png"))


def test_outputs_above_the_write_behind_size_stream_into_their_file(tmp_path, monkeypatch):
    import srtrt.engine.batch.files as files
    import srtrt.engine.datapath.pipeline as pipeline
    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.batch.options import RunOptions

    (source,) = write_images(tmp_path / "in", 1)
    runner = files.FileRunner(TorchBackend(srtrt.load_model(str(save_tiny_model(tmp_path)))), RunOptions())
    behind = runner.submit(source, tmp_path / "behind.png").result()
    monkeypatch.setattr(files, "WRITE_BEHIND_BYTES", behind.pixels * 3 - 1)  # one byte short of its output
    monkeypatch.setattr(pipeline, "write_upscaled", lambda *a, **k: pytest.fail("not streamed"))
    written = runner.submit(source, tmp_path / "streamed.png")
    assert written.done() and written.result().status == "done"
    runner.close()
    assert np.array_equal(pixels(tmp_path / "behind.png"), pixels(tmp_path / "streamed.png"))


def test_a_stop_while_an_output_is_written_behind_leaves_no_file(tmp_path):
    from srtrt.engine.backends.torch_backend import TorchBackend
    from srtrt.engine.batch.files import FileRunner
    from srtrt.engine.batch.options import RunOptions
    from srtrt.engine.batch.signals import Stopped

    (source,) = write_images(tmp_path / "in", 1)
    runner = FileRunner(TorchBackend(srtrt.load_model(str(save_tiny_model(tmp_path)))), RunOptions())

    def stop():
        raise Stopped(signal.SIGINT)

    written = runner.submit(source, tmp_path / "out.png", stop_check=stop)
    with pytest.raises(Stopped):
        written.result()
    runner.close()
    assert not (tmp_path / "out.png").exists()
    assert partials(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_that_reaches_the_top_exits_with_its_signal_code(capsys, monkeypatch, signum):
    """A second signal raises Stopped wherever the batch is, its clean-up included: the exit code
    still names the signal (130 for SIGINT, 143 for SIGTERM), in one line."""
    from srtrt import cli
    from srtrt.engine.batch.signals import Stopped

    def stopped(args):
        raise Stopped(signum)

    monkeypatch.setattr(cli, "_dispatch", stopped)
    assert cli.main(["run", "x.png"]) == 128 + signum
    assert capsys.readouterr().err == f"srtrt: stopped by {signal.Signals(signum).name}\n"


def test_what_an_output_format_loses_is_one_srtrt_line_hidden_by_quiet(tmp_path, capsys, model):
    rgba = np.zeros((12, 10, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    code, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "a.jpg", "--model", model)
    assert code == 0 and "srtrt: " + str(tmp_path / "a.jpg") + ": JPEG cannot store transparency" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
    code, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "a.jpg", "--model", model, "--overwrite", "-q")
    assert code == 0 and "transparency" not in err


def test_a_name_that_fits_is_written_though_its_temporary_name_is_longer(tmp_path, capsys, model):
    from srtrt import atomic

    (source,) = write_images(tmp_path / "in", 1)
    long_source = source.with_name("a" * 230 + "é" * 5 + ".png")  # 240 bytes; its output 247, its temporary ~272
    source.rename(long_source)
    code, err = run(capsys, long_source, "-o", f"{tmp_path / 'out'}{os.sep}", "--model", model)
    assert code == 0, err
    written = tmp_path / "out" / (long_source.stem + "_x4.png")
    assert is_complete_image(written, (128, 96)) and partials(tmp_path) == []
    temp = atomic.temp_name(written)
    assert len(os.fsencode(os.path.basename(temp))) <= atomic.NAME_MAX
    open(temp, "wb").close()
    atomic.remove_partials(written)
    assert not os.path.exists(temp)


def test_a_file_name_with_a_newline_is_still_one_line(tmp_path, capsys, model):
    broken = tmp_path / "two\nlines.png"
    broken.write_bytes(b"not an image")
    code, err = run(capsys, broken, "--model", model)
    lines = [line for line in err.splitlines() if "lines.png" in line]
    assert code == 1 and lines == [f"srtrt: {tmp_path}/two\\nlines.png: not a PNG, JPEG, WebP, TIFF or BMP image "
                                    "(or its header is corrupt)"], err


@pytest.mark.parametrize("output, says, exit_code", [("nodir/x.png", "output folder", 2), ("x.webp", "too large for WEBP", 1)])
def test_a_destination_that_cannot_take_the_output_is_refused_before_any_tile(tmp_path, capsys, monkeypatch,
                                                                               model, output, says, exit_code):
    """A missing folder, or a side over the format's limit, was found only after the whole image had
    been computed (8.5 s for a 2K photo on the CPU). The folder is refused before the backend opens
    (exit 2); the side, which needs the image's size, before its first tile."""
    from srtrt.engine.backends.torch_backend import TorchBackend

    source = tmp_path / "wide.png"
    Image.fromarray(np.zeros((2, 4100, 3), np.uint8)).save(source)  # x4: 16400 pixels wide
    calls = []
    real_infer = TorchBackend.infer
    monkeypatch.setattr(TorchBackend, "infer", lambda self, x: calls.append(1) or real_infer(self, x))
    code, err = run(capsys, source, "-o", tmp_path / output, "--model", model, "--backend", "torch")
    assert code == exit_code and says in err and calls == []
    assert not list((tmp_path).glob("x.*"))


def test_a_whole_image_run_says_so_not_that_its_margin_may_show_seams(tmp_path, capsys, model):
    source = write_images(tmp_path / "in", 1)[0]
    code, err = run(capsys, source, "-o", tmp_path / "out.png", "--model", model, "--tile", "0", "--margin", "1")

    assert code == 0 and is_complete_image(tmp_path / "out.png", (128, 96))
    assert "whole image in one window (--tile 0)" in err and "seams" not in err
    code, err = run(capsys, source, "-o", tmp_path / "tiled.png", "--model", model, "--tile", "16", "--margin", "1")
    assert code == 0 and "tiles may show seams" in err


def test_a_folder_it_may_not_list_and_names_too_long_fail_alone(tmp_path, capsys, model):
    """On Python 3.11 pathlib's is_dir/is_file raise for a folder the process may not enter and for a
    name over 255 bytes: a traceback, and the good image beside them was never upscaled."""
    import subprocess
    import sys

    from run_helpers import cli_env

    source = write_images(tmp_path / "in", 1)[0]
    locked = tmp_path / "locked"
    locked.mkdir()
    long = tmp_path / ("x" * 300 + ".png")
    code, err = run(capsys, source, long, "-o", tmp_path / "out", "--model", model)
    assert code == 1 and "Traceback" not in err and "x.png: file name too long" in err, err
    assert is_complete_image(tmp_path / "out" / "img0_x4.png", (128, 96))
    code, err = run(capsys, source, "-o", long, "--model", model)
    assert code == 1 and "Traceback" not in err and "file name too long" in err.splitlines()[-1].lower(), err
    locked.chmod(0)
    command = [sys.executable, "-m", "srtrt.cli", "run", str(source), str(locked), str(locked / "x.png"),
               "-o", str(tmp_path / "out2"), "--model", str(model)]
    command = without_dac_override(command)  # root enters any folder
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=cli_env())
    finally:
        locked.chmod(0o700)
    if done.returncode != 1 and done.stderr.startswith("setpriv"):
        pytest.skip(done.stderr.strip())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"srtrt: {locked}: cannot list this folder (permission denied)" in done.stderr
    assert f"srtrt: {locked / 'x.png'}: permission denied" in done.stderr
    assert is_complete_image(tmp_path / "out2" / "img0_x4.png", (128, 96))


def test_a_newline_in_a_folder_name_inside_a_cause_keeps_the_line_one_line(tmp_path, capsys, model):
    """The cause named the folder raw ("output folder no<newline>such does not exist"): two lines."""
    source = write_images(tmp_path / "in", 1)[0]
    (tmp_path / "fi\nle").write_text("a file")
    for folder, cause in (("no\nsuch", "does not exist"), ("fi\nle", "is not a folder")):
        code, err = run(capsys, source, "-o", tmp_path / folder / "x.png", "--model", model)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        escaped = folder.replace("\n", "\\n")
        assert f"output folder {tmp_path}/{escaped} {cause}" in err, err


def test_a_run_refused_before_its_first_image_makes_no_output_folder(tmp_path, capsys, model):
    """`-o new/deep/out --model bogus` was refused, exit 2, and left new/deep/out behind."""
    sources = write_images(tmp_path / "in", 2)
    for bad in (("--model", tmp_path / "bogus"), ("--model", model, "--device", "cuda:x")):
        code, err = run(capsys, *sources, "-o", tmp_path / "new" / "deep", *bad)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not __import__("shutil").which("unshare"), reason="no unshare to mount a folder twice")
def test_the_input_reached_through_a_second_mount_of_its_folder_is_not_overwritten(tmp_path, model):
    """`-o view/a.png --overwrite` with view a bind mount of the input's folder (a container's two
    volumes of one path): realpath told the names apart, and the input was replaced by its upscale."""
    import subprocess
    import sys

    from run_helpers import cli_env

    source = write_images(tmp_path / "real", 1)[0]
    (tmp_path / "view").mkdir()
    before = source.read_bytes()
    run_it = (f"mount --bind {tmp_path / 'real'} {tmp_path / 'view'} && exec {sys.executable} -m srtrt.cli run "
              f"{source} -o {tmp_path / 'view' / source.name} --overwrite --model {model}")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", run_it], capture_output=True, text=True, timeout=300,
                          env=cli_env())
    if "Traceback" not in done.stderr and "srtrt:" not in done.stderr:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    assert done.returncode == 2 and "output path is the input itself" in done.stderr, done.stderr
    assert source.read_bytes() == before
