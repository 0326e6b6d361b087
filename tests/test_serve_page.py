"""`srtrt serve`'s page in a real browser: Debian's Chromium, headless, driven by Selenium.

Drops an image and a corrupt file on the page, waits for the result, checks it is shown at 4x
the input's size (1:1 zoom), that the corrupt file's one line is shown and that the page's
download equals the API's result; a screenshot of the page is saved beside the test's files
(and copied to $SRTRT_TEST_ARTIFACTS when that is set).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
pytest.importorskip("uvicorn", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the page test drives Chromium with selenium (pip install selenium)")

from test_serve import free_port, live_server  # noqa: E402

from srtrt.engine.serve.settings import ServeConfig  # noqa: E402

from run_helpers import save_tiny_model, write_images  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread"), pytest.mark.slow]

DROP = """
const [input, zone] = arguments;
const transfer = new DataTransfer();
for (const file of input.files) transfer.items.add(file);
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
"""


@contextmanager
def chromium(downloads: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for driver.get_log
    # Chromium's singleton folders (org.chromium.Chromium.*) go into a folder removed afterwards: in /tmp itself
    # every browser the suite started left one behind. Short, as it holds a Unix socket's path (108 bytes at most).
    with tempfile.TemporaryDirectory(prefix="srtrt-chromium-") as scratch:
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER, env={**os.environ, "TMPDIR": scratch})
        try:
            driver = webdriver.Chrome(options=options, service=service)
        except Exception as e:  # a browser that cannot start here is an environment's limit, not a failure of srtrt
            pytest.skip(f"Chromium did not start: {' '.join(str(e).split())[:200]}")
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def as_the_page(driver, url: str):
    """An API client that is the page's client (its HttpOnly id cookie, which WebDriver can read)."""
    import httpx

    return httpx.Client(base_url=url, headers={"X-Srtrt-Client": driver.get_cookie("srtrt_client")["value"]})


def open_page(driver, url: str) -> None:
    """Open the page and pick the tiny model on torch."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    wait_for(lambda: len(Select(driver.find_element(By.ID, "model")).options) > 1, 30, "the model list")
    Select(driver.find_element(By.ID, "model")).select_by_value("tiny.safetensors")
    Select(driver.find_element(By.ID, "backend")).select_by_value("torch")


def drop_files(driver, url: str, *paths: Path) -> None:
    """Open the page, pick the tiny model on torch, and drop `paths` on its drop zone as a user would."""
    from selenium.webdriver.common.by import By

    open_page(driver, url)
    picker = driver.execute_script("const i = document.createElement('input'); i.type = 'file'; i.multiple = true;"
                                   "i.style.display = 'none'; document.body.append(i); return i;")
    picker.send_keys("\n".join(map(str, paths)))
    driver.execute_script(DROP, picker, driver.find_element(By.ID, "drop"))


def _all_ended(jobs: list[dict]) -> list[dict] | None:
    return jobs if len(jobs) == 2 and all(j["state"] in ("done", "failed") for j in jobs) else None


def test_page_drop_progress_result_and_download(tmp_path):
    import httpx
    from selenium.webdriver.common.by import By

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    (image,) = write_images(tmp_path / "in", 1, height=48, width=64, prefix="dropped")
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a PNG after all")
    (tmp_path / "work").mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    config = ServeConfig(port=free_port(), models_dir=models, work_dir=tmp_path / "work")
    with live_server(config) as (url, _), chromium(downloads) as driver:
        drop_files(driver, url, image, broken)

        after = driver.find_element(By.ID, "after")
        wait_for(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", after),
                 90, "the result on the page")
        size = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                     "return [arguments[0].naturalWidth, arguments[0].naturalHeight, r.width, r.height];", after)
        assert size == [64 * 4, 48 * 4, 64 * 4, 48 * 4]  # 4x the input, shown at 1:1

        api = as_the_page(driver, url)
        assert api.get("/api/jobs").status_code == 200 and httpx.get(url + "/api/jobs").json() == []  # not the page's
        jobs = {j["name"]: j for j in wait_for(lambda: _all_ended(api.get("/api/jobs").json()), 60, "both jobs")}
        assert jobs["dropped0.png"]["state"] == "done" and jobs["broken.png"]["state"] == "failed"
        from_api = api.get(jobs["dropped0.png"]["result_url"]).content
        queue = driver.find_element(By.ID, "jobs")
        wait_for(lambda: jobs["broken.png"]["message"] in queue.text, 10, "the failed file's line on the page")
        assert jobs["broken.png"]["message"].startswith("broken.png: ")

        driver.find_element(By.ID, "download").click()
        saved = wait_for(lambda: [p for p in downloads.iterdir() if not p.name.startswith(".") and p.suffix != ".crdownload"],
                         30, "the download")
        assert [p.name for p in saved] == ["dropped0_x4.png"]
        assert saved[0].read_bytes() == from_api

        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("SRTRT_TEST_ARTIFACTS"):
            Path(os.environ["SRTRT_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["SRTRT_TEST_ARTIFACTS"]) / shot.name)
        assert shot.stat().st_size > 0


def test_page_shows_a_video_result_as_a_video(tmp_path):
    pytest.importorskip("av")
    from selenium.webdriver.common.by import By
    from test_video import make_clip

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    make_clip(clip, frames=6, size=(32, 24), audio="aac")
    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models, work_dir=tmp_path / "work")
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        drop_files(driver, url, clip)

        video = driver.find_element(By.ID, "video")
        wait_for(lambda: video.is_displayed(), 90, "the video result on the page")
        assert not driver.find_element(By.ID, "compare").is_displayed()  # no image slider for a video
        (job,) = as_the_page(driver, url).get("/api/jobs").json()
        assert job["state"] == "done" and video.get_attribute("src").endswith(job["result_url"])
        assert driver.find_element(By.ID, "viewer-name").text == "clip_x4.mp4"
        # this Chromium may lack H.264 (a build option): the size is checked only where it plays
        size = wait_for(lambda: driver.execute_script(
            "const v = arguments[0]; return v.error ? 'unplayable' : v.videoWidth && [v.videoWidth, v.videoHeight];",
            video), 30, "the video's metadata")
        assert size in ("unplayable", [128, 96])


def bare_config(tmp_path: Path) -> ServeConfig:
    """A server with the embedded models only: for what the page does before any job runs."""
    (tmp_path / "work").mkdir()
    return ServeConfig(port=free_port(), work_dir=tmp_path / "work")


def test_a_link_from_another_site_keeps_the_client_and_its_jobs(tmp_path):
    """The client id cookie is SameSite=Lax: a link to the page from another site brings it, so the
    page opens as the same client, its jobs listed (Strict left it behind: a new id, the jobs gone)."""
    from selenium.webdriver.common.by import By

    config = bare_config(tmp_path)
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        driver.get(url + "/")
        before = driver.get_cookie("srtrt_client")
        assert before["sameSite"] == "Lax" and before["httpOnly"]
        assert as_the_page(driver, url).post("/api/jobs", json={"filename": "kept.png"}).status_code == 201
        driver.get(f"data:text/html,<a id=away href='{url}/'>srtrt</a>")
        driver.find_element(By.ID, "away").click()
        wait_for(lambda: driver.current_url == url + "/", 10, "the page, through the link")
        assert driver.get_cookie("srtrt_client")["value"] == before["value"]
        wait_for(lambda: "kept.png" in driver.find_element(By.ID, "jobs").text, 10, "the client's job on the page")


def test_a_link_from_another_site_keeps_the_token_but_its_form_changes_nothing(tmp_path):
    """With --token, the token cookie is SameSite=Lax as well: a link from another site opens the page
    (Strict left the cookie behind: the 401 page, though the user had opened /?token=T). A form on that
    site posting a job gets the cross-origin refusal, and no job is made."""
    from selenium.webdriver.common.by import By

    config = replace(bare_config(tmp_path), token="s3cret")
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        driver.get(url + "/?token=s3cret")
        wait_for(lambda: driver.current_url == url + "/", 10, "the page, the token in its cookie")
        token = driver.get_cookie("srtrt_token")
        assert token["sameSite"] == "Lax" and token["httpOnly"]
        driver.get(f"data:text/html,<a id=away href='{url}/'>srtrt</a>")
        driver.find_element(By.ID, "away").click()
        wait_for(lambda: driver.current_url == url + "/", 10, "the page, through the link")
        wait_for(lambda: driver.find_elements(By.ID, "drop"), 10, "the page rather than the 401 answer")
        driver.get(f"data:text/html,<form id=post method=post enctype=multipart/form-data action='{url}/api/jobs'>"
                   "<input name=filename value=theirs.png></form>")
        driver.find_element(By.ID, "post").submit()
        wait_for(lambda: "cross-origin requests are refused" in driver.page_source, 10, "the refusal")
        page = as_the_page(driver, url)
        page.headers["Authorization"] = "Bearer s3cret"
        assert page.get("/api/jobs").json() == []


def test_a_file_the_page_cannot_send_gets_a_row_saying_why(tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    config = bare_config(tmp_path)
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        driver.get(url + "/")
        driver.find_element(By.ID, "files").send_keys(str(notes))
        queue = driver.find_element(By.ID, "jobs")
        wait_for(lambda: "notes.txt" in queue.text, 10, "a row for notes.txt")
        assert "not a supported image or video (.png .jpg" in queue.text, queue.text
        assert as_the_page(driver, url).get("/api/jobs").json() == []  # nothing was sent


def test_the_page_loads_with_a_clean_console(tmp_path):
    """No error in the browser's console on opening the page: its icon is in the page, not a 404 for /favicon.ico."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    config = bare_config(tmp_path)
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        driver.get(url + "/")
        wait_for(lambda: Select(driver.find_element(By.ID, "model")).options, 30, "the model list")
        logs, deadline = [], time.monotonic() + 1.5  # the icon is asked for after the load
        while time.monotonic() < deadline:
            logs += driver.get_log("browser")
            time.sleep(0.1)
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []


# ---------------------------------------------------------------- while a job runs

STEP = 0.1  # seconds each progress step of a job waits (slow_jobs): a tiny model's video would be over at once


@pytest.fixture
def slow_jobs(monkeypatch):
    """Jobs that run for seconds, sending a progress event every step, for the page to be looked at meanwhile."""
    from srtrt.engine.serve.jobs import JobQueue

    progress = JobQueue._progress

    def slowed(self, *args):
        time.sleep(STEP)
        progress(self, *args)

    monkeypatch.setattr(JobQueue, "_progress", slowed)


def video_server(tmp_path: Path, name: str = "clip.mp4", frames: int = 60) -> tuple[ServeConfig, Path]:
    """A server with the tiny model, and a clip of `frames` frames for it."""
    pytest.importorskip("av")
    from test_video import make_clip

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    clip = tmp_path / "in" / name
    clip.parent.mkdir()
    make_clip(clip, frames=frames, size=(32, 24), audio=None)
    (tmp_path / "work").mkdir()
    return ServeConfig(port=free_port(), models_dir=models, work_dir=tmp_path / "work"), clip


def row_in_state(driver, pattern: str):
    """The queue's first row whose state matches `pattern` (a regular expression, whole), else None; looked
    for in one script, as a file's row waiting to be sent gives way to its job's row."""
    return driver.execute_script("const re = new RegExp(`^(?:${arguments[0]})$`);"
                                 "return [...document.querySelectorAll('#jobs li')]"
                                 ".find((li) => re.test(li.querySelector('.state').textContent)) || null;", pattern)


def test_a_click_held_while_progress_events_come_registers(tmp_path, slow_jobs):
    """Rows are updated in place: a button pressed as a running job's events come is still the same element
    when the mouse is released, so a real click (held 120 ms) cancels on the first press. (Rows rebuilt on
    every event lost about half of all clicks while a job ran.)"""
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By

    config, clip = video_server(tmp_path)
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        drop_files(driver, url, clip)
        row = wait_for(lambda: row_in_state(driver, r"[1-9]\d*/60 frames"), 60, "the video running")
        state, button = row.find_element(By.CLASS_NAME, "state"), row.find_element(By.TAG_NAME, "button")
        seen, deadline = set(), time.monotonic() + 20
        while len(seen) < 4 and time.monotonic() < deadline:  # a stale element raises here
            seen.add(state.text)
            time.sleep(0.05)
        assert len(seen) >= 4 and button.text == "cancel", seen

        ActionChains(driver).click_and_hold(button).pause(0.12).release().perform()
        api = as_the_page(driver, url)
        wait_for(lambda: api.get("/api/jobs").json()[0]["state"] == "cancelled", 10, "the job cancelled by one press")


def test_a_video_without_a_frame_count_shows_the_frames_done(tmp_path, slow_jobs):
    """A Matroska file gives no frame count (the API's total is 0): the page counts the frames done,
    as `srtrt run` does, under a bar with no value (indeterminate), not "starting" over a full bar."""
    from selenium.webdriver.common.by import By

    config, clip = video_server(tmp_path, "clip.mkv", frames=30)
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        drop_files(driver, url, clip)
        row = wait_for(lambda: row_in_state(driver, r"([2-9]|\d\d+) frames"), 60, "the frames counted")
        (job,) = as_the_page(driver, url).get("/api/jobs").json()
        assert job["progress"]["total"] == 0
        bar = row.find_element(By.TAG_NAME, "progress")
        assert bar.is_displayed() and bar.get_dom_attribute("value") is None


def test_the_page_says_when_the_server_is_gone_and_which_jobs_went_with_it(tmp_path, slow_jobs):
    """The server stopping mid-job is said at once, the job's state unknown rather than still running;
    once a restarted server answers again, the page says which of its jobs that server no longer has."""
    from selenium.webdriver.common.by import By

    config, clip = video_server(tmp_path)
    with chromium(tmp_path / "downloads") as driver:
        with live_server(config) as (url, stop):
            drop_files(driver, url, clip)
            wait_for(lambda: row_in_state(driver, r"[1-9]\d*/60 frames"), 60, "the video running")
            stop()  # as SIGTERM or Ctrl-C does
            wait_for(lambda: row_in_state(driver, "unknown"), 5, "the job's state unknown")
            assert row_in_state(driver, ".*frames") is None
            notice = driver.find_element(By.ID, "notice")
            assert "connection to the server lost" in notice.text.lower()
        with live_server(config):  # the same address: the page's event stream finds it by itself
            wait_for(lambda: "no longer has 1 job" in notice.text, 20, "the lost job said")
            assert "clip.mp4" in notice.text and driver.find_element(By.ID, "jobs").text == ""


DROP_NAMED = """
const [data, names, zone] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
for (const name of names) transfer.items.add(new File([bytes], name, {type: "image/png"}));
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
"""


def test_a_name_the_browser_escapes_is_shown_as_the_user_named_it(tmp_path):
    """Chromium sends `"`, CR and LF in a file name as %22, %0D and %0A; the server undoes those three
    (and only those: a real "%25" stays), then drops the quote and control characters as from any name."""
    import base64

    from selenium.webdriver.common.by import By

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    (image,) = write_images(tmp_path / "in", 1, height=24, width=32)
    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models, work_dir=tmp_path / "work")
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        open_page(driver, url)
        driver.execute_script(DROP_NAMED, base64.b64encode(image.read_bytes()).decode(),
                              ['quo"te.png', "new\nline.png", "100%25.png"], driver.find_element(By.ID, "drop"))
        api = as_the_page(driver, url)
        wait_for(lambda: len(api.get("/api/jobs").json()) == 3, 30, "the three jobs")
        assert sorted(job["name"] for job in api.get("/api/jobs").json()) == ["100%25.png", "newline.png", "quote.png"]
        queue = driver.find_element(By.ID, "jobs")
        wait_for(lambda: "quote.png" in queue.text and "newline.png" in queue.text, 10, "the names on the page")


def test_eight_tabs_share_one_event_stream_and_the_last_still_uploads(tmp_path):
    """Each tab followed the queue on a stream of its own: over HTTP/1.1 a browser opens six
    connections to a server, so six tabs took them all, a seventh never loaded and uploads hung.
    One tab now follows the queue for all of them."""
    from selenium.webdriver.common.by import By

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models)
    (image,) = write_images(tmp_path / "in", 1, height=24, width=32, prefix="tab")
    (tmp_path / "work").mkdir()
    config = ServeConfig(port=free_port(), models_dir=models, work_dir=tmp_path / "work")
    with live_server(config) as (url, _), chromium(tmp_path / "downloads") as driver:
        first = driver.current_window_handle
        open_page(driver, url)
        for _ in range(7):
            driver.switch_to.new_window("tab")
            open_page(driver, url)  # a tab that cannot connect never lists its models: times out here
        drop_files(driver, url, image)
        wait_for(lambda: row_in_state(driver, "done"), 60, "the upload of the eighth tab done")
        driver.switch_to.window(first)  # told by the tab that follows the queue for all
        wait_for(lambda: "tab0.png" in driver.find_element(By.ID, "jobs").text, 10, "the job in the first tab")
