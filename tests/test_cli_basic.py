"""The command line starts, reports its version and documents eval/compare."""
import subprocess
import sys

import pytest

import srtrt
from srtrt.cli import main


def test_version_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-m", "srtrt.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"srtrt {srtrt.__version__}"


@pytest.mark.parametrize("command,flags", [
    ("eval", ["--model", "--scale", "--json", "DIR"]),
    ("compare", ["--output", "--model", "--crop", "image"]),
])
def test_subcommand_help(capsys, command, flags):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: srtrt {command}")
    for flag in flags:
        assert flag in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["upsample"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_run_options_choices_are_the_engines_own():
    """The parser's lists were copies (backends, precisions, codecs, alpha and deinterlace modes):
    one owner each, and the backends that choice offers are those that exist."""
    from srtrt.cli import parser
    from srtrt.engine import backends
    from srtrt.engine.batch import options
    from srtrt.engine.video import CODECS, encoder

    run = next(a for a in parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "backend")
    assert tuple(run.choices) == options.BACKENDS and set(options.BACKENDS) == {"auto", *backends._MAKERS}
    assert encoder.CODECS is CODECS and set(encoder.DEFAULT_CRF) == set(CODECS)
    from srtrt.engine.video import WRITTEN_SUFFIXES, remux

    assert set(remux.FORMATS) == WRITTEN_SUFFIXES  # what "needs a video container" lists is what is written as named
