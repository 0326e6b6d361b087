"""`srtrt run --ray` on a local Ray (2 CPUs): same bytes as a local run, bad files fail alone,
a re-run resumes (writes nothing new). Skipped without the `ray` extra."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from srtrt.cli import main, parser  # noqa: E402

from run_helpers import is_complete_image, partials, save_tiny_model, write_images  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
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
    assert set(rows) == {"path", "output", "status", "message", "seconds", "pixels"}
    assert rows["pixels"][0] == 224 * 160 and all(isinstance(s, float) for s in rows["seconds"])
    assert "is a directory" in rows["message"][2]
    assert (tmp_path / "a.png").read_bytes() == (root / "local" / "img0_x4.png").read_bytes()


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
