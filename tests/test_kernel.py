"""The fused pixel-shuffle + PReLU kernel and its torch op.

Kernel numerics run under TRITON_INTERPRET=1 in a child process (the interpreter must be on
before triton is imported; this process keeps triton compiled-mode for tests/test_aot.py).
The op's CPU path, the model fusion and the no-triton import run here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from srtrt.kernels import pixel_shuffle_prelu as kernel_source

from conftest import random_view

HERE = Path(__file__).resolve().parent
HAVE_TRITON = importlib.util.find_spec("triton") is not None
sys.path.insert(0, str(HERE))
import kernel_interpreter_cases as cases  # noqa: E402  (only its case list; it asserts nothing at import)

CASES = [*cases.case_ids(), "wrapper"]


@pytest.fixture(scope="module")
def interpreted():
    if not HAVE_TRITON:
        pytest.skip("triton is not installed (pip install 'srtrt[triton]')")
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_DEFAULT_FP_FUSION": "0"}
    proc = subprocess.run([sys.executable, str(HERE / "kernel_interpreter_cases.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["case"]: r for r in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_and_writes_every_element(interpreted, case):
    r = interpreted[case]
    assert r["unwritten"] == 0, r          # the output was NaN-filled before the launch
    assert r["layout_ok"], r
    assert r.get("launches", 1) == (3 if case.endswith("-split") else 1), r  # 5 images, 2 a launch
    if "-bf16-" in case:
        # The interpreter rounds fp32 -> bf16 towards zero (GPUs round to nearest even),
        # so allow the last bf16 bit: relative error below 2**-7.
        assert r["max_rel_err_fp32"] <= 2.0 ** -7, r
    else:
        assert r["max_err_exact"] == 0.0, r
        assert r["max_err_native"] == 0.0, r


def test_reference_is_pixel_shuffle_then_prelu_module():
    x = torch.randn(2, 18, 5, 3)
    act = torch.nn.PReLU(2)
    act.weight.data = torch.tensor([0.1, -0.4])
    expected = act(torch.nn.PixelShuffle(3)(x))
    assert torch.equal(kernel_source.reference(x, act.weight.data, 3), expected)
    assert torch.equal(kernel_source.reference(x, torch.tensor([0.3]), 3),
                       F.prelu(F.pixel_shuffle(x, 3), torch.tensor([0.3])))


def test_output_shape_refuses_bad_channels():
    with pytest.raises(ValueError, match="divisible"):
        kernel_source.output_shape((1, 6, 4, 4), 2)


def test_torch_op_cpu_falls_back_to_reference():
    from srtrt.kernels import torch_op  # noqa: F401  (registers the op)

    x, alpha = torch.randn(2, 16, 5, 7), torch.rand(4)
    y = torch.ops.srtrt.pixel_shuffle_prelu(x, alpha, 2)
    assert torch.equal(y, kernel_source.reference(x, alpha, 2))


def test_fuse_upsample_keeps_results_and_weights():
    from srtrt.kernels.torch_op import FusedUpsampleBlock, fuse_upsample

    view = random_view(blocks=2, channels=16)
    fused = fuse_upsample(view)
    assert fused is not view and (fused.scale, fused.radius) == (view.scale, view.radius)
    assert sum(isinstance(m, FusedUpsampleBlock) for m in fused.modules()) == 2
    assert fused.state_dict().keys() == view.state_dict().keys()
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(fused(x), view(x))


def test_torch_export_keeps_the_fused_op_as_one_node():
    from srtrt.kernels.torch_op import fuse_upsample

    fused = fuse_upsample(random_view(blocks=0, channels=8))
    program = torch.export.export(fused, (torch.rand(1, 3, 8, 8),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("srtrt.pixel_shuffle_prelu.default") == 2
    assert not any("pixel_shuffle.default" in t and "srtrt" not in t for t in targets)


def test_torch_op_imports_and_runs_without_triton():
    # `sys.modules["triton"] = None` makes `import triton` fail as on a machine without it.
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from srtrt.kernels import pixel_shuffle_prelu as k, torch_op\n"
            "assert not k.HAVE_TRITON\n"
            "x, a = torch.randn(1, 8, 3, 3), torch.rand(2)\n"
            "assert torch.equal(torch.ops.srtrt.pixel_shuffle_prelu(x, a, 2), k.reference(x, a, 2))\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
