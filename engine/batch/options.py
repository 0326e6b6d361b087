"""`RunOptions`: every option of `srtrt run`, typed, in one object.

The CLI builds it from its flags, `srtrt.upscale` from its keywords and the Ray driver ships
it to its actors, so each promise (out-of-memory retry, skip/overwrite, max pixels, atomic
output) is kept by the same code whichever door an image comes in by.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass

from srtrt.errors import SrtrtError

# Light on purpose (no numpy, torch or av at import): the CLI's parser and the server's schema take
# their choices from here. The backends' own table (backends._MAKERS) is checked against BACKENDS.
BACKENDS = ("auto", "torch", "openvino", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
ALPHA_MODES = ("bicubic", "model")
SHAPE_CLASSES = ("large", "many-sizes")  # backends.measured.LARGE, MANY_SIZES
DEINTERLACE_MODES = ("auto", "on", "off")  # what video.deinterlace.applies takes
BOOLEAN_OPTIONS = ("overwrite", "allow_noncommercial", "resume", "stop_at_bad_frame", "picked_by_auto")
# integer options: (least, most or None)
INTEGER_RANGES = {"tile": (0, None), "margin": (0, None), "batch": (1, None), "max_pixels": (0, None),
                  "crf": (0, 63), "png_level": (0, 9)}


@dataclass(frozen=True)
class RunOptions:
    model: str | None = None         # checkpoint path or embedded name; None = the default model
    backend: str = "auto"
    precision: str = "auto"
    device: str | None = None        # cpu | cuda[:i]; None = the best there is
    tile: int | None = None          # LR core size; None = the backend's default; 0 = whole image
    margin: int | None = None        # LR overlap per side; None = the receptive-field radius
    batch: int | None = None         # tiles per backend call
    alpha: str = "bicubic"           # how an alpha channel is upscaled: bicubic | model
    overwrite: bool = False          # replace existing outputs (default: skip them)
    max_pixels: int | None = None    # refuse larger inputs (LR pixels); None = the default limit, 0 = none
    png_level: int | None = None     # PNG deflate level; None = the measured default
    allow_noncommercial: bool = False  # a community model file may be a spandrel_extra_arches architecture
    shape_class: str = "large"       # "many-sizes": a folder of small images of many sizes (what `auto` times)
    # video only
    codec: str | None = None         # libx264, libx265, libsvtav1, libvpx-vp9, h264/hevc_nvenc; None = measured default
    crf: int | None = None           # constant quality on the codec's own scale; None = its measured default
    preset: str | None = None        # the codec's speed preset; None = its measured default
    resume: bool = False             # continue a video whose run died, from its closed segments
    stop_at_bad_frame: bool = False  # a video that fails to decode midway keeps the frames before the error
    deinterlace: str = "auto"        # auto: frames flagged interlaced | on: every frame | off: none
    # backend and precision name what `auto` picked elsewhere (a Ray driver for its actors): inputs
    # deeper than that precision keeps still run in fp32, as under `auto` (FileRunner.computes_apart)
    picked_by_auto: bool = False

    def __post_init__(self):
        for name in BOOLEAN_OPTIONS:
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))
        object.__setattr__(self, "model", model_argument(self.model))
        if self.alpha not in ALPHA_MODES:
            raise SrtrtError(f"alpha must be one of {', '.join(ALPHA_MODES)}, not {self.alpha!r}")
        for name, (least, most) in INTEGER_RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise SrtrtError(f"{name} must be an integer >= {least}, not {value!r}")
            object.__setattr__(self, name, int(value))  # numpy's integers too, as plain ints from here on
            if most is not None and value > most:
                raise SrtrtError(f"{name.replace('_', ' ')} must be {least}-{most}, not {value}")
        if self.deinterlace not in DEINTERLACE_MODES:
            raise SrtrtError(f"deinterlace must be one of {', '.join(DEINTERLACE_MODES)}, not {self.deinterlace!r}")
        if self.shape_class not in SHAPE_CLASSES:
            raise SrtrtError(f"shape_class must be one of {', '.join(SHAPE_CLASSES)}, not {self.shape_class!r}")

    @classmethod
    def from_args(cls, args) -> RunOptions:
        """From parsed `srtrt run` flags (argparse names match the field names)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)

    @property
    def backend_key(self) -> tuple:
        """What the backend depends on: runs with equal keys can share one backend. A model file
        replaced under its name (a server's --models folder, a notebook) is another key."""
        return (self.model, file_identity(self.model), _calibrations_identity(self.model), self.backend,
                self.precision, self.device, self.allow_noncommercial, self.shape_class)

    @property
    def tiles(self) -> tuple:
        """What an upscaler is made for: its tile, margin and batch."""
        return self.tile, self.margin, self.batch

    @property
    def decode_limit(self) -> dict:
        return decode_limit(self.max_pixels)


def decode_limit(max_pixels: int | None) -> dict:
    """Keyword arguments for `read_image`: the default limit unless one was given (0 = none)."""
    return {} if max_pixels is None else {"max_pixels": max_pixels or None}


def check_flag(name: str, value) -> bool:
    """A yes/no option as a plain bool: a bool or numpy's (a mask's element, `arr.any()`), never
    anything else: overwrite="false" is a true string, and it replaced files."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise SrtrtError(f"{name} must be True or False, not {value!r}")
    return bool(value)


def model_argument(model):
    """A `model` argument as every command takes it: None, an embedded model's name or a file path
    (str, bytes or os.PathLike; bytes decoded as the file system does)."""
    if model is None:
        return None
    if isinstance(model, bytes):
        model = os.fsdecode(model)
    if not isinstance(model, (str, os.PathLike)):
        loaded = " (a loaded model is called directly: model(x))" if hasattr(model, "forward") else ""
        raise TypeError(f"model takes an embedded model's name or a model file's path, not "
                        f"{type(model).__module__}.{type(model).__name__}{loaded}")
    if not str(model).strip():
        raise SrtrtError("the model is empty (an unset variable?): name a model file or an embedded model")
    return model


def _calibrations_identity(model: str | None) -> tuple:
    """When a community model's int8 ranges may have changed: `srtrt calibrate` keeps them in the cache's
    int8-calibration folder (zoo.store_calibration), which each calibration renames a file into. A
    backend kept across calls went on with the old ranges; an srtrt checkpoint's are in its sidecar."""
    from srtrt import zoo

    if model is None or not zoo.is_community_file(model):
        return ()
    try:
        st = zoo.calibration_dir().stat()
    except OSError:
        return ()
    return st.st_dev, st.st_ino, st.st_mtime_ns


def file_identity(model: str | None) -> tuple:
    """The identity on disk (device, inode, size, modification time) of the files `model` reads: a
    community file, or a checkpoint's weights and sidecar, named with or without their suffix."""
    from srtrt.checkpoint import model_files

    try:
        files = model_files(model)
    except SrtrtError:  # a name that is no file: the run itself says why
        return ()
    identity = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue
        identity.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(identity)


def open_backend(options: RunOptions):
    """The backend these options ask for, with the reason it was picked (a `Selection`)."""
    from srtrt.engine.backends import create_backend

    return create_backend(options.backend, options.model, options.precision, options.device,
                          allow_noncommercial=options.allow_noncommercial, shape_class=options.shape_class)


# the options a video alone reads, as `srtrt run` spells them
VIDEO_FLAGS = {"codec": "--codec", "crf": "--crf", "preset": "--preset", "resume": "--resume",
               "stop_at_bad_frame": "--stop-at-bad-frame", "deinterlace": "--deinterlace"}


def unused_video_flags(options: RunOptions, inputs) -> str:
    """A note when video options were given and no input is a video (they would go silently unused), or ""."""
    from srtrt.engine.video import is_video

    if any(is_video(path) for path in inputs):
        return ""
    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    given = [flag for name, flag in VIDEO_FLAGS.items() if getattr(options, name) != defaults[name]]
    if not given:
        return ""
    return f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to videos only, and no input is a video: ignored"


def setup_lines(selection, options: RunOptions) -> list[str]:
    """A run's first lines: the backend and why it was picked, and how exact its tiles are."""
    facts = selection.facts
    if options.tile == 0 and facts.multiple_of == 1:  # one window per image: no tiles, so no margin to judge
        tiles = "whole image in one window (--tile 0): no tiles, the margin is unused"
    else:
        tiles = facts.tiling_note(options.margin, options.tile)
    return [f"srtrt: backend {selection.reason}", f"srtrt: {tiles}"]
