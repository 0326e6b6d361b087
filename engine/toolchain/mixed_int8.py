"""Which convolutions of a community model stay in float so that its int8 keeps to the agreement guard.

int8 moves a network's output by the rounding of every quantised conv input and weight, and a few
convs can cost most of it: those whose error the layers after them amplify. srtrt's own models
were judged conv set and all on Set5; a community model is judged by agreement with its own fp32
output (engine/backends/agreement.py), so `srtrt calibrate` looks for the convs to leave out:

1. the int8 graph is simulated in torch (fake quantisation with quantize.py's own uint8 per-tensor
   activation and int8 per-channel weight parameters: what the QDQ graph computes, up to op order)
   on centre crops of the calibration photos and on photo-like content of seeds the guard does not
   use, and compared with fp32 (the worst image counts, as the guard judges one);
2. if it falls short of the guard plus MARGIN_DB, each conv's share of the output error is
   estimated in one backward pass per image: its rounding noise (scale^2 / 12 per value) times the
   squared gradient of the output, projected on a random direction, with respect to that conv's
   input and weights (an unbiased estimate of the sensitivity; ranks as dropping each conv in turn
   does, at a fraction of the cost);
3. the convs with the largest shares go back to float, just enough by the estimate scaled to the
   simulated error, and the simulation runs again, until it agrees. More than half the convs in
   float is not int8 worth having: the ranges are then kept whole and the guard refuses them.

The guard still judges the result itself, on its own reference content, through OpenVINO.
"""
from __future__ import annotations

import copy
import math
import sys

import torch
from torch import nn

MARGIN_DB = 0.5       # above the guard: the simulation is on other content than the guard's
SELECTION_PHOTOS = 4  # calibration photos simulated, beside REFERENCE_SEEDS of photo-like content
REFERENCE_SEEDS = (1, 2, 3)  # the guard measures on seed 0, at the same side (its content agrees less
                             # at 96 than at 64 LR pixels: 42.6-44.3 dB against 42.6-45.5 for one Compact)


def selection_target(agreement_db: float) -> float:
    """The agreement the simulation asks for (dB): the guard's, plus the margin."""
    return round(agreement_db + MARGIN_DB, 2)


def selection_images(images: list[torch.Tensor], channels: int, multiple_of: int = 1,
                     minimum: int = 1) -> list[torch.Tensor]:
    """Centre crops of the first calibration photos and photo-like content the guard does not see."""
    from srtrt import zoo
    from srtrt.engine.backends.agreement import reference_side

    side = reference_side(multiple_of, minimum)
    crops = []
    for x in images[:SELECTION_PHOTOS]:
        h, w = (min(s, side) // multiple_of * multiple_of for s in x.shape[-2:])
        if min(h, w) >= max(minimum, 1):
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
            crops.append(x[..., top:top + h, left:left + w])
    return crops + [zoo.reference_image(side, channels, multiple_of, seed) for seed in REFERENCE_SEEDS]


def fake_quantized(generator: nn.Module, ranges: dict) -> nn.Module:
    """A copy of `generator` whose calibrated convs read their input and weights rounded as in int8."""
    from srtrt.engine.toolchain.quantize import activation_qparams, weight_qparams

    generator = copy.deepcopy(generator)
    modules = dict(generator.named_modules())
    for name, (lo, hi) in ranges.items():
        conv = modules[name]
        q, scale = weight_qparams(conv.weight.detach().numpy())
        conv.weight.data = torch.from_numpy(q).float() * torch.from_numpy(scale).view(-1, *[1] * (q.ndim - 1))
        step, zero = (float(v) for v in activation_qparams(lo, hi))
        conv.register_forward_pre_hook(
            lambda _m, inputs, step=step, zero=zero: ((inputs[0] / step + zero).round().clamp(0, 255) - zero) * step)
    return generator


def _mse(view, generator: nn.Module, images: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    """The worst image's: the guard judges one image, not an average. NaN (an overflow) is the worst
    there is, as the guard's psnr counts it; max() would keep or drop it by its place in the list."""
    network = view.with_generator(generator).eval()
    with torch.inference_mode():
        errors = [((network(x).clamp(0, 1) - ref.clamp(0, 1)) ** 2).mean().item() for x, ref in zip(images, references)]
    return max(math.inf if math.isnan(e) else e for e in errors)


def error_shares(view, generator: nn.Module, ranges: dict, images: list[torch.Tensor]) -> dict[str, float]:
    """Each calibrated conv's estimated contribution to the int8 output's squared error (step 2)."""
    from srtrt.engine.toolchain.quantize import activation_qparams, weight_qparams

    generator = copy.deepcopy(generator).requires_grad_(False)
    modules = dict(generator.named_modules())
    network = view.with_generator(generator).eval()
    shares = dict.fromkeys(ranges, 0.0)
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(_module, inputs):
            x = inputs[0]  # a node of its own: the gradient through this conv only (a leaf where nothing before needs one)
            seen[name] = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            return (seen[name],)
        return hook

    noise = {}
    for name, (lo, hi) in ranges.items():
        step = float(activation_qparams(lo, hi)[0])
        _, weight_scale = weight_qparams(modules[name].weight.numpy())
        noise[name] = (step * step / 12, torch.from_numpy(weight_scale) ** 2 / 12)
        modules[name].weight.requires_grad_(True)
    hooks = [modules[name].register_forward_pre_hook(keep_input(name)) for name in ranges]
    probe = torch.Generator().manual_seed(0)
    try:
        with torch.enable_grad():
            for x in images:
                seen.clear()
                out = network(x.clone())  # a plain tensor, whatever mode made `x`
                direction = torch.randn(out.shape, generator=probe)
                names = list(seen)
                grads = torch.autograd.grad(out, [seen[n] for n in names] + [modules[n].weight for n in names],
                                            direction)
                for i, name in enumerate(names):
                    activation_noise, weight_noise = noise[name]
                    by_channel = (grads[len(names) + i] ** 2).flatten(1).sum(1)
                    shares[name] += activation_noise * (grads[i] ** 2).sum().item() + (weight_noise * by_channel).sum().item()
    finally:
        for hook in hooks:
            hook.remove()
    return shares


def keep_in_float(view, generator: nn.Module, ranges: dict, images: list[torch.Tensor], agreement_db: float) -> dict:
    """Steps 1-3 for a calibration's `ranges` (conv -> input range) of the folded `generator`:
    {"ranges": those that stay int8, "float": convs moved back, "simulated_db", "target_db"}."""
    with torch.inference_mode():
        fp32 = view.with_generator(generator).eval()
        references = [fp32(x) for x in images]
    target = selection_target(agreement_db)
    wanted = 10 ** (-target / 10)
    whole = mse = _mse(view, fake_quantized(generator, ranges), images, references)
    remaining, floated = dict(ranges), []
    if mse > wanted:  # the ranking takes a backward pass per image: minutes for a 23-block RRDBNet on 2 cores
        print(f"srtrt: int8 in every conv simulates to {_db(mse):.1f} dB against the {target:.1f} wanted: "
              f"ranking the {len(ranges)} convs by their share of the error", file=sys.stderr)
        shares = error_shares(view, generator, ranges, images)
        order = sorted(ranges, key=lambda n: -shares[n])
        limit = len(ranges) // 2
        while mse > wanted and order and len(floated) < limit:
            scale = mse / max(sum(shares[n] for n in remaining), 1e-30)  # the estimate, in the worst image's units
            while order and len(floated) < limit:  # at least one, then as many as the estimate asks
                name = order.pop(0)
                del remaining[name]
                floated.append(name)
                if scale * sum(shares[n] for n in remaining) <= wanted:
                    break
            mse = _mse(view, fake_quantized(generator, remaining), images, references)
        if mse > wanted:  # out of reach with half the convs in float: left whole, for the guard to refuse
            remaining, floated, mse = dict(ranges), [], whole
    return {"ranges": remaining, "float": floated, "simulated_db": round(_db(mse), 2), "target_db": target}


def _db(mse: float) -> float:
    return math.inf if mse <= 0 else -10 * math.log10(mse)
