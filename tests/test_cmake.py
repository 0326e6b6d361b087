"""CMakeLists.txt builds libsrtrt_kernels (AOT kernel images + C launcher) without a GPU."""
from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found"),
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not found"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
]

EXPORTED = {"srtrt_pixel_shuffle_prelu", "srtrt_pixel_shuffle_prelu_supported"}
FP32, CUDA_ERROR_INVALID_VALUE = 0, 1


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    build = tmp_path_factory.mktemp("cmake-build")
    # One variant keeps the build short; the default builds sm 80/89/90, three dtypes, two layouts.
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
         "-DSRTRT_CUDA_ARCHS=90", "-DSRTRT_KERNEL_DTYPES=fp32", "-DSRTRT_KERNEL_LAYOUTS=nchw"],
        capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    built = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    lib = build / "libsrtrt_kernels.so"
    assert lib.is_file()
    return lib, configure.stdout


def test_library_exports_only_the_launcher_api(library):
    lib, _ = library
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True)
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if " T " in line}
    assert symbols == EXPORTED


def test_configure_reports_the_plugin_hook(library):
    _, log = library
    if "TensorRT headers in" not in log:  # NvInfer.h absent (or plugin sources absent)
        assert ("TensorRT headers not found: skipping the plugin library" in log
                or "kernels/plugin/ is not there yet" in log)


def test_launcher_picks_images_and_checks_arguments(library):
    lib, _ = library
    so = ctypes.CDLL(str(lib))  # cudart loads without a GPU; these calls never reach the device
    supported = so.srtrt_pixel_shuffle_prelu_supported
    assert supported(FP32, 2, 0, 9, 0) == 1      # its sm_90a cubin
    assert supported(FP32, 2, 0, 12, 0) == 1     # the PTX, JIT-compiled by newer drivers
    assert supported(FP32, 2, 0, 8, 6) == 0      # built for sm_90 only
    assert supported(FP32, 3, 0, 9, 0) == 0      # upscale 3 not built
    assert supported(FP32, 2, 1, 9, 0) == 0      # channels_last not built
    launch = so.srtrt_pixel_shuffle_prelu
    launch.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 8 + [ctypes.c_void_p]
    assert launch(None, None, None, 1, 4, 8, 8, 2, 3, FP32, 0, None) == CUDA_ERROR_INVALID_VALUE  # 3 slopes
    assert launch(None, None, None, 1, 4, 8, 8, 0, 1, FP32, 0, None) == CUDA_ERROR_INVALID_VALUE  # upscale 0
