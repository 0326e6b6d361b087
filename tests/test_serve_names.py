"""A client's file name as `srtrt serve` shows it and offers it back as a download name.

Browsers send `"`, CR and LF in a multipart file name as %22, %0D and %0A (WHATWG's multipart/form-data
encoding) and escape nothing else: the server undoes those three only, then cleans the name as any other.
"""
from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")
pytest.importorskip("python_multipart", reason="srtrt serve needs its extra: pip install 'srtrt[serve]'")

from test_serve import form, serving  # noqa: E402

from srtrt.engine.serve.uploads import display_name, form_filename  # noqa: E402

from run_helpers import save_tiny_model, write_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("own_srtrt_cache", "one_torch_thread")


@pytest.mark.parametrize("sent, meant", [
    (b"quo%22te.png", 'quo"te.png'),
    (b"two%0D%0Alines.png", "two\r\nlines.png"),
    (b"100%25.png", "100%25.png"),        # a real "%" is sent as it is: no general percent-decoding
    (b"a%0a%20b.png", "a%0a%20b.png"),    # browsers write the three escapes in upper case, and only them
    (b"%2522.png", "%2522.png"),
    ("caf\u00e9.png".encode(), "caf\u00e9.png"),
])
def test_a_form_file_name_has_the_browsers_three_escapes_undone(sent, meant):
    assert form_filename(sent) == meant


@pytest.mark.parametrize("name, shown", [
    ('quo"te.png', "quote.png"),
    ("new\nline\r.png", "newline.png"),   # no control character reaches a download name
    ("tab\there.png", "tabhere.png"),
    ("../../etc/x.png", "x.png"),
])
def test_display_name_keeps_no_quote_control_character_or_folder(name, shown):
    assert display_name(name) == shown


def test_an_upload_named_with_escapes_is_shown_and_downloaded_unescaped(tmp_path):
    save_tiny_model(tmp_path / "models")
    png = write_images(tmp_path / "in", 1, height=24, width=32)[0].read_bytes()
    with serving(tmp_path, tmp_path / "models") as client:
        jobs = []
        for sent in ("quo%22te.png", "new%0Aline.png", "100%25.png"):
            answer = client.post("/api/jobs", content=form(png, sent, model="tiny.safetensors", backend="torch"),
                                 headers={"content-type": "multipart/form-data; boundary=b"})
            assert answer.status_code == 202, answer.text
            jobs.append(answer.json())
        assert [job["name"] for job in jobs] == ["quote.png", "newline.png", "100%25.png"]
        deadline = time.monotonic() + 60
        while not all(job["state"] == "done" for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
            jobs = [client.get(f"/api/jobs/{job['id']}").json() for job in jobs]
        assert [job["result_name"] for job in jobs] == ["quote_x4.png", "newline_x4.png", "100%25_x4.png"]
        download = client.get(jobs[1]["result_url"], params={"download": 1}).headers["content-disposition"]
        assert download == 'attachment; filename="newline_x4.png"'
