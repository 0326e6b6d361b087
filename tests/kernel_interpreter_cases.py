"""Runs the Triton kernel under TRITON_INTERPRET=1 on the CPU and prints one JSON result per
case. tests/test_kernel.py starts it in a process of its own, because the interpreter must
be switched on before triton is imported.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

import torch

from srtrt.kernels import pixel_shuffle_prelu as k

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# input order + output order: nchw/nhwc read an NCHW input; cl* read a channels_last one in place
LAYOUTS = {"nchw": (False, False), "nhwc": (False, True), "clnhwc": (True, True), "clnchw": (True, False)}


def case_ids():
    for r, dtype, layout, slope in itertools.product((2, 3, 4), DTYPES, LAYOUTS, ("shared", "channel")):
        yield f"r{r}-{dtype}-{layout}-{slope}"
    # Several programs, the last one partly masked.
    for r in (2, 3, 4):
        yield f"r{r}-fp32-nchw-channel-large"
        yield f"r{r}-fp16-nhwc-shared-large"
        yield f"r{r}-fp16-clnhwc-channel-large"
    # A batch past the int32 index limit (lowered here) runs as several launches.
    for layout in ("nchw", "clnhwc"):
        yield f"r2-fp32-{layout}-channel-split"


def run_case(case: str, seed: int) -> dict:
    r_, dtype_, layout, slope, *size = case.split("-")
    r, dtype = int(r_[1:]), DTYPES[dtype_]
    in_channels_last, out_channels_last = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    if size == ["large"]:
        n, c, h, w = 1, 3, 33 // r + 7, 17
    elif size == ["split"]:
        n, c, h, w = 5, 3, 5, 7
    else:
        n, c, h, w = (int(v) for v in torch.randint(1, 4, (4,), generator=g))
        h, w = 2 * h - 1, 2 * w + 1  # odd sizes
    x = torch.randn(n, c * r * r, h, w, generator=g)
    x[x.abs() < 0.1] = 0.0  # exact zeros take the non-negative branch
    x = x.to(dtype)
    if in_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    alpha = (torch.rand(1 if slope == "shared" else c, generator=g) - 0.3).to(dtype)
    out = k.empty_output(x, r, channels_last=out_channels_last).fill_(float("nan"))
    limit = k.INDEX_LIMIT
    if size == ["split"]:
        k.INDEX_LIMIT = 2 * out[:1].numel() + 1  # two images a launch: launches of 2, 2 and 1
    grids = []

    class CountedKernel:  # the kernel, noting each launch's grid
        def __getitem__(self, grid):
            grids.append(grid)
            return k.pixel_shuffle_prelu_kernel[grid]

    try:
        k.launch(CountedKernel(), x, alpha, r, out)
    finally:
        k.INDEX_LIMIT = limit
    # The kernel computes in fp32 and rounds once; so does this reference.
    unrounded = k.reference(x.float(), alpha.float(), r)
    exact = unrounded.to(dtype)
    native = k.reference(x, alpha, r)
    rel = (out.float() - unrounded).abs() / unrounded.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return {
        "case": case,
        "shape": list(out.shape),
        "layout_ok": (out.is_contiguous(memory_format=torch.channels_last) if out_channels_last else out.is_contiguous())
                     and k.is_channels_last(x) == in_channels_last,  # the input was read in its own order
        "unwritten": int(torch.isnan(out).sum()),
        "launches": len(grids),
        "max_err_exact": float((out.float() - exact.float()).abs().max()),
        "max_err_native": float((out.float() - native.float()).abs().max()),
        "max_rel_err_fp32": float(rel.max()),
    }


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (set before triton is imported)")
    for i, case in enumerate(case_ids()):
        print(json.dumps(run_case(case, seed=i)), flush=True)
    # The convenience wrapper allocates the output itself.
    x, alpha = torch.randn(1, 8, 3, 5), torch.rand(2)
    y = k.pixel_shuffle_prelu(x, alpha, 2, channels_last=True)
    print(json.dumps({"case": "wrapper", "max_err_exact": float((y - k.reference(x, alpha, 2)).abs().max()),
                      "layout_ok": y.is_contiguous(memory_format=torch.channels_last), "unwritten": 0,
                      "max_err_native": 0.0, "max_rel_err_fp32": 0.0, "shape": list(y.shape)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
