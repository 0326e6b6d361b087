"""A checkout on the path ahead of the installed package (the README's `pip install .`, then a
`python -m` child or a Ray worker started in the checkout): its srtrt/ has no engine/, which
pyproject.toml maps in from beside it. The export child failed there (`No module named
'srtrt.engine'`): community models lost OpenVINO, `srtrt export` and `--ray` failed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_checkout_alone_imports_its_mapped_subpackages(tmp_path):
    # -S: no site-packages, so no installed or editable srtrt: only the checkout, first on the path
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import srtrt, srtrt.engine, srtrt.train, srtrt.kernels; "
             "print(srtrt.engine.__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", probe, str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == REPO / "engine" / "__init__.py"
