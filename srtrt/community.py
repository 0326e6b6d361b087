"""Community super-resolution model files (.pth, .ckpt, .pt, .safetensors from the model zoos),
read through spandrel and reduced to plain facts: the module, scale, channels, size requirements,
precisions and whether tiling can be exact. Every failure is one SrtrtError line.

Only regular files are read (a FIFO would block, a link to /dev/zero never end), and no memory is
spent on what a file only claims: a zip checkpoint's records are checked against the file's size
before torch inflates them, and spandrel builds a network under a budget its file's weights set.

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

import io
import json
import os
import pickle
import pickletools
import re
import struct
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import bounded_read
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

# srtrt writes sidecars of a few KB; of a longer NAME.json only this much is read to tell whose it is
SIDECAR_LIMIT = 1 << 20
# torch.save stores zip records uncompressed, so a checkpoint's records add up to about its size; weights
# deflate little, so records declaring many times the file's size are a zip bomb (or damage)
ZIP_INFLATION = 8
# While spandrel builds a network, the tensors it holds may reach this many times the file's weights (as fp32)
# plus a slack (attention masks, index tables, temporaries): a loaded network holds all its file's weights
# (spandrel loads strictly), so one far larger is described by shapes and key names, not by weights.
# GRL's attention masks and index tables took 92 MiB beside 0.8 MiB of weights at a small test size, and grow
# with the window: the slack is generous, the point being a bound, not a tight one.
BUILD_FACTOR = 4
BUILD_SLACK = 1 << 30
_MIN_CHARGE = 1024  # bytes charged per tensor built: empty tensors must not buy an endless network either
_MAX_CAUSE = 300    # characters of a third-party message kept in a one-line refusal

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
    in a call function), where it writes into its input (RCAN scales it in place) on a copy, and
    where its code takes one image at a time (a noise plane built for batch 1: DRUNet, FDnCNN;
    SeemoRe's forward) image by image: srtrt batches planes and windows."""

    def __init__(self, model: nn.Module, call=None, copy_input: bool = False, one_at_a_time: bool = False):
        super().__init__()
        self.model = model
        self._call = call
        self._copy_input = copy_input
        self.one_at_a_time = one_at_a_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.one_at_a_time:
            return self._one(x)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            raise NotImplementedError("its code takes one image at a time; an exported graph takes batches")
        return torch.cat([self._one(x[i:i + 1]) for i in range(x.shape[0])])

    def _one(self, x: torch.Tensor) -> torch.Tensor:
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
        data = bounded_read.read_regular(sidecar, SIDECAR_LIMIT)
    except bounded_read.TooLarge as e:
        data = e.head  # no sidecar srtrt writes is this long: below, it is srtrt's only if it names srtrt's format
    except bounded_read.NotRegularFile:
        return True  # srtrt writes regular files; a FIFO there would block the read, a link to /dev/zero never end
    except PermissionError:
        return False  # a sidecar this process cannot read: srtrt's loader names it and the cause
    except OSError:  # none there (or a link loop)
        return True
    try:
        doc = json.loads(data)
        return not (isinstance(doc, dict) and doc.get("format") == SRTRT_FORMAT)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, an integer of 5000 digits, nesting past the stack
        # A damaged srtrt sidecar still belongs to srtrt, whose loader says what is wrong with it.
        return f'"{SRTRT_FORMAT}"'.encode() not in data


def load(path: str | os.PathLike, allow_noncommercial: bool = False) -> CommunityModel:
    """Read a community model file and describe it; refuse, in one line, anything srtrt cannot
    run as image-to-image super-resolution (or scale-1 restoration) on grey or RGB pixels."""
    spandrel = _spandrel(path)
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise SrtrtError(f"not a community model file (expected {', '.join(SUFFIXES)})", path)
    state = read_state_dict(p)
    registry = _registry(allow_noncommercial)
    try:
        state = spandrel.canonicalize_state_dict(state)  # unwraps params_ema, state_dict, "module." prefixes
    except Exception as e:  # third-party code fed an untrusted file
        raise SrtrtError(f"not a model spandrel can read ({_first_line(e)})", path) from None
    _refuse_absent_layers(state, p)
    try:
        support = next((s for s in registry.architectures("detection") if s.detect(state)), None)
    except Exception as e:  # third-party detection code fed an untrusted file
        raise SrtrtError(f"not a model spandrel can read ({_first_line(e)})", path) from None
    if support is None:
        raise SrtrtError(_no_match(state, allow_noncommercial), path)
    name = support.architecture.name
    descriptor = _built(spandrel, registry, state, name, p)

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


def _refuse_absent_layers(state: Mapping, path: Path) -> None:
    """Refuse a key numbering a layer far beyond what the file's keys could hold. spandrel sizes a
    network by the highest index in its keys (Compact: body.N), so three keys ending in body.100000000.bias
    would have it loop and build 10^8 layers; a real file holds keys for (nearly) every layer it numbers."""
    most = 4 * len(state) + 100
    for key in state:
        for part in str(key).split("."):
            number = _layer_number(part)
            if number is not None and number > most:
                shown = part if len(part) <= 12 else f"{part[:12]}... ({len(part)} digits)"
                raise SrtrtError(f"refused: a key numbers layer {shown}, but the file holds only {len(state)} tensors "
                                 f"(key {_clipped(str(key), 80)}; a crafted or damaged file)", path)


def _layer_number(part: str) -> int | None:
    # as spandrel reads body.N: int() also takes " 7", "1_000" and other scripts' digits
    if len(part) > 4300:  # int() refuses more digits; so does spandrel
        return None
    try:
        return int(part)
    except ValueError:
        return None


def _built(spandrel, registry, state: Mapping, name: str, path: Path):
    """spandrel's descriptor of the network `state` describes, built on the CPU under a memory budget
    that the file's weights set (_BuildBudget): one line when it would take more, before it does."""
    budget = _BuildBudget(_weights_bytes(state))
    try:
        with warnings.catch_warnings(), budget:  # constructors' own notes (meshgrid indexing, zero-element inits): noise
            warnings.simplefilter("ignore")
            descriptor = spandrel.ModelLoader(device="cpu", registry=registry).load_from_state_dict(state)
    except Exception as e:  # size mismatches, missing keys, failed asserts: all say the file is bad
        if not budget.exceeded:
            raise SrtrtError(f"looks like {name}, but its weights do not load ({_first_line(e)})", path) from None
    if budget.exceeded:  # also where the architecture's code swallowed the budget's exception
        raise SrtrtError(f"refused: the {name} network its shapes and key names describe takes more than "
                         f"{_size(budget.limit)}, far beyond the {_size(budget.weights)} of weights the file holds "
                         "(a crafted or damaged file)", path) from None
    return descriptor


def _weights_bytes(state: Mapping) -> int:
    # counted as fp32 at least: srtrt builds every network in fp32, whatever the file's precision
    return sum(v.numel() * max(v.element_size(), 4) for v in state.values() if isinstance(v, torch.Tensor))


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1 << 10 else f"{n / 2**10:.0f} KiB" if n < 1 << 20 else f"{n / 2**20:.1f} MiB"


class _BuildTooLarge(Exception):
    pass


class _BuildBudget(TorchDispatchMode):
    """Bounds the bytes held by the tensors made while a network is built: each op that makes new
    tensors is first run on meta tensors (shapes, no memory) and refused when its outputs would take
    the live total past `limit`; what it then allocates counts until its storage is freed. A file of
    242 bytes (zero-sized tensors, a key body.502.bias) had spandrel build and initialise 2 GB."""

    def __init__(self, weights: int):
        super().__init__()
        self.weights = weights
        self.limit = BUILD_FACTOR * weights + BUILD_SLACK
        self.exceeded = False
        self._alive = 0
        self._sizes: dict[int, int] = {}  # live storages made during the build: their bytes, by storage
        self._finalizers: list[weakref.finalize] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.exceeded:  # an architecture that catches the refusal gets it again on its next op
            raise _BuildTooLarge
        if not _makes_new_tensors(func):  # in place or a view: nothing is allocated
            return func(*args, **kwargs)
        self._check(_meta_bytes(func, args, kwargs))
        out = func(*args, **kwargs)
        given = {_storage_key(t) for t in _tensors((*args, *kwargs.values()))}
        for t in _tensors(out):
            key = _storage_key(t)
            if key is not None and key not in given and t.device.type != "meta":
                self._hold(t.untyped_storage())
        self._check(0)  # what the meta run could not foretell is counted once made
        return out

    def __exit__(self, *exc):
        for f in self._finalizers:  # the network keeps its storages; the budget is done with them
            f.detach()
        return super().__exit__(*exc)

    def _check(self, more: int) -> None:
        if self._alive + more > self.limit:
            self.exceeded = True
            raise _BuildTooLarge

    def _hold(self, storage) -> None:
        key = storage._cdata
        if key not in self._sizes:
            self._sizes[key] = size = max(storage.nbytes(), _MIN_CHARGE)
            self._alive += size
            self._finalizers.append(weakref.finalize(storage, self._release, key))

    def _release(self, key: int) -> None:
        self._alive -= self._sizes.pop(key, 0)


@cache
def _makes_new_tensors(func) -> bool:
    schema = getattr(func, "_schema", None)
    return schema is None or any(r.alias_info is None and "Tensor" in str(r.type) for r in schema.returns)


@cache
def _takes_device(func) -> bool:
    schema = getattr(func, "_schema", None)
    return schema is not None and any(a.name == "device" for a in schema.arguments)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse): nothing to count
        return None


def _meta_bytes(func, args, kwargs) -> int:
    """The bytes `func`'s outputs take, from a run on meta tensors; 0 where it cannot run there (it
    reads a value, or has no meta kernel): it is then counted once it has run."""
    takes_device = _takes_device(func)
    if not takes_device and not any(True for _ in _tensors((*args, *kwargs.values()))):  # a factory that cannot be sent to meta
        return 0

    def meta(x):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor) else x

    args, kwargs = _mapped(meta, args), {k: _mapped(meta, v) for k, v in kwargs.items()}
    if takes_device:
        kwargs["device"] = torch.device("meta")
    try:
        out = func(*args, **kwargs)
    except Exception:
        return 0
    return sum(max(t.numel() * t.element_size(), _MIN_CHARGE) for t in _tensors(out) if t.device.type == "meta")


def _tensors(x):
    """The tensors in an op's arguments or results: a tensor, or lists and tuples of them (aten's schemas
    nest no deeper); torch's pytree does the same, slower, and the budget sees every op of a build."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)


def _mapped(f, x):
    if isinstance(x, (list, tuple)):
        return [_mapped(f, y) for y in x] if isinstance(x, list) else tuple(_mapped(f, y) for y in x)
    return f(x)


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
    one_at_a_time = not _takes_batches(model, call, x, y)
    if call is None and not copy_input and not one_at_a_time:
        return model
    return _ImageToImage(model, call, copy_input, one_at_a_time).eval()


def _takes_batches(model: nn.Module, call, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the network gives each image of a batch of two what it gives that image alone."""
    pair = torch.cat([x, x.flip(-1)])
    try:
        with torch.no_grad():
            both = call(model, pair) if call is not None else model(pair)
    except Exception:  # noqa: BLE001 - code written for batch 1 fails in any way at batch 2
        return False
    return (isinstance(both, torch.Tensor) and both.shape[0] == 2
            and torch.allclose(both[:1], y, rtol=1e-4, atol=1e-5))


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
    return _clipped(_counted_keys(text.split(". ")[0]), _MAX_CAUSE)


def _counted_keys(text: str) -> str:
    # load_state_dict lists every missing or unexpected key: thousands for a crafted file; their count and the first 3
    def counted(m: re.Match) -> str:
        keys = re.findall(r'"[^"]*"', m[2])
        return m[0] if len(keys) <= 3 else f"{m[1]}{len(keys)} keys, {', '.join(keys[:3])}, ..."

    return re.sub(r'((?:Missing|Unexpected) key\(s\) in state_dict: )((?:"[^"]*"(?:, )?)+)\.?', counted, text)


def _clipped(text: str, most: int) -> str:
    return text if len(text) <= most else f"{text[:most - 3]}..."


def read_state_dict(path: Path) -> Mapping:
    """A weights file's tensors (safetensors, or a pickle through the restricted unpickler: never executed)."""
    _refuse_unreadable(path)
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SrtrtError(f"corrupt or truncated model file ({_first_line(e)})", path) from None
    records = _zip_records(path)
    if records is not None:
        _refuse_inflation(records, path)
        if _is_torchscript(records):
            raise SrtrtError("TorchScript files are not supported (loading one runs its code); "
                             "save the model's state dict as .safetensors or .pth", path)
    try:
        state = _unpickled(path)
    except pickle.UnpicklingError as e:
        # Both unpicklers name the first global outside their allow-lists; a pickle cut inside one's name
        # (a legacy .pth cut short; a zip's records are whole) gets a name cut short too ("torch._.").
        named = re.search(r"GLOBAL ([\w.]+)|Global '([\w.]+)' is forbidden", str(e))
        if named and (records is not None or not _pickle_ends_early(path)):
            raise SrtrtError(f"refused: the file's pickle names {named[1] or named[2]}, which is not weights "
                             "(only tensors and plain containers are read; save a state dict)", path) from None
        cause = "its pickle ends early" if named else _unpickling_cause(e)
        raise SrtrtError(f"corrupt or truncated model file ({cause})", path) from None
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


def _refuse_unreadable(path: Path) -> None:
    """One line saying why a path is no model file to read: missing, a FIFO (whose open would wait for a
    writer forever), a folder, a link loop, no permission (safetensors says "No such file" for that)."""
    try:
        bounded_read.open_regular(path).close()
    except FileNotFoundError:
        raise SrtrtError("model file not found", path) from None
    except bounded_read.NotRegularFile as e:
        raise SrtrtError(f"is {e.kind}, not a model file", path) from None
    except OSError as e:
        raise SrtrtError(f"cannot read the model file ({e.strerror or type(e).__name__})", path) from None


def _zip_records(path: Path) -> list[bounded_read.ZipEntry] | None:
    """The records of a torch zip checkpoint as its directory declares them, None for a file that does
    not start as a zip (torch.load's own test; it reads those as legacy pickles)."""
    with bounded_read.open_regular(path) as f:
        if f.read(4) != b"PK\x03\x04":
            return None
    try:
        return bounded_read.zip_entries(path)
    except (ValueError, struct.error) as e:
        raise SrtrtError(f"corrupt or truncated model file ({e})", path) from None


def _refuse_inflation(records: list[bounded_read.ZipEntry], path: Path) -> None:
    # torch's zip reader allocates and inflates each record whole, at the size its directory declares
    declared, size = sum(r.size for r in records), path.stat().st_size
    if declared > ZIP_INFLATION * size + (1 << 20):
        raise SrtrtError(f"refused: its zip records declare {_size(declared)} in a file of {_size(size)} (compressed "
                         "far beyond what weights compress to: a zip bomb, or a damaged file; torch.save stores "
                         "records uncompressed)", path)


def _is_torchscript(records: list[bounded_read.ZipEntry]) -> bool:
    # torch.load would hand a TorchScript archive to torch.jit.load; its records include constants.pkl.
    return any(r.name.rsplit("/", 1)[-1] == "constants.pkl" for r in records)


def _pickle_ends_early(path: Path, scan: int = 16 << 20) -> bool:
    """Whether the file ends inside one of its first pickles (a legacy .pth holds five, then raw
    storage bytes), found by parsing them with pickletools, which runs nothing."""
    with bounded_read.open_regular(path) as f:
        data = f.read(scan + 1)
    if len(data) > scan:  # its pickles lie in its first bytes: a longer file was not cut inside them
        return False
    stream = io.BytesIO(data)
    for _ in range(5):  # magic number, protocol, system info, the object, its storage keys
        if stream.tell() == len(data):
            return False
        try:
            for _ in pickletools.genops(stream):
                pass
        except Exception:  # pure parsing of bytes: any failure is the bytes'; cut short if at their end
            return stream.tell() >= len(data)
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
