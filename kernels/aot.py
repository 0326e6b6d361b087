"""Ahead-of-time compilation of the pixel-shuffle/PReLU kernel for machines without a GPU.

`compile_kernel` runs Triton's compiler for an explicit target (e.g. sm_90) and returns the
PTX (plus a cubin, assembled by the ptxas that ships with Triton), the entry-point name and
its parameter list: what TensorRT's AOT plugin and the CMake-built library need.

`python -m srtrt.kernels.aot --out DIR` writes the C source with every kernel image, which
CMakeLists.txt compiles together with kernels/csrc/ into libsrtrt_kernels.

Must run without TRITON_INTERPRET=1: under the interpreter `@triton.jit` yields a Python
function that cannot be compiled.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from srtrt import atomic

from . import pixel_shuffle_prelu as kernel_source

DEFAULT_ARCHS = (80, 89, 90)
TRITON_DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
# Stable numbers shared with kernels/csrc/srtrt_kernels.h.
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}
# The oldest PTX ISA that Triton's output for sm_80 assembles with (CUDA 12.0 drivers);
# used for the PTX image that newer GPUs JIT-compile.
PORTABLE_PTX_VERSION = 80


@dataclass
class AotKernel:
    name: str                     # the PTX .entry
    arch: int                     # compute capability, e.g. 90
    dtype: str
    upscale: int
    channels_last: bool
    ptx: str
    cubin: bytes | None
    params: list[tuple[str, str]]  # launch arguments in order, Triton types; scratch pointers last
    num_warps: int
    shared: int                    # dynamic shared memory in bytes
    block: int                     # output elements per program
    extra: dict = field(default_factory=dict)

    @property
    def threads(self) -> int:
        return self.num_warps * 32


def _require_compiler():
    if not kernel_source.HAVE_TRITON:
        raise RuntimeError("triton is not installed (pip install 'srtrt[triton]')")
    if not hasattr(kernel_source.pixel_shuffle_prelu_kernel, "arg_names") or os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset")


def signature(dtype: str) -> dict[str, str]:
    """The kernel's runtime arguments (everything but the constexprs) with Triton types."""
    ptr = "*" + TRITON_DTYPES[dtype]
    return {"x_ptr": ptr, "alpha_ptr": ptr, "C": "i32", "H": "i32", "W": "i32",
            "total": "i32", "alpha_stride": "i32", "y_ptr": ptr}


def compile_kernel(arch: int = 90, dtype: str = "fp32", upscale: int = 2, channels_last: bool = False,
                   ptx_version: int | None = None, with_cubin: bool = True) -> AotKernel:
    """Compile one specialisation of the kernel for compute capability `arch` (no GPU needed)."""
    _require_compiler()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if dtype not in TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TRITON_DTYPES)}, not {dtype!r}")
    sig = signature(dtype)
    src = ASTSource(fn=kernel_source.pixel_shuffle_prelu_kernel, signature=sig,
                    constexprs={"R": upscale, "CHANNELS_LAST": channels_last, "BLOCK": kernel_source.BLOCK,
                                "IN_CHANNELS_LAST": False})  # TensorRT hands plugins linear (NCHW) inputs
    # The kernel has a single multiply, so FMA contraction cannot change a result; say so
    # explicitly rather than depend on Triton's changing default.
    options = {"num_warps": kernel_source.NUM_WARPS, "enable_fp_fusion": False}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    meta = compiled.metadata
    # Launchers (TensorRT's AOT path, our C library) pass null scratch pointers.
    if meta.global_scratch_size or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError("kernel unexpectedly needs scratch memory")
    name, ptx_params = ptx_entry(compiled.asm["ptx"])
    params = list(sig.items())
    params += [(f"scratch_{i}", "*i8") for i in range(len(ptx_params) - len(params))]
    return AotKernel(name=name, arch=arch, dtype=dtype, upscale=upscale, channels_last=channels_last,
                     ptx=compiled.asm["ptx"], cubin=compiled.asm.get("cubin") if with_cubin else None,
                     params=params, num_warps=meta.num_warps, shared=meta.shared,
                     block=kernel_source.BLOCK, extra={"ptx_params": ptx_params, "target": ptx_target(compiled.asm["ptx"])})


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"\.param\s+\.(\w+)")


def ptx_entry(ptx: str) -> tuple[str, list[str]]:
    """(entry name, PTX parameter types such as 'u64', 'u32') of the single kernel in `ptx`."""
    found = _ENTRY.findall(ptx)
    if len(found) != 1:
        raise ValueError(f"expected one .entry in the PTX, found {len(found)}")
    name, body = found[0]
    return name, _PARAM.findall(body)


def ptx_target(ptx: str) -> str:
    """The `.target` line's architecture, e.g. 'sm_90a' (arch-specific) or 'sm_80'."""
    m = re.search(r"^\s*\.target\s+(\w+)", ptx, re.M)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------------------
# C source for the library (see CMakeLists.txt)

def _c_bytes(data: bytes) -> str:
    rows = (", ".join(str(b) for b in data[i:i + 24]) for i in range(0, len(data), 24))
    return ",\n    ".join(rows)


def library_images(archs, dtypes, upscales, layouts) -> list[tuple[str, AotKernel, bytes]]:
    """(kind, kernel, image bytes): a cubin per arch and one portable PTX per variant."""
    images = []
    for dtype in dtypes:
        for upscale in upscales:
            for channels_last in layouts:
                for arch in archs:
                    k = compile_kernel(arch, dtype, upscale, channels_last)
                    images.append(("cubin", k, k.cubin))
                # Newer GPUs JIT this one; NUL-terminated as the CUDA loader expects of PTX.
                k = compile_kernel(min(archs), dtype, upscale, channels_last,
                                   ptx_version=PORTABLE_PTX_VERSION, with_cubin=False)
                images.append(("ptx", k, k.ptx.encode() + b"\0"))
    return images


def write_images_c(path: Path, images) -> Path:
    """The generated table of kernel images that kernels/csrc/pixel_shuffle_prelu_launcher.c walks."""
    parts = ["/* Generated by `python -m srtrt.kernels.aot` from kernels/pixel_shuffle_prelu.py. */",
             '#include "srtrt_kernel_images.h"', ""]
    rows = []
    for i, (kind, k, data) in enumerate(images):
        parts.append(f"static const unsigned char image_{i}[] = {{\n    {_c_bytes(data)}\n}};")
        rows.append(f"    {{{DTYPE_CODES[k.dtype]}, {k.upscale}, {int(k.channels_last)}, {k.arch}, "
                    f"{1 if kind == 'ptx' else 0}, image_{i}, sizeof(image_{i}), \"{k.name}\", "
                    f"{k.threads}, {k.shared}, {k.block}}},")
    parts += ["", "const srtrt_kernel_image srtrt_pixel_shuffle_prelu_images[] = {", *rows, "};",
              f"const int srtrt_pixel_shuffle_prelu_image_count = {len(images)};", ""]
    atomic.write_text(path, "\n".join(parts))
    return path


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.split(r"[;,\s]+", text.strip()) if v]


def _names(text: str) -> list[str]:
    return [v for v in re.split(r"[;,\s]+", text.strip()) if v]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m srtrt.kernels.aot", description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--out", required=True, help="C file to write")
    ap.add_argument("--archs", default=";".join(map(str, DEFAULT_ARCHS)))
    ap.add_argument("--dtypes", default="fp32;fp16;bf16")
    ap.add_argument("--upscales", default="2")
    ap.add_argument("--layouts", default="nchw;nhwc", help="output memory orders")
    args = ap.parse_args(argv)
    layouts = [{"nchw": False, "nhwc": True}[v] for v in _names(args.layouts)]
    images = library_images(_ints(args.archs), _names(args.dtypes), _ints(args.upscales), layouts)
    out = write_images_c(Path(args.out), images)
    print(f"wrote {out} ({len(images)} kernel images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
