"""AOT compilation of the Triton kernel to PTX and cubin on a machine without a GPU."""
from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="AOT needs TRITON_INTERPRET unset"),
]

# x, alpha: pointers; C, H, W, total, alpha_stride: int32; y: pointer. Triton then appends
# its scratch pointers (global and, since 3.5, profile), which launchers pass as null.
KERNEL_PTX_PARAMS = ["u64", "u64", "u32", "u32", "u32", "u32", "u32", "u64"]


def _check_params(ptx_params):
    assert ptx_params[:8] == KERNEL_PTX_PARAMS
    assert 1 <= len(ptx_params) - 8 <= 2 and set(ptx_params[8:]) == {"u64"}


@pytest.mark.parametrize("arch, dtype, target", [(90, "fp32", "sm_90a"), (80, "fp16", "sm_80"),
                                                 (89, "bf16", "sm_89")])
def test_ptx_entry_and_parameters(arch, dtype, target):
    from srtrt.kernels import aot

    k = aot.compile_kernel(arch=arch, dtype=dtype, upscale=2)
    assert k.name == "pixel_shuffle_prelu_kernel"
    assert f".entry {k.name}(" in k.ptx
    assert f".target {target}" in k.ptx
    name, ptx_params = aot.ptx_entry(k.ptx)
    assert name == k.name
    _check_params(ptx_params)
    assert [n for n, _ in k.params][:8] == ["x_ptr", "alpha_ptr", "C", "H", "W", "total", "alpha_stride", "y_ptr"]
    assert len(k.params) == len(ptx_params)
    assert all(t == f"*{dtype}" for n, t in k.params if n in ("x_ptr", "alpha_ptr", "y_ptr"))
    assert k.threads == 128 and k.shared == 0 and k.block == 1024
    assert k.cubin[:4] == b"\x7fELF"


def test_portable_ptx_version_and_channels_last_variant():
    from srtrt.kernels import aot

    k = aot.compile_kernel(arch=80, dtype="fp32", upscale=3, channels_last=True,
                           ptx_version=aot.PORTABLE_PTX_VERSION, with_cubin=False)
    assert ".version 8.0" in k.ptx and k.cubin is None
    _check_params(aot.ptx_entry(k.ptx)[1])


def test_ptx_entry_refuses_text_without_one_kernel():
    from srtrt.kernels import aot

    with pytest.raises(ValueError, match="one .entry"):
        aot.ptx_entry(".version 8.0\n.target sm_80\n")


def test_the_build_steps_python_runs_under_optimised_python():
    """`python -OO` strips docstrings: the AOT command's help was built from its docstring (an
    AttributeError), and CMake's import check was an `assert`, which -O removes."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    help_text = subprocess.run([sys.executable, "-OO", "-m", "srtrt.kernels.aot", "--help"], capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--layouts" in help_text.stdout, help_text.stderr
    cmake = (Path(__file__).parent.parent / "CMakeLists.txt").read_text()
    check = re.search(r'Python3_EXECUTABLE\} -c "([^"]*srtrt\.kernels\.aot[^"]*)"', cmake).group(1)
    for module, code in (("aot", 0), ("no_such_module", 1)):
        done = subprocess.run([sys.executable, "-O", "-c", check.replace("kernels.aot", f"kernels.{module}")],
                              timeout=120)
        assert done.returncode == code, module
