"""bench/report.py: which run a device's section comes from, and where its workload lines come from."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import report  # noqa: E402


def _run(path: Path, when: str, benchmarks: list, mode: str = "full") -> Path:
    info = {"slug": "cpu-test-2c", "mode": mode, "describe": "Test CPU", "device": {"kind": "cpu"},
            "versions": {"torch": "0"}, "weights": "embedded default model"}
    path.write_text(json.dumps({"machine_info": {"srtrt": info}, "datetime": when,
                                "commit_info": {"id": "abc"}, "benchmarks": benchmarks}))
    return path


def _throughput(case: str, seconds: float) -> dict:
    return {"extra_info": {"kind": "throughput", "case": case, "group": "srtrt", "workload": "2k-output",
                           "precision": "fp32", "lr_width": 512, "lr_height": 384, "output_mp": 3.1},
            "stats": {"median": seconds, "min": seconds, "rounds": 3}}


def _video(fps: float) -> dict:
    return {"extra_info": {"kind": "video-speed", "output_fps": fps, "realtime": fps / 24, "encoder": "libx264 ultrafast",
                           "target": "≥ 1.5x real time at 24 fps", "met": fps / 24 >= 1.5}, "stats": {}}


def test_a_newer_suite_run_on_its_own_neither_replaces_the_device_run_nor_is_lost(tmp_path):
    """The throughput run stays the section's run when a video suite ran later on its own, and the
    video line still appears, from the newest full run that has it, named."""
    main = _run(tmp_path / "cpu.json", "2026-12-03T10:00", [_throughput("eager-fp32-nchw", 10.0),
                                                            _throughput("torch-fp32", 2.0)])
    _run(tmp_path / "video-old.json", "2026-12-03T11:00", [_video(20.0)])
    _run(tmp_path / "video.json", "2026-12-03T12:00", [_video(30.7)])
    _run(tmp_path / "video-quick.json", "2026-12-03T13:00", [_video(99.0)], mode="quick")
    loaded = [report.load(p) for p in sorted(tmp_path.glob("*.json"))]
    chosen = report.choose(loaded)
    assert [r.path for r in chosen] == [main]
    text = report.render(chosen, tmp_path / "out", loaded).read_text()
    assert "torch-fp32" in text
    video_lines = [line for line in text.splitlines() if "free network" in line]
    assert video_lines == ["- video with a free network, libx264 ultrafast: 30.7 fps = 1.28x real time "
                           "(target ≥ 1.5x real time at 24 fps: not met) (`video.json`, 2026-12-03)"]


def _auto(picked: str, seconds: float) -> dict:
    bench = _throughput("auto", seconds)
    bench["extra_info"]["picked"] = picked
    return bench


def _auto_line(tmp_path, picked: str) -> str:
    run = _run(tmp_path / f"{picked}.json", "2026-12-04T10:00",
               [_throughput("eager-fp32-nchw", 10.0), _throughput("openvino-int8", 1.0),
                _throughput("openvino-bf16", 1.5), _auto(picked, 1.15)])
    text = report.render([report.load(run)], tmp_path / picked).read_text()
    return next(line for line in text.splitlines() if line.startswith("- `auto` picked"))


def test_auto_against_the_fastest_path_judges_the_pick_not_the_noise_between_two_runs_of_it(tmp_path):
    """auto timed 15 % behind the int8 row: when it picked int8 itself that gap is one path timed
    twice (target met, the gap shown); when it picked bf16 it is a wrong pick (not met)."""
    same = _auto_line(tmp_path, "openvino-int8")
    assert "the pick is the fastest path (target ≤ 5%: met)" in same and "+15.0%" in same
    wrong = _auto_line(tmp_path, "openvino-bf16")
    assert "auto +15.0% behind (target ≤ 5%: not met)" in wrong


def test_the_folder_under_auto_is_judged_against_the_image_as_auto_runs_it_alone(tmp_path):
    """`auto` may pick another path for a folder of small images than for one big image: the folder
    read 82 % of the big image on the folder's own path and "met" while `srtrt run big.png` ran the big
    image 1.7x faster (55 %)."""
    varied = {"extra_info": {"kind": "varied", "case": "auto-auto", "folder_mp_per_s": 1.16, "single_mp_per_s": 1.41,
                             "ratio": 1.16 / 1.41, "single_default_mp_per_s": 2.1, "ratio_to_single_default": 1.16 / 2.1},
              "stats": {}}
    run = _run(tmp_path / "varied.json", "2026-12-06T10:00", [_throughput("eager-fp32-nchw", 10.0), varied])
    text = report.render([report.load(run)], tmp_path / "out").read_text()
    (line,) = [line for line in text.splitlines() if "varied-size folder" in line]
    assert line == ("- varied-size folder, `auto-auto`: 1.160 output MP/s against 1.410 for the single 2K image (82 %), "
                    "2.100 for that image by what `auto` picks for it alone (55 %; target ≥ 75 %: not met)")


def _merged(tmp_path, *parts: tuple[str, str, str]) -> tuple[int, Path]:
    """bench/merge_results.py over parts (name, slug, mode), as bench/gpu.sh calls it."""
    import merge_results

    paths = []
    for name, slug, mode in parts:
        path = _run(tmp_path / f"{name}.json", "2026-12-06T10:00", [_throughput(f"{name}-case", 1.0)], mode)
        doc = json.loads(path.read_text())
        doc["machine_info"]["srtrt"]["slug"] = slug
        path.write_text(json.dumps(doc))
        paths.append(path)
    out = tmp_path / "merged.json"
    return merge_results.main([str(out), *map(str, paths)]), out


def test_merging_parts_of_two_devices_is_refused(tmp_path, capsys):
    """A CPU run's parts merged with a GPU run's read as one device with the other's rows and ratios."""
    code, out = _merged(tmp_path, ("peak", "cpu-test-2c", "full"), ("throughput", "cuda-test", "full"))
    assert code == 1 and not out.exists()
    assert "another device (cuda-test)" in capsys.readouterr().err


def test_a_part_run_in_another_mode_is_named_not_taken_for_the_run(tmp_path):
    """gpu.sh runs its encoding part quick: the merged run keeps the first part's mode and says which part differs."""
    code, out = _merged(tmp_path, ("peak", "cpu-test-2c", "full"), ("encoding", "cpu-test-2c", "quick"))
    assert code == 0
    run = report.load(out)
    assert run.mode == "full" and run.info["part_modes"] == {"encoding": "quick"}
    assert len(run.benchmarks) == 2
    text = report.render([run], tmp_path / "out").read_text()
    assert "> Parts run in another mode: encoding quick." in text and "A quick run" not in text


def test_a_path_with_no_measured_peak_of_its_kind_says_so(tmp_path):
    """int8 and `auto` rows have no peak of their kind: not "—% of the measured auto matmul peak"."""
    run = _run(tmp_path / "int8.json", "2026-12-06T10:00", [_throughput("eager-fp32-nchw", 10.0), _throughput("auto", 1.0)])
    text = report.render([report.load(run)], tmp_path / "out").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("- best srtrt path")]
    assert line.endswith("no measured matmul peak of its kind to compare with") and "—%" not in line


def test_a_result_file_that_cannot_be_read_is_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "absent.json")]) == 1
    err = capsys.readouterr().err
    assert "absent.json: cannot be read (No such file or directory); skipped" in err and "Traceback" not in err
