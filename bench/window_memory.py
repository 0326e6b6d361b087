"""What one OpenVINO window really holds, against the figure the backend sizes windows by.

For a model and precision, each case runs in a process of its own: the backend infers one small
window (24 px, which compiles what that path needs), then one window of SIDE px, and the
process's peak resident memory (VmHWM) before and after that window is read. The growth per LR
pixel between two sides is what one more pixel of window costs there -- weights and start-up
cancel out -- and is printed beside `OpenVinoBackend.window_memory()`: the static figure for a
model compiled per shape, the dynamic one for the dynamic-shape model (both with the window's
input and output tensors, as the growth has them).

    python bench/window_memory.py [--model FILE] [--precision int8] [--sides 128 256]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import machine_info

_CASE = """
import json, sys, torch
from srtrt.engine.backends import create_backend

model, precision, path, side = json.loads(sys.argv[1])

def peak() -> int:
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) * 1024

backend = create_backend("openvino", model=model, precision=precision).backend
if path == "dynamic":
    backend.dynamic_pixels = 10**12  # every window on the dynamic-shape model
else:
    backend.dynamic_pixels = 0  # every window on a model compiled for its shape
backend.infer(torch.rand(1, backend.channels, 24, 24))
before = peak()
backend.infer(torch.rand(1, backend.channels, side, side))
print(json.dumps({"growth": peak() - before, "figures": backend.window_memory()._asdict()}))
"""


def growth(model: str | None, precision: str, path: str, side: int) -> tuple[int, dict[str, int]]:
    done = subprocess.run([sys.executable, "-c", _CASE, json.dumps([model, precision, path, side])],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["growth"], result["figures"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--model", help="a model file (default: srtrt's embedded model)")
    parser.add_argument("--precision", default="int8", choices=["int8", "bf16", "fp32"])
    parser.add_argument("--sides", type=int, nargs=2, default=[128, 256], metavar=("SMALL", "LARGE"))
    args = parser.parse_args()
    small, large = args.sides
    print(f"cpu: {machine_info.cpu_info().get('name')}; {args.model or 'default model'}, {args.precision}")
    for path in ("static", "dynamic"):  # WindowMemory's fields
        low, figures = growth(args.model, args.precision, path, small)
        high, _ = growth(args.model, args.precision, path, large)
        measured = (high - low) / (large**2 - small**2)
        print(f"{path:8s} measured {measured:8.0f} B per LR pixel, figure {figures[path]:6d} B "
              f"({figures[path] / measured:.2f} of measured)")


if __name__ == "__main__":
    main()
