"""engine/batch/allocator.py: the CLI's allocator policy is applied on glibc and never over the user's own."""
import os
import subprocess
import sys

import pytest

CODE = "from srtrt.engine.batch.allocator import keep_freed_buffers; print(keep_freed_buffers())"


def _applied(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run([sys.executable, "-c", CODE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt")
def test_policy_is_applied_on_glibc_unless_the_user_set_the_allocator():
    assert _applied() == "True"  # every mallopt call accepted
    assert _applied(MALLOC_ARENA_MAX="4") == "False"
    assert _applied(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "False"


def test_the_cli_applies_it_before_running(monkeypatch, tmp_path, capsys):
    """`srtrt` main sets it once, before dispatching (the runtime's threads then share two arenas)."""
    from srtrt import cli
    from srtrt.engine.batch import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_buffers", lambda: calls.append(1) or True)
    assert cli.main(["run", str(tmp_path / "missing.png")]) != 0 and calls == [1]
