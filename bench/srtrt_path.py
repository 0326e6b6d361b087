"""Run a module or script with `srtrt` importable from this checkout, installed or not.

    python bench/srtrt_path.py -m pytest tests -m gpu
    python bench/srtrt_path.py bench/report.py --out OUT

pyproject.toml maps srtrt.engine, srtrt.train and srtrt.kernels to the top-level folders
engine/, train/ and kernels/, which `pip install -e .` wires up. A GPU machine that got only a
copy of the repository (no virtual environment, nothing installable) lacks that wiring, so
this launcher adds an import finder with the same mapping, then runs the target. Where srtrt
is installed it changes nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"srtrt": REPO / "srtrt", "srtrt.engine": REPO / "engine", "srtrt.train": REPO / "train",
            "srtrt.kernels": REPO / "kernels"}


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the four package roots in the checkout; their submodules follow from __path__."""

    def find_spec(self, name, path=None, target=None):
        folder = PACKAGES.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def srtrt_installed() -> bool:
    try:
        import srtrt.engine  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "srtrt" or m.startswith("srtrt.")]:
            del sys.modules[name]  # a half-imported package would shadow the finder
        return False
    return True


def main() -> None:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    if not srtrt_installed():
        sys.meta_path.insert(0, CheckoutFinder())
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        sys.path.insert(0, str(Path(args[0]).resolve().parent))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
