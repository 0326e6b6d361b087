"""Community super-resolution model files (.pth, .ckpt, .pt, .safetensors from the model zoos),
read through spandrel and reduced to plain facts: the module, scale, channels, size requirements,
precisions and whether tiling can be exact. Every failure is one SrtrtError line.

No file's code ever runs: pickles are read with torch's weights-only unpickler (a pickle that
names anything but tensors and plain containers is refused; the protocol-4 opcodes it lacks go to
spandrel's restricted unpickler, which allows fewer globals still), TorchScript is refused, and
safetensors holds no code. Architectures from spandrel_extra_arches (non-commercial licences)
are detected only when the caller opts in with `allow_noncommercial=True`.

The module is spandrel's network, run once at load on a small random image to check the scale
and channels spandrel reports; it is wrapped only where spandrel runs it through a call function
(an extra noise-level plane, a tuple output) or where it writes into its input tensor.

`global_operations` is True when some output pixel may depend on input pixels arbitrarily far
away, or on where the image's edges and window grid fall, so that tiling cannot be exact:
spandrel discourages tiling or tiles internally; or the network holds an adaptive pooling layer
(global average/max pooling, channel attention) or a module whose class name says attention,
Swin or transformer (window and channel self-attention); or the architecture does such an
operation in its forward code rather than in a module (_FUNCTIONAL_GLOBAL). The rule errs
towards True: a False model is a convolution stack whose receptive field is bounded.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .checkpoint import FORMAT as SRTRT_FORMAT
from .checkpoint import file_sha256
from .engine.datapath.tiles import allowed_side
from .errors import SrtrtError

SUFFIXES = (".pth", ".ckpt", ".pt", ".safetensors")
SCALES = range(1, 9)
CHANNELS = (1, 3)  # grey or RGB; srtrt upscales an alpha channel on its own
NONCOMMERCIAL_HINT = ("non-commercial architectures need --allow-noncommercial and "
                      "`pip install spandrel_extra_arches`")

# Architectures whose global operations sit in forward() code, invisible to a module walk:
# RealCUGAN's squeeze-excitation means over H and W, DITN's attention over all pixels, FFTs.
_FUNCTIONAL_GLOBAL = frozenset({"RealCUGAN", "DITN", "FFTformer", "LaMa"})
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_GLOBAL_NAMES = ("attention", "attn", "swin", "transformer")
_PURPOSES = {"FaceSR": "a face restoration model", "Inpainting": "an inpainting model"}
# what load() refuses for any file of theirs (faces, inpainting, square inputs only), by spandrel's name
REFUSED_FAMILIES = frozenset({"GFPGAN", "RestoreFormer", "CodeFormer", "LaMa", "MAT", "Uformer"})

SUPPORTED_FAMILIES: str  # e.g. "ATD, AuraSR, ..., Swin2SR, SwinIR"; computed on first use (module __getattr__)


@dataclass(frozen=True)
class CommunityModel:
    module: nn.Module            # eval mode, CPU, fp32; NCHW [0,1] -> NCHW, not clamped, not padded
    architecture_id: str
    architecture_name: str
    tags: tuple[str, ...]
    scale: int
    input_channels: int
    output_channels: int
    supports_half: bool
    supports_bfloat16: bool
    minimum: int                 # smallest side in LR pixels (1 if none)
    multiple_of: int             # both sides a multiple of this (1 if none)
    square: bool
    tiling: str                  # spandrel's hint: "supported" | "discouraged" | "internal"
    purpose: str                 # "SR" or "Restoration" (scale 1)
    global_operations: bool      # the module docstring's rule
    sha256: str                  # of the file's bytes


class _ImageToImage(nn.Module):
    """The network, run the way spandrel runs it (some add a noise-level plane or unpack a tuple
    in a call function) and, where it writes into its input (RCAN scales it in place), on a copy."""

    def __init__(self, model: nn.Module, call=None, copy_input: bool = False):
        super().__init__()
        self.model = model
        self._call = call
        self._copy_input = copy_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._copy_input:
            x = x.clone()
        return self._call(self.model, x) if self._call is not None else self.model(x)


def is_community_file(path: str | os.PathLike) -> bool:
    """A model file srtrt reads through spandrel: a pickle (.pth, .ckpt, .pt: srtrt writes none), or
    a .safetensors with no srtrt sidecar (NAME.json of format srtrt-checkpoint) beside it; srtrt's own
    checkpoints have one. (A .pth beside an srtrt checkpoint of the same name is the .pth.)"""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        return False
    if p.suffix.lower() != ".safetensors":
        return True
    sidecar = p.with_suffix(".json")
    try:
        data = sidecar.read_bytes()
    except OSError:
        return True
    try:
        doc = json.loads(data)
        return not (isinstance(doc, dict) and doc.get("format") == SRTRT_FORMAT)
    except (UnicodeDecodeError, json.JSONDecodeError):
        # A damaged srtrt sidecar still belongs to srtrt, whose loader says what is wrong with it.
        return f'"{SRTRT_FORMAT}"'.encode() not in data


def load(path: str | os.PathLike, allow_noncommercial: bool = False) -> CommunityModel:
    """Read a community model file and describe it; refuse, in one line, anything srtrt cannot
    run as image-to-image super-resolution (or scale-1 restoration) on grey or RGB pixels."""
    spandrel = _spandrel(path)
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise SrtrtError(f"not a community model file (expected {', '.join(SUFFIXES)})", path)
    if not p.is_file():
        raise SrtrtError("model file not found", path)
    state = read_state_dict(p)
    registry = _registry(allow_noncommercial)
    try:
        state = spandrel.canonicalize_state_dict(state)  # unwraps params_ema, state_dict, "module." prefixes
        support = next((s for s in registry.architectures("detection") if s.detect(state)), None)
    except Exception as e:  # third-party detection code fed an untrusted file
        raise SrtrtError(f"not a model spandrel can read ({_first_line(e)})", path) from None
    if support is None:
        raise SrtrtError(_no_match(state, allow_noncommercial), path)
    name = support.architecture.name
    try:
        with warnings.catch_warnings():  # constructors' own notes (meshgrid indexing, zero-element inits): noise here
            warnings.simplefilter("ignore")
            descriptor = spandrel.ModelLoader(device="cpu", registry=registry).load_from_state_dict(state)
    except Exception as e:  # size mismatches, missing keys, failed asserts: all say the file is bad
        raise SrtrtError(f"looks like {name}, but its weights do not load ({_first_line(e)})", path) from None

    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        what = _PURPOSES.get(descriptor.purpose, f"a {descriptor.purpose} model")
        raise SrtrtError(f"is {what} ({name}: {type(descriptor).__name__}, more than an image in), not super-resolution", path)
    if descriptor.purpose not in ("SR", "Restoration"):
        what = _PURPOSES.get(descriptor.purpose, f"a {descriptor.purpose} model")
        raise SrtrtError(f"is {what} ({name}), not super-resolution", path)
    if descriptor.scale not in SCALES:
        raise SrtrtError(f"{name} model of scale {descriptor.scale}: srtrt runs scales 1 to 8", path)
    if descriptor.input_channels != descriptor.output_channels or descriptor.input_channels not in CHANNELS:
        raise SrtrtError(f"{name} model maps {descriptor.input_channels} channels to {descriptor.output_channels}: "
                         "srtrt runs grey (1 -> 1) and RGB (3 -> 3) models", path)

    size = descriptor.size_requirements
    if size.square:  # Uformer: tiles of a non-square image would have to be square too, and they are not
        raise SrtrtError(f"{name} takes square inputs only; srtrt's tiles follow the image's shape", path)
    return CommunityModel(
        module=_image_to_image(descriptor, spandrel, p),
        architecture_id=str(descriptor.architecture.id),
        architecture_name=name,
        tags=tuple(descriptor.tags),
        scale=descriptor.scale,
        input_channels=descriptor.input_channels,
        output_channels=descriptor.output_channels,
        supports_half=descriptor.supports_half,
        supports_bfloat16=descriptor.supports_bfloat16,
        minimum=max(1, size.minimum),
        multiple_of=size.multiple_of,
        square=size.square,
        tiling=descriptor.tiling.name.lower(),
        purpose=descriptor.purpose,
        global_operations=_global_operations(descriptor, spandrel),
        sha256=file_sha256(p),
    )


def _image_to_image(descriptor, spandrel, path: Path) -> nn.Module:
    """descriptor.model in fp32 eval mode, wrapped only where it needs spandrel's call function or
    writes into its input; one run on a small random image checks the scale and channels it claims."""
    model = descriptor.model.to(device="cpu", dtype=torch.float32).eval()
    call = getattr(descriptor, "_call_fn", None)
    if call is not None and call.__module__ == spandrel.ImageModelDescriptor.__module__:
        call = None  # spandrel's default, model(image)
    name, size, scale = descriptor.architecture.name, descriptor.size_requirements, descriptor.scale
    n = allowed_side(8, size.multiple_of, size.minimum)
    x = torch.rand(1, descriptor.input_channels, n, n, generator=torch.Generator().manual_seed(0))
    probe = x.clone()
    try:
        with torch.no_grad():
            y = call(model, probe) if call is not None else model(probe)
    except Exception as e:  # the network's own code on the weights this file gave it
        raise SrtrtError(f"{name} model fails on a {n}x{n} test image ({_first_line(e)})", path) from None
    expected = (1, descriptor.output_channels, n * scale, n * scale)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SrtrtError(f"{name} model gives {got} for a {n}x{n} image, not the {expected} its scale and "
                         "channels say", path)
    if not torch.isfinite(y).all():  # NaN weights: every image would come out black, silently
        raise SrtrtError(f"{name} model gives NaN or infinite values for a {n}x{n} test image (broken weights)", path)
    copy_input = not torch.equal(x, probe)
    return _ImageToImage(model, call, copy_input).eval() if call is not None or copy_input else model


def _spandrel(path=None):
    try:
        with warnings.catch_warnings():  # its architectures' import-time notes (torch.jit.script deprecation)
            warnings.simplefilter("ignore")
            import spandrel
    except ImportError:
        raise SrtrtError("reading community model files needs spandrel (pip install spandrel)", path) from None
    return spandrel


def _first_line(e: BaseException) -> str:
    """The cause in one short line: the first sentence, with the detail a "...:" heading announces
    (load_state_dict's "Error(s) in loading state_dict for X:" says what below it)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text.split(". ")[0]


def read_state_dict(path: Path) -> Mapping:
    """A weights file's tensors (safetensors, or a pickle through the restricted unpickler: never executed)."""
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SrtrtError(f"corrupt or truncated model file ({_first_line(e)})", path) from None
    if _is_torchscript(path):
        raise SrtrtError("TorchScript files are not supported (loading one runs its code); "
                         "save the model's state dict as .safetensors or .pth", path)
    try:
        state = _unpickled(path)
    except pickle.UnpicklingError as e:
        # Both unpicklers name the first global outside their allow-lists.
        named = re.search(r"GLOBAL ([\w.]+)|Global '([\w.]+)' is forbidden", str(e))
        if named:
            raise SrtrtError(f"refused: the file's pickle names {named[1] or named[2]}, which is not weights "
                             "(only tensors and plain containers are read; save a state dict)", path) from None
        raise SrtrtError(f"corrupt or truncated model file ({_unpickling_cause(e)})", path) from None
    # what torch's readers raise on damaged bytes: a legacy .pth cut in its header (struct.error), one whose
    # storage list names a key its data never defined (AssertionError)
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            struct.error, AssertionError) as e:
        raise SrtrtError(f"corrupt or truncated model file ({_first_line(e)})", path) from None
    if not isinstance(state, Mapping):
        raise SrtrtError(f"holds a {type(state).__name__}, not a state dict", path)
    return state


def _unpickled(path: Path):
    """The file's pickle through torch's weights-only unpickler, or, for an opcode that one lacks
    (protocol 4's FRAME: `torch.save(..., pickle_protocol=4)`), through spandrel's restricted one,
    which reads every protocol and refuses any global but the tensor-rebuilding few. Neither runs code."""
    with warnings.catch_warnings():  # torch warns about protocol 4 before failing on it: one line is ours to say
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Unsupported operand" not in str(e):
                raise
            from spandrel.__helpers.unpickler import RestrictedUnpickle

            try:
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=RestrictedUnpickle)
            except pickle.UnpicklingError:
                raise  # a forbidden global, named
            except Exception as e:  # bytes read as a pickle: lengths past any size (OverflowError), bad opcodes
                raise pickle.UnpicklingError(f"{type(e).__name__}: {e}") from None


def _unpickling_cause(e: pickle.UnpicklingError) -> str:
    # torch's weights-only message is paragraphs of advice; the cause is its last specific line.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation",
                                                               "In PyTorch", "Please file", "(1)", "(2)"))]
    return (specific or lines or ["unreadable pickle"])[-1].removeprefix("WeightsUnpickler error: ")


def _is_torchscript(path: Path) -> bool:
    # torch.load would hand a TorchScript archive to torch.jit.load; its records include constants.pkl.
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):  # a zip version torch reads, zipfile not
        return False


@lru_cache(maxsize=2)
def _registry(allow_noncommercial: bool):
    """A fresh registry of spandrel's own architectures (plus the extra ones when opted in and
    installed); spandrel's MAIN_REGISTRY is shared, and others may have installed extras into it."""
    spandrel = _spandrel()
    registry = spandrel.ArchRegistry()
    registry.add(*_own(spandrel.MAIN_REGISTRY))
    extra = _extra_registry() if allow_noncommercial else None
    if extra is not None:
        registry.add(*extra, ignore_duplicates=True)
    return registry


def _own(registry) -> list:
    return [s for s in registry if type(s.architecture).__module__.split(".")[0] == "spandrel"]


def _extra_registry():
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        return None
    return EXTRA_REGISTRY


def _families(registry) -> str:
    """The architectures srtrt runs, by name: spandrel's, less those refused at load whatever the file."""
    return ", ".join(sorted({s.architecture.name for s in registry} - REFUSED_FAMILIES, key=str.lower))


def _no_match(state: Mapping, allow_noncommercial: bool) -> str:
    extra = _extra_registry()
    if not allow_noncommercial and extra is not None:
        for s in extra:
            try:
                if s.detect(state):
                    return (f"is a {s.architecture.name} model, a non-commercial architecture "
                            "(spandrel_extra_arches): pass --allow-noncommercial to load it")
            except Exception:  # a detector failing on this file is no match
                continue
    families = _families(_registry(allow_noncommercial))
    if allow_noncommercial and extra is not None:
        return f"no supported architecture matches this file (supported: {families})"
    hint = NONCOMMERCIAL_HINT if not allow_noncommercial else \
        "non-commercial architectures need `pip install spandrel_extra_arches`"
    return f"no supported architecture matches this file (supported: {families}; {hint})"


def _global_operations(descriptor, spandrel) -> bool:
    if descriptor.tiling is not spandrel.ModelTiling.SUPPORTED:
        return True
    if str(descriptor.architecture.id) in _FUNCTIONAL_GLOBAL:
        return True
    return any(isinstance(m, _GLOBAL_POOLS) or any(part in type(m).__name__.lower() for part in _GLOBAL_NAMES)
               for m in descriptor.model.modules())


def __getattr__(name: str):
    if name == "SUPPORTED_FAMILIES":
        try:
            import spandrel
        except ImportError:
            return "none (spandrel is not installed)"
        return _families(_own(spandrel.MAIN_REGISTRY))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
